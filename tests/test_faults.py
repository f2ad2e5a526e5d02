"""Faults against a real TorchServe: a worker killed under load, and an oversized body."""

import os
import signal
import threading
import time
from collections import Counter

import pytest
import requests

from bench.inputs import good_images
from bench.torchserve import running_torchserve
from tests.helpers import TIMEOUT


def ready_worker_pids(server) -> list[int]:
    description = requests.get(f"{server.management}/models/corruption", timeout=TIMEOUT).json()[0]
    return [worker["pid"] for worker in description["workers"] if worker["status"] == "READY"]


@pytest.fixture(scope="module")
def own_server(model_store, tmp_path_factory):
    """A TorchServe of its own: killing its workers must not disturb the shared one."""
    with running_torchserve(model_store, tmp_path_factory.mktemp("faults")) as server:
        yield server


def test_killed_worker_is_replaced_and_service_resumes(own_server, subset):
    url, image = f"{own_server.inference}/predictions/corruption", good_images(subset)["png"]
    outcomes: Counter = Counter()
    stop = threading.Event()

    def client() -> None:
        with requests.Session() as session:
            while not stop.is_set():
                try:
                    outcomes[session.post(url, data=image, timeout=TIMEOUT).status_code] += 1
                except requests.RequestException:
                    outcomes["connection error"] += 1

    clients = [threading.Thread(target=client) for _ in range(4)]
    for thread in clients:
        thread.start()
    try:
        time.sleep(2)
        before = ready_worker_pids(own_server)
        os.kill(before[0], signal.SIGKILL)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            pids = ready_worker_pids(own_server)
            if len(pids) == len(before) and before[0] not in pids:
                break
            time.sleep(0.5)
        else:
            pytest.fail(f"worker not replaced: {ready_worker_pids(own_server)}")
        recovered_at = sum(outcomes.values())
        time.sleep(2)
    finally:
        stop.set()
        for thread in clients:
            thread.join()
    failed = sum(count for status, count in outcomes.items() if status != 200)
    print(f"\nworker kill under load: {dict(outcomes)}; failed requests during recovery: {failed}")
    assert sum(outcomes.values()) > recovered_at, "no request served after recovery"
    assert failed <= 16, outcomes  # at most the batches in flight on the killed worker
    assert requests.post(url, data=image, timeout=TIMEOUT).status_code == 200


def test_oversized_body_gets_413_and_the_server_keeps_serving(torchserve, subset):
    too_big = b"\xff" * (16 * 1024 * 1024 + 1)
    response = requests.post(f"{torchserve.inference}/predictions/corruption", data=too_big, timeout=TIMEOUT)
    assert response.status_code == 413, response.text
    ok = requests.post(f"{torchserve.inference}/predictions/corruption", data=good_images(subset)["png"], timeout=60)
    assert ok.status_code == 200
