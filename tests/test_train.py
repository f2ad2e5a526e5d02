"""A short real training run on a few hundred images, calibration, and the evaluation report of its checkpoint."""

import json
import math
import subprocess
import sys

import pytest
import torch

from bench.torchserve import ROOT
from detector.corruptions import KINDS, SEVERITIES, TYPES
from detector.model import load_model
from evaluation import evaluate
from evaluation.heldout import HELDOUT_KINDS
from training import train


@pytest.fixture(scope="module")
def trained(subset, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    train.main(
        [
            "--data",
            str(subset / "train"),
            "--limit",
            "300",
            "--epochs",
            "3",
            "--batch-size",
            "32",
            "--lr",
            "0.02",
            "--seed",
            "0",
            "--device",
            "cpu",
            "--out",
            str(out),
        ]
    )
    return out


def test_training_writes_a_loadable_checkpoint_and_history(trained):
    model = load_model(trained / "model.pt")
    assert not model.training
    summary = json.loads((trained / "training.json").read_text())
    assert [epoch["epoch"] for epoch in summary["history"]] == [1, 2, 3]
    assert 1 <= summary["best_epoch"] <= 3


def test_training_loss_is_finite_and_falls(trained):
    losses = [epoch["train_loss"] for epoch in json.loads((trained / "training.json").read_text())["history"]]
    assert all(math.isfinite(loss) for loss in losses)
    assert losses[-1] < losses[0], losses


def test_history_reports_fpr_and_detection_per_kind(trained):
    epoch = json.loads((trained / "training.json").read_text())["history"][0]
    assert 0 <= epoch["clean_false_positive_rate"] <= 1
    assert set(epoch["detection_rate"]) == set(KINDS)


def test_checkpoint_is_calibrated_on_the_validation_split(trained):
    model = load_model(trained / "model.pt")
    calibration = json.loads((trained / "training.json").read_text())["calibration"]
    assert float(model.temperature) == pytest.approx(calibration["temperature"], rel=1e-3)
    assert float(model.corrupted_logit_offset) == pytest.approx(calibration["corrupted_logit_offset"], abs=1e-2)
    assert float(model.temperature) != 1.0, "temperature scaling left the model as trained"


def test_both_heads_answer(trained):
    model = load_model(trained / "model.pt")
    _, binary, types = model.outputs(torch.zeros(2, 3, 32, 32))
    assert binary.shape == (2, 2) and types.shape == (2, len(TYPES))
    assert torch.allclose(binary.sum(dim=1), torch.ones(2)) and torch.allclose(types.sum(dim=1), torch.ones(2))


def test_fine_tuning_starts_from_a_checkpoint_with_its_calibration_reset(trained):
    start = train.initial_model(trained / "model.pt")
    assert float(start.temperature) == 1.0 and float(start.corrupted_logit_offset) == 0.0
    original = load_model(trained / "model.pt")
    assert torch.equal(start.binary_head.weight, original.binary_head.weight)


def test_extra_data_trains_but_never_validates(subset):
    args = train.parse_args(
        ["--data", str(subset / "train"), "--extra-data", str(subset / "test"), "--limit", "40", "--out", "unused"]
    )
    train_images, val_images = train.training_images(args)
    assert (len(train_images), len(val_images)) == (36 + 40, 4)


def test_evaluate_writes_the_robustness_report(trained, subset, tmp_path):
    reports = tmp_path / "reports"
    evaluate.main(
        [
            "--model", str(trained / "model.pt"), "--data", str(subset / "test"), "--limit", "12",
            "--baseline-images", "60", "--no-photos", "--reports", str(reports),
        ]
    )  # fmt: skip
    results = json.loads((reports / "robustness.json").read_text())
    assert results["training_kinds"]["samples"] == 12 * (1 + len(KINDS) * len(SEVERITIES))
    assert results["heldout_kinds"]["samples"] == 12 * (1 + len(HELDOUT_KINDS) * len(SEVERITIES))
    assert set(results["baseline"]["heldout"]["auroc"]) == set(HELDOUT_KINDS)
    assert sum(map(sum, results["type_confusion"])) == results["training_kinds"]["samples"]
    assert sum(results["training_kinds"]["confusion"][0]) == 12, "the clean row holds every clean image"
    assert sum(map(sum, results["training_kinds"]["confusion"])) == results["training_kinds"]["samples"]
    assert set(results["calibration"]) == {"raw", "temperature", "shipped"}
    report = (reports / "robustness.md").read_text()
    for section in ("## Targets", "## Training kinds", "## Held-out kinds", "## Heuristic baseline", "## Calibration"):
        assert section in report
    assert all(f"| {kind} |" in report for kind in (*KINDS, *HELDOUT_KINDS))
    for figure in ("detection_by_severity", "heldout_by_severity", "confusion_binary", "confusion_types",
                   "auroc_by_kind", "reliability"):  # fmt: skip
        assert (reports / f"{figure}.png").stat().st_size > 1000, figure
        assert f"({figure}.png)" in report


@pytest.mark.integration
def test_two_gloo_processes_train_in_lockstep(subset, tmp_path):
    """torchrun with two CPU processes (gloo) for one short epoch: both ranks end with the same weights."""
    out = tmp_path / "ddp"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "training.train", "--data", str(subset / "train"), "--limit", "64", "--epochs", "1",
        "--batch-size", "16", "--device", "cpu", "--out", str(out),
    ]  # fmt: skip
    env = {"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    finished = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr[-3000:]
    summary = json.loads((out / "training.json").read_text())
    assert summary["device"] == "2 x cpu"
    first, second = summary["rank_parameter_checksums"]
    assert first == second, "the two ranks' weights diverged"
    assert load_model(out / "model.pt") is not None
