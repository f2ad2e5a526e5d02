"""`corruption-detect --engine ray` on a real local Ray with 2 actors: a run SIGKILLed midway and then rerun scores
every file exactly once, with the labels --local gives them; the parts it keeps are whole after any kill."""

import contextlib
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pyarrow.parquet as pq
import pytest
from PIL import Image

from bench.inputs import bad_images, encode
from client.cli import parts_folder
from client.parts import Parts
from tests.helpers import heavy_noise
from tests.test_cli import CLI, corruption_detect
from training.data import find_images

pytestmark = pytest.mark.integration  # starts Ray: a GCS, a raylet and worker processes

CLEAN, NOISY = 200, 40  # CIFAR-10 test images as they are, and under heavy noise
BATCH = 8
# How long the killed run may take to write its first part: Ray's start and two model loads on a busy machine.
FIRST_PART_S = 300


@pytest.fixture(scope="module")
def folder(tmp_path_factory, subset) -> Path:
    """A few hundred small images (some corrupted for sure) and a truncated file: 241 files."""
    root = tmp_path_factory.mktemp("dataset")
    paths = find_images(subset / "test")
    for index, path in enumerate(paths[:CLEAN]):
        (root / f"{index:04d}.png").write_bytes(path.read_bytes())
    for index, path in enumerate(paths[CLEAN : CLEAN + NOISY]):
        (root / f"noisy-{index:03d}.jpg").write_bytes(encode(heavy_noise(Image.open(path), seed=index), "JPEG"))
    (root / "truncated.png").write_bytes(bad_images(subset)["truncated_png"][0])
    return root


@pytest.fixture
def ray_env() -> Iterator[dict[str, str]]:
    """Ray's session files in a short temporary folder (its socket paths must stay short), no usage reports."""
    with tempfile.TemporaryDirectory(prefix="ray", dir="/tmp") as temporary:
        yield {**os.environ, "RAY_TMPDIR": temporary, "RAY_USAGE_STATS_ENABLED": "0"}


def kill_session(session: int) -> None:
    """SIGKILL every process of a session: the driver's, and Ray's (some outlive the driver)."""
    for process in psutil.process_iter():
        with contextlib.suppress(psutil.Error, ProcessLookupError):
            if os.getsid(process.pid) == session:
                process.kill()


def parquet_rows(path: Path) -> list[dict]:
    return pq.read_table(path).to_pylist()


def test_a_run_killed_midway_resumes_and_scores_every_file_once_as_local_does(folder, tmp_path, ray_env):
    expected_files = len(list(folder.iterdir()))
    local = corruption_detect(str(folder), "--local", "-o", str(tmp_path / "local.parquet"))
    assert local.returncode == 3, local.stderr  # the truncated file
    expected = parquet_rows(tmp_path / "local.parquet")
    assert len(expected) == expected_files
    assert {row["label"] for row in expected} >= {"clean", "corrupted"}, "precondition: heavy noise is flagged"

    output = tmp_path / "scores.parquet"
    arguments = [str(CLI), "--no-progress", "--engine", "ray", "--actors", "2", "--batch-size", str(BATCH),
                 str(folder), "-o", str(output)]  # fmt: skip
    killed = subprocess.Popen(arguments, env=ray_env, start_new_session=True, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + FIRST_PART_S
        while not list(parts_folder(output).glob("part-*.parquet")):
            assert killed.poll() is None, f"the run ended before it could be killed: {killed.stderr.read()}"
            assert time.monotonic() < deadline, "no batch was written"
            time.sleep(0.05)
        assert killed.poll() is None, "the run ended before it could be killed"
    finally:
        os.kill(killed.pid, signal.SIGKILL)
        killed.wait(timeout=60)
        kill_session(killed.pid)
    scored_before = Parts(parts_folder(output)).table().num_rows
    assert BATCH <= scored_before < expected_files, "killed midway: some batches written, not all"
    assert not output.exists()

    resumed = corruption_detect(*arguments[2:])
    assert resumed.returncode == 3, resumed.stderr
    assert f"{scored_before} of {expected_files} files already scored" in resumed.stderr
    rows = parquet_rows(output)
    assert [row["file"] for row in rows] == [row["file"] for row in expected], "every file once, in file order"
    assert [row["label"] for row in rows] == [row["label"] for row in expected]
    assert [row["error"] for row in rows] == [row["error"] for row in expected]
    for mine, theirs in zip(rows, expected, strict=True):
        if theirs["label"]:
            assert mine["p_corrupted"] == pytest.approx(theirs["p_corrupted"], abs=1e-5)
        assert mine["corruption_type"] == theirs["corruption_type"]
    # Exactly once at the source: the killed run's parts plus the rerun's hold each file once.
    assert Parts(parts_folder(output)).table().num_rows == expected_files

    again = corruption_detect(*arguments[2:])
    assert f"{expected_files} of {expected_files} files already scored" in again.stderr, again.stderr
    assert parquet_rows(output) == rows
