"""Serving benchmark: in-process limit vs TorchServe vs the naive one-image-per-request server.

python -m bench.run [--seconds 5] [--concurrency 1 4 8 16 32]

Three workloads: a CIFAR-sized PNG, a 1024x768 JPEG, and the photo mix (seven test-split photos at 640, 1024
and 1600 px on the longer side, q92 JPEGs, each client cycling through them from its own start).

Everything runs on this machine in one go, so the ratios are comparable; the
load generator shares the CPU with the servers, as a sidecar client would.
"""

import argparse
import contextlib
import io
import itertools
import os
import platform
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import date
from pathlib import Path

import requests
import torch
from PIL import Image

from bench.inputs import sample_rgb
from bench.torchserve import ROOT, free_port, serving_weights
from detector.corruptions import encode_jpeg
from detector.inference import CorruptionDetector
from detector.paths import SHIPPED_WEIGHTS
from detector.preprocessing import image_bytes_to_views
from training.corpus import INSTALLED_TEST_PHOTOS, installed_photo
from training.data import SUBSET
from training.photo_data import at_long_side

SERVING_BATCH = 8
PATH = "predictions/corruption"


MIX_SIZES = (640, 1024, 1600)


def photo_mix() -> list[bytes]:
    """Each mix photo at each MIX_SIZES (longer side), saved as a q92 JPEG: what a camera fleet sends."""
    photos = [Image.open(io.BytesIO(installed_photo(name))).convert("RGB") for name in INSTALLED_TEST_PHOTOS]
    return [encode_jpeg(at_long_side(photo, size), 92) for size in MIX_SIZES for photo in photos]


def sample_images(subset: Path) -> dict[str, list[bytes]]:
    """A CIFAR-sized PNG, a 1024x768 JPEG made from it, and the photo mix."""
    image = sample_rgb(subset)
    png = io.BytesIO()
    image.save(png, format="PNG")
    jpeg = encode_jpeg(image.resize((1024, 768), Image.Resampling.BICUBIC), 90)
    return {"32x32 PNG": [png.getvalue()], "1024x768 JPEG": [jpeg], "photo mix": photo_mix()}


def rate(work: Callable[[], int], seconds: float) -> float:
    """Items/s of repeated calls to `work` (which returns how many items it did), after one warm-up call."""
    work()
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        done += work()
    return done / (time.perf_counter() - started)


def in_process_rates(detector: CorruptionDetector, payloads: list[bytes], seconds: float) -> dict[str, float]:
    """Forward pass alone (the limit) and the whole pipeline (decode + views + forward), at batch 1 and the
    serving batch, cycling through the payloads."""
    views = [image_bytes_to_views(data) for data in payloads]
    turn = itertools.count()

    def take(items: list, batch: int) -> list:
        start = next(turn) * batch
        return [items[(start + i) % len(items)] for i in range(batch)]

    rates = {}
    for batch in (1, SERVING_BATCH):
        rates[f"forward b{batch}"] = rate(lambda b=batch: len(detector.answer(take(views, b))), seconds)
        rates[f"decode+forward b{batch}"] = rate(lambda b=batch: len(detector.predict(take(payloads, b))), seconds)
    return rates


def http_load(url: str, payloads: list[bytes], concurrency: int, seconds: float) -> dict:
    """Closed-loop load: `concurrency` clients post back to back for `seconds`, each cycling through the
    payloads from its own start. Rate and latencies count answered images (200) only: a fast refusal
    (503 when the queue is full) is not throughput."""
    latencies: list[float] = []
    failures = [0]
    lock = threading.Lock()
    deadline = time.perf_counter() + seconds

    def client(first: int) -> None:
        sent = first
        with requests.Session() as session:
            while time.perf_counter() < deadline:
                data, sent = payloads[sent % len(payloads)], sent + 1
                started = time.perf_counter()
                try:
                    ok = session.post(url, data=data, timeout=60).status_code == 200
                except requests.RequestException:
                    ok = False
                with lock:
                    if ok:
                        latencies.append(time.perf_counter() - started)
                    failures[0] += not ok

    began = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        list(pool.map(client, range(concurrency)))  # list(): a client's exception is raised here
    cuts = statistics.quantiles(latencies, n=100)
    return {
        "rate": len(latencies) / (time.perf_counter() - began),  # answered images per second
        "p50": cuts[49] * 1e3,
        "p95": cuts[94] * 1e3,
        "p99": cuts[98] * 1e3,
        "errors": failures[0],
        "requests": len(latencies) + failures[0],
    }


