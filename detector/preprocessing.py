"""Decode -> RGB -> resize -> normalise: written once, used by training, evaluation and serving.

Every image is seen whole, resized to the model's 32x32 input exactly as in training.
Resizing a large photo to 32x32 averages pixel-level damage (sensor noise, JPEG blocks)
away, so images with a shorter side of at least TILED_MIN_SIDE are also seen as tiles:
a grid of 32x32 crops at native resolution and at 1/2 scale (`image_to_views`).

This module is packed into the model archive, so the server runs the very code
the model was trained with. It depends on Pillow, numpy and torchvision only.
"""

import io

import numpy as np
import torch
import torchvision.transforms.v2.functional as F
from PIL import Image, ImageOps

INPUT_SIZE = 32
# CIFAR-10 channel statistics; the model was trained with them.
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)
# Refuse images declaring more pixels than this before decoding them: 50 MP covers
# current phone cameras, and decoding bigger ones costs hundreds of MB per request.
MAX_PIXELS = 50_000_000
# Formats accepted; everything else is refused before a decoder runs. (Pillow's
# JPEG opener also returns the multi-picture JPEGs many phones write.)
ALLOWED_FORMATS = ("JPEG", "PNG", "GIF", "BMP", "TIFF", "WEBP")
# Large images: also tiles at these downscale factors, TILES_PER_SIDE x TILES_PER_SIDE per factor that fits.
# (1/4 scale was tried and dropped: its tiles of a clean night photo voted 0.59 for noise or compression.)
TILED_MIN_SIDE = 4 * INPUT_SIZE
TILE_SCALES = (1, 2)
TILES_PER_SIDE = 3
JPEG_BLOCK = 8
# Transparent pixels are shown on white, as an image viewer or browser would.
BACKGROUND = (255, 255, 255)


class BadImageError(ValueError):
    """The bytes are not an image we can score; `reason` is a stable machine-readable code."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def open_image(data: bytes) -> Image.Image:
    """Read and check an image's header without decoding its pixels: refuse what is not a sane image."""
    if not data:
        raise BadImageError("empty_body", "the request body is empty; send the image bytes")
    try:
        image = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except Image.DecompressionBombError as error:
        raise BadImageError("too_many_pixels", str(error)) from error
    except Exception as error:  # Pillow raises many types for non-images
        raise BadImageError(
            "not_an_image", f"the body is not a supported image ({', '.join(ALLOWED_FORMATS)})"
        ) from error
    width, height = image.size
    if width * height > MAX_PIXELS:
        raise BadImageError(
            "too_many_pixels", f"image declares {width}x{height} pixels, more than the limit of {MAX_PIXELS}"
        )
    if width == 0 or height == 0:
        raise BadImageError("not_an_image", f"image declares an empty size {width}x{height}")
    return image


def load_rgb(image: Image.Image, reduce_to: int | None = None) -> Image.Image:
    """Decode an opened image's pixels into an upright RGB image.

    With `reduce_to`, a JPEG is decoded at the smallest DCT scale (1/2, 1/4, 1/8) that still
    covers reduce_to x reduce_to pixels: when only a small resized copy is needed this makes
    decoding a 1024x768 photo about 3x faster, and the resized result differs by ~0.2/255.
    """
    if reduce_to:
        image.draft(None, (reduce_to, reduce_to))  # a no-op for formats other than JPEG
    try:
        image.load()  # first frame only for animated images
        image = ImageOps.exif_transpose(image)
        return to_rgb(image)
    except Exception as error:  # truncated or corrupt pixel data
        raise BadImageError("truncated_image", f"the image data is truncated or corrupt: {error}") from error


def decode_image(data: bytes, reduce_to: int | None = None) -> Image.Image:
    """Bytes -> upright RGB image (`open_image`, then `load_rgb`)."""
    return load_rgb(open_image(data), reduce_to)


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB (16-bit and float scaled, alpha composited on white)."""
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        values = np.asarray(image, dtype=np.float64)
        peak = 255.0 if values.max(initial=0) <= 255 else 65535.0
        image = Image.fromarray(np.clip(values * 255.0 / peak, 0, 255).astype(np.uint8))
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*BACKGROUND, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert("RGB")


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
