"""A short real training run on a few hundred images, and evaluation of its checkpoint."""

import json
import math

import pytest

from training import evaluate, train
from training.corruptions import KINDS, SEVERITIES
from training.model import load_model


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


def test_evaluate_reports_every_kind_and_severity(trained, subset, tmp_path, capsys):
    out = tmp_path / "metrics.json"
    evaluate.main(
        ["--model", str(trained / "model.pt"), "--data", str(subset / "test"), "--limit", "20", "--out", str(out)]
    )
    metrics = json.loads(out.read_text())
    assert metrics["samples"] == 20 * (1 + len(KINDS) * len(SEVERITIES))
    assert all(len(metrics["detection_rate_by_severity"][kind]) == len(SEVERITIES) for kind in KINDS)
    assert "| gaussian_noise |" in capsys.readouterr().out
