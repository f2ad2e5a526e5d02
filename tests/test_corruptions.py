"""The corruption table: every kind x severity changes the image, deterministically, more with severity."""

import pytest
import torch
import torchvision.transforms.v2.functional as F

from tests.images import mean_abs_change, sample_rgb
from training.corruptions import CORRUPTIONS, KINDS, SEVERITIES, corrupt


def test_five_families_with_five_severities():
    assert KINDS == ("gaussian_noise", "gaussian_blur", "jpeg_compression", "brightness", "occlusion")
    for corruption in CORRUPTIONS.values():
        assert len(corruption.values) == len(SEVERITIES)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("severity", SEVERITIES)
def test_every_kind_and_severity_changes_the_image(images, kind, severity):
    for index, image in enumerate(images):
        corrupted = corrupt(image, kind, severity, seed=index)
        assert corrupted.shape == image.shape and corrupted.dtype == torch.uint8
        assert not torch.equal(corrupted, image), f"{kind} {severity} left image {index} unchanged"


@pytest.mark.parametrize("kind", KINDS)
def test_same_seed_same_result_other_seed_other_result(images, kind):
    image = images[0]
    assert torch.equal(corrupt(image, kind, 3, seed=7), corrupt(image, kind, 3, seed=7))
    if kind not in ("gaussian_blur", "jpeg_compression"):  # these two have no randomness
        outputs = {corrupt(image, kind, 3, seed=seed).numpy().tobytes() for seed in range(8)}
        assert len(outputs) > 1


def test_corrupt_does_not_touch_the_global_generator(images):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    corrupt(images[0], "gaussian_noise", 5, seed=1)
    assert torch.equal(torch.rand(3), expected)


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


def test_unknown_severity_is_refused(images):
    with pytest.raises(ValueError):
        corrupt(images[0], "occlusion", 6, seed=0)
