"""Load test at the limits: large uploads, maximum bodies and huge decodes mixed with normal traffic.

python -m bench.loadtest [--seconds 60] [--burst-seconds 15] [--concurrency 32]
python -m bench.loadtest --url http://127.0.0.1:18080   # a server already running (no memory sampling)

Starts a real TorchServe from the project's config.properties on the built archive (or uses --url),
then runs three phases of closed-loop load:

1. bodies of exactly max_request_size (16 MiB, not images) at --concurrency: the burst that used to
   exhaust the frontend's heap;
2. 20 MP phone-sized JPEGs (~8 MB) at --concurrency;
3. --seconds of mixed traffic: --heavy-clients (a quarter by default) cycle through 20 MP JPEGs,
   16 MiB bodies, a body one byte over the limit, every decoding path at the largest size the decoder
   accepts (small files, huge decodes) and a JPEG whose scan ends early; the other clients post
   normal images (a 1024x768 JPEG, a 32x32 PNG).

Passes (exit 0) only if every answer is 200, 400, 413 or 503 and the one each input deserves, no
request is lost (connection error, timeout), the server still answers /ping and a prediction
afterwards, and the peak PSS of java and its workers stays under the Deployment's memory limit
(k8s/base/deployment.yaml). Prints a table per phase with the normal requests' p50 and p99.
"""

import argparse
import contextlib
import itertools
import random
import statistics
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import requests
import yaml

from bench.limits import MIB, encode, huge_decodes, max_body, phone_jpeg, short_scan_jpeg, textured
from bench.pod import Sampler
from bench.torchserve import ROOT, TorchServe, serving_weights
from detector.paths import SHIPPED_WEIGHTS

# The answers the service may give at all under load: served, refused, too large, queue full.
ALLOWED = {200, 400, 413, 503}
TIMEOUT = 120


@dataclass(frozen=True)
class Upload:
    """One kind of request: its body and the statuses it may get."""

    kind: str
    body: bytes
    expected: frozenset[int]
    normal: bool = False


@dataclass
class Outcomes:
    """Statuses per kind, and latencies of normal requests."""

    statuses: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))
    latencies: list[float] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, upload: Upload, outcome: int | str, seconds: float) -> None:
        with self.lock:
            self.statuses[upload.kind][outcome] += 1
            if upload.normal and outcome == 200:
                self.latencies.append(seconds)


def image_uploads() -> tuple[list[Upload], list[Upload]]:
    """(normal, heavy) uploads; the heavy ones are every kind of large or hostile input."""
    served = frozenset({200, 503})
    refused = frozenset({400, 503})
    normal = [
        Upload("1024x768 JPEG", encode(textured(1024, 768), "JPEG", quality=90), served, normal=True),
        Upload("32x32 PNG", encode(textured(32, 32), "PNG"), served, normal=True),
    ]
    heavy = [
        Upload("20 MP JPEG", phone_jpeg(), served),
        Upload("16 MiB body, not an image", max_body(), refused),
        Upload("16 MiB + 1 byte", max_body() + b"\0", frozenset({413})),
        Upload("JPEG, scan cut short", short_scan_jpeg(), refused),
    ]
    heavy += [Upload(f"huge decode: {name}", data, served) for name, data in huge_decodes().items()]
    return normal, heavy


def post(session: requests.Session, url: str, upload: Upload) -> int | str:
    """The status, or the kind of failure when no answer came."""
    try:
        return session.post(url, data=upload.body, headers={"Content-Type": "application/octet-stream"},
                            timeout=TIMEOUT).status_code  # fmt: skip
    except requests.RequestException as error:
        return f"lost ({type(error).__name__})"


def closed_loop(url: str, clients: list[list[Upload]], seconds: float) -> Outcomes:
    """One thread per client, each posting its uploads (shuffled, cycled) back to back until the deadline."""
    outcomes = Outcomes()
    deadline = time.monotonic() + seconds

    def client(index: int, uploads: list[Upload]) -> None:
        order = list(uploads)
        random.Random(index).shuffle(order)
        with requests.Session() as session:
            for upload in itertools.cycle(order):
                if time.monotonic() >= deadline:
                    return
                started = time.perf_counter()
                outcome = post(session, url, upload)
                outcomes.add(upload, outcome, time.perf_counter() - started)

    with ThreadPoolExecutor(max_workers=len(clients)) as pool:
        list(pool.map(client, range(len(clients)), clients))  # list(): a client's exception is raised here
    return outcomes


