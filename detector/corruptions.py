"""The corruption table: the single definition of what "corrupted" means.

Training, evaluation and the tests import `CORRUPTIONS` from here, so a
severity changed in this file changes all of them at once. Every corruption
works on a uint8 CHW tensor. Spatial parameters are relative to the image's
shorter side (written per 32 px of it, the CIFAR size the table was made for),
so a corruption means the same to the eye on a thumbnail and on a photo.

Severity 1 is deliberately subtle (close to natural variation), severity 5 is
unmistakable. Each kind belongs to a family, the corruption type the model's
second head predicts (`TYPES`, with `CLEAN` first). Parameters per severity 1..5:

| kind             | parameter                               | 1    | 2    | 3    | 4    | 5    |
|------------------|-----------------------------------------|------|------|------|------|------|
| gaussian_noise   | noise std on the [0, 1] scale           | 0.02 | 0.04 | 0.06 | 0.09 | 0.13 |
| gaussian_blur    | blur sigma, px per 32 px of the shorter side | 0.5 | 0.7 | 1.0 | 1.3 | 1.7 |
| jpeg_compression | JPEG quality (lower is worse)           | 55   | 40   | 25   | 15   | 8    |
| brightness       | exposure change in stops, darker or brighter at random | 0.25 | 0.5 | 1.0 | 1.5 | 2.0 |
| occlusion        | fraction of the image covered by one solid rectangle | 0.03 | 0.06 | 0.12 | 0.2 | 0.3 |
"""

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torchvision.transforms.v2.functional as F

SEVERITIES = (1, 2, 3, 4, 5)
CLEAN = "clean"
# The size the spatial parameters are written for: a parameter p means p * (shorter side / REFERENCE_SIDE) pixels.
REFERENCE_SIDE = 32
# A JPEG saved at camera quality (this range, inclusive) is not a corruption: cameras and phones save at
# 90-100, and training re-encodes some clean images this way so that they stay "clean".
CAMERA_JPEG_QUALITY = (90, 100)

Parameter = float | tuple[float, ...]


@dataclass(frozen=True)
class Corruption:
    """One corruption kind: its family, its parameter per severity and how to apply it.

    Used for the training table here and for the evaluation-only held-out table
    (evaluation/heldout.py), so both are applied, seeded and tested the same way.
    """

    kind: str
    family: str
    parameter: str
    values: tuple[Parameter, ...]
    apply: Callable[[torch.Tensor, Any], torch.Tensor]

    def value(self, severity: float) -> Parameter:
        """The parameter for a severity in [1, 5]: the table's row at 1..5, linear in between.

        Training draws severities between the rows, so the model learns every strength
        of a family rather than five recipes; evaluation uses the rows. Only numeric
        parameters can be interpolated.
        """
        if not SEVERITIES[0] <= severity <= SEVERITIES[-1]:
            raise ValueError(f"severity must be within {SEVERITIES[0]}..{SEVERITIES[-1]}, got {severity}")
        if float(severity).is_integer():
            return self.values[int(severity) - 1]
        if not all(isinstance(value, int | float) for value in self.values):
            raise ValueError(f"{self.kind} has tuple parameters: use a severity of 1..5, got {severity}")
        return float(np.interp(severity, SEVERITIES, self.values))

    def __call__(self, image: torch.Tensor, severity: float, seed: int) -> torch.Tensor:
        """This corruption at `severity` on a uint8 (3, H, W) image; the same seed gives the same result."""
        if image.dtype != torch.uint8 or image.ndim != 3 or image.shape[0] != 3:
            raise ValueError(f"expected a uint8 (3, H, W) image, got {image.dtype} {tuple(image.shape)}")
        return apply_seeded(self.apply, image, self.value(severity), seed)


def apply_seeded(
    apply: Callable[[torch.Tensor, Any], torch.Tensor], image: torch.Tensor, value: Any, seed: int
) -> torch.Tensor:
    """`apply(image, value)` under torch's global generator forked and seeded with `seed`.

    The torchvision ops draw from torch's global generator: forking it makes results depend on
    the seed alone (not on what ran before, nor on DataLoader workers) and leaves the caller's
    generator state untouched.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return apply(image, value)


def relative_to_size(image: torch.Tensor, value: float) -> float:
    """A spatial parameter written per REFERENCE_SIDE px of the shorter side, in this image's pixels."""
    return value * min(image.shape[-2:]) / REFERENCE_SIDE


