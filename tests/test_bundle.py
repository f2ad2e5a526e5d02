"""The device's training bundle: it fits its byte budget, its photos are the corpus's shrunk and still split by
source, and its own script trains a checkpoint from it (on the CPU here, standing in for the device)."""

import json
import subprocess
import sys

import pytest
from PIL import Image

from bench.torchserve import ROOT
from detector.model import load_model, read_checkpoint
from tests.conftest import MINI_CORPUS, TINY_TRAINING
from training import bundle
from training.photo_data import load_split

LONG_SIDE = 256


def build(mini_corpus, subset, out, max_mib=bundle.DEFAULT_MAX_MIB, device_args="--device cpu", budget=()):
    return bundle.build_bundle(
        bundle.main_parser().parse_args(
            [
                "--photos",
                str(mini_corpus),
                "--cifar",
                str(subset / "train"),
                "--extra-cifar",
                str(subset / "test"),
                "--out",
                str(out),
                "--long-side",
                str(LONG_SIDE),
                "--max-mib",
                str(max_mib),
                "--device-args",
                device_args,
                *budget,
            ]
        )
    )


@pytest.fixture(scope="module")
def built(mini_corpus, subset, tmp_path_factory):
    out = tmp_path_factory.mktemp("bundle") / "device-bundle"
    budget, tiny = TINY_TRAINING[:2], TINY_TRAINING[2:]
    assert budget[0] == "--steps"
    return out, build(mini_corpus, subset, out, device_args=" ".join(["--device", "cpu", *tiny]), budget=budget)


def test_the_bundle_holds_the_training_and_validation_photos_shrunk(built):
    out, size = built
    for split in ("train", "val"):
        photos = load_split(out / "photos", split)
        assert [photo.id for photo in photos] == list(MINI_CORPUS[split])
        for photo in photos:
            with Image.open(out / "photos" / photo.file) as image:
                assert image.size == (photo.width, photo.height) and max(image.size) <= LONG_SIDE
            assert photo.jpeg_quality == bundle.BUNDLE_QUALITY
    assert not load_split(out / "photos", "test"), "test photos never travel"
    assert size == sum(path.stat().st_size for path in out.rglob("*") if path.is_file())


def test_the_extra_small_images_fill_what_the_budget_leaves(mini_corpus, subset, built, tmp_path):
    out, size = built
    extra = list((out / "extra-cifar").iterdir())
    assert len(extra) == len(list((subset / "test").rglob("*.png"))), "with room to spare, every one"
    tight = size - 20_000
    assert build(mini_corpus, subset, tmp_path / "tight", max_mib=tight / 2**20) <= tight
    assert 0 < len(list((tmp_path / "tight" / "extra-cifar").iterdir())) < len(extra)
    required = size - sum(path.stat().st_size for path in extra)
    with pytest.raises(bundle.BundleTooLargeError, match="lower --long-side"):
        build(mini_corpus, subset, tmp_path / "small", max_mib=required / 2 / 2**20)
    assert not (tmp_path / "small").exists(), "a refused bundle is removed"


def test_the_bundles_script_trains_a_checkpoint_from_it(built, tmp_path):
    out, _ = built
    python = tmp_path / "bin" / "python3"  # the device's python3: here the project's interpreter
    python.parent.mkdir()
    python.write_text(f'#!/bin/sh\nexec {sys.executable} "$@"\n')
    python.chmod(0o755)
    env = {
        "PATH": f"{python.parent}:/usr/bin:/bin",
        "OMP_NUM_THREADS": "1",
        "OUT": str(tmp_path / "out"),
        "SITE": str(tmp_path / "site"),
        "PYTHONPATH": str(ROOT),
    }
    finished = subprocess.run(
        ["sh", str(out / "train.sh")], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert finished.returncode == 0, finished.stderr[-3000:]
    checkpoint = tmp_path / "out" / "checkpoint" / "model.pt"
    load_model(checkpoint)
    metadata = read_checkpoint(checkpoint)["metadata"]
    assert set(MINI_CORPUS["train"]) <= set(metadata["training_photos"])
    summary = json.loads((checkpoint.parent / "training.json").read_text())
    assert summary["device"] == "1 x cpu" and summary["arguments"]["init"] == "weights/model.pt"
