"""What a run scores: the files that arguments name (files, folders, globs, list files; local paths or fsspec URLs
such as s3://bucket/photos/ where the environment has that filesystem), found once, in argument order.

Both engines score the same list: the CLI's --server and --local (client/cli.py), and Ray (client/ray_engine.py),
which also keys its resumable results by a file's path, size and modification time (`Source.key`).
"""

import glob
import sys
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from detector.paths import IMAGE_SUFFIXES

# Where a filesystem's listing says when an object last changed: local and SFTP, S3, Azure, GCS.
MODIFIED_KEYS = ("mtime", "LastModified", "last_modified", "updated")


@dataclass(frozen=True)
class Source:
    """One file to score: its path or URL as found, its size in bytes and modification time (seconds since the
    epoch) where the filesystem tells them (None otherwise)."""

    path: str
    size: int | None = None
    mtime: float | None = None

    @property
    def key(self) -> tuple[str, int | None, float | None]:
        """What makes a result still valid: the same path with the same size and modification time."""
        return self.path, self.size, self.mtime


def is_url(path: str) -> bool:
    return "://" in path


def read_bytes(path: str) -> bytes:
    """A file's bytes, local or by URL (fsspec); OSError when it cannot be read."""
    if not is_url(path):
        return Path(path).read_bytes()
    import fsspec  # a dependency of torch; imported for URLs only

    with fsspec.open(path, "rb") as stream:
        return stream.read()


def wanted(relative: str) -> bool:
    """A folder search scores images only, and skips hidden files and folders (.thumbnails/, .DS_Store)."""
    parts = Path(relative).parts
    return Path(relative).suffix.lower() in IMAGE_SUFFIXES and not any(part.startswith(".") for part in parts)


def local_source(path: Path) -> Source:
    try:
        stat = path.stat()
    except OSError:
        return Source(str(path))  # scored anyway: its row says why it cannot be read
    return Source(str(path), stat.st_size, stat.st_mtime)


def expand_local(path: str) -> list[Source]:
    """The files one local argument names: itself, a folder's images (recursive, sorted), or a glob's matches."""
    candidate = Path(path)
    if candidate.is_dir():
        files = (file for file in candidate.rglob("*") if file.is_file())
        return [local_source(file) for file in sorted(files) if wanted(file.relative_to(candidate).as_posix())]
    if candidate.exists() or not glob.has_magic(path):
        return [local_source(candidate)]
    return [local_source(Path(match)) for match in sorted(glob.glob(path, recursive=True)) if Path(match).is_file()]


def modified(info: dict) -> float | None:
    """A listing entry's modification time in seconds since the epoch, whichever way its filesystem spells it."""
    for name in MODIFIED_KEYS:
        value = info.get(name)
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, datetime):
            return value.timestamp()
        if isinstance(value, str):
            return datetime.fromisoformat(value).timestamp()
    return None


def expand_url(url: str) -> list[Source]:
    """As expand_local for an fsspec URL; sizes and times come from the listing, not one request per file."""
    import fsspec

    fs, root = fsspec.core.url_to_fs(url)

    def source(info: dict) -> Source:
        return Source(fs.unstrip_protocol(info["name"]), info.get("size"), modified(info))

    if glob.has_magic(root) and not fs.exists(root):
        matches = fs.glob(root, detail=True).values()
        return [source(info) for info in sorted(matches, key=lambda info: info["name"]) if info["type"] == "file"]
    if fs.isdir(root):
        found = fs.find(root, detail=True)
        prefix = root.rstrip("/") + "/"
        return [source(found[name]) for name in sorted(found) if wanted(name.removeprefix(prefix))]
    return [source(fs.info(root))]


def expand(path: str) -> list[Source]:
    return expand_url(path) if is_url(path) else expand_local(path)


def exists(path: str) -> bool:
    """Whether an argument names something: a glob may match nothing, which is no error."""
    if glob.has_magic(path):
        return True
    if not is_url(path):
        return Path(path).exists()
    import fsspec

    fs, root = fsspec.core.url_to_fs(path)
    return fs.exists(root)


def listed(list_file: str) -> list[str]:
    """The paths or URLs of a list file, one a line ('-': standard input); blank lines and # comments skipped."""
    text = sys.stdin.read() if list_file == "-" else Path(list_file).read_text()
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def find_sources(paths: list[str]) -> list[Source]:
    """Every file to score, once each, in argument order (a file named twice is scored once)."""
    found: dict[str, Source] = {}
    for path in paths:
        matches = expand(path)
        if not matches:
            print(f"corruption-detect: {path}: no images found", file=sys.stderr)
        for source in matches:
            found.setdefault(source.path, source)
    return list(found.values())


def missing(paths: list[str]) -> list[str]:
    """The arguments naming a file or folder that does not exist."""
    return [path for path in paths if not exists(path)]
