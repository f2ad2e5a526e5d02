"""The corruption tables: every kind x severity changes the image, deterministically, without touching the
global generators, more with severity; spatial parameters scale with the photo; noise survives a camera's
JPEG save; the CIFAR rows are what the CIFAR grid always was. The generic behaviour is tested once over the
three tables (photo, CIFAR, held-out); held-out formulas are tested in test_heldout.py."""

import io
import itertools

import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as F
from PIL import Image

from bench.inputs import mean_abs_change
from detector.corruptions import (
    CAMERA_JPEG_QUALITY,
    CIFAR_CORRUPTIONS,
    CORRUPTIONS,
    GAMMA,
    KIND_TYPES,
    SAMPLE_KINDS,
    SEVERITIES,
    TYPES,
    VISIBLE_SEVERITIES,
    VISIBLE_SEVERITY,
    apply_seeded,
    camera_jpeg,
    corrupt,
    from_pil,
    jpeg_roundtrip,
)
from evaluation.heldout import HELDOUT
from training.corpus import installed_photo

# (table, its name) pairs; photo kinds are tried on a photo, CIFAR and held-out kinds on CIFAR images.
TABLES = {"photo": CORRUPTIONS, "cifar": CIFAR_CORRUPTIONS, "heldout": HELDOUT}
CASES = [(table, kind) for table, kinds in TABLES.items() for kind in kinds]
# Kinds with no randomness: the same image whatever the seed.
DETERMINISTIC = {
    "gaussian_blur",
    "lens_blur",
    "jpeg_compression",
    "pixelation",
    "defocus_blur",
    "zoom_blur",
    "contrast",
    "saturate",
    "pixelate",
}


@pytest.fixture(scope="module")
def photos() -> torch.Tensor:
    """Two real test-split photos at 300x200, as uint8 CHW."""
    tensors = []
    for name in ("scikit-image--coffee", "scikit-learn--china"):
        image = Image.open(io.BytesIO(installed_photo(name))).convert("RGB").resize((300, 200), Image.LANCZOS)
        tensors.append(from_pil(image))
    return torch.stack(tensors)


def images_for(table: str, images: torch.Tensor, photos: torch.Tensor) -> torch.Tensor:
    return photos if table == "photo" else images[:8]


def test_the_tables_share_no_kind_and_the_cifar_table_is_photo_kinds_at_cifar_rows():
    assert not set(CORRUPTIONS) & set(HELDOUT)
    for kind, corruption in CIFAR_CORRUPTIONS.items():
        assert corruption.family == CORRUPTIONS[kind].family and len(corruption.values) == len(SEVERITIES)


@pytest.mark.parametrize(("table", "kind"), CASES)
def test_every_severity_changes_the_image_and_keeps_shape_and_dtype(images, photos, table, kind):
    corruption = TABLES[table][kind]
    assert corruption.kind == kind and len(corruption.values) == len(SEVERITIES)
    for severity in SEVERITIES:
        for index, image in enumerate(images_for(table, images, photos)):
            corrupted = corruption(image, severity, seed=index)
            assert corrupted.shape == image.shape and corrupted.dtype == torch.uint8
            assert not torch.equal(corrupted, image), f"{kind} {severity} left image {index} unchanged"


@pytest.mark.parametrize(("table", "kind"), CASES)
def test_same_seed_same_result_other_seed_other_result_where_random(images, photos, table, kind):
    corruption, image = TABLES[table][kind], images_for(table, images, photos)[0]
    assert torch.equal(corruption(image, 3, seed=7), corruption(image, 3, seed=7))
    outputs = {corruption(image, 3, seed=seed).numpy().tobytes() for seed in range(4)}
    assert (len(outputs) == 1) == (kind in DETERMINISTIC), f"{len(outputs)} outcomes of 4 seeds"


@pytest.mark.parametrize(("table", "kind"), CASES)
def test_the_global_generators_are_left_alone(images, photos, table, kind):
    np.random.seed(123)
    torch.manual_seed(123)
    expected_np, expected_torch = np.random.random(3), torch.rand(3)
    np.random.seed(123)
    torch.manual_seed(123)
    TABLES[table][kind](images_for(table, images, photos)[0], 5, seed=1)
    assert np.array_equal(np.random.random(3), expected_np)
    assert torch.equal(torch.rand(3), expected_torch)


@pytest.mark.parametrize(("table", "kind"), CASES)
def test_severity_outside_one_to_five_and_non_images_are_refused(images, table, kind):
    with pytest.raises(ValueError):
        TABLES[table][kind](images[0], 6, seed=0)
    with pytest.raises(ValueError):
        TABLES[table][kind](images[0].float(), 3, seed=0)


@pytest.mark.parametrize("kind", CORRUPTIONS)
def test_stronger_severity_changes_a_photo_more(photos, kind):
    """Mean absolute pixel change, over two photos and four seeds, grows with severity."""
    changes = [
        np.mean([mean_abs_change(photo, corrupt(photo, kind, s, seed)) for photo in photos for seed in range(4)])
        for s in SEVERITIES
    ]
    assert changes[-1] > changes[0] and all(b >= a * 0.9 for a, b in itertools.pairwise(changes)), changes


