"""The model's views of an image: the whole view at its aspect ratio, and native crops on the JPEG grid where the
photo has most detail."""

import io

import numpy as np
import pytest
import torch
from PIL import Image

from bench.inputs import encode, good_images
from detector import preprocessing
from detector.decoding import BadImageError, decode_image, open_image
from detector.preprocessing import (
    CANDIDATES,
    CROP_GRID,
    CROP_SIZE,
    CROPS,
    CROPS_FROM_DOWNSCALE,
    GLOBAL_SIDE,
    MAX_ASPECT,
    MEAN,
    MIN_SIDE,
    STD,
    cheap_decode_scale,
    crop_boxes,
    detail_boxes,
    image_bytes_to_views,
    image_to_views,
    normalise,
    opened_to_views,
)
from training.corpus import installed_photo


def exif_rotated() -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = 6
    return exif


def gradient(width: int, height: int) -> Image.Image:
    """A smooth RGB test image whose every pixel differs: crops and resizes can be checked exactly."""
    xs = torch.linspace(0, 255, width).round().to(torch.uint8)
    ys = torch.linspace(0, 255, height).round().to(torch.uint8)
    pixels = torch.stack(
        [xs.expand(height, width), ys[:, None].expand(height, width), (xs[None] // 2 + ys[:, None] // 2)]
    )
    return Image.fromarray(pixels.permute(1, 2, 0).numpy())


def test_every_good_image_decodes_to_views(subset):
    for name, data in good_images(subset).items():
        views = image_bytes_to_views(data)
        assert views.whole.dtype == torch.uint8 and views.whole.shape[0] == 3, name
        assert views.crops.shape[1:] == (3, CROP_SIZE, CROP_SIZE), name


@pytest.mark.parametrize(
    ("size", "expected"),
    [((640, 480), (213, 160)), ((480, 640), (160, 213)), ((4000, 3000), (213, 160)), ((1920, 1080), (284, 160))],
)
def test_whole_view_keeps_the_aspect_ratio_at_the_global_side(size, expected):
    views = image_to_views(gradient(*size))
    assert tuple(views.whole.shape[-2:]) == (expected[1], expected[0])


def test_small_images_are_seen_at_their_own_size_and_tiny_ones_enlarged(subset):
    assert tuple(image_to_views(gradient(120, 90)).whole.shape[-2:]) == (90, 120)
    assert tuple(image_to_views(gradient(32, 32)).whole.shape[-2:]) == (32, 32)
    assert min(image_to_views(gradient(20, 16)).whole.shape[-2:]) == MIN_SIDE


def test_cifar_images_are_their_exact_pixels(subset):
    image = Image.open(sorted((subset / "test").rglob("*.png"))[0]).convert("RGB")
    views = image_bytes_to_views(encode(image, "PNG"))
    assert torch.equal(views.whole, torch.from_numpy(np.array(image)).permute(2, 0, 1))
    assert len(views.crops) == 0


def test_panoramas_are_seen_through_their_central_part():
    views = image_to_views(gradient(4000, 1000))
    height, width = views.whole.shape[-2:]
    assert height == GLOBAL_SIDE and width == round(GLOBAL_SIDE * MAX_ASPECT)


def test_crops_only_where_the_whole_view_downscales_enough():
    threshold = int(GLOBAL_SIDE * CROPS_FROM_DOWNSCALE)
    assert len(image_to_views(gradient(threshold * 2, threshold)).crops) == 0
    assert len(image_to_views(gradient(threshold * 2, threshold + 1)).crops) == CROPS


def test_crops_are_native_pixels_on_the_jpeg_grid():
    image = gradient(1024, 768)
    views = image_to_views(image)
    assert len(views.boxes) == CROPS
    for box, crop in zip(views.boxes, views.crops, strict=True):
        left, top, right, _ = box
        assert left % CROP_GRID == 0 and top % CROP_GRID == 0 and right - left == CROP_SIZE
        expected = torch.from_numpy(np.array(image.crop(box))).permute(2, 0, 1)
        assert torch.equal(crop, expected)


def textured(image: Image.Image, box: tuple[int, int, int, int], seed: int = 0) -> Image.Image:
    """The image with random texture (detail) painted over `box`."""
    pixels = np.array(image)
    left, top, right, bottom = box
    pixels[top:bottom, left:right] = np.random.default_rng(seed).integers(0, 256, (bottom - top, right - left, 3))
    return Image.fromarray(pixels)


def test_crops_go_where_the_detail_is():
    """A flat photo with one detailed patch (a subject in focus before a soft background): the crops sit on
    the patch (it covers four candidates), never on the flat background far away."""
    image = textured(Image.new("RGB", (4000, 3000), (90, 120, 160)), (2300, 200, 3700, 1300))
    boxes = image_to_views(image).boxes
    candidates = crop_boxes(4000, 3000, CANDIDATES)
    assert len(boxes) == CROPS and set(boxes) <= set(candidates)
    for left, top, right, bottom in boxes:
        assert (left + right) / 2 > 2000 and (top + bottom) / 2 < 1500, boxes


def test_detail_ranks_the_candidates_and_ties_keep_their_order():
    flat = Image.new("RGB", (1600, 1200), (128, 128, 128))
    assert image_to_views(flat).boxes == crop_boxes(1600, 1200, CANDIDATES)[:CROPS]
    corner = textured(flat, (1200, 900, 1600, 1200))  # the bottom-right cell only
    assert crop_boxes(1600, 1200, CANDIDATES)[-1] in image_to_views(corner).boxes


def test_detail_boxes_read_the_whole_view_of_a_panorama_centre():
    """A panorama's whole view is its central part: candidates outside it score nothing and are never chosen
    over detail inside it."""
    image = textured(Image.new("RGB", (6000, 1000), (50, 50, 50)), (0, 0, 1200, 1000))  # outside the view
    image = textured(image, (2000, 0, 4000, 1000), seed=1)
    boxes = detail_boxes(image_to_views(image).whole, 6000, 1000)
    assert all(2000 <= (left + right) / 2 <= 4000 for left, _, right, _ in boxes), boxes


def test_crop_boxes_stay_inside_narrow_images():
    for box in crop_boxes(250, 2000):
        assert box[0] >= 0 and box[1] >= 0 and box[2] <= 250 and box[3] <= 2000


def test_candidate_boxes_are_the_trained_layout():
    """The shipped weights were trained on crops chosen from these candidates: a 64-pixel square centred in each
    cell of a 4 x 4 grid, row by row, on the 16-pixel grid."""
    boxes = crop_boxes(4000, 3000, CANDIDATES)
    assert boxes[:4] == ((464, 336, 528, 400), (1456, 336, 1520, 400), (2464, 336, 2528, 400), (3456, 336, 3520, 400))
    assert boxes[-1] == (3456, 2592, 3520, 2656)


@pytest.mark.parametrize("crops", [1, CROPS, 9, 16])
def test_crop_boxes_lie_on_a_square_grid_of_the_crop_count(crops):
    width, height = 3000, 2400
    boxes = crop_boxes(width, height, crops)
    side = round(crops**0.5)
    centres = [((left + right) // 2, (top + bottom) // 2) for left, top, right, bottom in boxes]
    cells = {(x * side // width, y * side // height) for x, y in centres}
    assert len(boxes) == crops and cells == {(column, row) for column in range(side) for row in range(side)}


@pytest.mark.parametrize("crops", [0, 2, 3, 5, 8])
def test_a_crop_count_without_a_square_grid_is_refused(crops):
    with pytest.raises(ValueError, match="square grid"):
        crop_boxes(1000, 1000, crops)


def test_normalise_uses_training_statistics():
    white = normalise(torch.full((3, 4, 4), 255, dtype=torch.uint8))
    assert torch.allclose(white[:, 0, 0], torch.tensor([(1 - m) / s for m, s in zip(MEAN, STD, strict=True)]))


def photo_jpeg(size: tuple[int, int], **options) -> bytes:
    """A real photograph resized to `size`, as a JPEG (4:2:0 at quality 90 unless told)."""
    photo = Image.open(io.BytesIO(installed_photo("scikit-image--astronaut"))).convert("RGB")
    return encode(photo.resize(size, Image.Resampling.BICUBIC), "JPEG", **{"quality": 90, **options})


def test_a_large_jpeg_is_decoded_reduced_and_its_crops_cut_from_the_compressed_data():
    data = photo_jpeg((4000, 3000))
    assert cheap_decode_scale(open_image(data), crops=True) == 8
    cheap, full = opened_to_views(open_image(data), data), image_to_views(decode_image(data))
    assert cheap.whole.shape == full.whole.shape and cheap.boxes == full.boxes
    assert float((cheap.whole.float() - full.whole.float()).abs().mean()) < 0.5, "about 0.2/255 on average"
    assert float((cheap.crops.float() - full.crops.float()).abs().mean()) < 0.1, "native pixels, all but identical"


@pytest.mark.parametrize(
    ("size", "options", "why"),
    [
        ((1024, 768), {}, "too small for a reduced decode to pay"),
        ((4000, 3000), {"subsampling": 0}, "4:4:4: its coefficients take more memory than the full decode"),
        ((4000, 3000), {"exif": exif_rotated()}, "rotated by EXIF"),
    ],
)
def test_other_images_are_decoded_whole(size, options, why):
    data = photo_jpeg(size, **options)
    assert cheap_decode_scale(open_image(data), crops=True) == 1, why
    views = opened_to_views(open_image(data), data)
    upright = decode_image(data)
    assert views.size == upright.size and torch.equal(views.whole, image_to_views(upright).whole), why


def test_without_turbojpeg_large_jpegs_decode_whole_and_whole_views_stay_cheap(monkeypatch):
    """The shared library missing (a machine without libturbojpeg0): crops come from a full decode, and a whole
    view alone (crops off) still decodes reduced, as Pillow can do that alone."""
    monkeypatch.setattr(preprocessing, "turbojpeg", lambda: None)
    data = photo_jpeg((4000, 3000))
    assert cheap_decode_scale(open_image(data), crops=True) == 1
    assert cheap_decode_scale(open_image(data), crops=False) == 8
    assert opened_to_views(open_image(data), data).boxes == image_to_views(decode_image(data)).boxes
    assert len(opened_to_views(open_image(data), data, crops=False).crops) == 0


def test_a_truncated_large_jpeg_is_still_refused():
    data = photo_jpeg((4000, 3000))
    cut = data[: len(data) * 2 // 3]
    with pytest.raises(BadImageError) as refused:
        opened_to_views(open_image(cut), cut)
    assert refused.value.reason == "truncated_image"
