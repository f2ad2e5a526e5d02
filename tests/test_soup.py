"""The weight soup: the mean of runs fine-tuned from one checkpoint, calibrated as training calibrates."""

import hashlib
import json

import pytest
import torch

from detector.model import CALIBRATION_BUFFERS, build_model, load_model, read_checkpoint, save_checkpoint
from training import soup


def fine_tuned(trained, path, seed: int, cifar_split_seed: int = 0) -> None:
    """A stand-in for a fine-tuning run from `trained`: its weights moved by seeded noise, its metadata as
    training.train writes it for an --init run."""
    model = load_model(trained / "model.pt")
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.01 * torch.randn(parameter.shape, generator=generator))
    start = hashlib.sha256((trained / "model.pt").read_bytes()).hexdigest()
    photos = {f"photo-{seed}": f"group-{seed}"}
    metadata = {"steps": 10, "init_sha256": start, "ancestors": [], "training_photos": photos}
    save_checkpoint(model, path, {**metadata, "cifar_split_seed": cifar_split_seed})


def test_a_soup_is_the_calibrated_mean_of_its_ingredients(trained, mini_corpus, subset, tmp_path):
    ingredients = [tmp_path / "a.pt", tmp_path / "b.pt"]
    for seed, path in enumerate(ingredients):
        fine_tuned(trained, path, seed)
    out = tmp_path / "soup" / "model.pt"
    data = ["--photos", str(mini_corpus), "--cifar", str(subset / "train"), "--calibration-samples", "32"]
    soup.main([*map(str, ingredients), "--out", str(out), *data])
    states = [read_checkpoint(path)["state_dict"] for path in ingredients]
    averaged = read_checkpoint(out)["state_dict"]
    weights = [name for name, tensor in averaged.items() if tensor.is_floating_point()]
    for name in set(weights) - set(CALIBRATION_BUFFERS):
        expected = (states[0][name].float() + states[1][name].float()) / 2
        torch.testing.assert_close(averaged[name].float(), expected, atol=2e-3, rtol=2e-3)  # fp16 storage
    assert any(not torch.equal(averaged[name], states[0][name]) for name in weights), "not a copy of one run"
    summary = json.loads((out.parent / "training.json").read_text())
    metadata = read_checkpoint(out)["metadata"]
    assert metadata["calibration"] == summary["calibration"]
    assert float(load_model(out).corrupted_logit_offset) == pytest.approx(
        summary["calibration"]["corrupted_logit_offset"], abs=1e-4
    )
    assert metadata["training_photos"] == {"photo-0": "group-0", "photo-1": "group-1"}, "seen by either run"
    checksums = [hashlib.sha256(path.read_bytes()).hexdigest() for path in ingredients]
    assert [entry["sha256"] for entry in metadata["soup_of"]] == checksums
    assert [entry["sha256"] for entry in summary["soup_of"]] == checksums
    assert metadata["cifar_split_seed"] == summary["cifar_split_seed"] == 0, "held out by both, calibrated on"


def test_a_soup_of_runs_that_held_out_different_cifar_splits_needs_the_split_named(
    trained, mini_corpus, subset, tmp_path
):
    ingredients = [tmp_path / "a.pt", tmp_path / "b.pt"]
    for seed, path in enumerate(ingredients):
        fine_tuned(trained, path, seed, cifar_split_seed=seed)
    out = tmp_path / "soup" / "model.pt"
    with pytest.raises(soup.IngredientMismatchError, match="--cifar-split-seed"):
        soup.make_soup(ingredients, out)
    assert not out.exists()
    data = ["--photos", str(mini_corpus), "--cifar", str(subset / "train"), "--calibration-samples", "32"]
    soup.main([*map(str, ingredients), "--out", str(out), *data, "--cifar-split-seed", "1"])
    assert json.loads((out.parent / "training.json").read_text())["cifar_split_seed"] == 1
    assert "cifar_split_seed" not in read_checkpoint(out)["metadata"], "not held out by every ingredient"


def test_a_soup_refuses_runs_from_different_starts_or_backbones(tmp_path):
    model = build_model("efficientnet-lite0")
    paths = {name: tmp_path / f"{name}.pt" for name in ("a", "b", "scratch")}
    save_checkpoint(model, paths["a"], {"init_sha256": "1" * 64})
    save_checkpoint(model, paths["b"], {"init_sha256": "2" * 64})
    save_checkpoint(model, paths["scratch"], {})
    with pytest.raises(soup.IngredientMismatchError, match="at least two"):
        soup.make_soup([paths["a"]], tmp_path / "out.pt")
    with pytest.raises(soup.IngredientMismatchError, match="from one checkpoint"):
        soup.make_soup([paths["a"], paths["b"]], tmp_path / "out.pt")
    with pytest.raises(soup.IngredientMismatchError, match="from one checkpoint"):
        soup.make_soup([paths["a"], paths["scratch"]], tmp_path / "out.pt")
    resnet = build_model("resnet18")
    save_checkpoint(resnet, tmp_path / "resnet.pt", {"init_sha256": "1" * 64})
    with pytest.raises(soup.IngredientMismatchError, match="backbones"):
        soup.make_soup([paths["a"], tmp_path / "resnet.pt"], tmp_path / "out.pt")
    assert not (tmp_path / "out.pt").exists()
