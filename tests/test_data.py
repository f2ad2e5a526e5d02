"""Image sources and the balanced clean/corrupted datasets."""

from collections import Counter

import pytest
import torch

from training.corruptions import KINDS, SEVERITIES
from training.data import KIND_NAMES, CorruptionDataset, CorruptionGrid, find_images, load_clean_images, split_indices


@pytest.fixture(scope="module")
def images(subset) -> torch.Tensor:
    return load_clean_images(str(subset / "train"), limit=100)


def test_folder_is_searched_recursively_and_limited(subset, images):
    assert len(find_images(subset / "train")) == 4000
    assert images.shape == (100, 3, 32, 32) and images.dtype == torch.uint8


def test_empty_folder_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        find_images(tmp_path)


def test_split_is_disjoint_and_seeded():
    train, val = split_indices(100, 0.1, seed=3)
    assert len(val) == 10 and len(train) == 90
    assert not set(train.tolist()) & set(val.tolist())
    assert torch.equal(split_indices(100, 0.1, seed=3)[1], val)


def test_dataset_is_balanced_and_records_kind_and_severity(images):
    dataset = CorruptionDataset(images, seed=0)
    samples = [dataset[i] for i in range(len(dataset))]
    labels = Counter(label for _, label, _, _ in samples)
    assert labels[0] == labels[1] == len(images)
    kinds = Counter(KIND_NAMES[kind] for _, label, kind, _ in samples if label)
    assert set(kinds) == set(KINDS) and max(kinds.values()) - min(kinds.values()) <= 1
    for _, label, kind, severity in samples:
        assert (label == 0) == (kind == 0) == (severity == 0)
        assert label == 0 or severity in SEVERITIES


def test_clean_samples_are_the_untouched_images(images):
    dataset = CorruptionDataset(images, seed=0)
    image, label, _, _ = dataset[0]
    expected = CorruptionGrid(images)[0][0]
    assert label == 0 and torch.equal(image, expected)


def test_samples_are_reproducible_and_change_with_the_epoch(images):
    first, again = CorruptionDataset(images, seed=5), CorruptionDataset(images, seed=5)
    assert all(torch.equal(first[i][0], again[i][0]) for i in range(1, 20, 2))
    again.set_epoch(1)
    assert any(not torch.equal(first[i][0], again[i][0]) for i in range(1, 20, 2))


def test_grid_covers_every_kind_and_severity_for_every_image(images):
    grid = CorruptionGrid(images[:4])
    combos = Counter(grid.describe(i) for i in range(len(grid)))
    assert combos[(0, 0)] == 4
    assert all(combos[(k, s)] == 4 for k in range(1, len(KIND_NAMES)) for s in SEVERITIES)
