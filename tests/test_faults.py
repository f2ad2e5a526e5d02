"""Faults against a real TorchServe: a worker killed under load, an oversized body, model URLs, upload types."""

import os
import shutil
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


def register(server, url: str) -> requests.Response:
    params = {"url": url, "initial_workers": 0, "synchronous": "true"}
    return requests.post(f"{server.management}/models", params=params, timeout=TIMEOUT)


def test_model_urls_outside_the_store_are_refused_and_copy_nothing(own_server, model_store, tmp_path):
    """allowed_urls matches the store exactly: a query or fragment naming the store no longer lets an archive in."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.copy(model_store / "corruption-2.0.mar", elsewhere / "y.mar")
    for url in (
        f"file://{elsewhere}/y.mar?/model_store/q.mar",
        f"file://{elsewhere}/y.mar#/model_store/q.mar",
        f"file://{elsewhere}/y.mar?{model_store}/q.mar",
        f"file://{model_store}/sub/y.mar",
        f"file://{model_store}/y.mar?x=1",
        "http://127.0.0.1:9/model_store/y.mar",
    ):
        answer = register(own_server, url)
        assert answer.status_code == 404 and "does not match any allowed URL" in answer.text, (url, answer.text)
    assert not (model_store / "y.mar").exists()
    # A URL naming a file of the store itself passes the pattern (TorchServe then refuses to copy it over itself).
    assert "does not match" not in register(own_server, f"file://{model_store}/corruption-2.0.mar").text
    # Bare names from the store are how versions are registered.
    assert register(own_server, "corruption-2.0.mar").status_code == 200
    requests.delete(f"{own_server.management}/models/corruption/2.0", timeout=TIMEOUT).raise_for_status()


@pytest.mark.parametrize(
    ("content_type", "status"),
    [(None, 200), ("image/png", 200), ("application/octet-stream", 200), ("application/x-www-form-urlencoded", 500)],
)
def test_upload_content_types_behave_as_the_readme_says(torchserve, subset, content_type, status):
    """curl -T sends no type and --data-binary a form type, which TorchServe's frontend parses as a form (a 500)."""
    headers = {"Content-Type": content_type} if content_type else {}
    answer = requests.post(f"{torchserve.inference}/predictions/corruption", data=good_images(subset)["png"],
                           headers=headers, timeout=TIMEOUT)  # fmt: skip
    assert answer.status_code == status, answer.text
