"""The corruption tables: every kind x severity changes the image, deterministically, without touching the
global generators. The generic behaviour is tested once over both tables (training and held-out); each
table's own formulas are tested here (training) and in test_heldout.py."""

import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as F

from bench.inputs import mean_abs_change, sample_rgb
from detector.corruptions import CORRUPTIONS, KIND_TYPES, KINDS, SAMPLE_KINDS, SEVERITIES, TYPES, corrupt
from evaluation.heldout import HELDOUT

BOTH_TABLES = {**CORRUPTIONS, **HELDOUT}
# Kinds with no randomness: the same image whatever the seed.
DETERMINISTIC = {"gaussian_blur", "jpeg_compression", "defocus_blur", "zoom_blur", "contrast", "saturate", "pixelate"}


def test_five_families_with_five_severities():
    assert KINDS == ("gaussian_noise", "gaussian_blur", "jpeg_compression", "brightness", "occlusion")
    for corruption in CORRUPTIONS.values():
        assert len(corruption.values) == len(SEVERITIES)


def test_the_tables_share_no_kind():
    assert len(BOTH_TABLES) == len(CORRUPTIONS) + len(HELDOUT)


@pytest.mark.parametrize("kind", BOTH_TABLES)
def test_every_severity_changes_the_image_and_keeps_shape_and_dtype(images, kind):
    corruption = BOTH_TABLES[kind]
    assert corruption.kind == kind and len(corruption.values) == len(SEVERITIES)
    for severity in SEVERITIES:
        for index, image in enumerate(images[:8]):
            corrupted = corruption(image, severity, seed=index)
            assert corrupted.shape == image.shape and corrupted.dtype == torch.uint8
            assert not torch.equal(corrupted, image), f"{kind} {severity} left image {index} unchanged"


@pytest.mark.parametrize("kind", BOTH_TABLES)
def test_same_seed_same_result_other_seed_other_result_where_random(images, kind):
    corruption = BOTH_TABLES[kind]
    image = images[0]
    assert torch.equal(corruption(image, 3, seed=7), corruption(image, 3, seed=7))
    outputs = {corruption(image, 3, seed=seed).numpy().tobytes() for seed in range(4)}
    assert (len(outputs) == 1) == (kind in DETERMINISTIC), f"{len(outputs)} outcomes of 4 seeds"


@pytest.mark.parametrize("kind", BOTH_TABLES)
def test_the_global_generators_are_left_alone(images, kind):
    np.random.seed(123)
    torch.manual_seed(123)
    expected_np, expected_torch = np.random.random(3), torch.rand(3)
    np.random.seed(123)
    torch.manual_seed(123)
    BOTH_TABLES[kind](images[0], 5, seed=1)
    assert np.array_equal(np.random.random(3), expected_np)
    assert torch.equal(torch.rand(3), expected_torch)


@pytest.mark.parametrize("kind", BOTH_TABLES)
def test_severity_outside_one_to_five_and_non_images_are_refused(images, kind):
    with pytest.raises(ValueError):
        BOTH_TABLES[kind](images[0], 6, seed=0)
    with pytest.raises(ValueError):
        BOTH_TABLES[kind](images[0].float(), 3, seed=0)


def test_severities_between_rows_interpolate_numeric_parameters_only():
    assert CORRUPTIONS["gaussian_noise"].value(2.5) == pytest.approx((0.04 + 0.06) / 2)
    with pytest.raises(ValueError, match="tuple"):
        HELDOUT["motion_blur"].value(2.5)


def test_each_kind_is_trained_as_its_familys_type():
    assert SAMPLE_KINDS[0] == TYPES[0] == "clean" and KIND_TYPES[0] == 0
    for kind, type_index in zip(SAMPLE_KINDS[1:], KIND_TYPES[1:], strict=True):
        assert TYPES[type_index] == CORRUPTIONS[kind].family


@pytest.mark.parametrize("kind", KINDS)
def test_stronger_severity_changes_the_image_more(images, kind):
    """Mean absolute pixel change, averaged over 20 images, grows with severity."""
    changes = [
        sum(mean_abs_change(image, corrupt(image, kind, severity, seed=i)) for i, image in enumerate(images))
        for severity in SEVERITIES
    ]
    assert changes == sorted(changes) and changes[0] < changes[-1], changes


def test_brightness_goes_both_darker_and_brighter(images):
    means = [float(corrupt(images[0], "brightness", 4, seed=seed).float().mean()) for seed in range(16)]
    original = float(images[0].float().mean())
    assert min(means) < original < max(means)


def test_blur_lowers_sharpness(subset):
    image = F.pil_to_tensor(sample_rgb(subset))
    blurred = corrupt(image, "gaussian_blur", 3, seed=0)

    def sharpness(x: torch.Tensor) -> float:
        return float(x.float().diff(dim=-1).abs().mean())

    assert sharpness(blurred) < sharpness(image)
