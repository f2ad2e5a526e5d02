"""Start a real TorchServe (Java frontend + Python workers) on free loopback ports, and stop it for sure."""

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import requests

from container.entrypoint import torchserve_args
from detector.paths import ROOT
from handler.archive import build_archive

TORCHSERVE = Path(sys.executable).with_name("torchserve")
PORT_KEYS = ("inference_address", "management_address", "metrics_address")
GRPC_PORT_KEYS = ("grpc_inference_port", "grpc_management_port")


def free_port() -> int:
    """A TCP port that is free on loopback right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class TorchServe:
    """A running server started by `start_torchserve`."""

    process: subprocess.Popen
    urls: dict[str, str]
    workdir: Path

    @property
    def inference(self) -> str:
        return self.urls["inference_address"]

    @property
    def management(self) -> str:
        return self.urls["management_address"]

    @property
    def metrics(self) -> str:
        return self.urls["metrics_address"]

    def log(self) -> str:
        """The frontend's and workers' log so far (for failure messages)."""
        return "".join(path.read_text(errors="replace") for path in sorted(self.workdir.glob("logs/*.log")))

    def wait_ready(self, model: str = "corruption", timeout: float = 240) -> None:
        """Wait until every worker of `model` is READY: /ping is Healthy long before that."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"TorchServe exited with {self.process.returncode}:\n{self.log()[-5000:]}")
            try:
                description = requests.get(f"{self.management}/models/{model}", timeout=5).json()[0]
                workers = description.get("workers", [])
                if workers and all(w["status"] == "READY" for w in workers):
                    return
            except (requests.RequestException, ValueError, KeyError, IndexError):
                pass
            time.sleep(0.5)
        raise TimeoutError(f"model {model} not ready after {timeout}s:\n{self.log()[-5000:]}")

    def stop(self, timeout: float = 60) -> None:
        """Terminate the whole process group (launcher, Java, workers), then kill what is left."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=timeout)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()


def on_free_ports(text: str, workdir: Path) -> tuple[str, dict[str, str]]:
    """A config.properties text with free loopback ports (HTTP and gRPC), its own worker sockets under `workdir`,
    and the URLs of its HTTP APIs by key."""
    urls = {}
    for key in PORT_KEYS:
        urls[key] = f"http://127.0.0.1:{free_port()}"
        text, count = re.subn(rf"^{key}=.*$", f"{key}={urls[key]}", text, flags=re.M)
        assert count == 1, f"{key} missing from the config"
    for key in GRPC_PORT_KEYS:
        text, count = re.subn(rf"^{key}=.*$", f"{key}={free_port()}", text, flags=re.M)
        assert count == 1, f"{key} missing from the config"
    # Worker sockets are named /tmp/.ts.sock.<9000+n> after java.io.tmpdir: give each server its own.
    text = re.sub(r"^(vmargs=.*)$", rf"\1 -Djava.io.tmpdir={workdir / 'tmp'}", text, flags=re.M)
    return text, urls


def write_config(model_store: Path, workdir: Path, base: Path = ROOT / "config.properties") -> tuple[Path, dict]:
    """The project's config.properties on free loopback ports, with the given model store."""
    text, urls = on_free_ports(base.read_text(), workdir)
    text = re.sub(r"^model_store=.*$", f"model_store={model_store}", text, flags=re.M)
    # allowed_urls names the image's store exactly (/app/model_store): here, this server's store.
    store_url = re.escape(f"file://{model_store.resolve()}/").replace("\\", "\\\\")
    text = re.sub(r"^(allowed_urls=)file:///app/model_store/", rf"\g<1>{store_url}", text, flags=re.M)
    # Relative to the repository root, where `make serve` starts TorchServe; the test server runs elsewhere.
    text = re.sub(r"^metrics_config=(.*)$", lambda match: f"metrics_config={ROOT / match[1]}", text, flags=re.M)
    path = workdir / "config.properties"
    path.write_text(text)
    return path, urls


def launch(command: list[str], workdir: Path, urls: dict[str, str], env: dict[str, str] | None = None) -> TorchServe:
    """Run this environment's torchserve with `command`'s arguments in its own process group, from `workdir`, where
    its logs, sockets and temp files stay; `env` adds to the environment."""
    (workdir / "tmp").mkdir(parents=True, exist_ok=True)
    environment = dict(os.environ, TMPDIR=str(workdir / "tmp"), LOG_LOCATION=str(workdir / "logs"),
                       METRICS_LOCATION=str(workdir / "logs"), OMP_NUM_THREADS="1", **(env or {}))  # fmt: skip
    with open(workdir / "console.log", "wb") as console:
        process = subprocess.Popen([str(TORCHSERVE), *command[1:]], cwd=workdir, env=environment, stdout=console,
                                   stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    return TorchServe(process, urls, workdir)


def start_torchserve(model_store: Path, workdir: Path) -> TorchServe:
    """TorchServe with the project's config on free ports, serving `model_store`, started as the image starts it."""
    (workdir / "tmp").mkdir(parents=True, exist_ok=True)
    config, urls = write_config(model_store, workdir)
    return launch(torchserve_args(config, "--model-store", str(model_store)), workdir, urls)


@contextlib.contextmanager
def ready(server: TorchServe) -> Iterator[TorchServe]:
    """The started server once its model is ready, stopped however the block ends (a failed start included)."""
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


@contextlib.contextmanager
def running_torchserve(model_store: Path, workdir: Path) -> Iterator[TorchServe]:
    """A TorchServe whose model is ready, stopped however the block ends."""
    with ready(start_torchserve(model_store, workdir)) as server:
        yield server


@contextlib.contextmanager
def serving_weights(weights: Path) -> Iterator[TorchServe]:
    """The shipped config serving `weights`, archived into a temporary model store (for benchmarks)."""
    with tempfile.TemporaryDirectory() as workdir:
        store = Path(workdir, "model_store")
        build_archive(weights, out_dir=store)
        with running_torchserve(store, Path(workdir, "torchserve")) as server:
            yield server
