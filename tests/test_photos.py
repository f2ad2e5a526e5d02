"""The real photographs shipped by pinned pip packages, and the JPEG quality estimate."""

import io

import numpy as np
import pytest
from PIL import Image

from detector.decoding import decode_image
from evaluation import photos
from evaluation.photos import PHOTOS, MissingPhotoPackageError, Photo, jpeg_quality, load_photos


@pytest.fixture(scope="module")
def loaded() -> list[Photo]:
    return load_photos()


def test_at_least_twenty_photos_load_with_unique_names(loaded):
    assert len(loaded) >= 20
    assert len(loaded) == len(PHOTOS)
    names = [photo.name for photo in loaded]
    assert len(set(names)) == len(names)
    assert set(names) >= photos.GREYSCALE


def test_every_photo_decodes_to_rgb_at_native_size(loaded):
    for photo in loaded:
        assert photo.data, photo.source
        image = decode_image(photo.data)
        assert image.mode == "RGB", photo.name
        assert max(image.size) >= 256, (photo.name, image.size)
        # decode_image only transposes by EXIF; the file's own size is what it decodes to.
        assert sorted(image.size) == sorted(Image.open(io.BytesIO(photo.data)).size), photo.name


def test_sources_name_the_distribution_and_path(loaded):
    for photo, (name, distribution, path) in zip(loaded, PHOTOS, strict=True):
        assert photo.name == name
        assert photo.source == f"{distribution}:{path}"


def test_a_missing_package_names_what_to_install(monkeypatch):
    monkeypatch.setattr(photos, "PHOTOS", (("nothing", "no-such-photo-package", "x.jpg"),))
    with pytest.raises(MissingPhotoPackageError, match="no-such-photo-package"):
        photos.load_photos()


def _noise_image() -> Image.Image:
    rng = np.random.default_rng(0)
    smooth = np.kron(rng.integers(0, 256, (12, 16, 3)), np.ones((16, 16, 1)))
    return Image.fromarray(np.clip(smooth + rng.normal(0, 12, smooth.shape), 0, 255).astype(np.uint8))


@pytest.mark.parametrize("quality", [50, 75, 90, 95])
def test_jpeg_quality_recovers_pillows_quality(quality):
    buffer = io.BytesIO()
    _noise_image().save(buffer, "JPEG", quality=quality)
    estimate = jpeg_quality(buffer.getvalue())
    assert estimate is not None and abs(estimate - quality) <= 1


@pytest.mark.parametrize("quality", range(5, 101, 5))
def test_jpeg_quality_is_exact_for_every_ijg_quality(quality):
    buffer = io.BytesIO()
    Image.new("L", (64, 64), 128).save(buffer, "JPEG", quality=quality)
    assert jpeg_quality(buffer.getvalue()) == quality


def test_jpeg_quality_is_none_for_other_formats():
    buffer = io.BytesIO()
    _noise_image().save(buffer, "PNG")
    assert jpeg_quality(buffer.getvalue()) is None
    assert jpeg_quality(b"not an image") is None
