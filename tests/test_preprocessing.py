"""The model's views of an image: the whole view at its aspect ratio, and native crops on the JPEG grid."""

import numpy as np
import pytest
import torch
from PIL import Image

from bench.inputs import encode, good_images
from detector.preprocessing import (
    CROP_GRID,
    CROP_SIZE,
    CROPS,
    CROPS_FROM_DOWNSCALE,
    GLOBAL_SIDE,
    MAX_ASPECT,
    MEAN,
    MIN_SIDE,
    STD,
    crop_boxes,
    image_bytes_to_views,
    image_to_views,
    normalise,
)


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


def test_crops_are_native_pixels_on_the_jpeg_grid_one_per_quadrant():
    image = gradient(1024, 768)
    views = image_to_views(image)
    for box, crop in zip(views.boxes, views.crops, strict=True):
        left, top, right, _ = box
        assert left % CROP_GRID == 0 and top % CROP_GRID == 0 and right - left == CROP_SIZE
        expected = torch.from_numpy(np.array(image.crop(box))).permute(2, 0, 1)
        assert torch.equal(crop, expected)
    quadrants = {((left + right) // 2 >= 512, (top + bottom) // 2 >= 384) for left, top, right, bottom in views.boxes}
    assert quadrants == {(False, False), (False, True), (True, False), (True, True)}


def test_crop_boxes_stay_inside_narrow_images():
    for box in crop_boxes(250, 2000):
        assert box[0] >= 0 and box[1] >= 0 and box[2] <= 250 and box[3] <= 2000


def test_crop_boxes_are_the_trained_layout():
    """The shipped weights were trained on these boxes: one 64-pixel square per quadrant, row by row."""
    assert crop_boxes(4000, 3000) == (
        (960, 704, 1024, 768),
        (2960, 704, 3024, 768),
        (960, 2208, 1024, 2272),
        (2960, 2208, 3024, 2272),
    )


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
