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

The device's whole view is one antialiased bicubic resize of the central box. Pillow's (`whole_view`) first
box-reduces by an integer factor (its reducing gap) and the CPU path decodes large JPEGs DCT-scaled; on the
test photos the device's view is 0.12 grey levels from Pillow's on the same pixels on average, and emulating
the box reduce in torch made it worse (0.16: the reduce's last partial block falls elsewhere).
`python -m bench.gpu --agreement DIR` measures what this moves P(corrupted) by; the tests hold it to
PROBABILITY_TOLERANCE with equal labels.
"""

from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext

import torch
import torchvision.transforms.v2.functional as F
from PIL import Image
from torchvision.io import ImageReadMode, decode_jpeg

from detector.decoding import may_be_rotated
from detector.preprocessing import NO_CROPS, Views, central_box, detail_boxes, has_crops, whole_size
from detector.structure import ARITHMETIC_JPEG, jpeg_scan_start

# Pixels decoded on the device at once: a request may declare 50 MP (detector.budget) and a call holds up to
# batchSize requests, so a call is decoded in chunks of at most this many pixels (3 bytes each, plus the
# float copy of one image while its whole view is made): about 200 MB of decoded pixels at a time.
DECODE_CHUNK_PIXELS = 64_000_000
# How far the device path may move P(corrupted) from the CPU path's fp32 answer (issue 20's target), with equal
# labels: tests/test_device_path.py holds both the views and the reduced precision to it.
PROBABILITY_TOLERANCE = 0.01
END_OF_IMAGE = b"\xff\xd9"
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


def device_whole_view(decoded: torch.Tensor) -> torch.Tensor:
    """The whole view (preprocessing.whole_view) of a decoded uint8 (3, h, w) image, on its device: the central
    box resized in one antialiased bicubic pass, in float on every device (CUDA has no uint8 kernel for it, so a
    CPU run tests the arithmetic a GPU does)."""
    height, width = decoded.shape[-2:]
    left, top, right, bottom = central_box(width, height)
    part = decoded[:, top:bottom, left:right]
    size = whole_size(right - left, bottom - top)
    if size == (right - left, bottom - top):
        return part.contiguous()
    resized = F.resize(part[None].float(), [size[1], size[0]], F.InterpolationMode.BICUBIC, antialias=True)
    return resized[0].round().clamp(0, 255).to(torch.uint8)


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


def chunk_views(payloads: Sequence[bytes], device: torch.device, crops: bool = True) -> list[Views | None]:
    """Views on `device` of JPEGs that `takes_device_path` admitted, decoded together (`pixel_chunks` bounds how
    many pixels that is); None for a JPEG the device could not decode."""
    decoded = decode_on_device(payloads, device)
    wholes = [None if image is None else device_whole_view(image) for image in decoded]
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
