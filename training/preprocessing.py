"""Decode -> RGB -> resize -> normalise: written once, used by training, evaluation and serving.

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
# Transparent pixels are shown on white, as an image viewer or browser would.
BACKGROUND = (255, 255, 255)


class BadImageError(ValueError):
    """The bytes are not an image we can score; `reason` is a stable machine-readable code."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def decode_image(data: bytes, reduce_to: int | None = None) -> Image.Image:
    """Decode bytes into an upright RGB image, refusing anything that is not a sane image.

    With `reduce_to`, a JPEG is decoded at the smallest DCT scale (1/2, 1/4, 1/8) that still
    covers reduce_to x reduce_to pixels: when only a small resized copy is needed this makes
    decoding a 1024x768 photo about 3x faster, and the resized result differs by ~0.2/255.
    """
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
    if reduce_to:
        image.draft(None, (reduce_to, reduce_to))  # a no-op for formats other than JPEG
    try:
        image.load()  # first frame only for animated images
        image = ImageOps.exif_transpose(image)
        return to_rgb(image)
    except Exception as error:  # truncated or corrupt pixel data
        raise BadImageError("truncated_image", f"the image data is truncated or corrupt: {error}") from error


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


def image_bytes_to_input(data: bytes) -> torch.Tensor:
    """The whole serving path for one image: bytes -> uint8 CHW tensor at input size."""
    return resize_to_input(decode_image(data, reduce_to=INPUT_SIZE))
