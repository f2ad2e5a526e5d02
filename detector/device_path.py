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
to scale large JPEGs in the DCT (the device then reduces its full decode by block means first, `dct_reduce`).
`python -m bench.gpu --agreement DIR` measures what that moves P(corrupted) by; the tests hold it to
PROBABILITY_TOLERANCE with equal labels.
"""

from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext

import numpy as np
import torch
import torch.nn.functional as nnf
from PIL import Image
from torchvision.io import ImageReadMode, decode_jpeg

from detector.decoding import may_be_rotated
from detector.preprocessing import (
    NO_CROPS,
    REDUCING_GAP,
    Views,
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


def device_whole_view(decoded: torch.Tensor, scale: int = 1) -> torch.Tensor:
    """The whole view (preprocessing.whole_view) of a decoded uint8 (3, h, w) image, on its device. `scale` is the
    DCT scale the CPU path decodes this JPEG at (preprocessing.cheap_decode_scale): the view is made, as there,
    from the image reduced that much (`dct_reduce`)."""
    height, width = decoded.shape[-2:]
    image = dct_reduce(decoded, scale) if scale > 1 else decoded
    (left, top, right, bottom), size = whole_view_box((image.shape[-1], image.shape[-2]), (width, height))
    part = image[:, top:bottom, left:right]
    if size == (right - left, bottom - top):
        return part.contiguous()
    return pillow_resize(part, size)


def dct_reduce(decoded: torch.Tensor, scale: int) -> torch.Tensor:
    """A uint8 (3, h, w) image reduced by `scale` as libjpeg's scaled inverse DCT reduces it, approximately: each
    scale x scale block's mean (its DC term; the reduced IDCT adds a little of the lowest frequencies), rounded,
    the last row and column of blocks over the pixels they have (libjpeg's size is rounded up)."""
    means = nnf.avg_pool2d(decoded[None].float(), scale, ceil_mode=True)[0]
    return torch.floor(means + 0.5).to(torch.uint8)


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
    payloads: Sequence[bytes], device: torch.device, crops: bool = True, scales: Sequence[int] | None = None
) -> list[Views | None]:
    """Views on `device` of JPEGs that `takes_device_path` admitted, decoded together (`pixel_chunks` bounds how
    many pixels that is); None for a JPEG the device could not decode. `scales`: the DCT scale the CPU path
    decodes each at (`device_whole_view`), 1 for all unless given."""
    decoded = decode_on_device(payloads, device)
    scales = scales or [1] * len(payloads)
    wholes = [
        None if image is None else device_whole_view(image, scale) for image, scale in zip(decoded, scales, strict=True)
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
