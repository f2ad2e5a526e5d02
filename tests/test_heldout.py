"""Held-out CIFAR-10-C corruptions (evaluation only): the required kinds, severity, published formulas.

Shape, determinism and RNG isolation are tested for both tables at once in test_corruptions.py."""

import itertools

import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as F
from PIL import Image

from bench.inputs import mean_abs_change
from detector.corruptions import KINDS, SEVERITIES
from evaluation.heldout import HELDOUT, HELDOUT_KINDS, corrupt_heldout

# The reference's own parameters are not monotone in visible change for these three.
NON_MONOTONE = {"glass_blur", "saturate", "elastic_transform"}
TIE = 0.1  # uint8 levels of mean absolute change allowed between neighbouring severities


def test_table_holds_the_required_kinds_none_of_them_trained_on():
    required = {"shot_noise", "impulse_noise", "speckle_noise", "defocus_blur", "motion_blur", "zoom_blur"}
    required |= {"contrast", "saturate", "pixelate", "fog"}
    assert required <= set(HELDOUT_KINDS)
    assert tuple(HELDOUT) == HELDOUT_KINDS
    assert not set(HELDOUT_KINDS) & set(KINDS)


def test_published_cifar_parameters():
    """Spot checks against make_cifar_c.py (not the ImageNet-C values, which differ)."""
    assert HELDOUT["shot_noise"].values == (500, 250, 100, 75, 50)
    assert HELDOUT["contrast"].values == (0.75, 0.5, 0.4, 0.3, 0.15)
    assert HELDOUT["pixelate"].values == (0.95, 0.9, 0.85, 0.75, 0.65)
    assert HELDOUT["motion_blur"].values == ((6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5))
    assert HELDOUT["fog"].values == ((0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75))


@pytest.mark.parametrize("kind", HELDOUT_KINDS)
def test_change_grows_with_severity(images, kind):
    """Mean absolute change over 20 images; the reference's non-monotone kinds keep their published shape."""
    change = [
        float(np.mean([mean_abs_change(im, corrupt_heldout(im, kind, s, seed=i)) for i, im in enumerate(images)]))
        for s in SEVERITIES
    ]
    pairs = list(itertools.pairwise(change))
    if kind == "saturate":  # 1-2 desaturate (x0.3, x0.1), 3-5 oversaturate (x1.5 mildest)
        assert change[2] < change[0] < change[1] and change[2] < change[3] < change[4], change
    elif kind == "glass_blur":  # two shuffle passes (4, 5) move more than one (1-3)
        assert max(change[:3]) < min(change[3:]), change
    elif kind == "elastic_transform":  # the random affine shrinks from 8% to 3% of the side
        assert all(later <= earlier + TIE for earlier, later in pairs), change
    else:
        assert kind not in NON_MONOTONE
        assert all(later >= earlier - TIE for earlier, later in pairs), change
        assert change[4] > change[0] + 1, change


@pytest.mark.parametrize("kind", HELDOUT_KINDS)
def test_non_square_image_of_another_size(images, kind):
    image = F.resize(images[3], [48, 64], antialias=True)  # (3, 48, 64)
    for severity in (1, 5):
        corrupted = corrupt_heldout(image, kind, severity, seed=severity)
        assert corrupted.shape == (3, 48, 64) and corrupted.dtype == torch.uint8
        assert not torch.equal(corrupted, image)
    if kind == "fog":  # the haze reaches the far corner, beyond the first 32x32
        assert not torch.equal(corrupted[:, 32:, 32:], image[:, 32:, 32:])


def test_contrast_matches_the_reference_formula(images):
    for severity, factor in zip(SEVERITIES, (0.75, 0.5, 0.4, 0.3, 0.15), strict=True):
        x = images[:5].double() / 255
        means = x.mean(dim=(2, 3), keepdim=True)
        expected = (((x - means) * factor + means).clamp(0, 1) * 255).to(torch.uint8)
        got = torch.stack([corrupt_heldout(im, "contrast", severity, seed=0) for im in images[:5]])
        assert (got.int() - expected.int()).abs().max() <= 1  # float summation order only
        assert (got == expected).float().mean() > 0.99


def test_pixelate_is_a_pil_box_round_trip(images):
    for severity, size in zip(SEVERITIES, (30, 28, 27, 24, 20), strict=True):
        for image in images[:5]:
            pil = Image.fromarray(image.permute(1, 2, 0).numpy())
            round_trip = pil.resize((size, size), Image.Resampling.BOX).resize((32, 32), Image.Resampling.BOX)
            expected = torch.from_numpy(np.asarray(round_trip).copy()).permute(2, 0, 1)
            assert torch.equal(corrupt_heldout(image, "pixelate", severity, seed=0), expected)


@pytest.mark.parametrize(("severity", "sigma"), [(1, 0.4), (2, 0.5), (3, 0.6)])
def test_defocus_with_a_subpixel_disk_is_a_3x3_gaussian(images, severity, sigma):
    """Radii 0.3-0.5 cover one pixel, so the kernel is the anti-aliasing 3x3 Gaussian alone."""
    for image in images[:5]:
        blurred = F.gaussian_blur(image.double() / 255, kernel_size=[3, 3], sigma=[sigma, sigma])
        expected = (blurred.clamp(0, 1) * 255).to(torch.uint8)
        got = corrupt_heldout(image, "defocus_blur", severity, seed=0)
        assert (got.int() - expected.int()).abs().max() <= 1
        assert (got == expected).float().mean() > 0.95  # truncation makes float rounding show


def test_saturate_scales_the_channel_spread(images):
    """In HSV, V = max and S = (max - min) / max, so scaling S by 0.1 keeps max and scales max - min by 0.1."""
    for image in images[:5]:
        got = corrupt_heldout(image, "saturate", 2, seed=0).int()
        x = image.int()
        assert (got.amax(0) - x.amax(0)).abs().max() <= 1
        spread, new_spread = x.amax(0) - x.amin(0), got.amax(0) - got.amin(0)
        assert ((new_spread - 0.1 * spread).abs() <= 1.01).all()


def test_shot_and_impulse_noise_statistics():
    """On flat grey, shot noise has std sqrt(x / photons); impulse noise sets `amount` of the values to 0 or 255."""
    grey = torch.full((3, 64, 64), 128, dtype=torch.uint8)
    x = 128 / 255
    for severity, photons in zip(SEVERITIES, (500, 250, 100, 75, 50), strict=True):
        noisy = corrupt_heldout(grey, "shot_noise", severity, seed=severity).double() / 255
        assert abs(noisy.std().item() / np.sqrt(x / photons) - 1) < 0.1
        assert abs(noisy.mean().item() - x) < 0.01
    for severity, amount in zip(SEVERITIES, (0.01, 0.02, 0.03, 0.05, 0.07), strict=True):
        noisy = corrupt_heldout(grey, "impulse_noise", severity, seed=severity)
        hit = ((noisy == 0) | (noisy == 255)).float().mean().item()
        assert abs(hit - amount) < 0.3 * amount + 0.003
        assert ((noisy == 128) | (noisy == 0) | (noisy == 255)).all()
