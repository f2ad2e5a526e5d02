"""Walks of an image file's container before Pillow parses it: bounded work for any body, and data that ends early.

Pillow reads each JPEG marker segment, PNG chunk and GIF block in Python, a few microseconds each, so a
16 MiB body of four-byte JPEG markers, twelve-byte PNG chunks or empty GIF comment blocks held a worker for
5-16 s before a pixel was decoded (and took hundreds of MB to hold the segments). A progressive JPEG may
repeat a short scan over every block of the image until the body ends: libjpeg decodes each one, about
0.75 ms per scan at 50 MP. These walks count the segments, blocks and scans with C-speed searches or a
loop that stops at the cap, and refuse a body over the caps with a typed error before Pillow sees it.

Real files stay far below the caps: a camera JPEG has 10-30 segments before its first scan and at most
a few dozen scans (libjpeg's progressive script has 10, mozjpeg's a few more, an embedded thumbnail its
own); a PNG writer splits the image data into chunks of 8 KiB or more (libpng), and keeps its
metadata in a few chunks; a GIF has a handful of extension blocks before its first image.

The PNG walk also checks that the compressed data inflates to every row the header declares: zlib can
end its stream early and Pillow then returns the missing rows as black without a word, so a 2 KB file
declaring 7071x7071 pixels was scored instead of refused as truncated.
"""

import math
import struct
import zlib
from collections.abc import Iterator

# Marker segments (and fill bytes) a JPEG may have before its first scan.
MAX_JPEG_SEGMENTS = 1024
# Scans a JPEG body may hold, embedded thumbnails and the pictures of a multi-picture file included.
MAX_JPEG_SCANS = 64
# PNG chunks: this many, plus one for every MIN_PNG_CHUNK_BYTES of body (libpng writes 8 KiB data chunks).
PNG_FREE_CHUNKS = 1024
MIN_PNG_CHUNK_BYTES = 2048
# GIF blocks and sub-blocks before the first image: extensions (loop count, comments, XMP) are a few.
MAX_GIF_BLOCKS = 4096
# Inflating a PNG's data to count its rows holds at most this much of it at a time.
INFLATE_STEP = 1 << 20
INPUT_STEP = 1 << 16

JPEG_START, SCAN_MARKER = b"\xff\xd8", b"\xff\xda"
# JPEG frame markers; those of arithmetic-coded images may legally spend under one bit per block.
ARITHMETIC_JPEG = {0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
JPEG_FRAMES = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7} | ARITHMETIC_JPEG
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
GIF_SIGNATURES = (b"GIF87a", b"GIF89a")
# Channels per PNG colour type: grey, RGB, palette, grey + alpha, RGBA.
PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
# Adam7 passes: (first column, first row, column step, row step).
ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))


