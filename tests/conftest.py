"""Shared fixtures: the data subset, test images, the handler in-process, built archives and a real TorchServe.

Tests that start a server or another process (TorchServe, Prometheus, Chromium, torchrun, kubectl,
podman) are marked `integration` here, from the fixtures and markers they use, so that
`pytest -m "not integration"` runs the in-process tests alone.
"""

import json
from pathlib import Path

import pytest
import torch

from bench.torchserve import TorchServe, running_torchserve
from detector.paths import SHIPPED_WEIGHTS
from handler.archive import build_archive
from handler.corruption_handler import CorruptionHandler
from tests.helpers import start_handler
from training import train
from training.corpus import installed_photo, read_manifest
from training.data import SUBSET, load_clean_images

# A tiny real training run: a few steps of every stream, calibrated on few samples (seconds, not hours).
TINY_TRAINING = [
    "--steps",
    "10",
    "--batch-size",
    "4",
    "--crop-batch-size",
    "8",
    "--cifar-batch-size",
    "8",
    "--limit",
    "60",
    "--workers",
    "0",
    "--no-pretrained",
    "--lr",
    "0.003",
    "--seed",
    "0",
    "--calibration-samples",
    "32",
]
# A corpus of test-split photos the test environment has installed anyway (no download), split afresh by source
# (package), as training and calibration require.
MINI_CORPUS = {
    "train": ("scikit-image--astronaut", "scikit-image--rocket", "scikit-image--coffee", "scikit-image--chelsea"),
    "val": ("scikit-learn--flower", "scikit-learn--china"),
    "test": ("matplotlib--grace-hopper",),
}

# Any test using one of these fixtures runs a real server or builds archives with torch-model-archiver.
INTEGRATION_FIXTURES = {"torchserve", "model_store", "own_server", "prometheus", "browser", "page"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if INTEGRATION_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def subset() -> Path:
    """The lossless CIFAR-10 subset laid beside the project (../shared/data)."""
    assert SUBSET.is_dir(), f"test data missing: {SUBSET}"
    return SUBSET


@pytest.fixture(scope="session")
def images(subset: Path) -> torch.Tensor:
    """Twenty real CIFAR-10 test images as uint8 CHW tensors."""
    return load_clean_images(str(subset / "test"), limit=20)


@pytest.fixture(scope="session")
def handler(tmp_path_factory: pytest.TempPathFactory) -> CorruptionHandler:
    """The handler initialised as TorchServe does, from the shipped weights and model-config.yaml."""
    return start_handler(tmp_path_factory.mktemp("model_dir"))


@pytest.fixture(scope="session")
def model_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model store with the shipped model as version 1.0 (corruption.mar) and 2.0."""
    store = tmp_path_factory.mktemp("model_store")
    build_archive(SHIPPED_WEIGHTS, "1.0", store)
    build_archive(SHIPPED_WEIGHTS, "2.0", store)
    return store


@pytest.fixture(scope="session")
def torchserve(model_store: Path, tmp_path_factory: pytest.TempPathFactory) -> TorchServe:
    """A real TorchServe serving corruption.mar; stopped whatever the tests did."""
    with running_torchserve(model_store, tmp_path_factory.mktemp("torchserve")) as server:
        yield server


@pytest.fixture(scope="session")
def mini_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A built corpus folder (as `make photos` writes it) of seven small installed photos."""
    folder = tmp_path_factory.mktemp("photos")
    pins = {photo.id: photo for photo in read_manifest()}
    entries = []
    for split, ids in MINI_CORPUS.items():
        (folder / split).mkdir()
        for photo_id in ids:
            pin = pins[photo_id]
            file = f"{split}/{photo_id}{Path(pin.path).suffix}"
            (folder / file).write_bytes(installed_photo(photo_id))
            entries.append(
                {
                    "id": photo_id,
                    "split": split,
                    "file": file,
                    "width": pin.width,
                    "height": pin.height,
                    "jpeg_quality": pin.jpeg_quality,
                    "phash": "0" * 16,
                    "half_size": False,
                    "source": pin.package,
                    "licence": pin.licence,
                }
            )
    (folder / "manifest.json").write_text(json.dumps(entries))
    return folder


@pytest.fixture(scope="session")
def trained(mini_corpus: Path, subset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The output folder of a tiny real training run on the mini corpus and CIFAR images."""
    out = tmp_path_factory.mktemp("run")
    train.main(["--photos", str(mini_corpus), "--cifar", str(subset / "train"), *TINY_TRAINING, "--out", str(out)])
    return out