def phases(normal: list[Upload], heavy: list[Upload], args: argparse.Namespace) -> list[tuple[str, list, float]]:
    """(name, one upload list per client, seconds) of each phase."""
    by_kind = {upload.kind: upload for upload in heavy}
    heavy_clients = args.concurrency // 4 if args.heavy_clients is None else args.heavy_clients
    normal_clients = args.concurrency - heavy_clients
    return [
        (f"16 MiB bodies, concurrency {args.concurrency}", [[by_kind["16 MiB body, not an image"]]] * args.concurrency,
         args.burst_seconds),
        (f"20 MP JPEGs, concurrency {args.concurrency}", [[by_kind["20 MP JPEG"]]] * args.concurrency,
         args.burst_seconds),
        (f"mixed, {normal_clients} normal + {heavy_clients} heavy clients",
         [normal] * normal_clients + [heavy] * heavy_clients, args.seconds),
    ]  # fmt: skip


def unexpected(outcomes: Outcomes, uploads: dict[str, Upload]) -> dict[str, dict]:
    """Per kind, the outcomes it should not have had."""
    wrong = {}
    for kind, statuses in outcomes.statuses.items():
        bad = {status: n for status, n in statuses.items() if status not in uploads[kind].expected & ALLOWED}
        if bad:
            wrong[kind] = bad
    return wrong


def report(name: str, outcomes: Outcomes, seconds: float) -> None:
    print(f"\n{name}, {seconds:.0f} s:\n")
    print("| input | requests | answers |")
    print("|---|---:|---|")
    for kind, statuses in sorted(outcomes.statuses.items()):
        answers = ", ".join(f"{status}: {n}" for status, n in sorted(statuses.items(), key=str))
        print(f"| {kind} | {sum(statuses.values())} | {answers} |")
    if len(outcomes.latencies) >= 2:
        cuts = statistics.quantiles(outcomes.latencies, n=100)
        print(f"\nnormal requests answered 200: {len(outcomes.latencies)}, p50 {cuts[49] * 1e3:.0f} ms, "
              f"p99 {cuts[98] * 1e3:.0f} ms")  # fmt: skip


def memory_limit(deployment: Path = ROOT / "k8s" / "base" / "deployment.yaml") -> int:
    """The serving container's memory limit in bytes."""
    pod = yaml.safe_load(deployment.read_text())["spec"]["template"]["spec"]
    quantity = pod["containers"][0]["resources"]["limits"]["memory"]
    units = {"Mi": MIB, "Gi": 1024 * MIB}
    return int(quantity[:-2]) * units[quantity[-2:]]


def answers_afterwards(base: str, normal: Upload) -> bool:
    """The server still answers /ping and scores a normal image."""
    try:
        ping = requests.get(f"{base}/ping", timeout=30)
        predicted = requests.post(f"{base}/predictions/corruption", data=normal.body, timeout=60)
    except requests.RequestException:
        return False
    return ping.status_code == 200 and predicted.status_code == 200


@contextlib.contextmanager
def target(url: str | None) -> Iterator[tuple[str, TorchServe | None]]:
    """(inference URL, the server to sample) of a fresh TorchServe, or of the given URL (not sampled)."""
    if url:
        yield url.rstrip("/"), None
        return
    with serving_weights(SHIPPED_WEIGHTS) as server:
        yield server.inference, server


def run(args: argparse.Namespace) -> bool:
    """All phases against the target; whether everything passed."""
    normal, heavy = image_uploads()
    uploads = {upload.kind: upload for upload in normal + heavy}
    passed = True
    with target(args.url) as (base, server):
        url = f"{base}/predictions/corruption"
        sampler = Sampler(server, interval=0.25) if server else contextlib.nullcontext()
        with sampler:
            for name, clients, seconds in phases(normal, heavy, args):
                outcomes = closed_loop(url, clients, seconds)
                report(name, outcomes, seconds)
                wrong = unexpected(outcomes, uploads)
                if wrong:
                    print(f"FAILED: unexpected answers {wrong}")
                    passed = False
        alive = answers_afterwards(base, normal[0])
    print(f"\nserver answers /ping and a prediction afterwards: {alive}")
    passed &= alive
    if server:
        peak, limit = sampler.peak["total_pss"], memory_limit()
        print(f"peak PSS (java + workers) {peak / MIB:.0f} MiB, java RSS {sampler.peak['java_rss'] / MIB:.0f} MiB; "
              f"the Deployment's memory limit {limit / MIB:.0f} MiB")  # fmt: skip
        passed &= peak < limit
    print("load test passed" if passed else "load test FAILED")
    return passed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="duration of the mixed phase")
    parser.add_argument("--burst-seconds", type=float, default=15.0, help="duration of each single-kind phase")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--heavy-clients", type=int, help="clients posting heavy inputs in the mixed phase")
    parser.add_argument("--url", help="a running server's inference URL (default: start one)")
    return 0 if run(parser.parse_args(argv)) else 1


if __name__ == "__main__":
    sys.exit(main())
