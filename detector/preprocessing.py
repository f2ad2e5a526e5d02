"""Decoded image -> the model's views -> normalised input: written once, used by training, evaluation and serving.

A photo's damage lives at two scales, so the model sees every image twice over:

- the whole view: the whole image, aspect ratio kept, shorter side GLOBAL_SIDE (smaller images are
  seen at their own size, at least MIN_SIDE). Blur, motion, exposure, contrast, colour, occlusion and,
  on small images, everything else show here: a blur of 0.6% of the shorter side is about one pixel of
  this view, however large the photo;
- native crops: CROPS squares of CROP_SIZE pixels at the photo's own resolution, on the JPEG block grid,
  where the photo has most detail: of CANDIDATES boxes centred in the cells of a square grid, the CROPS
  whose surroundings have the most gradient energy in the whole view (`detail_boxes`). Sensor noise, JPEG
  blocks and pixelation of a large photo are averaged away by any downscale, and blur of a large photo
  is about a pixel of the whole view; these crops see them. They sit where the detail is, so a soft
  background (shallow depth of field, a sky) is not mistaken for blur: blur is "even the most detailed
  parts are soft". Only images whose shorter side exceeds GLOBAL_SIDE * CROPS_FROM_DOWNSCALE get crops:
  below that the whole view is close to native.

Panoramas beyond MAX_ASPECT are seen through their central MAX_ASPECT:1 part. Serving makes the views by the
cheapest decode that gives them (`opened_to_views`): a large JPEG's whole view from a decode reduced in libjpeg's
DCT, its crops cut from the compressed data; training makes them from decoded images (`image_to_views`), and the
two agree to about 0.3/255 (tests/test_preprocessing.py). This module is packed into the model archive, so the
server runs the very code the model was trained with.
"""

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torchvision.transforms.v2.functional as F
from PIL import Image

from detector.backbones import LITE_MEAN, LITE_STD
from detector.decoding import (
    dct_scale,
    decode_bytes,
    decode_jpeg_crops,
    jpeg_block,
    load_rgb,
    may_be_rotated,
    open_image,
    progressive_jpeg_bytes,
    turbojpeg,
)

GLOBAL_SIDE = 160
MIN_SIDE = 32
MAX_ASPECT = 2.5
CROP_SIZE = 64
CROPS = 4
# Candidate crop boxes, one centred in each cell of a square grid; the CROPS with most detail are kept.
CANDIDATES = 16
# The side (whole-view pixels) of the square around a candidate's centre whose detail ranks it, at least.
DETAIL_FOOTPRINT = 8
CROPS_FROM_DOWNSCALE = 1.5
# Crops start on this grid: JPEG's 16-pixel chroma blocks sit where they sat in training.
CROP_GRID = 16
# The input statistics the network is trained with (those of the pretrained EfficientNet-Lite weights).
MEAN = LITE_MEAN
STD = LITE_STD

# Cut crops losslessly from a JPEG's compressed data (a second Huffman pass) when its whole view decodes at least
# this much reduced; below, one full decode is cheaper (bench.large_images, views column).
CUT_CROPS_FROM_SCALE = 4
# The whole view's resize first box-reduces by an integer factor to within this many times the view, then resamples
# bicubically (Pillow's reducing_gap); a decode need keep no more pixels than that (`whole_view_decode_size`).
# 2, not 3: a 1024x768 photo is halved by the box filter before a 10-tap instead of a 20-tap bicubic pass, and a
# 12 MP JPEG decodes at 1/8 in the DCT instead of 1/4: views about 3 and 8 ms cheaper (README, Benchmark).
REDUCING_GAP = 2.0

Box = tuple[int, int, int, int]  # left, top, right, bottom in the image's own pixels


@dataclass(frozen=True)
class Views:
    """What the model sees of one image: the whole view and the native crops (none for small images)."""

    whole: torch.Tensor  # (3, h, w) uint8
    crops: torch.Tensor  # (k, 3, CROP_SIZE, CROP_SIZE) uint8, k in {0, CROPS}
    boxes: tuple[Box, ...]  # where each crop lies in the image
    size: tuple[int, int]  # the image's (width, height)


NO_CROPS = torch.empty(0, 3, CROP_SIZE, CROP_SIZE, dtype=torch.uint8)


def central_box(width: int, height: int) -> Box:
    """The part of the image the whole view shows: all of it, or the central MAX_ASPECT:1 part of a panorama."""
    short = min(width, height)
    keep_w, keep_h = min(width, round(short * MAX_ASPECT)), min(height, round(short * MAX_ASPECT))
    left, top = (width - keep_w) // 2, (height - keep_h) // 2
    return left, top, left + keep_w, top + keep_h


