"""The Makefile as a user runs it: `make serve` installing serving's requirements only and saying when the model
answers, ports and the page's origin from one variable, two checkouts serving side by side on one host, and a folder
scored into a CSV with one command, without a server."""

import contextlib
import csv
import os
import random
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from bench.inputs import good_images
from bench.torchserve import ROOT
from container.entrypoint import torchserve_args
from tests.helpers import TIMEOUT

# What a checkout holds besides its sources: build outputs and runtime files stay behind.
NOT_COPIED = (".git", ".venv", ".torchserve", "test-artifacts", "data", "checkpoints", "model_store", "__pycache__",
              ".hypothesis", ".pytest_cache", ".ruff_cache", "*.egg-info")  # fmt: skip


# The virtual environment counts as installed at every level (`-o`): a copy shares this one's, and reinstalling
# from a copy would point the editable install at it.
INSTALLED = ("-o", ".venv/.serving", "-o", ".venv/.installed")
REQUIREMENTS = (
    "requirements.txt",
    "requirements-train.txt",
    "requirements-eval.txt",
    "requirements-dev.txt",
    "requirements-ray.txt",
)


def make(checkout: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """`make args` in a checkout, its virtual environment taken as installed."""
    command = ["make", "--no-print-directory", *INSTALLED, *args]
    return subprocess.run(command, cwd=checkout, capture_output=True, text=True, timeout=timeout)


def ports(base: int) -> list[int]:
    """Every port `make serve PORT=base` uses: inference, management, metrics, gRPC twice, the web page."""
    return [base, base + 1, base + 2, base - 1010, base - 1009, base - 80]


def free(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def free_base(taken: set[int]) -> int:
    """A PORT whose derived ports are all free (and not another checkout's)."""
    for _ in range(200):
        base = random.randrange(20000, 40000, 10)
        if not set(ports(base)) & taken and all(free(port) for port in ports(base)):
            return base
    raise RuntimeError("no free port range")


def checkout(source: Path, destination: Path, archive: Path) -> Path:
    """A second copy of the working tree, sharing the virtual environment, with a ready-built archive."""
    shutil.copytree(source, destination, ignore=shutil.ignore_patterns(*NOT_COPIED), symlinks=True)
    (destination / ".venv").symlink_to(source / ".venv")
    (destination / "model_store").mkdir()
    shutil.copy(archive, destination / "model_store" / "corruption.mar")  # newer than its sources: not rebuilt
    return destination


@pytest.fixture(scope="module")
def two_checkouts(model_store, tmp_path_factory) -> Iterator[list[tuple[Path, int]]]:
    """Two checkouts started with `make start PORT=...`; `make stop` runs whatever the tests did."""
    root, started = tmp_path_factory.mktemp("checkouts"), []
    try:
        for name in ("first", "second"):
            base = free_base({port for _, used in started for port in ports(used)})
            copy = checkout(ROOT, root / name, model_store / "corruption.mar")
            done = make(copy, "start", f"PORT={base}")
            started.append((copy, base))
            assert done.returncode == 0, done.stdout + done.stderr
        yield started
    finally:
        for copy, base in started:
            make(copy, "stop", f"PORT={base}", timeout=120)


def test_two_checkouts_serve_side_by_side_on_their_own_ports(two_checkouts, subset):
    png = good_images(subset)["png"]
    for _, base in two_checkouts:
        response = requests.post(f"http://127.0.0.1:{base}/predictions/corruption", data=png, timeout=TIMEOUT)
        assert response.status_code == 200, response.text
        # The page's origin follows PORT too: `make web PORT=...` serves the page there.
        assert response.headers["access-control-allow-origin"] == f"http://127.0.0.1:{base - 80}"
        metrics = requests.get(f"http://127.0.0.1:{base + 2}/metrics", timeout=TIMEOUT)
        assert "corruption_predictions_total" in metrics.text
        models = requests.get(f"http://127.0.0.1:{base + 1}/models/corruption", timeout=TIMEOUT)
        assert models.json()[0]["modelVersion"] == "1.0"


def pip_lines(*args: str) -> list[str]:
    """The pip commands that would build `.venv` to a level from nothing (`make -n -B`: printed, not run)."""
    done = subprocess.run(["make", "--no-print-directory", "-n", "-B", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    return [line for line in done.stdout.splitlines() if " pip install " in line]


def test_make_serve_installs_serving_requirements_only_and_make_test_all_of_them():
    serving = pip_lines(".venv/.serving")
    assert not any(name in line for line in serving for name in REQUIREMENTS[1:]), serving
    assert any("-r requirements.txt" in line for line in serving)
    everything = " ".join(pip_lines(".venv/.installed"))
    assert all(f"-r {name}" in everything for name in REQUIREMENTS)
    assert "-r requirements-dev.txt" in " ".join(pip_lines("test"))


def test_a_torch_index_is_used_for_torch_and_torchvision_only():
    """`make serve TORCH_INDEX=<url>` (a CPU wheel index): torch and torchvision at requirements.txt's pins from
    there, everything else from pip's configured index."""
    (torch_line,) = [line for line in pip_lines(".venv/.serving", "TORCH_INDEX=file:///wheels") if "file:///" in line]
    assert "--index-url file:///wheels" in torch_line and "--no-deps" in torch_line
    pins = [line for line in (ROOT / "requirements.txt").read_text().splitlines() if line.startswith("torch")]
    assert "$(grep -E '^(torch|torchvision)==' requirements.txt)" in torch_line
    assert {pin.split("==")[0] for pin in pins} >= {"torch", "torchvision"}
    assert not [line for line in pip_lines(".venv/.serving") if "--index-url" in line]


@pytest.fixture
def serving(model_store, tmp_path) -> Iterator[tuple[subprocess.Popen, Path, int]]:
    """`make serve PORT=...` in a checkout, its output in a file; Ctrl-C (SIGINT to the group), then SIGKILL."""
    copy = checkout(ROOT, tmp_path / "serve", model_store / "corruption.mar")
    base = free_base(set())
    output = tmp_path / "serve.log"
    with output.open("wb") as log:
        process = subprocess.Popen(["make", "--no-print-directory", *INSTALLED, "serve", f"PORT={base}"], cwd=copy,
                                   stdout=log, stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    try:
        yield process, output, base
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGINT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=60)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # whatever of the group outlived Ctrl-C
        process.wait()


def test_make_serve_says_when_the_model_answers(serving, subset):
    process, output, base = serving
    ready = f"TorchServe is ready on http://127.0.0.1:{base}"
    deadline = time.monotonic() + 300
    while ready not in output.read_text(errors="replace"):
        assert process.poll() is None, output.read_text(errors="replace")[-3000:]
        assert time.monotonic() < deadline, output.read_text(errors="replace")[-3000:]
        time.sleep(0.5)
    response = requests.post(f"http://127.0.0.1:{base}/predictions/corruption", data=good_images(subset)["png"],
                             timeout=TIMEOUT)  # fmt: skip
    assert response.status_code == 200, response.text
    assert output.read_text(errors="replace").count(ready) == 1


def test_make_serve_and_start_run_torchserve_with_the_projects_one_command_line():
    """container.entrypoint.torchserve_args is TorchServe's command line everywhere; `make start` only drops
    --foreground (it runs in the background, for `make stop`)."""
    line = " ".join(torchserve_args(Path("config.properties"), "--model-store", "model_store")[1:])
    assert f"/torchserve {line}\n" in make(ROOT, "-n", "serve").stdout
    assert f"/torchserve {line.replace(' --foreground', '')} >" in make(ROOT, "-n", "start").stdout


def test_make_web_serves_the_page_at_the_origin_its_server_allows():
    commands = make(ROOT, "-n", "web", "PORT=9080").stdout
    assert "http.server 9000" in commands and "?server=http://127.0.0.1:9080" in commands
    serve = make(ROOT, "-n", "serve", "PORT=9080", "WEB_PORT=8001").stdout
    assert "TS_CORS_ALLOWED_ORIGIN=http://127.0.0.1:8001" in serve
    assert "TS_INFERENCE_ADDRESS=http://0.0.0.0:9080" in serve and "TS_GRPC_INFERENCE_PORT=8070" in serve


def test_train_and_evaluate_never_write_over_what_ships():
    assert "--out checkpoints" in make(ROOT, "-n", "train").stdout
    evaluate = make(ROOT, "-n", "evaluate").stdout
    assert "--reports test-artifacts/reports" in evaluate and "--check" in evaluate
    assert "--reports reports" in make(ROOT, "-n", "evaluate", "REPORTS=reports").stdout


def test_a_folder_becomes_a_csv_with_one_command(subset, tmp_path):
    """The README's recipe: `make predict FILES=... OUT=... LOCAL=1`, no server needed."""
    photos = tmp_path / "photos"
    (photos / "holiday").mkdir(parents=True)
    for name, data in list(good_images(subset).items())[:4]:
        (photos / "holiday" / f"{name}.png").write_bytes(data)
    out = tmp_path / "scores.csv"
    done = make(ROOT, "predict", f"FILES={photos}", f"OUT={out}", "LOCAL=1")
    assert done.returncode == 0, done.stdout + done.stderr
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 4 and all(row["label"] in ("clean", "corrupted") for row in rows)
