"""Refitting a checkpoint's heads on its frozen trunk: only the heads move, and the result is calibrated."""

import argparse
import hashlib
import json

import pytest
import torch
from torch import nn

from detector.model import CALIBRATION_BUFFERS, load_model, read_checkpoint
from training import head_refit


def test_fit_head_learns_a_margin_from_the_columns_past_the_trunk():
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(8192, 20, generator=generator)
    labels = (inputs[:, 18] > 0).long()  # a scene statistic, not a trunk feature: never dropped out
    features = head_refit.Features(inputs.half(), labels, labels)
    head = nn.Linear(20, 3)
    args = argparse.Namespace(seed=0, lr=5e-2, weight_decay=0.0, epochs=5, type_loss_weight=0.3)
    losses = head_refit.fit_head(head, [(features, 1.0)], 16, args)
    with torch.no_grad():
        out = head(inputs)
    assert losses[-1] < losses[0]
    assert ((out[:, 0] > 0).long() == labels).float().mean() > 0.97
    assert (out[:, 1:].argmax(dim=1) == labels).float().mean() > 0.97


@pytest.mark.parametrize("heads", [("whole", "crop"), ("crop",)])
def test_a_refit_moves_only_the_heads_it_refits_and_is_calibrated(heads, trained, mini_corpus, subset, tmp_path):
    source, out = trained / "model.pt", tmp_path / "refit" / "model.pt"
    data = ["--photos", str(mini_corpus), "--cifar", str(subset / "train"), "--calibration-samples", "32"]
    options = ["--samples", "48", "--epochs", "2", "--workers", "0", "--limit", "256", "--heads", *heads]
    head_refit.main(["--model", str(source), "--out", str(out), *options, *data])
    before, after = read_checkpoint(source), read_checkpoint(out)
    refitted = [name for name in after["state_dict"] if name.split(".")[0] in {f"{head}_head" for head in heads}]
    assert refitted and all(not torch.equal(after["state_dict"][n], before["state_dict"][n]) for n in refitted)
    for name, tensor in after["state_dict"].items():
        if name not in refitted and name not in CALIBRATION_BUFFERS:
            assert torch.equal(tensor, before["state_dict"][name]), f"{name} moved: only {heads} are refitted"
    summary = json.loads((out.parent / "training.json").read_text())
    metadata = after["metadata"]
    assert metadata["head_refit"]["of_sha256"] == hashlib.sha256(source.read_bytes()).hexdigest()
    assert metadata["training_photos"] == before["metadata"]["training_photos"], "the same photos, seen"
    assert metadata["calibration"] == summary["calibration"]
    assert float(load_model(out).corrupted_logit_offset) == pytest.approx(
        summary["calibration"]["corrupted_logit_offset"], abs=1e-4
    )
    assert {head: len(losses) for head, losses in summary["losses"].items()} == dict.fromkeys(heads, 2)
    assert summary["refit_of"] == json.loads((trained / "training.json").read_text()), "what it refitted, recorded"