class StructureError(ValueError):
    """The body's container breaks a cap or ends early; `reason` is the refusal type the service answers."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def check_structure(data: bytes) -> None:
    """Refuse a body whose container would cost unbounded work to parse (before Pillow reads it)."""
    if data.startswith(JPEG_START):
        check_jpeg(data)
    elif data.startswith(PNG_SIGNATURE):
        check_png(data)
    elif data[:6] in GIF_SIGNATURES:
        check_gif(data)


def check_jpeg(data: bytes) -> None:
    """Cap the scans in the whole body, and the marker segments before the first scan (jpeg_scan_start)."""
    # 0xFF is stuffed in entropy-coded data, so FF DA starts a scan (or an embedded thumbnail's, counted too).
    scans = data.count(SCAN_MARKER)
    if scans > MAX_JPEG_SCANS:
        raise StructureError("too_many_scans", f"the JPEG holds {scans} scans, more than the limit of {MAX_JPEG_SCANS}")
    jpeg_scan_start(data)


def jpeg_scan_start(data: bytes) -> tuple[int, int] | None:
    """(frame marker, offset of the first scan's data) from a JPEG's marker segments; None if not found.

    Refuses more than MAX_JPEG_SEGMENTS segments (fill bytes included) before the first scan.
    """
    position, frame = 2, None
    for _ in range(MAX_JPEG_SEGMENTS):
        if position + 4 > len(data) or data[position] != 0xFF:
            return None
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        length = int.from_bytes(data[position + 2 : position + 4], "big")
        if marker in JPEG_FRAMES and frame is None:
            frame = marker
        if marker == SCAN_MARKER[1]:
            return (frame, position + 2 + length) if frame is not None else None
        position += 2 + length
    if position + 4 > len(data) or data[position] != 0xFF:
        return None
    raise StructureError(
        "too_many_segments", f"the JPEG has more than {MAX_JPEG_SEGMENTS} marker segments before its image data"
    )


def png_chunks(data: bytes) -> Iterator[tuple[bytes, memoryview]]:
    """(type, data) of each PNG chunk up to IEND, refusing more than the cap for the body's length."""
    limit = PNG_FREE_CHUNKS + len(data) // MIN_PNG_CHUNK_BYTES
    view, position = memoryview(data), len(PNG_SIGNATURE)
    for _ in range(limit):
        if position + 8 > len(data):
            return
        length, kind = struct.unpack(">I4s", data[position : position + 8])
        yield kind, view[position + 8 : position + 8 + length]
        if kind == b"IEND":
            return
        position += 12 + length
    if position + 8 <= len(data):
        raise StructureError("too_many_segments", f"the PNG has more than {limit} chunks for its {len(data)} bytes")


def check_png(data: bytes) -> None:
    """Cap the chunks (Pillow reads each in Python)."""
    for _ in png_chunks(data):
        pass


def check_png_rows(data: bytes) -> None:
    """Refuse PNG image data that inflates to fewer bytes than the header's rows need.

    Runs after the pixel and memory limits: inflating costs about as much as decoding.
    """
    header, inflater, inflated = None, zlib.decompressobj(), 0
    for kind, body in png_chunks(data):
        if kind == b"IHDR" and len(body) >= 13:
            header = struct.unpack(">IIBBBBB", body[:13])
        elif kind == b"IDAT":
            inflated += _inflate(inflater, body)
    if header is None or not inflated:  # no data at all: Pillow refuses it itself
        return
    width, height, depth, colour, _, _, interlace = header
    needed = png_data_bytes(width, height, depth, colour, interlace)
    if inflated < needed:
        raise StructureError(
            "truncated_image",
            f"the image data is truncated: a {width}x{height} PNG needs {needed} bytes of rows, its data holds "
            f"{inflated}",
        )


def _inflate(inflater: "zlib._Decompress", compressed: memoryview) -> int:
    """Bytes `compressed` inflates to, fed in INPUT_STEP slices and taken out INFLATE_STEP at a time (so neither
    the output nor the input's unconsumed tail is ever copied whole); 0 past the stream's end."""
    total = 0
    try:
        for start in range(0, len(compressed), INPUT_STEP):
            pending = compressed[start : start + INPUT_STEP]
            while pending and not inflater.eof:
                total += len(inflater.decompress(pending, INFLATE_STEP))
                pending = inflater.unconsumed_tail
    except zlib.error:
        return total  # corrupt data: the missing rows make it "truncated"
    return total


def png_data_bytes(width: int, height: int, depth: int, colour: int, interlace: int) -> int:
    """Bytes of filtered rows a PNG of this header inflates to (a filter byte per row, per Adam7 pass)."""
    bits = depth * PNG_CHANNELS.get(colour, 4)
    passes = ADAM7 if interlace == 1 else ((0, 0, 1, 1),)
    total = 0
    for x0, y0, dx, dy in passes:
        columns, rows = math.ceil(max(0, width - x0) / dx), math.ceil(max(0, height - y0) / dy)
        if columns and rows:
            total += rows * (1 + math.ceil(columns * bits / 8))
    return total


def check_gif(data: bytes) -> None:
    """Cap the blocks and sub-blocks before the first image (Pillow walks them one by one)."""
    position = 13
    flags = data[10] if len(data) > 10 else 0
    if flags & 0x80:  # global colour table
        position += 3 << ((flags & 7) + 1)
    blocks = 0
    while position < len(data) and data[position] == 0x21:  # an extension: label, then sub-blocks
        position += 2
        while position < len(data):
            blocks += 1
            if blocks > MAX_GIF_BLOCKS:
                raise StructureError(
                    "too_many_segments", f"the GIF has more than {MAX_GIF_BLOCKS} blocks before its first image"
                )
            size = data[position]
            position += 1 + size
            if size == 0:
                break
