"""A classic no-reference heuristic baseline to set beside the CNN.

Nine hand-made image-quality features (`FEATURE_NAMES`), each aimed at one kind of corruption, feed a small
gradient-boosted tree classifier that outputs P(corrupted).

Classifier choice, measured on the CIFAR-10 subset with every image used once clean and once corrupted, the
(kind, severity) cycling through all 25 pairs: 2000 train images (every other one of the 4000, 4000 samples)
fitted, the 500 test images (1000 samples) held out; threshold 0.5.

| classifier (features)                                                      | 5-fold CV acc | held-out acc | AUROC |
|----------------------------------------------------------------------------|---------------|--------------|-------|
| StandardScaler + LogisticRegression(balanced) (first 8, raw)               | 0.680         | 0.682        | 0.746 |
| same, + log1p of the three unbounded ones (first 8)                        | 0.701         | 0.695        | 0.769 |
| same, + log(x + 1e-4) of all (first 8)                                     | 0.789         | 0.782        | 0.849 |
| HistGradientBoostingClassifier(100 iter, 15 leaves, balanced) (first 8)    | 0.816         | 0.817        | 0.893 |
| StandardScaler + LogisticRegression(balanced), + log(x + 1e-4) (all 9)     | 0.809         | 0.804        | 0.883 |
| HistGradientBoostingClassifier(100 iter, 15 leaves, balanced) (all 9)      | 0.856         | 0.860        | 0.930 |

The trees won every comparison (and need neither scaling nor log features), so only they are kept. Held out,
they flag 10% of clean images and detect 100% / 100% / 82% / 98% / 100% of noise / blur / JPEG / brightness /
occlusion at severities 3-5.
"""

import numpy as np
import torch
from scipy import ndimage
from skimage.restoration import estimate_sigma
from sklearn.ensemble import HistGradientBoostingClassifier

FEATURE_NAMES: tuple[str, ...] = (
    "laplacian_variance",
    "noise_sigma",
    "blockiness",
    "mean",
    "std",
    "dark_fraction",
    "bright_fraction",
    "flat_fraction",
    "chroma_detail_ratio",
)
_BLOCK = 8
_REC601 = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def _rgb(images: torch.Tensor) -> np.ndarray:
    """uint8 (N, 3, H, W) RGB as float32 in [0, 1]."""
    return images.numpy().astype(np.float32) / 255.0


def luminance(rgb: np.ndarray) -> np.ndarray:
    """Rec. 601 luminance (N, H, W) of float (N, 3, H, W) RGB in [0, 1]."""
    return np.einsum("nchw,c->nhw", rgb, _REC601)


def laplacian_variance(plane: np.ndarray) -> np.ndarray:
    """Variance of the 2-D Laplacian of each (H, W) plane: blur lowers it, noise raises it."""
    return ndimage.laplace(plane, axes=(1, 2)).var(axis=(1, 2))


def noise_sigma(luma: np.ndarray) -> np.ndarray:
    """Wavelet noise standard deviation (MAD of the finest diagonal band): rises with additive noise."""
    # channel_axis=0 makes each image a "channel": one call, one estimate per image.
    return np.asarray(estimate_sigma(luma, channel_axis=0))


def blockiness(luma: np.ndarray) -> np.ndarray:
    """Mean |step| across 8-pixel block boundaries over the mean |step| elsewhere, both directions.

    About 1 for natural images; JPEG's 8x8 block grid raises it.
    """
    at_sum = off_sum = 0.0
    at_count = off_count = 0
    for steps in (np.abs(np.diff(luma, axis=2)), np.abs(np.diff(luma, axis=1)).transpose(0, 2, 1)):
        boundary = np.arange(steps.shape[2]) % _BLOCK == _BLOCK - 1
        at_sum = at_sum + steps[:, :, boundary].sum(axis=(1, 2))
        off_sum = off_sum + steps[:, :, ~boundary].sum(axis=(1, 2))
        at_count += steps.shape[1] * int(boundary.sum())
        off_count += steps.shape[1] * int((~boundary).sum())
    return (at_sum / max(at_count, 1)) / (off_sum / off_count + 1e-6)


def brightness_statistics(luma: np.ndarray) -> np.ndarray:
    """Luminance mean, std, fraction <= 2/255 and fraction >= 253/255, (N, 4): exposure changes shift and clip."""
    return np.stack(
        [
            luma.mean(axis=(1, 2)),
            luma.std(axis=(1, 2)),
            (luma <= 2 / 255).mean(axis=(1, 2)),
            (luma >= 253 / 255).mean(axis=(1, 2)),
        ],
        axis=1,
    )


def flat_fraction(images: torch.Tensor) -> np.ndarray:
    """Fraction of 2x2 neighbourhoods with identical RGB pixels: solid occlusion rectangles raise it."""
    x = images.numpy()
    corner = x[:, :, 1:, 1:]
    same = (corner == x[:, :, :-1, 1:]) & (corner == x[:, :, 1:, :-1]) & (corner == x[:, :, :-1, :-1])
    return same.all(axis=1).mean(axis=(1, 2))


def chroma_detail_ratio(rgb: np.ndarray, luma: np.ndarray) -> np.ndarray:
    """Laplacian variance of the colour differences (B-Y, R-Y) over that of luminance.

    Per-channel (colour) noise raises it; JPEG's chroma subsampling lowers it.
    """
    chroma = laplacian_variance(rgb[:, 2] - luma) + laplacian_variance(rgb[:, 0] - luma)
    return chroma / (laplacian_variance(luma) + 1e-6)


def image_features(images: torch.Tensor) -> np.ndarray:
    """The `FEATURE_NAMES` of uint8 (N, 3, H, W) RGB images, as a float64 (N, F) array."""
    rgb = _rgb(images)
    luma = luminance(rgb)
    columns = [
        laplacian_variance(luma)[:, None],
        noise_sigma(luma)[:, None],
        blockiness(luma)[:, None],
        brightness_statistics(luma),
        flat_fraction(images)[:, None],
        chroma_detail_ratio(rgb, luma)[:, None],
    ]
    return np.hstack(columns).astype(np.float64)


class HeuristicBaseline:
    """Clean (0) vs corrupted (1) from `image_features` with a small gradient-boosted tree classifier."""

    def __init__(self) -> None:
        self.classifier = HistGradientBoostingClassifier(
            max_iter=100, max_leaf_nodes=15, class_weight="balanced", random_state=0
        )

    def fit(self, images: torch.Tensor, labels: np.ndarray | torch.Tensor) -> "HeuristicBaseline":
        """Fit on uint8 (N, 3, H, W) images with labels 0 clean / 1 corrupted."""
        return self.fit_features(image_features(images), labels)

    def fit_features(self, features: np.ndarray, labels: np.ndarray | torch.Tensor) -> "HeuristicBaseline":
        """Fit on precomputed `image_features` (images of different sizes each give their own row)."""
        self.classifier.fit(features, np.asarray(labels).astype(int))
        return self

    def corrupted_probability(self, images: torch.Tensor) -> np.ndarray:
        """P(corrupted) for each uint8 (N, 3, H, W) image, shape (N,)."""
        return self.classifier.predict_proba(image_features(images))[:, 1]
