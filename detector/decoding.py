"""Bytes -> upright 8-bit RGB image, or a refusal naming why: the first step of serving, training and evaluation.

Headers are checked before any pixel is decoded (the container's segments, scans and PNG rows:
detector.structure; format allowlist, pixel limit, the memory the decode will take, JPEG scans too
short for their declared size), so a bad, oversized or costly upload is
refused cheaply. Conversions to RGB work in bands of rows, so decoding one image never needs more
than `decode_bytes` of it: the decoded buffer plus the RGB result. Packed into the model archive
with the rest of `detector`.
"""

import functools
import io
import math
from collections.abc import Callable, Iterator, Sequence

import numpy as np
from PIL import Image, ImageFile, ImageOps
from turbojpeg import TJPF_RGB, TurboJPEG

from detector.structure import ARITHMETIC_JPEG, StructureError, check_png_rows, check_structure, jpeg_scan_start

# Refuse images declaring more pixels than this before decoding them: 50 MP covers
# current phone cameras, and decoding bigger ones costs hundreds of MB per request.
MAX_PIXELS = 50_000_000
# Bytes Pillow stores per pixel, by mode; every other mode (RGB included, padded to 4) takes 4.
STORED_BYTES = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16L": 2, "I;16B": 2, "I;16N": 2}
DEFAULT_STORED_BYTES = 4
# Working memory some decoders need per pixel beside the image buffer: libwebp's animation decoder
# (Pillow's reader for every WebP) keeps two RGBA canvases and hands Pillow a third copy (measured:
# 16 bytes per pixel for an RGBA WebP); progressive JPEGs keep every DCT coefficient (2 bytes each:
# one per pixel of each component, fewer for subsampled chroma).
DECODER_BYTES = {"WEBP": 12}
COEFFICIENT_BYTES = 2
ORIENTATION = 0x0112  # EXIF tag: 2..8 mean the image is stored mirrored or rotated
# The RGB result (Pillow pads RGB pixels to 4 bytes).
RGB_BYTES = 4
# Refuse images whose decode would take more than this: 8 bytes per pixel at the pixel limit, what a
# 50 MP RGB JPEG with an EXIF rotation takes (decoded buffer + rotated copy). Float, 16-bit and
# transparent images fit the same budget because they are converted in bands.
MAX_DECODE_BYTES = 8 * MAX_PIXELS
# Conversions to RGB run over bands of about this many pixels: whatever the image's size, their
# temporaries (the band cropped, as float32, as 8-bit, as RGB) stay under BAND_BYTES.
BAND_PIXELS = 1 << 20
BAND_BYTES = 20 * BAND_PIXELS
# Formats accepted; everything else is refused before a decoder runs. (Pillow's
# JPEG opener also returns the multi-picture JPEGs many phones write.)
ALLOWED_FORMATS = ("JPEG", "PNG", "GIF", "BMP", "TIFF", "WEBP")
# Transparent pixels are shown on white, as an image viewer or browser would.
BACKGROUND = (255, 255, 255)
HIGH_BIT_DEPTH = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")
ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")