@contextlib.contextmanager
def naive_url(sample: list[bytes]) -> Iterator[str]:
    """The FastAPI/uvicorn one-image-per-request server (bench/naive_server.py)."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "bench.naive_server:app", "--port", str(port), "--log-level", "warning"],
        cwd=ROOT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}/{PATH}"
    try:
        for _ in range(120):
            with contextlib.suppress(requests.RequestException):
                if requests.post(url, data=sample[0], timeout=5).status_code == 200:
                    break
            time.sleep(0.5)
        yield url
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)


def load_rows(url: str, images: dict[str, list[bytes]], levels: list[int], seconds: float) -> dict:
    """(image, concurrency) -> load result, after a short warm-up per image."""
    results = {}
    for name, data in images.items():
        http_load(url, data, 4, 1.0)
        for concurrency in levels:
            results[(name, concurrency)] = http_load(url, data, concurrency, seconds)
    return results


def machine() -> str:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, Python {platform.python_version()}"


def print_tables(limits: dict, served: dict, naive: dict) -> None:
    print(f"Benchmark {date.today()} on {machine()}\n")
    columns = list(next(iter(limits.values())))
    print("| in-process, images/s | " + " | ".join(columns) + " |")
    print("|---" + "|---:" * len(columns) + "|")
    for name, rates in limits.items():
        print(f"| {name} | " + " | ".join(f"{rates[c]:.0f}" for c in columns) + " |")
    print(
        "\n| image | conc. | TorchServe img/s | p50 ms | p95 ms | p99 ms | errors | naive img/s | naive p99 ms "
        "| TorchServe ÷ limit | TorchServe ÷ pipeline | TorchServe ÷ naive |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for (name, concurrency), r in served.items():
        n = naive[(name, concurrency)]
        limit = limits[name][f"forward b{SERVING_BATCH}"]
        pipeline = limits[name][f"decode+forward b{SERVING_BATCH}"]
        print(
            f"| {name} | {concurrency} | {r['rate']:.0f} | {r['p50']:.1f} | {r['p95']:.1f} | {r['p99']:.1f} "
            f"| {r['errors']}/{r['requests']} | {n['rate']:.0f} | {n['p99']:.1f} | {r['rate'] / limit:.0%} "
            f"| {r['rate'] / pipeline:.0%} | {r['rate'] / n['rate']:.2f} |"
        )
    print(
        f"\nlimit = the model's forward pass in-process on {torch.get_num_threads()} threads at batch "
        f"{SERVING_BATCH}; pipeline = decode + views + forward in-process at that batch; errors = non-200 "
        "answers / requests."
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="duration of each measurement")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 8, 16, 32])
    parser.add_argument("--data", type=Path, default=SUBSET)
    args = parser.parse_args(argv)
    images = sample_images(args.data)

    torch.set_num_threads(os.cpu_count() or 1)  # the server's 2 workers x 1 thread use every core too
    detector = CorruptionDetector(SHIPPED_WEIGHTS)
    limits = {name: in_process_rates(detector, data, args.seconds) for name, data in images.items()}
    with serving_weights(SHIPPED_WEIGHTS) as server:
        served = load_rows(f"{server.inference}/{PATH}", images, args.concurrency, args.seconds)
    with naive_url(next(iter(images.values()))) as url:
        naive = load_rows(url, images, args.concurrency, args.seconds)
    print_tables(limits, served, naive)


if __name__ == "__main__":
    main()
