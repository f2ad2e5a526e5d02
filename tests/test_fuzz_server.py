"""Fuzzing a real TorchServe with seeded random requests of every shape the handler accepts, for a bounded time:
never a 5xx but 503 from load (and the frontend's own 500 for a multipart body it cannot parse), every 400 a
JSON body naming its type, no worker restarted, and a normal request
sent all along is never delayed past a stated bound. FUZZ_SECONDS and FUZZ_SEED run it longer or elsewhere."""

import os
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import requests

from bench.fuzz_requests import FuzzRequest, RequestFuzzer
from bench.inputs import good_images
from tests.helpers import TIMEOUT
from tests.test_attacks import worker_pids

SECONDS = float(os.environ.get("FUZZ_SECONDS", 60))
SEED = int(os.environ.get("FUZZ_SEED", 17))
CLIENTS = 4
# A normal 32x32 request, sent every PROBE_EVERY seconds while the fuzzing runs, is answered within this bound.
NORMAL_BOUND = 5.0
PROBE_EVERY = 0.25
ALLOWED = {200, 400, 404, 413, 503}
# TorchServe's frontend answers a multipart body it cannot parse (an empty field name) with its own 500 before any
# worker sees it, as it does form bodies (README "Uploads"): counted apart, and no worker is involved.
FRONTEND_REFUSAL = (500, "ErrorDataDecoderException")


def send(server, request: FuzzRequest) -> tuple[int, str]:
    """The status and, for a 4xx from the handler, its refusal type."""
    reply = requests.post(server.inference + request.route, data=request.body, headers=request.headers,
                          timeout=TIMEOUT)  # fmt: skip
    if reply.status_code in (400, 500):
        return reply.status_code, reply.json()["type"]
    return reply.status_code, ""


def test_fuzzed_requests_never_take_a_worker_down(torchserve, subset):
    before = worker_pids(torchserve)
    fuzzer, normal = RequestFuzzer(SEED), good_images(subset)["png"]
    outcomes: Counter = Counter()
    latencies: list[float] = []
    deadline = time.monotonic() + SECONDS
    done = threading.Event()

    def probe() -> None:
        while not done.is_set():
            start = time.monotonic()
            reply = requests.post(f"{torchserve.inference}/predictions/corruption", data=normal, timeout=TIMEOUT)
            latencies.append(time.monotonic() - start if reply.status_code == 200 else float("inf"))
            time.sleep(PROBE_EVERY)

    prober = threading.Thread(target=probe)
    prober.start()
    try:
        with ThreadPoolExecutor(CLIENTS) as pool:
            while time.monotonic() < deadline:
                batch = [fuzzer.request() for _ in range(CLIENTS * 4)]
                for request, (status, reason) in zip(
                    batch, pool.map(lambda r: send(torchserve, r), batch), strict=True
                ):
                    outcomes[(status, reason)] += 1
                    allowed = status in ALLOWED or (status, reason) == FRONTEND_REFUSAL
                    assert allowed, (status, reason, request.route, request.headers, request.body[:300])
    finally:
        done.set()
        prober.join()
    print(f"\nfuzz seed {SEED}, {sum(outcomes.values())} requests in {SECONDS:.0f} s: {dict(outcomes.most_common())}")
    print(f"normal requests beside: {len(latencies)}, slowest {max(latencies):.2f} s")
    assert worker_pids(torchserve) == before, "a worker died or was replaced"
    assert max(latencies) < NORMAL_BOUND
    assert sum(count for (status, _), count in outcomes.items() if status == 200) > 0, "some fuzzed images are valid"