class BadImageError(ValueError):
    """The bytes are not an image we can score; `reason` is a stable machine-readable code."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def decode_bytes(image: Image.Image) -> int:
    """Peak bytes that decoding an opened image to RGB takes, from its header alone.

    The largest of: decoding (buffer + the decoder's own working memory), converting to RGB in
    bands (buffer + result) and an EXIF rotation (buffer + rotated copy). Animated images count
    one frame: only the first is decoded.
    """
    stored = STORED_BYTES.get(image.mode, DEFAULT_STORED_BYTES)
    working = DECODER_BYTES.get(image.format or "", 0)
    if image.format == "JPEG" and image.info.get("progressive"):
        working = progressive_jpeg_bytes(image)
    rotated = stored if may_be_rotated(image) else 0
    converted = 0 if image.mode == "RGB" else RGB_BYTES
    per_pixel = stored + max(working, rotated, converted)
    return math.ceil(image.width * image.height * per_pixel) + (BAND_BYTES if converted else 0)


def may_be_rotated(image: Image.Image) -> bool:
    """Whether the EXIF orientation asks for a rotated copy, from what the header already holds.

    Never `getexif()` here: for a PNG without an early eXIf chunk it decodes the whole image to look
    for a late one. Such a PNG counts as rotated; JPEG, WebP and TIFF carry their EXIF up front.
    """
    if image.format == "TIFF":
        return image.getexif().get(ORIENTATION, 1) != 1  # TIFF tags are read with the header
    raw = image.info.get("exif")
    if not raw:
        return image.format == "PNG"
    exif = Image.Exif()
    exif.load(raw)
    return exif.get(ORIENTATION, 1) != 1


def progressive_jpeg_bytes(image: Image.Image) -> float:
    """Bytes per pixel of a JPEG's coefficient buffer (what a progressive decode or a lossless transform keeps):
    2 per coefficient, per component's sampling."""
    layers = getattr(image, "layer", None) or [(0, 1, 1, 0)] * 4
    most_h = max(h for _, h, _, _ in layers)
    most_v = max(v for _, _, v, _ in layers)
    return COEFFICIENT_BYTES * sum(h * v / (most_h * most_v) for _, h, v, _ in layers)


def open_image(data: bytes) -> Image.Image:
    """Read and check an image's header without decoding its pixels: refuse what is not a sane image."""
    if not data:
        raise BadImageError("empty_body", "the request body is empty; send the image bytes")
    refuse_structure(check_structure, data)
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
    needed = decode_bytes(image)
    if needed > MAX_DECODE_BYTES:
        raise BadImageError(
            "too_many_pixels",
            f"a {width}x{height} {image.format} image in mode {image.mode} needs {needed // 2**20} MiB to decode, "
            f"more than the limit of {MAX_DECODE_BYTES // 2**20} MiB",
        )
    if image.format == "JPEG":
        check_jpeg_scan(image, data)
    if image.format == "PNG":
        refuse_structure(check_png_rows, data)
    return image


def refuse_structure(check: Callable[[bytes], None], data: bytes) -> None:
    """Run one of detector.structure's checks, its refusal as a BadImageError of the same reason."""
    try:
        check(data)
    except StructureError as error:
        raise BadImageError(error.reason, str(error)) from error


def check_jpeg_scan(image: Image.Image, data: bytes) -> None:
    """Refuse a JPEG whose data is too short to hold the blocks its header declares.

    libjpeg fills whatever a scan lacks with grey and only warns, so a 3 KB file declaring
    7000x7000 would decode (slowly, in hundreds of MB) to a grey picture. Huffman coding spends
    at least one bit on every 8x8 block of every component (a DC code), so shorter data cannot
    be a whole image. Arithmetic-coded JPEGs can legally be smaller and are not checked.
    """
    found = jpeg_scan_start(data)
    layers = getattr(image, "layer", None)
    if found is None or not layers:
        return  # Pillow decides (and refuses) what the marker walk cannot read
    frame, scan = found
    if frame in ARITHMETIC_JPEG:
        return
    most_h = max(h for _, h, _, _ in layers)
    most_v = max(v for _, _, v, _ in layers)
    blocks = sum(
        math.ceil(math.ceil(image.width * h / most_h) / 8) * math.ceil(math.ceil(image.height * v / most_v) / 8)
        for _, h, v, _ in layers
    )
    if (len(data) - scan) * 8 < blocks:
        raise BadImageError(
            "truncated_image",
            f"the image data is truncated: a {image.width}x{image.height} JPEG needs at least {blocks // 8} bytes "
            f"of scan data, the body has {len(data) - scan}",
        )


def load_rgb(image: Image.Image, reduce_to: int | tuple[int, int] | None = None) -> Image.Image:
    """Decode an opened image's pixels into an upright RGB image.

    With `reduce_to` (a size, or a side for a square), a JPEG is decoded at the smallest DCT scale
    (1/2, 1/4, 1/8) that still covers it: when only a small resized copy is needed this makes
    decoding a 1024x768 photo about 3x faster, and the resized result differs by ~0.2/255.
    Truncated data raises here: ImageFile.LOAD_TRUNCATED_IMAGES must stay False (checked).
    """
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        raise RuntimeError("PIL.ImageFile.LOAD_TRUNCATED_IMAGES is on: truncated images would decode silently")
    if reduce_to:
        size = (reduce_to, reduce_to) if isinstance(reduce_to, int) else reduce_to
        image.draft(None, size)  # a no-op for formats other than JPEG
    try:
        image.load()  # first frame only for animated images
        ImageOps.exif_transpose(image, in_place=True)
        return to_rgb(image)
    except Exception as error:  # truncated or corrupt pixel data
        raise BadImageError("truncated_image", f"the image data is truncated or corrupt: {error}") from error


def decode_image(data: bytes, reduce_to: int | tuple[int, int] | None = None) -> Image.Image:
    """Bytes -> upright RGB image (`open_image`, then `load_rgb`)."""
    return load_rgb(open_image(data), reduce_to)


def dct_scale(image: Image.Image, size: tuple[int, int]) -> int:
    """The factor (1, 2, 4 or 8) libjpeg's DCT scaling would shrink an opened JPEG by, still covering `size`
    (as `load_rgb(image, size)` decodes it); 1 for every other format."""
    if image.format != "JPEG":
        return 1
    most = min(image.width // max(1, size[0]), image.height // max(1, size[1]))
    return max((factor for factor in (1, 2, 4, 8) if factor <= most), default=1)


def jpeg_block(image: Image.Image) -> tuple[int, int]:
    """(width, height) of an opened JPEG's MCU, from its components' sampling factors: 16x16 for 4:2:0,
    8x8 for 4:4:4 and greyscale. Lossless crops must start on it."""
    layers = getattr(image, "layer", None) or [(0, 1, 1, 0)]
    return 8 * max(h for _, h, _, _ in layers), 8 * max(v for _, _, v, _ in layers)


def chroma_subsampling(image: Image.Image) -> tuple[int, int]:
    """How many luma samples an opened JPEG's Cb and Cr samples each span, across and down: (2, 2) for 4:2:0,
    (2, 1) for 4:2:2, (1, 1) for 4:4:4 and for images without chroma."""
    layers = getattr(image, "layer", None) or []
    if len(layers) != 3:
        return 1, 1
    (_, luma_h, luma_v, _), (_, chroma_h, chroma_v, _) = layers[0], layers[1]
    return max(1, luma_h // chroma_h), max(1, luma_v // chroma_v)


@functools.cache
def turbojpeg() -> TurboJPEG | None:
    """libjpeg-turbo's TurboJPEG library (Debian: libturbojpeg0) through PyTurboJPEG, loaded once; None when the
    shared library is not installed: callers then decode with Pillow alone (correct, slower for large photos)."""
    try:
        return TurboJPEG()
    except (OSError, RuntimeError):
        return None


def decode_jpeg_crops(data: bytes, boxes: Sequence[tuple[int, int, int, int]]) -> list[np.ndarray] | None:
    """Each box of a JPEG decoded alone, at native resolution, as RGB (h, w, 3) uint8: cut losslessly from the
    compressed data (libjpeg-turbo's transform: Huffman decoding of the image, no inverse DCT or colour
    conversion of anything outside the boxes). Boxes must start on the JPEG's MCU (`jpeg_block`).
    None when TurboJPEG is missing or cannot cut this JPEG: the caller decodes it whole."""
    library = turbojpeg()
    if library is None:
        return None
    try:
        parts = library.crop_multiple(
            data, [(left, top, right - left, bottom - top) for left, top, right, bottom in boxes]
        )
        return [library.decode(part, pixel_format=TJPF_RGB) for part in parts]
    except (OSError, ValueError):
        return None


def bands(image: Image.Image) -> Iterator[tuple[int, int, int, int]]:
    """Boxes of whole rows covering the image, about BAND_PIXELS each."""
    rows = max(1, BAND_PIXELS // image.width)
    for top in range(0, image.height, rows):
        yield (0, top, image.width, min(top + rows, image.height))


def high_bit_depth_scale(image: Image.Image) -> float:
    """Factor to 8 bits: values up to 255 are kept as they are, anything larger is read as 16-bit."""
    _, peak = image.getextrema()
    return 1.0 if not peak > 255 else 255.0 / 65535.0  # `not >`: a NaN peak keeps the values


def to_8bit(piece: Image.Image, scale: float) -> Image.Image:
    """A band of a 16-bit, 32-bit or float image -> 8-bit grey (float32 temporaries of the band only)."""
    values = np.array(piece, dtype=np.float32)
    np.multiply(values, scale, out=values)
    np.nan_to_num(values, copy=False, nan=0.0)
    np.clip(values, 0, 255, out=values)
    return Image.fromarray(values.astype(np.uint8))


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB (16-bit and float scaled, alpha composited on white).

    RGB images are returned as they are; other modes are converted band by band into the result,
    so no full-size temporary (float, RGBA or background) is ever made.
    """
    if image.mode == "RGB":
        return image
    high = image.mode in HIGH_BIT_DEPTH
    alpha = image.mode in ALPHA_MODES or "transparency" in image.info
    if not (high or alpha):
        return image.convert("RGB")
    scale = high_bit_depth_scale(image) if high else 1.0
    result = Image.new("RGB", image.size, BACKGROUND)
    for box in bands(image):
        piece = image.crop(box)
        if high:
            result.paste(to_8bit(piece, scale).convert("RGB"), box[:2])
        else:
            piece = piece.convert("RGBA")
            result.paste(piece, box[:2], mask=piece)
    return result
