"""The shared decode -> RGB -> resize -> normalise path, in-process."""

import numpy as np
import torch
from PIL import Image

from bench.inputs import encode, good_images, sample_rgb
from detector.decoding import decode_image
from detector.preprocessing import (
    INPUT_SIZE,
    TILE_SCALES,
    TILED_MIN_SIDE,
    TILES_PER_SIDE,
    image_bytes_to_views,
    image_to_views,
    normalise,
    resize_to_input,
)


def test_every_good_image_decodes_to_rgb_views(subset):
    for name, data in good_images(subset).items():
        views = image_bytes_to_views(data)
        assert views.shape[1:] == (3, INPUT_SIZE, INPUT_SIZE), name
        assert views.dtype == torch.uint8, name


def test_cifar_sized_png_is_exact_pixels(subset):
    rgb = sample_rgb(subset)
    views = image_bytes_to_views(encode(rgb, "PNG"))
    assert views.shape[0] == 1, "a small image is seen whole only, exactly as in training"
    assert torch.equal(views[0], torch.from_numpy(np.array(rgb)).permute(2, 0, 1))


def test_normalise_uses_training_statistics():
    grey = torch.full((3, 2, 2), 128, dtype=torch.uint8)
    normalised = normalise(grey)
    assert normalised.dtype == torch.float32
    assert torch.allclose(normalised[0], torch.full((2, 2), (128 / 255 - 0.4914) / 0.2470), atol=1e-5)


def test_small_jpeg_reduced_decoding_matches_full_decoding(subset):
    """Below the tiling size a JPEG is decoded at reduced DCT scale: same model input as a full decode, to ~1/255."""
    photo = encode(sample_rgb(subset).resize((160, 120), Image.Resampling.BICUBIC), "JPEG", quality=90)
    reduced = image_bytes_to_views(photo).float()
    full = resize_to_input(decode_image(photo)).float()
    assert decode_image(photo, reduce_to=INPUT_SIZE).size == (80, 60)
    assert reduced.shape[0] == 1 and (reduced[0] - full).abs().mean() < 1.0


def test_large_images_add_native_resolution_tiles(subset):
    photo = sample_rgb(subset).resize((1024, 768), Image.Resampling.BICUBIC)
    views = image_to_views(photo)
    assert len(views) == 1 + len(TILE_SCALES) * TILES_PER_SIDE**2
    assert torch.equal(views[0], resize_to_input(photo))
    top_left = torch.from_numpy(np.array(photo)[:INPUT_SIZE, :INPUT_SIZE]).permute(2, 0, 1)
    assert torch.equal(views[1], top_left), "the first tile is the native top-left corner"


def test_tile_levels_stop_where_tiles_would_overlap(subset):
    just_tiled = sample_rgb(subset).resize((TILED_MIN_SIDE, TILED_MIN_SIDE))
    assert len(image_to_views(just_tiled)) == 1 + 2 * TILES_PER_SIDE**2, "scales 1 and 2 fit a 128 px side"
    assert len(image_to_views(sample_rgb(subset).resize((TILED_MIN_SIDE - 1, 400)))) == 1


def test_large_jpeg_is_decoded_at_native_resolution_for_its_tiles(subset):
    photo = encode(sample_rgb(subset).resize((512, 384), Image.Resampling.BICUBIC), "JPEG", quality=90)
    views = image_bytes_to_views(photo)
    assert torch.equal(views, image_to_views(decode_image(photo)))


def test_tiles_can_be_switched_off(subset):
    photo = encode(sample_rgb(subset).resize((512, 384), Image.Resampling.BICUBIC), "JPEG", quality=90)
    whole_only = image_bytes_to_views(photo, tiles=False)
    assert whole_only.shape == (1, 3, INPUT_SIZE, INPUT_SIZE)
    assert (whole_only[0].float() - image_bytes_to_views(photo)[0].float()).abs().mean() < 1.0
