"""Decoded image -> the model's views -> normalised input: written once, used by training, evaluation and serving.

Every image is seen whole, resized to the model's 32x32 input exactly as in training.
Resizing a large photo to 32x32 averages pixel-level damage (sensor noise, JPEG blocks)
away, so images with a shorter side of at least TILED_MIN_SIDE are also seen as tiles:
a grid of 32x32 crops at native resolution and at 1/2 scale (`image_to_views`).

This module is packed into the model archive, so the server runs the very code
the model was trained with. It depends on Pillow, numpy and torchvision only.
"""

import torch
import torchvision.transforms.v2.functional as F
from PIL import Image

from detector.decoding import load_rgb, open_image

INPUT_SIZE = 32
# CIFAR-10 channel statistics; the model was trained with them.
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)
# Large images: also tiles at these downscale factors, TILES_PER_SIDE x TILES_PER_SIDE per factor that fits.
# (1/4 scale was tried and dropped: its tiles of a clean night photo voted 0.59 for noise or compression.)
TILED_MIN_SIDE = 4 * INPUT_SIZE
TILE_SCALES = (1, 2)
TILES_PER_SIDE = 3
JPEG_BLOCK = 8


def resize_to_input(image: Image.Image) -> torch.Tensor:
    """RGB image -> uint8 CHW tensor at the model's input size (no-op resize for 32x32)."""
    tensor = F.pil_to_tensor(image)
    if tuple(tensor.shape[-2:]) == (INPUT_SIZE, INPUT_SIZE):
        return tensor
    return F.resize(tensor, [INPUT_SIZE, INPUT_SIZE], antialias=True)


def normalise(images: torch.Tensor) -> torch.Tensor:
    """uint8 image(s) -> float tensor normalised with the training statistics."""
    return F.normalize(F.to_dtype(images, torch.float32, scale=True), list(MEAN), list(STD))


def tile_origins(length: int, tile: int) -> list[int]:
    """TILES_PER_SIDE evenly spaced starts of `tile`-long spans within [0, length), on the JPEG 8-pixel grid.

    On the grid, a native tile's JPEG blocks sit where they sat in training (images compressed at 32x32).
    """
    step = (length - tile) / (TILES_PER_SIDE - 1)
    return [int(i * step) // JPEG_BLOCK * JPEG_BLOCK for i in range(TILES_PER_SIDE)]


def tiles(image: Image.Image) -> list[torch.Tensor]:
    """32x32 tiles on a grid at each scale of TILE_SCALES whose tiles fit a 2x2 grid without overlap."""
    views = []
    for scale in TILE_SCALES:
        span = INPUT_SIZE * scale  # native pixels under one tile at this scale
        if min(image.size) < 2 * span:
            break
        for top in tile_origins(image.height, span):
            for left in tile_origins(image.width, span):
                crop = image.crop((left, top, left + span, top + span))
                views.append(F.pil_to_tensor(crop.reduce(scale) if scale > 1 else crop))
    return views


def image_to_views(image: Image.Image) -> torch.Tensor:
    """(V, 3, 32, 32) uint8: view 0 is the whole image resized as in training; large images add `tiles`."""
    views = [resize_to_input(image)]
    if min(image.size) >= TILED_MIN_SIDE:
        views += tiles(image)
    return torch.stack(views)


def image_bytes_to_views(data: bytes, tiles: bool = True) -> torch.Tensor:
    """The whole serving path for one image: bytes -> its views (`image_to_views`).

    Small images are decoded at reduced DCT scale (only their 32x32 resize is needed);
    large ones in full, since their tiles look at native pixels. `tiles=False` sees every
    image whole only: about 10x cheaper for large photos, blind to their pixel-level noise.
    """
    image = open_image(data)
    tiled = tiles and min(image.size) >= TILED_MIN_SIDE
    rgb = load_rgb(image, reduce_to=None if tiled else INPUT_SIZE)
    return image_to_views(rgb) if tiled else resize_to_input(rgb).unsqueeze(0)
