"""Container walks before Pillow (detector/structure.py): costly bodies refused in bounded work, PNG rows checked,
real files of every format untouched."""

import struct
import time
import zlib

import numpy as np
import pytest
from PIL import Image

from bench.attacks import many_markers_jpeg, repeated_scan_jpeg, short_png
from bench.inputs import png_chunk, with_declared_size
from bench.limits import MAKERS, encode, phone_jpeg, textured
from detector.decoding import BadImageError, decode_image
from detector.structure import (
    ADAM7,
    MAX_GIF_BLOCKS,
    MAX_JPEG_SCANS,
    MAX_JPEG_SEGMENTS,
    PNG_FREE_CHUNKS,
    PNG_SIGNATURE,
    png_data_bytes,
)

BODY = 16 * 2**20


def refusal(data: bytes) -> str:
    with pytest.raises(BadImageError) as refused:
        decode_image(data)
    return refused.value.reason


def costly_bodies() -> dict[str, bytes]:
    """16 MiB bodies of segments Pillow would read one by one in Python (5-16 s each before these walks)."""
    jpeg, png = encode(textured(64, 48), "JPEG"), encode(textured(64, 48), "PNG")
    gif = encode(textured(64, 48).convert("P"), "GIF")
    table = 13 + 768  # GIF header and global colour table
    return {
        "JPEG APP1 segments": many_markers_jpeg(),
        "JPEG fill bytes": jpeg[:2] + b"\xff" * (BODY - len(jpeg)) + jpeg[2:],
        "JPEG repeated scans": repeated_scan_jpeg(),
        "PNG empty chunks": png[:33] + png_chunk(b"abCd", b"") * (BODY // 12) + png[33:],
        "GIF comment blocks": gif[:table] + b"\x21\xfe\x01a\x00" * (BODY // 5) + gif[table:],
        "GIF comment sub-blocks": gif[:table] + b"\x21\xfe" + b"\x01a" * (BODY // 2) + b"\x00" + gif[table:],
    }


@pytest.mark.parametrize("name", list(costly_bodies()))
def test_bodies_of_many_segments_are_refused_in_bounded_work(name):
    data = costly_bodies()[name]
    started = time.process_time()
    assert refusal(data) in ("too_many_segments", "too_many_scans")
    # CPU time, not a benchmark: the walk stops at its cap, where Pillow took 5-16 s over the whole body.
    assert time.process_time() - started < 1.0


def test_a_png_whose_data_ends_early_is_refused_as_truncated():
    assert refusal(short_png()) == "truncated_image"
    assert refusal(short_png(side=300, rows=299)) == "truncated_image"
    assert decode_image(short_png(side=300, rows=300)).size == (300, 300)


@pytest.mark.parametrize("mode", ["1", "L", "P", "RGB", "RGBA", "LA", "I;16"])
def test_the_rows_a_png_needs_are_counted_as_libpng_writes_them(mode):
    """Every colour type and depth: real files are never taken for truncated."""
    image = Image.new("I;16", (37, 23), 300) if mode == "I;16" else textured(37, 23).convert(mode)
    assert decode_image(encode(image, "PNG")).size == (37, 23)


def interlaced_png(pixels: np.ndarray) -> bytes:
    """An 8-bit RGB PNG with Adam7 interlacing (Pillow reads such files but does not write them)."""
    height, width, _ = pixels.shape
    rows = b"".join(b"\0" + row.tobytes() for x0, y0, dx, dy in ADAM7 for row in pixels[y0::dy, x0::dx] if row.size)
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 1)
    return (PNG_SIGNATURE + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", zlib.compress(rows))
            + png_chunk(b"IEND", b""))  # fmt: skip


@pytest.mark.parametrize("size", [(1, 1), (5, 3), (37, 23), (64, 64)])
def test_interlaced_pngs_count_every_pass(size):
    pixels = np.asarray(textured(*size))
    assert np.array_equal(np.asarray(decode_image(interlaced_png(pixels))), pixels)
    cut = with_declared_size(interlaced_png(pixels[: max(1, size[1] - 1)]), *size)  # a row fewer than it says
    if size[1] > 1:
        assert refusal(cut) == "truncated_image"


def test_png_row_bytes():
    assert png_data_bytes(10, 2, 8, 2, 0) == 2 * (1 + 30)
    assert png_data_bytes(10, 2, 1, 0, 0) == 2 * (1 + 2)
    assert png_data_bytes(1, 1, 8, 6, 1) == 1 + 4  # Adam7: only the first pass holds a pixel


def test_real_files_stay_far_below_the_caps():
    for name, make in MAKERS.items():
        decode_image(make(640, 480, True)), name
    decode_image(phone_jpeg(12))
    progressive = encode(textured(640, 480), "JPEG", progressive=True, quality=90)
    assert progressive.count(b"\xff\xda") * 4 < MAX_JPEG_SCANS
    assert MAX_JPEG_SEGMENTS >= 1024 and PNG_FREE_CHUNKS >= 1024 and MAX_GIF_BLOCKS >= 4096


def gif_cut_short(side: int = 300) -> bytes:
    """A GIF whose image data stops, properly terminated, after a quarter of its sub-blocks."""
    data = encode(textured(side, side).convert("P"), "GIF")
    position = 13 + 768  # header and global colour table
    while data[position] == 0x21:  # extensions: label, then sub-blocks up to an empty one
        position += 2
        while data[position]:
            position += 1 + data[position]
        position += 1
    blocks, position = [], position + 11  # image descriptor and LZW code size
    while data[position]:
        blocks.append(position)
        position += 1 + data[position]
    return data[: blocks[len(blocks) // 4]] + b"\x00\x3b"


@pytest.mark.parametrize("fmt", ["GIF", "TIFF", "TIFF deflate", "BMP", "WEBP"])
def test_other_formats_whose_data_ends_early_are_refused(fmt):
    """Pillow and its codecs refuse these themselves: pinned here beside the PNG and JPEG checks."""
    if fmt == "GIF":
        data = gif_cut_short()
    else:
        name, *compression = fmt.split()
        data = encode(textured(300, 300), name, **({"compression": "tiff_deflate"} if compression else {}))
        data = data[: len(data) // 2]
    assert refusal(data) in ("truncated_image", "not_an_image")