def whole_size(width: int, height: int) -> tuple[int, int]:
    """(width, height) of the whole view of a `central_box` of this size: shorter side GLOBAL_SIDE or native."""
    short = min(width, height)
    scale = GLOBAL_SIDE / short if short > GLOBAL_SIDE else max(1.0, MIN_SIDE / short)
    return max(1, round(width * scale)), max(1, round(height * scale))


def whole_view(image: Image.Image, native_size: tuple[int, int] | None = None) -> torch.Tensor:
    """The whole view of an RGB image (see the module docstring), as uint8 CHW. With `native_size`, the image is
    a reduced decode of one that size (libjpeg's DCT scaling): the view is the native image's, of its size."""
    box, size = whole_view_box(image.size, native_size or image.size)
    part = image.crop(box) if box != (0, 0, *image.size) else image
    if size != part.size:
        part = part.resize(size, Image.Resampling.BICUBIC, reducing_gap=REDUCING_GAP)
    return F.pil_to_tensor(part)


def whole_view_box(size: tuple[int, int], native_size: tuple[int, int]) -> tuple[Box, tuple[int, int]]:
    """Where the whole view lies in an image of `size`, a decode (maybe reduced) of one of `native_size`, and
    the (width, height) it is resized to."""
    width, height = native_size
    left, top, right, bottom = central_box(width, height)
    scale_x, scale_y = size[0] / width, size[1] / height
    box = (round(left * scale_x), round(top * scale_y), round(right * scale_x), round(bottom * scale_y))
    return box, whole_size(right - left, bottom - top)


def has_crops(width: int, height: int) -> bool:
    return min(width, height) > GLOBAL_SIDE * CROPS_FROM_DOWNSCALE


def grid_side(crops: int) -> int:
    """Cells per side of the square grid of `crops` cells: a count that is no square has no such grid."""
    side = math.isqrt(crops)
    if crops < 1 or side * side != crops:
        raise ValueError(f"{crops} crops do not form a square grid")
    return side


