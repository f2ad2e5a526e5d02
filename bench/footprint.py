"""Per-pod footprint: memory and CPU of TorchServe (java + its workers) at every kind of input.

python -m bench.footprint [--seconds 10] [--concurrency 16]

Starts a real TorchServe on the built archive, then samples the resident memory (RSS, and PSS,
which counts the pages the two workers share once, as the pod's memory cgroup does) of java and
every worker, idle and under closed-loop load: 1024x768 JPEGs and 20 MP JPEGs at --concurrency,
bodies of max_request_size at twice that, then every decoding path (JPEG rotated by EXIF,
progressive JPEG, RGBA PNG, 16-bit PNG, palette PNG with transparency, float TIFF, RGBA WebP,
animated WebP and GIF) at the largest size the decoder accepts, as small files, at concurrency 4
(both workers decoding). The load generator shares this machine. The worst row sizes the
Deployment's memory request and limit (k8s/README.md).
"""

import argparse
import math
import time
from collections.abc import Callable

from bench.limits import MAX_BODY, MIB, encode, huge_decodes, max_body, phone_jpeg, textured
from bench.loadtest import Outcomes, Upload, closed_loop
from bench.pod import Sampler, cpu_seconds, server_processes
from bench.torchserve import TorchServe, serving_weights
from detector.paths import SHIPPED_WEIGHTS

# Headroom of the memory limit over the measured peak: allocator fragmentation, JVM heap growth, probe processes.
LIMIT_MARGIN = 1.25
LIMIT_STEP = 128 * MIB
SERVED = frozenset({200})


def measure(server: TorchServe, load: Callable[[], Outcomes | None]) -> tuple[dict, Outcomes | None, tuple]:
    """Peak memory while `load` runs, its outcomes, and (java CPU s, workers CPU s, wall s) over it."""
    java_before, workers_before = cpu_seconds(server)
    began = time.perf_counter()
    with Sampler(server) as sampler:
        result = load()
    wall = time.perf_counter() - began
    java_after, workers_after = cpu_seconds(server)
    return sampler.peak, result, (java_after - java_before, workers_after - workers_before, wall)


def idle(seconds: float = 2.0) -> None:
    """No load: the footprint of a loaded model waiting for requests."""
    time.sleep(seconds)


def memory_limit(peak_bytes: int) -> int:
    """The memory limit (= request) for a measured peak PSS: the margin, rounded up to a 128 MiB step.

    PSS, not summed RSS: the cgroup charges the workers' shared torch libraries once, as PSS counts them.
    """
    return math.ceil(peak_bytes * LIMIT_MARGIN / LIMIT_STEP) * LIMIT_STEP


def load_row(result: Outcomes | None, cpu: tuple[float, float, float], expected: frozenset[int]) -> str:
    """The load columns: req/s, answers other than `expected`, cores used, CPU split."""
    if result is None:
        return "- | - | - | -"
    java_cpu, workers_cpu, wall = cpu
    counts = [n for statuses in result.statuses.values() for n in statuses.values()]
    other = sum(n for statuses in result.statuses.values() for s, n in statuses.items() if s not in expected)
    total = java_cpu + workers_cpu
    split = f"{java_cpu / total:.0%} : {workers_cpu / total:.0%}"
    return f"{sum(counts) / wall:.1f} | {other}/{sum(counts)} | {total / wall:.2f} | {split}"


def report(rows: list[tuple[str, dict, Outcomes | None, tuple, frozenset]], workers: int) -> None:
    print(
        f"| phase | java RSS MiB | {workers} workers RSS MiB | total RSS MiB | total PSS MiB | req/s | other answers "
        "| cores used | CPU java : workers |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---|")
    for phase, peak, result, cpu, expected in rows:
        print(
            f"| {phase} | {peak['java_rss'] / MIB:.0f} | {peak['workers_rss'] / MIB:.0f} | "
            f"{peak['total_rss'] / MIB:.0f} | {peak['total_pss'] / MIB:.0f} | {load_row(result, cpu, expected)} |"
        )
    worst = max(peak["total_pss"] for _, peak, _, _, _ in rows)
    print(
        f"\npeak total PSS {worst / MIB:.0f} MiB -> memory request = limit {memory_limit(worst) // MIB} MiB "
        f"(x{LIMIT_MARGIN}, rounded up to {LIMIT_STEP // MIB} MiB)"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="duration of each load phase")
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args(argv)
    seconds, concurrency = args.seconds, args.concurrency
    # (phase, upload, concurrency, answers expected)
    loads = [
        ("1024x768 JPEG", Upload("", encode(textured(1024, 768), "JPEG", quality=90), SERVED), concurrency, SERVED),
        ("20 MP JPEG", Upload("", phone_jpeg(), SERVED), concurrency, SERVED),
        (f"{MAX_BODY // MIB} MiB bodies (not images)", Upload("", max_body(), SERVED), 2 * concurrency,
         frozenset({400})),
    ]  # fmt: skip
    loads += [(name, Upload("", data, SERVED), 4, SERVED) for name, data in huge_decodes().items()]
    with serving_weights(SHIPPED_WEIGHTS) as server:
        url = f"{server.inference}/predictions/corruption"
        time.sleep(2)
        rows = [("idle, model loaded", *measure(server, idle), SERVED)]
        for name, upload, clients, expected in loads:
            label = f"{name} ({len(upload.body) / MIB:.2f} MiB), concurrency {clients}"
            peak, result, cpu = measure(server, lambda u=upload, c=clients: closed_loop(url, [[u]] * c, seconds))
            rows.append((label, peak, result, cpu, expected))
            print(f"measured: {label}", flush=True)
        workers = len(server_processes(server)[1])
    report(rows, workers)


if __name__ == "__main__":
    main()
