"""Soak: sustained concurrent mixed good and bad requests against a real TorchServe.

python -m bench.soak [--seconds 120] [--concurrency 16] [--bad-fraction 0.2]

Passes (exit 0) only with zero 5xx, zero lost responses (connection errors or
timeouts), every good request answered 200 and every bad one 400, and worker
memory (RSS, summed over the workers) not growing by more than --max-growth-mb
between the end of the warm-up and the end of the run.
"""

import argparse
import io
import random
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import requests
from PIL import Image

from bench.inputs import bad_images, good_images
from bench.torchserve import TorchServe, serving_weights
from detector.paths import SHIPPED_WEIGHTS
from training.data import SUBSET


def worker_rss_mb(server: TorchServe) -> float:
    """Resident memory of the model's worker processes, in MB."""
    description = requests.get(f"{server.management}/models/corruption", timeout=30).json()[0]
    return sum(psutil.Process(w["pid"]).memory_info().rss for w in description["workers"]) / 2**20


def payloads(subset: Path) -> tuple[list[bytes], list[bytes]]:
    """Good inputs (every mode, plus a 1024x768 JPEG) and bad ones."""
    good = list(good_images(subset).values())
    photo = io.BytesIO()
    Image.open(io.BytesIO(good[0])).resize((1024, 768)).save(photo, format="JPEG", quality=90)
    good.append(photo.getvalue())
    return good, [data for data, _ in bad_images(subset).values()]


def run_load(
    url: str, good: list[bytes], bad: list[bytes], concurrency: int, seconds: float, bad_fraction: float
) -> Counter:
    """Closed-loop mixed load; counts outcomes as 'good 200', 'bad 400', and anything unexpected."""
    outcomes: Counter = Counter()
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def client(seed: int) -> None:
        rng = random.Random(seed)
        with requests.Session() as session:
            while time.monotonic() < deadline:
                is_bad = rng.random() < bad_fraction
                data = rng.choice(bad if is_bad else good)
                try:
                    outcome = f"{'bad' if is_bad else 'good'} {session.post(url, data=data, timeout=60).status_code}"
                except requests.RequestException as error:
                    outcome = f"lost ({type(error).__name__})"
                with lock:
                    outcomes[outcome] += 1

    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        list(pool.map(client, range(concurrency)))  # list(): a client's exception is raised here
    return outcomes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--bad-fraction", type=float, default=0.2)
    parser.add_argument("--max-growth-mb", type=float, default=50.0)
    parser.add_argument("--data", type=Path, default=SUBSET)
    args = parser.parse_args(argv)
    good, bad = payloads(args.data)

    with serving_weights(SHIPPED_WEIGHTS) as server:
        url = f"{server.inference}/predictions/corruption"
        run_load(url, good, bad, args.concurrency, 10, args.bad_fraction)  # warm-up: allocator steady state
        rss_before = worker_rss_mb(server)
        started = time.monotonic()
        outcomes = run_load(url, good, bad, args.concurrency, args.seconds, args.bad_fraction)
        elapsed = time.monotonic() - started
        rss_after = worker_rss_mb(server)

    unexpected = {k: v for k, v in outcomes.items() if k not in ("good 200", "bad 400")}
    growth = rss_after - rss_before
    print(
        f"soak: {sum(outcomes.values())} requests in {elapsed:.0f}s at concurrency {args.concurrency} "
        f"({sum(outcomes.values()) / elapsed:.0f} req/s), outcomes {dict(outcomes)}"
    )
    print(f"worker RSS: {rss_before:.0f} MB before, {rss_after:.0f} MB after ({growth:+.0f} MB)")
    if unexpected or growth > args.max_growth_mb:
        print(f"FAILED: unexpected outcomes {unexpected}, RSS growth {growth:+.0f} MB (max {args.max_growth_mb})")
        return 1
    print("soak passed: zero 5xx, zero lost responses, bounded worker memory")
    return 0


if __name__ == "__main__":
    sys.exit(main())
