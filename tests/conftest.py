"""Shared fixtures: the data subset, test images, the handler in-process, built archives and a real TorchServe.

Tests that start a server or another process (TorchServe, Prometheus, Chromium, torchrun, kubectl,
podman) are marked `integration` here, from the fixtures and markers they use, so that
`pytest -m "not integration"` runs the in-process tests alone.
"""

from pathlib import Path

import pytest
import torch

from bench.torchserve import TorchServe, running_torchserve
from handler.corruption_handler import CorruptionHandler
from tests.helpers import start_handler
from training.archive import SHIPPED_WEIGHTS, build_archive
from training.data import SUBSET, load_clean_images

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
