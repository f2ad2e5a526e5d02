"""Encoded inputs at the service's limits, shared by `make footprint`, `make loadtest` and the tests.

One image per decoding path (format x Pillow mode: 8-bit, progressive, 16-bit, float, alpha,
palette transparency, animated), made at any size; the same paths at the largest size the decoder
accepts, as small files that decode huge (flat pixels compress to almost nothing); a 20 MP phone-like
JPEG; a body of exactly max_request_size bytes; and a JPEG whose scan ends early.
"""

import io
import math
from collections.abc import Callable

import numpy as np
from PIL import Image

from detector.decoding import MAX_DECODE_BYTES, MAX_PIXELS, decode_bytes, open_image

MIB = 2**20
# config.properties' max_request_size: the largest body TorchServe accepts.
MAX_BODY = 16 * MIB
ORIENTATION = 0x0112


def encode(image: Image.Image, fmt: str, **params) -> bytes:
    """A Pillow image (or its frames, with save_all) as encoded bytes."""
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def textured(width: int, height: int, seed: int = 0) -> Image.Image:
    """An RGB image with detail at every scale, so that encoders cannot squeeze it (photo-like file sizes)."""
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.integers(0, 256, (max(1, height // 8), max(1, width // 8), 3), dtype=np.uint8))
    fine = rng.integers(-24, 25, (height, width, 3), dtype=np.int16)
    base = np.asarray(coarse.resize((width, height), Image.Resampling.BILINEAR), dtype=np.int16)
    return Image.fromarray(np.clip(base + fine, 0, 255).astype(np.uint8))


def rotated_exif() -> Image.Exif:
    exif = Image.Exif()
    exif[ORIENTATION] = 6  # rotate 90 degrees on display
    return exif


# name -> maker(width, height, detailed): one per decoding path. `detailed` False makes flat pixels (tiny files).
MAKERS: dict[str, Callable[[int, int, bool], bytes]] = {}


def maker(name: str) -> Callable:
    def register(function: Callable[[int, int, bool], bytes]) -> Callable:
        MAKERS[name] = function
        return function

    return register


def picture(width: int, height: int, detailed: bool, mode: str = "RGB") -> Image.Image:
    image = textured(width, height) if detailed else Image.new("RGB", (width, height), (90, 120, 150))
    return image if mode == "RGB" else image.convert(mode)


@maker("JPEG, EXIF-rotated")
def _jpeg(width: int, height: int, detailed: bool) -> bytes:
    return encode(picture(width, height, detailed), "JPEG", quality=90, exif=rotated_exif())


@maker("JPEG, progressive")
def _progressive(width: int, height: int, detailed: bool) -> bytes:
    return encode(picture(width, height, detailed), "JPEG", quality=90, progressive=True)


@maker("PNG, RGBA")
def _rgba(width: int, height: int, detailed: bool) -> bytes:
    image = picture(width, height, detailed, "RGBA")
    image.putalpha(128)
    return encode(image, "PNG", compress_level=1)


@maker("PNG, 16-bit grey")
def _sixteen(width: int, height: int, detailed: bool) -> bytes:
    grey = np.asarray(picture(width, height, detailed, "L"), dtype=np.uint16) * 257
    return encode(Image.fromarray(grey), "PNG", compress_level=1)


@maker("PNG, palette + transparency")
def _palette(width: int, height: int, detailed: bool) -> bytes:
    return encode(picture(width, height, detailed, "P"), "PNG", transparency=0, compress_level=1)


@maker("TIFF, float")
def _float(width: int, height: int, detailed: bool) -> bytes:
    grey = np.asarray(picture(width, height, detailed, "L"), dtype=np.float32) * 100.0
    return encode(Image.fromarray(grey), "TIFF", compression="tiff_deflate")


@maker("WebP, RGBA")
def _webp(width: int, height: int, detailed: bool) -> bytes:
    image = picture(width, height, detailed, "RGBA")
    image.putalpha(200)
    return encode(image, "WEBP", quality=80)


@maker("WebP, animated")
def _animated_webp(width: int, height: int, detailed: bool) -> bytes:
    image = picture(width, height, detailed)
    return encode(image, "WEBP", save_all=True, append_images=[image.rotate(180)], quality=60)


@maker("GIF, animated")
def _animated_gif(width: int, height: int, detailed: bool) -> bytes:
    image = picture(width, height, detailed, "P")
    return encode(image, "GIF", save_all=True, append_images=[image.rotate(180)])


def format_cases(width: int, height: int, detailed: bool = True) -> dict[str, bytes]:
    """Every decoding path at one size."""
    return {name: make(width, height, detailed) for name, make in MAKERS.items()}


def largest_side(name: str) -> int:
    """The largest square side of this path that the decoder accepts (pixel limit and decode budget)."""
    small, large = (decode_bytes(open_image(MAKERS[name](side, side, False))) for side in (64, 128))
    per_pixel = (large - small) / (128**2 - 64**2)
    fixed = small - per_pixel * 64**2  # band temporaries, a constant
    side = math.isqrt(min(MAX_PIXELS, int((MAX_DECODE_BYTES - fixed) / per_pixel)))
    while decode_bytes(open_image(MAKERS[name](side, side, False))) > MAX_DECODE_BYTES:
        side -= 8  # rounding
    return side


def huge_decodes() -> dict[str, bytes]:
    """Small files that decode as large as the decoder allows: every path, flat pixels, at its largest side.

    A path whose flat file would still exceed MAX_BODY (GIF: Pillow's LZW barely compresses) is made
    as large as fits in a body instead.
    """
    cases = {}
    for name, make in MAKERS.items():
        side = largest_side(name)
        data = make(side, side, False)
        while len(data) > MAX_BODY:
            side = int(side * math.sqrt(MAX_BODY / len(data)) * 0.98) // 8 * 8
            data = make(side, side, False)
        cases[f"{name} {side}x{side}"] = data
    return cases


def phone_jpeg(megapixels: float = 20.0) -> bytes:
    """A photo-sized JPEG (4:3, detailed, quality 85: ~10 MB at 20 MP, like a phone's)."""
    width = int(math.sqrt(megapixels * 1e6 * 4 / 3))
    return encode(textured(width, width * 3 // 4, seed=1), "JPEG", quality=85)


def max_body() -> bytes:
    """Exactly max_request_size bytes that are not an image (TorchServe reads all of it; the handler refuses it)."""
    return np.random.default_rng(2).integers(0, 256, MAX_BODY, dtype=np.uint8).tobytes()


def short_scan_jpeg(side: int = 7000) -> bytes:
    """A JPEG declaring side x side pixels whose scan ends after 3 KB with an end-of-image marker."""
    return encode(Image.new("RGB", (side, side), (90, 120, 150)), "JPEG", quality=90)[:3400] + b"\xff\xd9"
