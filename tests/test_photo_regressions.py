"""A 12 MP phone-sized photo with sensor noise: resizing to 32x32 hides the noise, the native tiles find it."""

import io

import numpy as np
import pytest
import torch
from PIL import Image

from detector.corruptions import corrupt
from detector.inference import CorruptionDetector
from detector.preprocessing import image_bytes_to_views, normalise
from evaluation.photos import load_photos
from training.archive import SHIPPED_WEIGHTS

PHONE_SIZE = (4000, 3000)


@pytest.fixture(scope="module")
def detector() -> CorruptionDetector:
    return CorruptionDetector(SHIPPED_WEIGHTS, corruption_type=True)


def phone_jpeg(name: str, noisy: bool) -> bytes:
    """A real photo at phone resolution, with or without sensor noise (sigma 0.06), as a quality-95 JPEG."""
    photo = next(p for p in load_photos() if p.name == name)
    image = Image.open(io.BytesIO(photo.data)).convert("RGB").resize(PHONE_SIZE, Image.Resampling.BICUBIC)
    pixels = torch.from_numpy(np.array(image)).permute(2, 0, 1).contiguous()
    if noisy:
        pixels = corrupt(pixels, "gaussian_noise", 3, seed=0)
    buffer = io.BytesIO()
    Image.fromarray(pixels.permute(1, 2, 0).numpy()).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


@pytest.mark.parametrize("name", ["astronaut", "chelsea_cat"])
def test_sensor_noise_on_a_phone_photo_is_caught(detector, name):
    noisy = phone_jpeg(name, noisy=True)
    answer = detector.predict([noisy])[0]
    assert answer["label"] == "corrupted", answer
    assert max(answer["corruption_type"], key=answer["corruption_type"].get) == "noise"
    whole_view_only = detector.model.outputs(normalise(image_bytes_to_views(noisy)[:1])).probabilities[0, 1]
    assert whole_view_only < 0.5, "the 32x32 resize alone should have hidden the noise"


@pytest.mark.parametrize("name", ["astronaut", "chelsea_cat"])
def test_the_same_photo_without_noise_stays_clean(detector, name):
    assert detector.predict([phone_jpeg(name, noisy=False)])[0]["label"] == "clean"
