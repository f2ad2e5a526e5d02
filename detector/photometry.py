"""Scene statistics of a whole view: what its light and colour look like as numbers, beside the network's features.

Exposure, contrast and colour damage are a matter of degree, and a convolutional trunk pooled to one vector
keeps only a blurred notion of a histogram's ends: a night scene and a photo three stops under read alike.
These statistics state the ends exactly (luminance percentiles, the shares clipped at black and white, the
spread of saturation, colour cast, gradient energy at two scales); the whole-view head reads them beside the
trunk's features, so it can learn which scenes are legitimately dark, flat or colourful (clean low-key and
high-key photos are in training) and which are damaged. Computed from the normalised view inside the model, so
training, calibration, serving and explanations see the same numbers.
"""

import torch
import torch.nn.functional as nnf

from detector.backbones import LITE_MEAN, LITE_STD

# Luminance percentiles (the histogram's shape and both ends).
PERCENTILES = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)
# Below / above these (on 0..1) a pixel counts as clipped to black / white.
CLIP_LOW, CLIP_HIGH = 2 / 255, 253 / 255
# Rec. 709 luma weights.
LUMA = (0.2126, 0.7152, 0.0722)
STATISTICS = len(PERCENTILES) + 2 + 1 + 2 + 2 + 2


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """Normalised (N, 3, H, W) views back to RGB on 0..1."""
    mean = torch.tensor(LITE_MEAN, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
    std = torch.tensor(LITE_STD, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
    return (images * std + mean).clamp(0, 1)


def gradient_energy(luma: torch.Tensor) -> torch.Tensor:
    """Mean absolute horizontal + vertical difference of (N, 1, H, W) luminance, per image."""
    dx = (luma[..., :, 1:] - luma[..., :, :-1]).abs().mean(dim=(1, 2, 3))
    dy = (luma[..., 1:, :] - luma[..., :-1, :]).abs().mean(dim=(1, 2, 3))
    return dx + dy


def scene_statistics(images: torch.Tensor) -> torch.Tensor:
    """(N, STATISTICS) scene statistics of normalised whole views, each scaled to about -2..2."""
    rgb = to_unit(images.float())
    weights = torch.tensor(LUMA, device=rgb.device).view(1, 3, 1, 1)
    luma = (rgb * weights).sum(dim=1, keepdim=True)
    flat = luma.flatten(1)
    percentiles = torch.quantile(flat, torch.tensor(PERCENTILES, device=rgb.device), dim=1).T
    clipped = torch.stack([(flat <= CLIP_LOW).float().mean(1), (flat >= CLIP_HIGH).float().mean(1)], dim=1)
    chroma = (rgb.amax(dim=1) - rgb.amin(dim=1)).flatten(1)
    means = rgb.mean(dim=(2, 3))
    cast = torch.stack([means[:, 0] - means[:, 1], means[:, 2] - means[:, 1]], dim=1)
    half = nnf.avg_pool2d(luma, 2, ceil_mode=True)
    energy = torch.stack([gradient_energy(luma), gradient_energy(half)], dim=1)
    return torch.cat(
        [
            (percentiles - 0.5) * 4,
            clipped * 4,
            flat.std(dim=1, keepdim=True) * 8,
            torch.stack([chroma.mean(1), chroma.std(1)], dim=1) * 4,
            cast * 8,
            torch.log(energy + 1e-3) / 2 + 1.5,
        ],
        dim=1,
    )
