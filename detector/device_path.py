"""The accelerator's path: JPEGs decoded in batches on the device (nvJPEG), their views cut and resized there, and
the model run in channels_last at a reduced precision whose answers stay within PROBABILITY_TOLERANCE of fp32.

On a GPU the CPU path (detector.preprocessing.opened_to_views: one image at a time on one core) starves the
accelerator: decoding is most of the work, and nvJPEG does it one to two orders of magnitude faster. Here a
batch of admitted JPEGs is decoded with `torchvision.io.decode_jpeg(list, device=...)`, each whole view is
the central box resized on the device, the crop boxes are chosen by preprocessing's own `detail_boxes` on a
host copy of the small whole views (one transfer per chunk), and the crops are cut from the decoded pixels
on the device. Every refusal has happened before: `open_image` checked each header and the budget admitted
each request. What nvJPEG is not given stays on the CPU path: other formats, EXIF rotation (nvJPEG ignores
it), CMYK and other modes, arithmetic coding, and any JPEG the device fails to decode (the CPU path then
answers it or refuses it exactly as it would have).

The device's whole view is Pillow's resize (`whole_view`: a box reduce by an integer factor, then bicubic, in
8-bit fixed point with rounding after each pass) done in torch with Pillow's own arithmetic (`pillow_resize`),
so on the same decoded pixels it is the training path's view exactly (tests/test_device_path.py). What still
differs from the CPU serving path is the decode: nvJPEG against libjpeg-turbo, which the CPU path also asks
to scale large JPEGs in the DCT (the device then reduces its full decode as libjpeg would have, `dct_reduce`).
`python -m bench.gpu --agreement DIR` measures what that moves P(corrupted) by; the tests hold it to
PROBABILITY_TOLERANCE with equal labels.
"""

from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as nnf
from PIL import Image
from torchvision.io import ImageReadMode, decode_jpeg

from detector.decoding import chroma_subsampling, may_be_rotated
from detector.preprocessing import (
    NO_CROPS,
    REDUCING_GAP,
    Views,
    cheap_decode_scale,
    detail_boxes,
    has_crops,
    whole_view_box,
)
from detector.structure import ARITHMETIC_JPEG, jpeg_scan_start

# Pixels decoded on the device at once: a request may declare 50 MP (detector.budget) and a call holds up to
# batchSize requests, so a call is decoded in chunks of at most this many pixels (3 bytes each, plus the
# float copy of one image while its whole view is made): about 200 MB of decoded pixels at a time.
DECODE_CHUNK_PIXELS = 64_000_000
# How far the device path may move P(corrupted) from the CPU path's fp32 answer (issue 20's target), with equal
# labels: tests/test_device_path.py holds both the views and the reduced precision to it.
PROBABILITY_TOLERANCE = 0.01
END_OF_IMAGE = b"\xff\xd9"
# Pillow's resampling (libImaging/Resample.c): the bicubic kernel's support and parameter, and its 8-bit passes'
# fixed point (weights and sums in units of 2**-22, rounded half up, clipped to 0..255 after each pass).
BICUBIC_SUPPORT = 2.0
BICUBIC_A = -0.5
FIXED_POINT = 2.0**22
# JFIF's colour transform as libjpeg applies it (jccolor.c, jdcolor.c): RGB -> Y, Cb, Cr (Cb and Cr centred on
# CHROMA_CENTRE in a JPEG), and Cb, Cr -> what they add to Y in R, G and B; and the size of a JPEG block.
RGB_TO_YCC = torch.tensor([[0.299, 0.587, 0.114], [-0.168735892, -0.331264108, 0.5], [0.5, -0.418687589, -0.081312411]])
CHROMA_TO_RGB = torch.tensor([[0.0, 1.402], [-0.344136286, -0.714136286], [1.772, 0.0]])
CHROMA_CENTRE = 128.0
DCT_SIZE = 8
# Autocast dtypes by name; "fp32" runs without autocast.
PRECISIONS = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}
# The precision the model runs at on CUDA unless told otherwise: fp16 keeps 3 more mantissa bits than bf16, and
# the network's activations (ReLU6, batch-normalised) stay far inside fp16's range.
CUDA_PRECISION = "fp16"


def takes_device_path(image: Image.Image, data: bytes) -> bool:
    """Whether an opened image's views can be made on the device: an upright, Huffman-coded JPEG in RGB or grey
    whose data reaches an end-of-image marker after its first scan (scan data cannot hold one: a 0xFF there is
    followed by 0x00). A JPEG cut short goes to the CPU path, which refuses it (truncated_image) as it always has,
    whatever nvJPEG would make of the missing data."""
    if image.format != "JPEG" or image.mode not in ("RGB", "L") or may_be_rotated(image):
        return False
    found = jpeg_scan_start(data)
    return found is not None and found[0] not in ARITHMETIC_JPEG and data.rfind(END_OF_IMAGE) > found[1]


