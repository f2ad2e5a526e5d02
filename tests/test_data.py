"""Small clean images (CIFAR-10 or any folder) and seeded splits."""

from collections import Counter

import pytest
import torch
from PIL import Image

from detector.corruptions import CIFAR_CORRUPTIONS, SEVERITIES
from evaluation.grid import CorruptionGrid
from tests.conftest import MINI_CORPUS
from training.data import find_images, load_clean_images, split_cifar, split_indices, without_copies_of


@pytest.fixture(scope="module")
def train_images(subset) -> torch.Tensor:
    """A hundred CIFAR-10 training images."""
    return load_clean_images(str(subset / "train"), limit=100)


def test_folder_is_searched_recursively_and_limited(subset, train_images):
    assert len(find_images(subset / "train")) == 4000
    assert train_images.shape == (100, 3, 32, 32) and train_images.dtype == torch.uint8


def test_larger_images_are_resized_to_the_small_side(tmp_path, mini_corpus):
    images = load_clean_images(str(mini_corpus / "train"))
    assert images.shape == (len(MINI_CORPUS["train"]), 3, 32, 32)


def test_empty_folder_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        find_images(tmp_path)


def test_split_is_disjoint_and_seeded():
    train, val = split_indices(100, 0.1, seed=3)
    assert len(val) == 10 and len(train) == 90
    assert not set(train.tolist()) & set(val.tolist())
    assert torch.equal(split_indices(100, 0.1, seed=3)[1], val)


def test_cifar_split_holds_out_the_seeded_validation_images(subset):
    train, val = split_cifar(str(subset / "train"), 0.1, seed=3, limit=50)
    images = load_clean_images(str(subset / "train"), limit=50)
    train_idx, val_idx = split_indices(len(images), 0.1, seed=3)
    assert torch.equal(val, images[val_idx]) and torch.equal(train, images[train_idx])


def test_grid_covers_every_kind_and_severity_for_every_image(train_images):
    grid = CorruptionGrid(train_images[:4], table=CIFAR_CORRUPTIONS)
    combos = Counter(grid.describe(i) for i in range(len(grid)))
    assert combos[(0, 0)] == 4
    assert all(combos[(k, s)] == 4 for k in range(1, len(CIFAR_CORRUPTIONS) + 1) for s in SEVERITIES)
    image, label, kind, severity = grid.sample(len(train_images[:4]) * 3)
    assert label == 1 and kind >= 1 and severity in SEVERITIES and image.dtype == torch.uint8


def test_extra_images_lose_their_copies_of_validation_images(subset, tmp_path):
    """The JPEG copies of validation images are dropped from an extra folder; other images, JPEG or not, stay."""
    paths = find_images(subset / "train")[:12]
    for path in paths:
        Image.open(path).save(tmp_path / f"{path.stem}.jpg", quality=75)
    copies = load_clean_images(str(tmp_path))
    originals = load_clean_images(str(subset / "train"), limit=12)
    kept = without_copies_of(copies, held_out=originals[:4])
    assert len(kept) == 8 and torch.equal(kept, copies[4:])
    assert torch.equal(without_copies_of(originals, held_out=originals[:0]), originals)
