"""client/sources.py: what a run scores, from local folders, globs and list files, and from fsspec URLs (fsspec's own
in-memory filesystem stands in for a bucket: a real filesystem implementation, no network)."""

import os

import fsspec
import pytest

from client.sources import find_sources, listed, missing, read_bytes


@pytest.fixture
def bucket() -> str:
    """memory://photos/ laid out as a user's bucket: nested images, a hidden folder, a file that is not an image."""
    fs = fsspec.filesystem("memory")
    root = f"photos-{os.getpid()}-{id(fs)}"
    for name in ("b.jpg", "2024/a.png", "2024/june/c.WEBP", ".thumbnails/b.jpg", "notes.txt"):
        fs.pipe(f"/{root}/{name}", name.encode())
    yield f"memory://{root}"
    fs.rm(f"/{root}", recursive=True)


def test_a_url_folder_is_searched_like_a_local_one(bucket):
    sources = find_sources([f"{bucket}/"])
    assert [source.path for source in sources] == [
        f"memory:///{bucket[9:]}/{name}" for name in ("2024/a.png", "2024/june/c.WEBP", "b.jpg")
    ]
    assert [source.size for source in sources] == [len(b"2024/a.png"), len(b"2024/june/c.WEBP"), len(b"b.jpg")]
    assert read_bytes(sources[0].path) == b"2024/a.png"


def test_url_globs_and_files_and_what_does_not_exist(bucket):
    assert [s.path.rsplit("/", 1)[1] for s in find_sources([f"{bucket}/**/*.png", f"{bucket}/notes.txt"])] == [
        "a.png",
        "notes.txt",
    ]
    assert missing([f"{bucket}/nothing.jpg", f"{bucket}/b.jpg", f"{bucket}/*.gif"]) == [f"{bucket}/nothing.jpg"]


def test_local_files_carry_size_and_modification_time_and_a_rewrite_changes_the_key(tmp_path):
    (tmp_path / "a.png").write_bytes(b"12345")
    (tmp_path / "list.txt").write_text(f"# scanned nightly\n{tmp_path / 'a.png'}\n\n{tmp_path / 'a.png'}\n")
    (source,) = find_sources(listed(str(tmp_path / "list.txt")))
    assert (source.path, source.size) == (str(tmp_path / "a.png"), 5)
    assert source.mtime == (tmp_path / "a.png").stat().st_mtime
    (tmp_path / "a.png").write_bytes(b"123456")
    assert find_sources([str(tmp_path)])[0].key != source.key