def pixel_chunks(pixels: Sequence[int], limit: int = DECODE_CHUNK_PIXELS) -> Iterator[list[int]]:
    """Indices of consecutive images whose pixels sum to at most `limit` per chunk (an image over it: alone)."""
    chunk: list[int] = []
    total = 0
    for index, count in enumerate(pixels):
        if chunk and total + count > limit:
            yield chunk
            chunk, total = [], 0
        chunk.append(index)
        total += count
    if chunk:
        yield chunk


class DctScaling(NamedTuple):
    """How the CPU path decodes a JPEG (preprocessing.cheap_decode_scale): libjpeg's DCT scale (1: none), and the
    JPEG's chroma subsampling (decoding.chroma_subsampling), on which libjpeg's reduced chroma depends."""

    scale: int = 1
    subsampling: tuple[int, int] = (1, 1)


FULL_DECODE = DctScaling()


def dct_scaling(image: Image.Image, crops: bool) -> DctScaling:
    """How the CPU path would decode this opened JPEG (with or without its crops)."""
    return DctScaling(cheap_decode_scale(image, crops), chroma_subsampling(image))


def device_whole_view(decoded: torch.Tensor, scaling: DctScaling = FULL_DECODE) -> torch.Tensor:
    """The whole view (preprocessing.whole_view) of a decoded uint8 (3, h, w) image, on its device, made as the CPU
    path makes it: from the image reduced as libjpeg's DCT scaling would have decoded it (`dct_reduce`)."""
    height, width = decoded.shape[-2:]
    image = dct_reduce(decoded, scaling) if scaling.scale > 1 else decoded
    (left, top, right, bottom), size = whole_view_box((image.shape[-1], image.shape[-2]), (width, height))
    part = image[:, top:bottom, left:right]
    if size == (right - left, bottom - top):
        return part.contiguous()
    return pillow_resize(part, size)


def dct_reduce(decoded: torch.Tensor, scaling: DctScaling) -> torch.Tensor:
    """A JPEG's full uint8 (3, h, w) decode reduced by `scaling.scale` as libjpeg's scaled inverse DCT reduces it.

    libjpeg's reduced IDCT gives each block's mean of the full IDCT (jidctred.c averages adjacent outputs), so the
    luma is the block means of the decoded luma. A subsampled chroma is different: the full decode spread it by
    triangle ("fancy") upsampling, while the reduced decode scales it in the IDCT and upsamples only what is left
    (`reduced_chroma`). The samples are then rounded and converted to RGB as libjpeg does it. The last row and
    column of blocks are over the pixels they have (libjpeg rounds its size up). What cannot be matched: the full
    decode's pixels were rounded before they were averaged."""
    ycc = torch.einsum("ij,jhw->ihw", RGB_TO_YCC.to(decoded.device), decoded.float())  # the one float copy
    ycc[1:] += CHROMA_CENTRE
    luma = nnf.avg_pool2d(ycc[None, :1], scaling.scale, ceil_mode=True)[0]
    chroma = reduced_chroma(ycc[1:], scaling)[:, : luma.shape[-2], : luma.shape[-1]]
    # libjpeg converts rounded samples, each colour's chroma term rounded once (jdcolor.c's tables).
    luma, chroma = (torch.floor(samples + 0.5).clamp(0, 255) for samples in (luma, chroma))
    terms = torch.einsum("ij,jhw->ihw", CHROMA_TO_RGB.to(decoded.device), chroma - CHROMA_CENTRE)
    return (luma + torch.floor(terms + 0.5)).clamp(0, 255).to(torch.uint8)