def _gaussian_noise(image: torch.Tensor, sigma: float) -> torch.Tensor:
    noisy = F.gaussian_noise(F.to_dtype(image, torch.float32, scale=True), sigma=sigma, clip=True)
    return F.to_dtype(noisy, torch.uint8, scale=True)


def _gaussian_blur(image: torch.Tensor, sigma: float) -> torch.Tensor:
    sigma = relative_to_size(image, sigma)
    kernel = 2 * math.ceil(3 * sigma) + 1
    return F.gaussian_blur(image, kernel_size=[kernel, kernel], sigma=[sigma, sigma])


def _jpeg(image: torch.Tensor, quality: float) -> torch.Tensor:
    return F.jpeg(image, quality=round(quality))


def _brightness(image: torch.Tensor, stops: float) -> torch.Tensor:
    direction = -1.0 if torch.rand(()) < 0.5 else 1.0
    return F.adjust_brightness(image, 2.0 ** (direction * stops))


def _occlusion(image: torch.Tensor, area_fraction: float) -> torch.Tensor:
    """One solid rectangle of random colour, aspect ratio and position."""
    height, width = image.shape[-2:]
    aspect = math.exp(math.log(2.0) * (2 * torch.rand(()).item() - 1))
    area = area_fraction * height * width
    h = min(height, max(1, round(math.sqrt(area / aspect))))
    w = min(width, max(1, round(math.sqrt(area * aspect))))
    top = int(torch.randint(0, height - h + 1, ()))
    left = int(torch.randint(0, width - w + 1, ()))
    colour = torch.randint(0, 256, (image.shape[0], 1, 1), dtype=torch.uint8)
    return F.erase(image, top, left, h, w, colour)


CORRUPTIONS: dict[str, Corruption] = {
    c.kind: c
    for c in (
        Corruption("gaussian_noise", "noise", "noise std on [0, 1]", (0.02, 0.04, 0.06, 0.09, 0.13), _gaussian_noise),
        Corruption(
            "gaussian_blur",
            "blur",
            "blur sigma (px per 32 px of the shorter side)",
            (0.5, 0.7, 1.0, 1.3, 1.7),
            _gaussian_blur,
        ),
        Corruption("jpeg_compression", "compression", "JPEG quality", (55, 40, 25, 15, 8), _jpeg),
        Corruption("brightness", "brightness", "exposure change (stops, +/-)", (0.25, 0.5, 1.0, 1.5, 2.0), _brightness),
        Corruption("occlusion", "occlusion", "occluded area fraction", (0.03, 0.06, 0.12, 0.2, 0.3), _occlusion),
    )
}
KINDS: tuple[str, ...] = tuple(CORRUPTIONS)
# What the corruption-type head predicts: CLEAN, then each family once, in table order.
TYPES: tuple[str, ...] = (CLEAN, *dict.fromkeys(corruption.family for corruption in CORRUPTIONS.values()))
# A sample's kind: CLEAN or one of KINDS. Datasets and metrics number kinds by their place here (0 is clean).
SAMPLE_KINDS: tuple[str, ...] = (CLEAN, *KINDS)
# The explicit kind -> type mapping: for each of SAMPLE_KINDS, the index in TYPES the type head is trained to say.
KIND_TYPES: tuple[int, ...] = tuple(
    TYPES.index(CLEAN if kind == CLEAN else CORRUPTIONS[kind].family) for kind in SAMPLE_KINDS
)


def corrupt(image: torch.Tensor, kind: str, severity: float, seed: int) -> torch.Tensor:
    """Apply one training corruption at a severity in [1, 5] to a uint8 CHW image (seeded: see `apply_seeded`)."""
    return CORRUPTIONS[kind](image, severity, seed)


def camera_jpeg(image: torch.Tensor, seed: int) -> torch.Tensor:
    """Re-encode a clean image as a camera-quality JPEG (quality drawn from CAMERA_JPEG_QUALITY): still clean."""
    quality = int(np.random.default_rng(seed).integers(CAMERA_JPEG_QUALITY[0], CAMERA_JPEG_QUALITY[1] + 1))
    return F.jpeg(image, quality=quality)
