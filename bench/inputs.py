"""Encoded test images in every mode and format the service must accept or refuse."""

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def encode(image: Image.Image, fmt: str, **params) -> bytes:
    """Encode a Pillow image to bytes."""
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def sample_rgb(subset: Path) -> Image.Image:
    """A real 32x32 CIFAR-10 test image."""
    return Image.open(sorted((subset / "test").rglob("*.png"))[0]).convert("RGB")


def good_images(subset: Path) -> dict[str, bytes]:
    """One valid image per decoding path: formats, Pillow modes, animation, EXIF rotation."""
    rgb = sample_rgb(subset)
    sixteen_bit = Image.fromarray(np.asarray(rgb.convert("L"), dtype=np.uint16) * 257)
    animated = io.BytesIO()
    rgb.save(animated, format="GIF", save_all=True, append_images=[rgb.rotate(90)], duration=100, loop=0)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees on display
    return {
        "png": encode(rgb, "PNG"),
        "jpeg": encode(rgb, "JPEG", quality=95),
        "rgba": encode(rgb.convert("RGBA"), "PNG"),
        "grayscale": encode(rgb.convert("L"), "PNG"),
        "palette": encode(rgb.convert("P"), "PNG"),
        "16bit": encode(sixteen_bit, "PNG"),
        "la": encode(rgb.convert("LA"), "PNG"),
        "cmyk_jpeg": encode(rgb.convert("CMYK"), "JPEG"),
        "animated_gif": animated.getvalue(),
        "exif_rotated_jpeg": encode(rgb.resize((64, 48)), "JPEG", exif=exif),
        "large_webp": encode(rgb.resize((640, 480)), "WEBP"),
    }


def png_chunk(kind: bytes, data: bytes) -> bytes:
    """One PNG chunk: length, type, data, CRC."""
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def with_declared_size(png: bytes, width: int, height: int) -> bytes:
    """The PNG with its header (IHDR, always the first chunk) declaring width x height instead."""
    header = struct.pack(">II", width, height) + png[24:29]
    return png[:8] + png_chunk(b"IHDR", header) + png[33:]


def png_header_only(width: int, height: int) -> bytes:
    """A tiny PNG that declares width x height pixels (its pixel data is a stub)."""
    chunk = png_chunk
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")
    )


def bad_images(subset: Path) -> dict[str, tuple[bytes, str]]:
    """Inputs that must be refused, with the error type the service names."""
    png = encode(sample_rgb(subset), "PNG")
    jpeg = encode(sample_rgb(subset).resize((256, 256)), "JPEG")
    return {
        "empty": (b"", "empty_body"),
        "random_bytes": (bytes(range(256)) * 4, "not_an_image"),
        "truncated_png": (png[: len(png) // 2], "truncated_image"),
        "truncated_jpeg": (jpeg[: len(jpeg) // 2], "truncated_image"),
        "huge_declared_png": (png_header_only(30000, 30000), "too_many_pixels"),
        "over_limit_png": (png_header_only(8000, 8000), "too_many_pixels"),
        "pdf": (b"%PDF-1.4\n1 0 obj\n<<>>\nendobj\n", "not_an_image"),
    }


def mean_abs_change(clean: torch.Tensor, corrupted: torch.Tensor) -> float:
    """Mean absolute pixel change between two uint8 images, in uint8 levels."""
    return float((clean.float() - corrupted.float()).abs().mean())
