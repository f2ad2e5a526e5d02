"""The heuristic baseline: each feature responds to its corruption, any image size works, and it separates."""

import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as F
from sklearn.metrics import roc_auc_score

from detector.corruptions import CIFAR_CORRUPTIONS, SEVERITIES
from evaluation.baseline import FEATURE_NAMES, HeuristicBaseline, image_features
from training.data import load_clean_images

PAIRS = [(kind, severity) for kind in CIFAR_CORRUPTIONS for severity in SEVERITIES]


@pytest.fixture(scope="module")
def clean(subset) -> torch.Tensor:
    """100 real CIFAR-10 test images, ten of each class."""
    return torch.cat([load_clean_images(str(folder), limit=10) for folder in sorted((subset / "test").iterdir())])


def feature(images: torch.Tensor, name: str) -> np.ndarray:
    return image_features(images)[:, FEATURE_NAMES.index(name)]


def corrupt_all(images: torch.Tensor, kind: str, severity: int) -> torch.Tensor:
    return torch.stack([CIFAR_CORRUPTIONS[kind](image, severity, seed=i) for i, image in enumerate(images)])


def fraction_above(after: np.ndarray, before: np.ndarray) -> float:
    return float((after > before).mean())


def test_blur_lowers_laplacian_variance(clean):
    blurred = corrupt_all(clean, "gaussian_blur", 3)
    assert fraction_above(feature(clean, "laplacian_variance"), feature(blurred, "laplacian_variance")) >= 0.95


def test_noise_raises_noise_sigma(clean):
    noisy = corrupt_all(clean, "gaussian_noise", 3)
    assert fraction_above(feature(noisy, "noise_sigma"), feature(clean, "noise_sigma")) >= 0.95


def test_jpeg_q10_raises_blockiness(clean):
    compressed = torch.stack([F.jpeg(image, quality=10) for image in clean])
    before, after = feature(clean, "blockiness"), feature(compressed, "blockiness")
    assert fraction_above(after, before) >= 0.9
    assert np.median(before) < 1.2 < np.median(after)


def test_darkening_lowers_mean(clean):
    darker = F.adjust_brightness(clean, 0.5)
    assert fraction_above(feature(clean, "mean"), feature(darker, "mean")) >= 0.95


def test_occlusion_raises_flat_fraction(clean):
    occluded = corrupt_all(clean, "occlusion", 4)
    assert fraction_above(feature(occluded, "flat_fraction"), feature(clean, "flat_fraction")) >= 0.9


@pytest.mark.parametrize(("height", "width"), [(48, 40), (29, 37), (8, 8)])
def test_features_for_any_size(height, width):
    images = torch.randint(0, 256, (3, 3, height, width), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    features = image_features(images)
    assert features.shape == (3, len(FEATURE_NAMES)) and features.dtype == np.float64
    assert np.isfinite(features).all()


def test_fitted_baseline_separates_strong_noise_and_blur(subset, clean):
    train = torch.cat([load_clean_images(str(folder), limit=30) for folder in sorted((subset / "train").iterdir())])
    corrupted = torch.stack(
        [
            CIFAR_CORRUPTIONS[PAIRS[i % len(PAIRS)][0]](image, PAIRS[i % len(PAIRS)][1], seed=i)
            for i, image in enumerate(train)
        ]
    )
    labels = torch.cat([torch.zeros(len(train)), torch.ones(len(train))])
    baseline = HeuristicBaseline().fit(torch.cat([train, corrupted]), labels)

    clean_probability = baseline.corrupted_probability(clean)
    assert clean_probability.shape == (len(clean),)
    for kind in ("gaussian_noise", "gaussian_blur"):
        probability = baseline.corrupted_probability(corrupt_all(clean, kind, 5))
        scores = np.r_[clean_probability, probability]
        truth = np.r_[np.zeros(len(clean)), np.ones(len(clean))]
        assert roc_auc_score(truth, scores) > 0.9, kind
