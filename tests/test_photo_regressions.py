"""Regression tests from the trial that opened the photo work: test-split photos (never trained on), sent as a
user sends them, through the serving core with the shipped model.

On a 600x400 photo the first detector said "clean" to a Gaussian blur of about 1% of the shorter side, to a
black quadrant in a corner, and (0.505) to noise of sigma 30/255 saved as a phone saves it (JPEG q95).
"""

import io

import numpy as np
import pytest
from PIL import Image, ImageFilter

from detector.corruptions import encode_jpeg
from detector.inference import CorruptionDetector
from detector.paths import SHIPPED_WEIGHTS
from training.corpus import installed_photo

PHOTOS = ("scikit-image--coffee", "scikit-image--chelsea", "scikit-learn--china")


@pytest.fixture(scope="module")
def detector() -> CorruptionDetector:
    return CorruptionDetector(SHIPPED_WEIGHTS)


def photo(name: str) -> Image.Image:
    return Image.open(io.BytesIO(installed_photo(name))).convert("RGB")


def blurred(image: Image.Image) -> Image.Image:
    return image.filter(ImageFilter.GaussianBlur(radius=0.01 * min(image.size)))


def black_corner_quadrant(image: Image.Image) -> Image.Image:
    covered = image.copy()
    covered.paste((0, 0, 0), (0, 0, image.width // 2, image.height // 2))
    return covered


def noisy(image: Image.Image) -> Image.Image:
    noise = np.random.default_rng(0).normal(0, 30, (image.height, image.width, 3))
    return Image.fromarray(np.clip(np.asarray(image, dtype=np.float64) + noise, 0, 255).astype(np.uint8))


# The shipped model still misses this one (P(corrupted) 0.005-0.06 on the three photos): its occlusions were
# random-colour rectangles, textures and blobs anywhere, and a black corner reads as a dark, vignetted scene.
# MODEL_CARD.md "Known limits". Strict: the day a model catches it, this test says so.
MISSED_BY_THE_SHIPPED_MODEL = pytest.mark.xfail(strict=True, reason="black corner quadrant: MODEL_CARD.md Known limits")


@pytest.mark.parametrize("name", PHOTOS)
@pytest.mark.parametrize(
    "damage",
    [blurred, pytest.param(black_corner_quadrant, marks=MISSED_BY_THE_SHIPPED_MODEL), noisy],
    ids=lambda f: f.__name__,
)
def test_visible_damage_saved_at_q95_is_corrupted(detector, name, damage):
    (answer,) = detector.predict([encode_jpeg(damage(photo(name)), 95)])
    assert answer["label"] == "corrupted", answer


@pytest.mark.parametrize("name", PHOTOS)
@pytest.mark.parametrize("quality", [95, 80])
def test_the_same_photo_saved_at_q95_and_q80_is_clean(detector, name, quality):
    (answer,) = detector.predict([encode_jpeg(photo(name), quality)])
    assert answer["label"] == "clean", answer