def reduced_chroma(chroma: torch.Tensor, scaling: DctScaling) -> torch.Tensor:
    """(2, h, w) full-size Cb and Cr of a full decode -> libjpeg's Cb and Cr at scale 1 / `scaling.scale`, at least
    the luma's reduced size. libjpeg (jdmaster.c) scales each chroma component's IDCT up by powers of two while
    its sampling allows, instead of upsampling it; what is left is upsampled at the reduced size, by triangles
    when that size is over one sample per block (jdsample.c), else by repeating samples."""
    across, down = scaling.subsampling
    smallest = DCT_SIZE // scaling.scale
    size = smallest
    while size < DCT_SIZE and (across * smallest) % (2 * size) == 0 and (down * smallest) % (2 * size) == 0:
        size *= 2
    planes = nnf.avg_pool2d(chroma_planes(chroma, across, down)[None], DCT_SIZE // size, ceil_mode=True)[0]
    up_across, up_down = across * smallest // size, down * smallest // size
    if (up_across, up_down) == (1, 1):
        return planes
    planes = torch.floor(planes + 0.5).clamp(0, 255)
    if (up_across, up_down) == (2, 1) and smallest > 1:
        return triangle_upsample_across(planes)
    return planes.repeat_interleave(up_down, dim=-2).repeat_interleave(up_across, dim=-1)


def chroma_planes(chroma: torch.Tensor, across: int, down: int) -> torch.Tensor:
    """A full decode's (2, h, w) Cb and Cr back at the JPEG's chroma resolution: the means over each chroma
    sample's luma pixels, less the spread of libjpeg's triangle upsampling along each axis subsampled by two
    (its 3/4, 1/4 weights leave a pair's mean at c + (c[-1] - 2c + c[+1]) / 8; one step of inversion)."""
    means = nnf.avg_pool2d(chroma[None], (down, across), ceil_mode=True)[0]
    for axis, factor in ((-1, across), (-2, down)):
        if factor == 2:
            means = means - second_difference(means, axis) / 8
    return means


def second_difference(planes: torch.Tensor, axis: int) -> torch.Tensor:
    """c[-1] - 2c + c[+1] along `axis` (-1 or -2) of (k, h, w) planes, the edge samples repeated."""
    padded = nnf.pad(planes[None], (1, 1, 0, 0) if axis == -1 else (0, 0, 1, 1), mode="replicate")[0]
    before, after = padded.narrow(axis, 0, planes.shape[axis]), padded.narrow(axis, 2, planes.shape[axis])
    return before - 2 * planes + after


def triangle_upsample_across(planes: torch.Tensor) -> torch.Tensor:
    """libjpeg-turbo's h2v1 fancy upsampling of (k, h, w) integer samples: each sample becomes two, 3/4 of it and
    1/4 of its neighbour on that side, rounded alternately down and up; the outermost outputs are the samples."""
    padded = nnf.pad(planes[None], (1, 1, 0, 0), mode="replicate")[0]
    left = torch.floor((3 * planes + padded[..., :-2] + 1) / 4)
    right = torch.floor((3 * planes + padded[..., 2:] + 2) / 4)
    return torch.stack([left, right], dim=-1).flatten(-2)


def pillow_resize(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """`PIL.Image.resize(size, BICUBIC, reducing_gap=REDUCING_GAP)` of a uint8 (3, h, w) image, on its device, in
    Pillow's arithmetic: an integer box reduce (`box_reduce`), then a horizontal and a vertical bicubic pass, each
    a float64 matrix product of integers (exact) rounded as Pillow's fixed point rounds."""
    height, width = image.shape[-2:]
    factor_x = int(width / size[0] / REDUCING_GAP) or 1
    factor_y = int(height / size[1] / REDUCING_GAP) or 1
    pixels = image.double()
    if factor_x > 1 or factor_y > 1:
        pixels = box_reduce(pixels, factor_x, factor_y)
    # Pillow hands the reduced image's box to C as float32.
    across = pillow_weights(pixels.shape[-1], float(np.float32(width / factor_x)), size[0]).to(image.device)
    down = pillow_weights(pixels.shape[-2], float(np.float32(height / factor_y)), size[1]).to(image.device)
    # Pillow 13 (Resample.c) passes vertically first when the height shrinks by over twice what the width does.
    shrink_y, shrink_x = pixels.shape[-2] - size[1], pixels.shape[-1] - size[0]
    if shrink_y > 0 and shrink_y > 2 * shrink_x:
        return fixed_point_round(fixed_point_round(down @ pixels) @ across.T).to(torch.uint8)
    return fixed_point_round(down @ fixed_point_round(pixels @ across.T)).to(torch.uint8)


def fixed_point_round(sums: torch.Tensor) -> torch.Tensor:
    """Sums of pixels times fixed-point weights -> pixels, as Pillow's clip8 makes them: half up, within 0..255."""
    return torch.floor((sums + FIXED_POINT / 2) / FIXED_POINT).clamp(0, 255)


def bicubic(x: torch.Tensor) -> torch.Tensor:
    """Pillow's bicubic kernel (a = -0.5)."""
    x = x.abs()
    near = ((BICUBIC_A + 2) * x - (BICUBIC_A + 3)) * x * x + 1
    far = (((x - 5) * x + 8) * x - 4) * BICUBIC_A
    return torch.where(x < 1, near, torch.where(x < BICUBIC_SUPPORT, far, torch.zeros_like(x)))


def pillow_weights(in_size: int, in_end: float, out_size: int) -> torch.Tensor:
    """(out_size, in_size) fixed-point weights with which Pillow resamples [0, in_end) of an axis of `in_size`
    pixels onto `out_size` (Resample.c's precompute_coeffs and normalize_coeffs_8bpc), as float64 integers."""
    scale = in_end / out_size
    filter_scale = max(scale, 1.0)
    support = BICUBIC_SUPPORT * filter_scale
    centre = (torch.arange(out_size, dtype=torch.float64) + 0.5) * scale
    first = (centre - support + 0.5).trunc().clamp(min=0)[:, None]
    end = (centre + support + 0.5).trunc().clamp(max=in_size)[:, None]
    x = torch.arange(in_size, dtype=torch.float64)
    weights = bicubic((x - centre[:, None] + 0.5) * (1.0 / filter_scale)) * ((x >= first) & (x < end))
    weights = weights / weights.sum(dim=1, keepdim=True)
    return torch.sign(weights) * torch.floor(weights.abs() * FIXED_POINT + 0.5)


def box_reduce(pixels: torch.Tensor, factor_x: int, factor_y: int) -> torch.Tensor:
    """`PIL.Image.reduce((factor_x, factor_y))` of (3, h, w) float64 pixels: each block's mean, the last row and
    column of blocks over the pixels they have, rounded as Reduce.c rounds (its multiplier is a float32 quotient)."""
    sums = nnf.avg_pool2d(pixels[None], (factor_y, factor_x), ceil_mode=True, divisor_override=1)[0]
    height, width = pixels.shape[-2:]
    rows = (height - torch.arange(sums.shape[-2]) * factor_y).clamp(max=factor_y)
    columns = (width - torch.arange(sums.shape[-1]) * factor_x).clamp(max=factor_x)
    counts = (rows[:, None] * columns[None, :]).to(pixels.device)
    multiplier = torch.trunc(torch.tensor(2.0**32, dtype=torch.float32) / (256 * counts).float()).double()
    return torch.floor((sums + counts // 2) * multiplier / 2**24)


def cut_crops(decoded: torch.Tensor, boxes: Sequence[tuple[int, int, int, int]]) -> torch.Tensor:
    """(k, 3, CROP_SIZE, CROP_SIZE) native crops of a decoded image at `boxes`, on its device."""
    if not boxes:
        return NO_CROPS.to(decoded.device)
    return torch.stack([decoded[:, top:bottom, left:right] for left, top, right, bottom in boxes])


def decode_on_device(payloads: Sequence[bytes], device: torch.device) -> list[torch.Tensor | None]:
    """Each JPEG decoded to uint8 RGB (3, h, w) on `device`, in one batched call; when the batch fails, one by
    one, None for each the device cannot decode (the caller gives it to the CPU path, which decides)."""
    data = [torch.frombuffer(bytearray(payload), dtype=torch.uint8) for payload in payloads]
    try:
        return list(decode_jpeg(data, mode=ImageReadMode.RGB, device=device))
    except RuntimeError:
        decoded: list[torch.Tensor | None] = []
        for one in data:
            try:
                decoded.append(decode_jpeg(one, mode=ImageReadMode.RGB, device=device))
            except RuntimeError:
                decoded.append(None)
        return decoded


def chunk_views(
    payloads: Sequence[bytes],
    device: torch.device,
    crops: bool = True,
    scalings: Sequence[DctScaling] | None = None,
) -> list[Views | None]:
    """Views on `device` of JPEGs that `takes_device_path` admitted, decoded together (`pixel_chunks` bounds how
    many pixels that is); None for a JPEG the device could not decode. `scalings`: how the CPU path decodes each
    (`device_whole_view`), at full size unless given."""
    decoded = decode_on_device(payloads, device)
    scalings = scalings or [FULL_DECODE] * len(payloads)
    wholes = [
        None if image is None else device_whole_view(image, scaling)
        for image, scaling in zip(decoded, scalings, strict=True)
    ]
    made = [whole for whole in wholes if whole is not None]
    # One transfer for all the chunk's whole views: the crop boxes are chosen on the host, by preprocessing's rule.
    hosted = iter(torch.cat([whole.flatten() for whole in made]).cpu().split([w.numel() for w in made]) if made else [])
    views: list[Views | None] = []
    for image, whole in zip(decoded, wholes, strict=True):
        if image is None or whole is None:
            views.append(None)
            continue
        host_whole = next(hosted).view(whole.shape)
        height, width = image.shape[-2:]
        boxes = detail_boxes(host_whole, width, height) if crops and has_crops(width, height) else ()
        views.append(Views(whole, cut_crops(image, boxes), boxes, (width, height)))
    return views


def to_device(views: Views, device: torch.device) -> Views:
    """Views made on the CPU path moved to the model's device, beside the device path's."""
    return Views(views.whole.to(device), views.crops.to(device), views.boxes, views.size)


def autocast(device: torch.device, precision: str) -> AbstractContextManager:
    """The context the model runs in at `precision` (a PRECISIONS name): autocast to its dtype, none for fp32."""
    dtype = PRECISIONS[precision]
    return nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)
