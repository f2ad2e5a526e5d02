"""The corruption table: the single definition of what "corrupted" means.

Training, evaluation and the tests import `CORRUPTIONS` from here, so a
severity changed in this file changes all of them at once. Every corruption
works on a uint8 CHW tensor at the model's input size (after
`preprocessing.resize_to_input`), which is exactly what the model sees.

Severity 1 is deliberately subtle (close to natural variation), severity 5 is
unmistakable. Each kind belongs to a family, the corruption type the model's
second head predicts (`TYPES`). Parameters per severity 1..5:

| kind             | parameter                               | 1    | 2    | 3    | 4    | 5    |
|------------------|-----------------------------------------|------|------|------|------|------|
| gaussian_noise   | noise std on the [0, 1] scale           | 0.02 | 0.04 | 0.06 | 0.09 | 0.13 |
| gaussian_blur    | blur sigma in pixels                    | 0.5  | 0.7  | 1.0  | 1.3  | 1.7  |
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


@dataclass(frozen=True)
class Corruption:
    """One corruption family: its parameter per severity and how to apply it."""

    kind: str
    family: str
    parameter: str
    values: tuple[float, ...]
    apply: Callable[[torch.Tensor, float], torch.Tensor]

    def value(self, severity: float) -> float:
        """The parameter for a severity in [1, 5]: the table's value at 1..5, linear in between.

        Training draws severities between the table's rows, so the model learns every
        strength of a family rather than five recipes; evaluation uses the rows.
        """
        if not SEVERITIES[0] <= severity <= SEVERITIES[-1]:
            raise ValueError(f"severity must be within {SEVERITIES[0]}..{SEVERITIES[-1]}, got {severity}")
        return float(np.interp(severity, SEVERITIES, self.values))


def _gaussian_noise(image: torch.Tensor, sigma: float) -> torch.Tensor:
    noisy = F.gaussian_noise(F.to_dtype(image, torch.float32, scale=True), sigma=sigma, clip=True)
    return F.to_dtype(noisy, torch.uint8, scale=True)


def _gaussian_blur(image: torch.Tensor, sigma: float) -> torch.Tensor:
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
        Corruption("gaussian_blur", "blur", "blur sigma (px)", (0.5, 0.7, 1.0, 1.3, 1.7), _gaussian_blur),
        Corruption("jpeg_compression", "compression", "JPEG quality", (55, 40, 25, 15, 8), _jpeg),
        Corruption("brightness", "brightness", "exposure change (stops, +/-)", (0.25, 0.5, 1.0, 1.5, 2.0), _brightness),
        Corruption("occlusion", "occlusion", "occluded area fraction", (0.03, 0.06, 0.12, 0.2, 0.3), _occlusion),
    )
}
KINDS: tuple[str, ...] = tuple(CORRUPTIONS)
# A JPEG at camera quality (this range) is not a corruption: training re-encodes some clean images with it.
CAMERA_JPEG_QUALITY = (90, 100)
# What the corruption-type head predicts: "clean", then each kind's family in table order.
TYPES: tuple[str, ...] = ("clean", *(corruption.family for corruption in CORRUPTIONS.values()))


def corrupt(image: torch.Tensor, kind: str, severity: float, seed: int) -> torch.Tensor:
    """Apply one corruption at a severity in [1, 5] to a uint8 CHW image; the same seed gives the same result.

    The torchvision ops draw from torch's global generator, so it is forked and
    seeded here: results do not depend on what ran before or on DataLoader workers.
    """
    corruption = CORRUPTIONS[kind]
    return apply_seeded(corruption.apply, image, corruption.value(severity), seed)


def apply_seeded(
    apply: Callable[[torch.Tensor, Any], torch.Tensor], image: torch.Tensor, value: Any, seed: int
) -> torch.Tensor:
    """`apply(image, value)` under torch's global generator forked and seeded with `seed`.

    The same seed gives the same result, and the caller's generator state is left untouched.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return apply(image, value)


def camera_jpeg(image: torch.Tensor, seed: int) -> torch.Tensor:
    """Re-encode a clean image as a camera-quality JPEG (quality drawn from CAMERA_JPEG_QUALITY): still clean."""
    quality = int(np.random.default_rng(seed).integers(CAMERA_JPEG_QUALITY[0], CAMERA_JPEG_QUALITY[1] + 1))
    return F.jpeg(image, quality=quality)