@pytest.mark.parametrize("kind", ["gaussian_blur", "lens_blur", "shake_blur", "occlusion"])
def test_spatial_parameters_scale_with_the_shorter_side(photos, kind):
    """The same photo at 300x200 and at 600x400, corrupted alike: the large one shrunk looks like the small one."""
    small = photos[0]
    large = F.resize(small, [400, 600], antialias=True)
    shrunk = F.resize(corrupt(large, kind, 4, seed=3), [200, 300], antialias=True)
    alike = mean_abs_change(shrunk, corrupt(small, kind, 4, seed=3))
    assert alike < 0.35 * mean_abs_change(small, corrupt(small, kind, 4, seed=3)), kind


@pytest.mark.parametrize("kind", ["gaussian_blur", "lens_blur", "shake_blur"])
def test_a_part_is_damaged_as_inside_its_whole(photos, kind):
    """Told the whole image's shorter side, a blur of a part has the whole's radius: the middle of the blurred part
    matches the middle of the part of the blurred whole, and differs from the part blurred as an image of its own."""
    whole = F.resize(photos[0], [400, 600], antialias=True)
    part = whole[:, 100:300, 200:400]
    as_inside = CORRUPTIONS[kind](part, 3, seed=5, whole_short_side=400)[:, 60:140, 60:140]
    of_whole = CORRUPTIONS[kind](whole, 3, seed=5)[:, 160:240, 260:340]
    on_its_own = CORRUPTIONS[kind](part, 3, seed=5)[:, 60:140, 60:140]
    assert mean_abs_change(as_inside, of_whole) < 0.5 * mean_abs_change(on_its_own, of_whole), kind


def test_only_relative_parameters_follow_the_whole_short_side(photos):
    part = photos[0][:, :100, :100]
    noisy = CORRUPTIONS["gaussian_noise"](part, 3, seed=1)
    assert torch.equal(noisy, CORRUPTIONS["gaussian_noise"](part, 3, seed=1, whole_short_side=4000))


def test_noise_survives_the_camera_jpeg_save(photos):
    photo = photos[0]
    clean, noisy = jpeg_roundtrip(photo, 92), jpeg_roundtrip(corrupt(photo, "gaussian_noise", 3, seed=0), 92)
    residual = (noisy.float() - clean.float()) / 255
    assert float(residual.std()) > 0.025, "the save at q92 kept most of sigma 0.04"


def test_exposure_is_in_stops_of_linear_light(photos):
    photo = F.to_dtype(photos[0], torch.float32, scale=True)
    dark = F.to_dtype(photo.clamp(0.05, 0.35), torch.uint8, scale=True)  # no clipping at +1 stop
    brighter = [corrupt(dark, "exposure", 2, seed) for seed in range(8)]
    ratios = [float(b.float().mean() / dark.float().mean()) for b in brighter]
    up, down = 2 ** (1 / GAMMA), 2 ** (-1 / GAMMA)  # one stop of linear light, up or down, on sRGB values
    assert all(min(abs(r - up), abs(r - down)) < 0.015 for r in ratios), ratios
    assert any(r > 1 for r in ratios) and any(r < 1 for r in ratios), "both directions"


@pytest.mark.parametrize("kind", [kind for kind, corruption in CORRUPTIONS.items() if corruption.unchanged is not None])
def test_a_kinds_unchanged_parameter_leaves_the_photo_as_it_was(photos, kind):
    corruption = CORRUPTIONS[kind]
    for seed in range(4):  # both directions of the signed kinds, both targets of low contrast
        assert torch.equal(apply_seeded(corruption.apply, photos[0], corruption.unchanged, seed), photos[0])
    assert not torch.equal(apply_seeded(corruption.apply, photos[0], corruption.values[0], 0), photos[0])


def test_occlusions_reach_corners_and_edges(photos):
    photo = photos[0]
    touched = 0
    for seed in range(30):
        changed = (corrupt(photo, "occlusion", 3, seed) != photo).any(dim=0)
        touched += bool(changed[0].any() or changed[-1].any() or changed[:, 0].any() or changed[:, -1].any())
    assert touched >= 10, "occluders must also sit on the frame's edges"


def test_cifar_rows_are_the_cifar_grid_it_always_was(images):
    image = images[0]
    blurred = CIFAR_CORRUPTIONS["gaussian_blur"](image, 1, seed=0)
    assert torch.equal(blurred, F.gaussian_blur(image, kernel_size=[5, 5], sigma=[0.5, 0.5]))
    exposed = CIFAR_CORRUPTIONS["exposure"](image, 3, seed=0)
    assert any(torch.equal(exposed, F.adjust_brightness(image, factor)) for factor in (2.0, 0.5))


def test_the_visible_severities_run_from_the_visible_one_to_the_strongest():
    assert VISIBLE_SEVERITIES == (3, 4, 5) == tuple(range(VISIBLE_SEVERITY, max(SEVERITIES) + 1))


def test_each_kind_is_trained_as_its_familys_type():
    assert SAMPLE_KINDS[0] == TYPES[0] == "clean" and KIND_TYPES[0] == 0
    for kind, type_index in zip(SAMPLE_KINDS[1:], KIND_TYPES[1:], strict=True):
        assert TYPES[type_index] == CORRUPTIONS[kind].family


def test_camera_jpeg_draws_a_camera_quality(photos):
    saved = [camera_jpeg(photos[0], np.random.default_rng(seed)) for seed in range(3)]
    assert all(s.shape == photos[0].shape for s in saved) and len({s.numpy().tobytes() for s in saved}) > 1
    quality = int(np.random.default_rng(0).integers(CAMERA_JPEG_QUALITY[0], CAMERA_JPEG_QUALITY[1] + 1))
    assert torch.equal(saved[0], jpeg_roundtrip(photos[0], quality)), "a JPEG at the quality drawn"
