"""Shared fixtures: the data subset, the shipped weights, built archives and a real TorchServe."""

from pathlib import Path

import pytest
import torch

from tests.torchserve_process import TorchServe, running_torchserve
from training.archive import SHIPPED_WEIGHTS, build_archive
from training.data import SUBSET, load_clean_images


@pytest.fixture(scope="session")
def subset() -> Path:
    """The lossless CIFAR-10 subset laid beside the project (../shared/data)."""
    assert SUBSET.is_dir(), f"test data missing: {SUBSET}"
    return SUBSET


@pytest.fixture(scope="session")
def images(subset: Path) -> torch.Tensor:
    """Twenty real CIFAR-10 test images as uint8 CHW tensors (test_data.py uses its own training images)."""
    return load_clean_images(str(subset / "test"), limit=20)


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
