"""Per-pod footprint: memory and CPU of TorchServe (java + its workers) serving the default model.

python -m bench.footprint [--seconds 10] [--concurrency 16]

Starts a real TorchServe on the built archive, then samples the resident memory
(RSS, and PSS, which counts the pages the two workers share once, as the
pod's memory cgroup does) of java and every worker, idle and under load:
1024x768 JPEGs at the given concurrency, then images of 49 megapixels, just
under the handler's MAX_PIXELS, which are the most a single request can make
a worker decode. The Python launcher that `torchserve` keeps is left out: the
container exec's java in its place. The load generator shares this machine.
The numbers size the Deployment's requests and limits (k8s/README.md).
"""

import argparse
import io
import math
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psutil
from PIL import Image

from bench.inputs import sample_rgb
from bench.run import http_load, sample_images
from bench.torchserve import TorchServe, serving_weights
from training.archive import SHIPPED_WEIGHTS
from training.data import SUBSET

MIB = 2**20
# Headroom of the memory limit over the measured peak: allocator fragmentation, JVM heap growth, probe processes.
LIMIT_MARGIN = 1.25
LIMIT_STEP = 128 * MIB


def server_processes(server: TorchServe) -> tuple[psutil.Process, list[psutil.Process]]:
    """java (the launcher's child) and its Python workers."""
    (java,) = psutil.Process(server.process.pid).children()
    return java, java.children()


def memory(process: psutil.Process) -> tuple[int, int]:
    """(RSS, PSS) in bytes; a process that just exited counts as zero."""
    try:
        info = process.memory_full_info()
    except psutil.NoSuchProcess:
        return 0, 0
    return info.rss, info.pss


class Sampler:
    """Samples java's and the workers' memory every `interval` seconds in a thread and keeps the peaks."""

    def __init__(self, server: TorchServe, interval: float = 0.1) -> None:
        self.server, self.interval = server, interval
        self.peak = {"java_rss": 0, "workers_rss": 0, "total_rss": 0, "total_pss": 0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> None:
        java, workers = server_processes(self.server)
        java_rss, java_pss = memory(java)
        worker_memory = [memory(worker) for worker in workers]
        now = {
            "java_rss": java_rss,
            "workers_rss": sum(rss for rss, _ in worker_memory),
            "total_rss": java_rss + sum(rss for rss, _ in worker_memory),
            "total_pss": java_pss + sum(pss for _, pss in worker_memory),
        }
        self.peak = {key: max(self.peak[key], value) for key, value in now.items()}

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            time.sleep(self.interval)

    def __enter__(self) -> "Sampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()


def cpu_seconds(server: TorchServe) -> tuple[float, float]:
    """CPU time (user + system) used so far by java and by all workers together."""
    java, workers = server_processes(server)
    used = [sum(p.cpu_times()[:2]) for p in (java, *workers)]
    return used[0], sum(used[1:])


def large_jpeg(subset: Path, megapixels: float = 49.0) -> bytes:
    """A smooth 49 MP JPEG (a few MB, under max_request_size): the largest decode one request can cause."""
    side = int(math.sqrt(megapixels * 1e6))
    image = sample_rgb(subset)
    buffer = io.BytesIO()
    image.resize((side, side), Image.Resampling.BILINEAR).save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


def measure(server: TorchServe, load: Callable[[], dict]) -> tuple[dict, dict, tuple[float, float, float]]:
    """Peak memory while `load` runs, its result, and the CPU seconds java and the workers spent in its wall time."""
    java_before, workers_before = cpu_seconds(server)
    began = time.perf_counter()
    with Sampler(server) as sampler:
        result = load()
    wall = time.perf_counter() - began
    java_after, workers_after = cpu_seconds(server)
    return sampler.peak, result, (java_after - java_before, workers_after - workers_before, wall)


def idle(seconds: float = 2.0) -> dict:
    """No load: the footprint of a loaded model waiting for requests."""
    time.sleep(seconds)
    return {}


def memory_limit(peak_bytes: int) -> int:
    """The memory limit (= request) for a measured peak PSS: the margin, rounded up to a 128 MiB step.

    PSS, not summed RSS: the cgroup charges the workers' shared torch libraries once, as PSS counts them.
    """
    return math.ceil(peak_bytes * LIMIT_MARGIN / LIMIT_STEP) * LIMIT_STEP


def report(rows: list[tuple[str, dict, dict, tuple[float, float, float]]], workers: int) -> None:
    print(
        f"| phase | java RSS MiB | {workers} workers RSS MiB | total RSS MiB | total PSS MiB | req/s | errors "
        "| cores used | CPU java : workers |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---|")
    for phase, peak, result, (java_cpu, workers_cpu, wall) in rows:
        load = "- | - | - | -"
        if result:
            total = java_cpu + workers_cpu
            load = (
                f"{result['rate']:.0f} | {result['errors']}/{result['requests']} | {total / wall:.2f} | "
                f"{java_cpu / total:.0%} : {workers_cpu / total:.0%}"
            )
        print(
            f"| {phase} | {peak['java_rss'] / MIB:.0f} | {peak['workers_rss'] / MIB:.0f} | "
            f"{peak['total_rss'] / MIB:.0f} | {peak['total_pss'] / MIB:.0f} | {load} |"
        )
    worst = max(peak["total_pss"] for _, peak, _, _ in rows)
    print(
        f"\npeak total PSS {worst / MIB:.0f} MiB -> memory request = limit {memory_limit(worst) // MIB} MiB "
        f"(x{LIMIT_MARGIN}, rounded up to {LIMIT_STEP // MIB} MiB)"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="duration of each load phase")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--data", type=Path, default=SUBSET)
    args = parser.parse_args(argv)
    jpeg = sample_images(args.data)["1024x768 JPEG"]
    huge = large_jpeg(args.data)
    with serving_weights(SHIPPED_WEIGHTS) as server:
        url = f"{server.inference}/predictions/corruption"
        time.sleep(2)
        rows = [
            ("idle, model loaded", *measure(server, idle)),
            (
                f"1024x768 JPEG, concurrency {args.concurrency}",
                *measure(server, lambda: http_load(url, jpeg, args.concurrency, args.seconds)),
            ),
            (
                f"49 MP JPEG ({len(huge) / MIB:.1f} MiB), concurrency 4",
                *measure(server, lambda: http_load(url, huge, 4, args.seconds)),
            ),
        ]
        workers = len(server_processes(server)[1])
    report(rows, workers)


if __name__ == "__main__":
    main()
