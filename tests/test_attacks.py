"""The red-team cases of issue 17 against a real TorchServe: each gets its typed answer, a normal request sent
beside it is answered in time, and no worker process dies or is replaced."""

import threading
import time

import pytest
import requests

from bench.attacks import Attack, attacks
from bench.inputs import good_images
from tests.helpers import TIMEOUT
from training.data import SUBSET

# A normal 32x32 request sent beside an attack must be answered within this many seconds.
NORMAL_BOUND = 2.0


def worker_pids(server) -> list[int]:
    description = requests.get(f"{server.management}/models/corruption", timeout=TIMEOUT).json()[0]
    return sorted(worker["pid"] for worker in description["workers"] if worker["status"] == "READY")


def cases() -> list[Attack]:
    """Made at collection, from the CIFAR subset (parametrisation cannot wait for the session fixture)."""
    return attacks(good_images(SUBSET)["png"])


@pytest.fixture(scope="module")
def workers_before(torchserve):
    """The worker processes at the start: every attack must leave exactly these."""
    before = worker_pids(torchserve)
    yield before
    assert worker_pids(torchserve) == before, "a worker died or was replaced during the attacks"


@pytest.mark.parametrize("attack", cases(), ids=lambda attack: attack.name)
def test_an_attack_gets_its_typed_answer_and_a_normal_request_beside_it_is_answered(
    torchserve, workers_before, subset, attack
):
    normal, answers = good_images(subset)["png"], {}

    def send_normal() -> None:
        time.sleep(0.05)  # lands while the attack is read or handled
        start = time.monotonic()
        reply = requests.post(f"{torchserve.inference}/predictions/corruption", data=normal, timeout=TIMEOUT)
        answers["normal"] = (reply.status_code, time.monotonic() - start)

    beside = threading.Thread(target=send_normal)
    beside.start()
    reply = requests.post(torchserve.inference + attack.route, data=attack.body, headers=attack.headers,
                          timeout=TIMEOUT)  # fmt: skip
    beside.join()
    assert reply.status_code == attack.status, reply.text[:500]
    assert reply.reason in ("OK", "Bad Request"), "status lines carry fixed phrases only"
    if attack.reason:
        assert reply.json()["type"] == attack.reason, reply.text[:500]
    status, seconds = answers["normal"]
    assert status == 200 and seconds < NORMAL_BOUND, answers
    assert worker_pids(torchserve) == workers_before
