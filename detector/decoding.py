"""Bytes -> upright 8-bit RGB image, or a refusal naming why: the first step of serving, training and evaluation.

Headers are checked before any pixel is decoded (format allowlist, pixel limit), so a bad or
oversized upload is refused cheaply. Packed into the model archive with the rest of `detector`.
"""

import io

import numpy as np
from PIL import Image, ImageOps

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
