"""The camera-photo corpus: the committed manifest, and the builder on a tiny archive made here (no download)."""

import dataclasses
import hashlib
import io
import json
import zipfile

import numpy as np
import pytest
from PIL import Image

from training.corpus import (
    MANIFEST,
    MIN_CLEAN_QUALITY,
    SPLITS,
    CorpusError,
    PhotoSource,
    build,
    check_sources,
    installed_photo,
    jpeg_quality,
    load_built,
    read_manifest,
)


def test_the_manifest_pins_every_photo_once_split_by_photo():
    photos = read_manifest()
    assert len(photos) >= 60 and len({p.id for p in photos}) == len(photos)
    assert {p.split for p in photos} == set(SPLITS)
    assert all(len(p.archive_sha256) == 64 and len(p.file_sha256) == 64 and p.licence for p in photos)
    assert not {p.file_sha256 for p in photos if p.split == "test"} & {
        p.file_sha256 for p in photos if p.split != "test"
    }


def test_photos_saved_below_the_clean_quality_are_train_only_at_half_size():
    for photo in read_manifest():
        if photo.jpeg_quality is not None and photo.jpeg_quality < MIN_CLEAN_QUALITY:
            assert photo.split == "train" and photo.half_size


def test_installed_fixtures_are_the_pinned_test_photos():
    data = installed_photo("scikit-image--coffee")
    photo = next(p for p in read_manifest() if p.id == "scikit-image--coffee")
    assert photo.split == "test" and hashlib.sha256(data).hexdigest() == photo.file_sha256


def photo_bytes(seed: int, size: tuple[int, int] = (96, 64), quality: int = 90) -> bytes:
    """A random but photo-like (smooth) JPEG: each seed a different picture."""
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.integers(0, 256, (6, 9, 3), dtype=np.uint8)).resize(size, Image.BICUBIC)
    buffer = io.BytesIO()
    coarse.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


@pytest.fixture
def tiny_archive(tmp_path):
    """A wheel-shaped zip with three distinct photos, and the manifest entries that pin it."""
    archive = tmp_path / "archives" / "photos_pkg-1.0-py3-none-any.whl"
    archive.parent.mkdir()
    files = {f"photos_pkg/data/p{i}.jpg": photo_bytes(i) for i in range(3)}
    with zipfile.ZipFile(archive, "w") as packed:
        for name, data in files.items():
            packed.writestr(name, data)
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    entries = [
        PhotoSource(
            id=f"pkg--p{i}",
            source="pypi",
            package="photos-pkg",
            version="1.0",
            archive=archive.name,
            archive_sha256=digest,
            path=name,
            file_sha256=hashlib.sha256(data).hexdigest(),
            licence="MIT",
            width=96,
            height=64,
            format="JPEG",
            jpeg_quality=90,
            description="test",
            split=split,
        )
        for (i, (name, data)), split in zip(enumerate(files.items()), ("train", "val", "test"), strict=True)
    ]
    return archive.parent, entries


def test_build_extracts_verifies_and_writes_the_manifest(tmp_path, tiny_archive):
    archives, entries = tiny_archive
    built = build(tmp_path / "photos", entries, archives)
    assert [p.split for p in built] == ["train", "val", "test"]
    for photo in built:
        assert (tmp_path / "photos" / photo.file).is_file() and photo.file.startswith(photo.split + "/")
        assert (photo.width, photo.height, photo.jpeg_quality) == (96, 64, 90)
    manifest = json.loads((tmp_path / "photos" / "manifest.json").read_text())
    assert [m["id"] for m in manifest] == [e.id for e in entries]
    assert [p.id for p in load_built(tmp_path / "photos", "test")] == ["pkg--p2"]


def test_a_changed_archive_or_file_is_refused(tmp_path, tiny_archive):
    archives, entries = tiny_archive
    with pytest.raises(CorpusError, match="sha256"):
        build(tmp_path / "a", [dataclasses.replace(entries[0], archive_sha256="0" * 64)], archives)
    with pytest.raises(CorpusError, match="sha256"):
        build(tmp_path / "b", [dataclasses.replace(entries[0], file_sha256="0" * 64)], archives)


def test_near_duplicates_are_refused(tmp_path, tiny_archive):
    archives, entries = tiny_archive
    twin = dataclasses.replace(entries[1], id="pkg--twin", path=entries[0].path, file_sha256=entries[0].file_sha256)
    with pytest.raises(CorpusError, match="near-duplicate"):
        build(tmp_path / "photos", [entries[0], twin], archives)


@pytest.mark.parametrize(
    "change",
    [
        {"package": "lxqt-themes"},
        {"package": "mate-backgrounds"},
        {"package": "opencv-doc"},
        {"path": "opencv-4.10.0/samples/data/lena.jpg"},
        {"package": "opencv-python"},
    ],
)
def test_reserved_sources_are_refused_before_anything_is_fetched(tiny_archive, change):
    _, entries = tiny_archive
    with pytest.raises(CorpusError, match="reserved"):
        check_sources([dataclasses.replace(entries[0], **change)])


def test_a_low_quality_photo_outside_train_is_refused(tiny_archive):
    _, entries = tiny_archive
    with pytest.raises(CorpusError, match="train only"):
        check_sources([dataclasses.replace(entries[2], jpeg_quality=MIN_CLEAN_QUALITY - 1)])


@pytest.mark.parametrize("quality", [20, 50, 75, 92, 100])
def test_jpeg_quality_recovers_pillows_quality(quality):
    assert jpeg_quality(photo_bytes(0, quality=quality)) == quality


def test_jpeg_quality_is_none_for_other_formats():
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, format="PNG")
    assert jpeg_quality(buffer.getvalue()) is None and jpeg_quality(b"not an image") is None


def test_the_manifest_file_is_valid_json_of_pinned_sources():
    assert isinstance(json.loads(MANIFEST.read_text()), list)
