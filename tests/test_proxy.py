"""The pod's nginx (k8s/base/proxy.conf, this very file with its ports and paths substituted) in front of a real
TorchServe: stalled uploads and idle connections are dropped by nginx and never reach TorchServe, whose workers
and heap are untouched, and normal requests keep being answered beside them."""

import contextlib
import http.client
import json
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from bench.inputs import good_images
from bench.torchserve import ROOT, free_port
from tests.helpers import TIMEOUT, assert_prediction_schema
from tests.test_attacks import worker_pids
from tests.test_k8s import proxy_setting

CONFIG = ROOT / "k8s" / "base" / "proxy.conf"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
STALLED = 80
DECLARED = 15 * 2**20
SENT = 2**20


def seconds(value: str) -> float:
    return float(value.rstrip("s"))


@pytest.fixture(scope="module")
def proxy(torchserve, tmp_path_factory) -> Iterator[str]:
    """nginx with the shipped configuration, in front of the test TorchServe; its address."""
    workdir = tmp_path_factory.mktemp("nginx")
    port = free_port()
    upstream = torchserve.inference.removeprefix("http://")
    text = CONFIG.read_text().replace("/tmp/nginx", str(workdir)).replace("listen 8088;", f"listen 127.0.0.1:{port};")
    text, count = re.subn(r"server 127\.0\.0\.1:8080 ", f"server {upstream} ", text)
    assert count == 1
    (workdir / "nginx.conf").write_text(text)
    process = subprocess.Popen([NGINX, "-c", str(workdir / "nginx.conf"), "-g", "daemon off; user root;"],
                               stderr=subprocess.PIPE)  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                break
            assert process.poll() is None, process.stderr.read().decode()
            time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=30)


def stalled_upload(address: str, client: str) -> socket.socket:
    """A connection from the loopback address `client` that declares a 15 MiB body, sends 1 MiB of it, then nothing."""
    host, port = address.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=TIMEOUT, source_address=(client, 0))
    head = f"POST /predictions/corruption HTTP/1.1\r\nHost: x\r\nContent-Length: {DECLARED}\r\n\r\n"
    sock.sendall(head.encode() + b"\xff" * SENT)
    return sock


def answer_or_close(sock: socket.socket) -> tuple[bytes, float]:
    """What the server sends before closing the connection, and after how many seconds."""
    start, received = time.monotonic(), b""
    with sock:
        while chunk := sock.recv(4096):
            received += chunk
    return received, time.monotonic() - start


def post_normal(address: str, image: bytes) -> None:
    """A normal prediction through the proxy from another loopback address than the stalled clients'."""
    host, port = address.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=TIMEOUT, source_address=("127.0.0.2", 0))
    try:
        connection.request("POST", "/predictions/corruption", body=image)
        reply = connection.getresponse()
        assert reply.status == 200, reply.read()[:300]
        assert_prediction_schema(json.loads(reply.read()))
    finally:
        connection.close()


def test_requests_pass_through_to_torchserve(proxy, subset):
    reply = requests.post(f"{proxy}/predictions/corruption", data=good_images(subset)["png"], timeout=TIMEOUT)
    assert reply.status_code == 200
    assert_prediction_schema(reply.json())
    too_big = requests.post(f"{proxy}/predictions/corruption", data=b"\0" * (16 * 2**20 + 1), timeout=TIMEOUT)
    assert too_big.status_code == 413


def test_stalled_uploads_are_dropped_by_nginx_and_never_reach_torchserve(proxy, torchserve, subset):
    """80 stalled uploads from 5 addresses (16 each, the per-client limit): each is closed once it has sent nothing
    for client_body_timeout; a 17th from one address gets 503 at once; normal requests from another address
    are answered all along, and TorchServe sees only those."""
    image = good_images(subset)["png"]
    before, logged = worker_pids(torchserve), torchserve.log().count("ACCESS_LOG")
    post_normal(proxy, image)
    lines_per_request, logged = torchserve.log().count("ACCESS_LOG") - logged, torchserve.log().count("ACCESS_LOG")
    with ThreadPoolExecutor(STALLED) as pool:
        stalled = [stalled_upload(proxy, f"127.0.1.{index % 5 + 1}") for index in range(STALLED)]
        endings = [pool.submit(answer_or_close, sock) for sock in stalled]
        one_more, _ = answer_or_close(stalled_upload(proxy, "127.0.1.1"))
        for _ in range(5):  # normal requests beside the stalled ones are answered all along
            post_normal(proxy, image)
            time.sleep(1)
        results = [ending.result(timeout=TIMEOUT) for ending in endings]
    timeout = seconds(proxy_setting("client_body_timeout"))
    assert one_more.startswith(b"HTTP/1.1 503")
    # nginx drops such a connection without an answer (its 408 is never sent): closed is what counts.
    assert all(received in (b"",) or received.startswith(b"HTTP/1.1 408") for received, _ in results), results[0]
    assert max(after for _, after in results) < timeout + 5
    reached = (torchserve.log().count("ACCESS_LOG") - logged) / lines_per_request
    assert reached == 5, "only the normal requests reached TorchServe"
    assert worker_pids(torchserve) == before


def test_a_connection_that_sends_nothing_is_closed(proxy):
    host, port = proxy.removeprefix("http://").split(":")
    _, after = answer_or_close(socket.create_connection((host, int(port)), timeout=TIMEOUT))
    assert after < seconds(proxy_setting("client_header_timeout")) + 5
