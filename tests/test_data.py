"""Image sources and the balanced clean/corrupted datasets."""

from collections import Counter

import pytest
import torch

from detector.corruptions import KINDS, SAMPLE_KINDS, SEVERITIES
from evaluation.grid import CorruptionGrid
from training.data import CorruptionDataset, find_images, load_clean_images, split_indices


@pytest.fixture(scope="module")
def train_images(subset) -> torch.Tensor:
    """A hundred CIFAR-10 training images (the datasets' own source)."""
    return load_clean_images(str(subset / "train"), limit=100)


def test_folder_is_searched_recursively_and_limited(subset, train_images):
    assert len(find_images(subset / "train")) == 4000
    assert train_images.shape == (100, 3, 32, 32) and train_images.dtype == torch.uint8


def test_empty_folder_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        find_images(tmp_path)


def test_split_is_disjoint_and_seeded():
    train, val = split_indices(100, 0.1, seed=3)
    assert len(val) == 10 and len(train) == 90
    assert not set(train.tolist()) & set(val.tolist())
    assert torch.equal(split_indices(100, 0.1, seed=3)[1], val)


def test_dataset_is_balanced_and_records_kind_and_severity(train_images):
    dataset = CorruptionDataset(train_images, seed=0)
    samples = [dataset[i] for i in range(len(dataset))]
    labels = Counter(label for _, label, _, _ in samples)
    assert labels[0] == labels[1] == len(train_images)
    kinds = Counter(SAMPLE_KINDS[kind] for _, label, kind, _ in samples if label)
    assert set(kinds) == set(KINDS) and max(kinds.values()) - min(kinds.values()) <= 1
    for _, label, kind, severity in samples:
        assert (label == 0) == (kind == 0) == (severity == 0)
        assert label == 0 or severity in SEVERITIES


def test_clean_samples_are_the_untouched_images(train_images):
    dataset = CorruptionDataset(train_images, seed=0)
    image, label, _, _ = dataset[0]
    expected = CorruptionGrid(train_images)[0][0]
    assert label == 0 and torch.equal(image, expected)


def test_samples_are_reproducible_and_change_with_the_epoch(train_images):
    first, again = CorruptionDataset(train_images, seed=5), CorruptionDataset(train_images, seed=5)
    assert all(torch.equal(first[i][0], again[i][0]) for i in range(1, 20, 2))
    again.set_epoch(1)
    assert any(not torch.equal(first[i][0], again[i][0]) for i in range(1, 20, 2))


def test_grid_covers_every_kind_and_severity_for_every_image(train_images):
    grid = CorruptionGrid(train_images[:4])
    combos = Counter(grid.describe(i) for i in range(len(grid)))
    assert combos[(0, 0)] == 4
    assert all(combos[(k, s)] == 4 for k in range(1, len(SAMPLE_KINDS)) for s in SEVERITIES)