def crop_start(length: int, cell: int, side: int) -> int:
    """Where a crop centred in this cell of `side` cells starts along one axis: inside the image, on the CROP_GRID."""
    centre = (2 * cell + 1) * length // (2 * side)
    return max(0, min(length - CROP_SIZE, centre - CROP_SIZE // 2)) // CROP_GRID * CROP_GRID


def crop_boxes(width: int, height: int, crops: int = CANDIDATES) -> tuple[Box, ...]:
    """One CROP_SIZE square centred in each cell of a square grid of `crops` cells (the CANDIDATES for the crops),
    row by row, its corner snapped to the CROP_GRID."""
    side = grid_side(crops)
    boxes = []
    for row in range(side):
        top = crop_start(height, row, side)
        for column in range(side):
            left = crop_start(width, column, side)
            boxes.append((left, top, left + CROP_SIZE, top + CROP_SIZE))
    return tuple(boxes)


def detail_map(whole: torch.Tensor) -> torch.Tensor:
    """(h, w) gradient energy of a uint8 (3, h, w) view: |horizontal| + |vertical| luminance differences."""
    grey = F.rgb_to_grayscale(whole).float()[0] / 255
    energy = torch.zeros_like(grey)
    energy[:, 1:] += (grey[:, 1:] - grey[:, :-1]).abs()
    energy[1:, :] += (grey[1:, :] - grey[:-1, :]).abs()
    return energy


def box_detail(energy: torch.Tensor, box: Box, width: int, height: int) -> float:
    """Mean detail around a box's centre in the whole view of a (width, height) image, over at least
    DETAIL_FOOTPRINT view pixels square (a 64 px crop of a 12 MP photo covers about 3 of them)."""
    left, top, right, bottom = central_box(width, height)
    view_h, view_w = energy.shape
    scale_x, scale_y = view_w / (right - left), view_h / (bottom - top)
    centre_x, centre_y = ((box[0] + box[2]) / 2 - left) * scale_x, ((box[1] + box[3]) / 2 - top) * scale_y
    half_x = max(DETAIL_FOOTPRINT, (box[2] - box[0]) * scale_x) / 2
    half_y = max(DETAIL_FOOTPRINT, (box[3] - box[1]) * scale_y) / 2
    x0, x1 = max(0, round(centre_x - half_x)), min(view_w, round(centre_x + half_x))
    y0, y1 = max(0, round(centre_y - half_y)), min(view_h, round(centre_y + half_y))
    if x1 <= x0 or y1 <= y0:
        return 0.0  # outside the view (a panorama's ends): never preferred
    return float(energy[y0:y1, x0:x1].mean())


def detail_boxes(whole: torch.Tensor, width: int, height: int) -> tuple[Box, ...]:
    """The CROPS candidate boxes of a (width, height) image with most detail in its whole view, row by row.
    Ties keep the earlier candidate, so a flat image gets the same boxes every time."""
    candidates = crop_boxes(width, height, CANDIDATES)
    energy = detail_map(whole)
    scores = [box_detail(energy, box, width, height) for box in candidates]
    ranked = sorted(range(len(candidates)), key=lambda index: (-scores[index], index))
    return tuple(candidates[index] for index in sorted(ranked[:CROPS]))


def image_to_views(image: Image.Image) -> Views:
    """All views of an RGB image at its native resolution."""
    whole = whole_view(image)
    boxes = detail_boxes(whole, *image.size) if has_crops(*image.size) else ()
    crops = [F.pil_to_tensor(image.crop(box)) for box in boxes]
    return Views(whole, torch.stack(crops) if crops else NO_CROPS, boxes, image.size)


def whole_view_decode_size(width: int, height: int) -> tuple[int, int]:
    """The least size a decode of a (width, height) image must keep for its whole view to be made as from the
    native pixels: whole_view's resize first box-reduces to about REDUCING_GAP times the view."""
    scale = REDUCING_GAP * GLOBAL_SIDE / min(width, height)
    return math.ceil(width * scale), math.ceil(height * scale)


def cheap_decode_scale(image: Image.Image, crops: bool) -> int:
    """The DCT scale (1: none) at which this opened image's views are cheapest to make, from its header.

    A whole view never needs every pixel of a large JPEG: libjpeg-turbo decodes it at 1/2..1/8 in the DCT domain.
    Its crops are then cut losslessly from the compressed data (detector.decoding.decode_jpeg_crops), which costs
    a second Huffman pass: worth it from CUT_CROPS_FROM_SCALE on (bench.large_images, views column). Rotated
    images (EXIF), modes other than RGB and grey, MCUs the crop grid does not sit on, coefficients that would take
    more memory than the full decode (4:4:4), and a missing TurboJPEG take the full decode.
    """
    size = whole_view_decode_size(*image.size)
    scale = dct_scale(image, size)
    if scale == 1 or image.mode not in ("RGB", "L") or may_be_rotated(image):
        return 1
    if not (crops and has_crops(*image.size)):
        return scale
    block_w, block_h = jpeg_block(image)
    on_grid = CROP_GRID % block_w == 0 and CROP_GRID % block_h == 0
    # Cutting reads every DCT coefficient into memory: never more than the full decode the header was admitted for.
    within = progressive_jpeg_bytes(image) * image.width * image.height <= decode_bytes(image)
    return scale if on_grid and within and scale >= CUT_CROPS_FROM_SCALE and turbojpeg() is not None else 1


def opened_to_views(image: Image.Image, data: bytes, crops: bool = True) -> Views:
    """The serving path for one image whose header `open_image` checked: its views, by the cheapest decode.

    Large JPEGs: the whole view from a DCT-scaled decode, the crops cut losslessly where it says the detail is;
    everything else (and a JPEG TurboJPEG cannot cut) decodes whole. Without `crops`, no crops are made.
    """
    if cheap_decode_scale(image, crops) > 1:
        size = image.size
        whole = whole_view(load_rgb(image, whole_view_decode_size(*size)), size)
        if not (crops and has_crops(*size)):
            return Views(whole, NO_CROPS, (), size)
        boxes = detail_boxes(whole, *size)
        cut = decode_jpeg_crops(data, boxes)
        if cut is not None:
            return Views(whole, torch.from_numpy(np.stack(cut)).permute(0, 3, 1, 2).contiguous(), boxes, size)
        image = open_image(data)  # the drafted image holds its reduced decode: read the header again
    views = image_to_views(load_rgb(image))
    return views if crops else Views(views.whole, NO_CROPS, (), views.size)


def image_bytes_to_views(data: bytes) -> Views:
    """The whole serving path for one image: bytes -> checked header (detector.decoding) -> its views."""
    return opened_to_views(open_image(data), data)


def input_contract() -> dict[str, Any]:
    """Every setting of the views and their normalisation: a checkpoint stores it and loading checks it, so a
    model is never fed views of another shape or scale than it was trained on."""
    return {
        "global_side": GLOBAL_SIDE,
        "min_side": MIN_SIDE,
        "max_aspect": MAX_ASPECT,
        "crop_size": CROP_SIZE,
        "crops": CROPS,
        "crop_choice": "most-detail/v1",
        "candidates": CANDIDATES,
        "detail_footprint": DETAIL_FOOTPRINT,
        "crops_from_downscale": CROPS_FROM_DOWNSCALE,
        "reducing_gap": REDUCING_GAP,
        "crop_grid": CROP_GRID,
        "mean": list(MEAN),
        "std": list(STD),
    }


def normalise(images: torch.Tensor) -> torch.Tensor:
    """uint8 image(s) -> float tensor normalised with the training statistics."""
    return F.normalize(F.to_dtype(images, torch.float32, scale=True), list(MEAN), list(STD))
