"""The Python client against a real TorchServe (and in-process, LocalClient): inputs of every kind, many images in
input order, typed errors for refusals, timeouts, overload and a server that is down, and retry on 503."""

import threading
import time

import pytest
import requests
from PIL import Image

from bench.inputs import bad_images, encode, good_images, sample_rgb
from bench.torchserve import free_port
from client import (
    Client,
    ClientError,
    LocalClient,
    OverloadedError,
    Prediction,
    RefusedError,
    RequestTimeout,
    ServerUnreachable,
)
from client.api import server_url
from tests.helpers import TIMEOUT, assert_prediction_schema, assert_same_answer


def answer(server, data: bytes) -> dict:
    response = requests.post(f"{server.inference}/predictions/corruption", data=data, timeout=TIMEOUT)
    assert response.status_code == 200, response.text
    return response.json()


@pytest.fixture(scope="module")
def local() -> LocalClient:
    return LocalClient()


def test_predict_takes_a_path_bytes_or_a_pil_image(torchserve, subset, tmp_path):
    png = encode(sample_rgb(subset), "PNG")
    (tmp_path / "photo.png").write_bytes(png)
    client = Client(torchserve.inference)
    expected = answer(torchserve, png)
    for image in (tmp_path / "photo.png", str(tmp_path / "photo.png"), png, Image.open(tmp_path / "photo.png")):
        prediction = client.predict(image)
        assert isinstance(prediction, Prediction)
        assert_same_answer(prediction.body, expected)
        assert_same_answer({"label": prediction.label, "confidence": prediction.confidence, "probs": prediction.probs},
                           expected)  # fmt: skip
        assert prediction.corrupted == (expected["label"] == "corrupted")


def test_predict_many_answers_in_input_order_and_returns_refusals_in_place(torchserve, subset):
    good, bad = good_images(subset), bad_images(subset)
    images = [good["png"], bad["truncated_png"][0], good["jpeg"], good["large_webp"], bad["pdf"][0]] * 4
    results = list(Client(torchserve.inference).predict_many(images, concurrency=4, return_errors=True))
    assert len(results) == len(images)
    for image, result in zip(images, results, strict=True):
        if image in (bad["truncated_png"][0], bad["pdf"][0]):
            assert isinstance(result, RefusedError) and result.status == 400
            assert result.kind == ("truncated_image" if image == bad["truncated_png"][0] else "not_an_image")
        else:
            assert_same_answer(result.body, answer(torchserve, image))


def test_predict_many_raises_the_first_refusal_by_default(torchserve, subset):
    good, (bad, reason) = good_images(subset)["png"], bad_images(subset)["random_bytes"]
    results = Client(torchserve.inference).predict_many([good, bad, good], concurrency=2)
    assert next(results).label in ("clean", "corrupted")
    with pytest.raises(RefusedError) as refused:
        next(results)
    assert refused.value.kind == reason and refused.value.message


def test_refusals_and_predictions_name_their_input(torchserve, local, subset, tmp_path):
    """A path names itself; bytes and PIL images among many are `images[i]`; a refusal's text starts with it."""
    good, (bad, reason) = good_images(subset)["png"], bad_images(subset)["random_bytes"]
    (tmp_path / "good.png").write_bytes(good)
    (tmp_path / "bad.png").write_bytes(bad)
    for client in (Client(torchserve.inference), local):
        results = list(client.predict_many([tmp_path / "good.png", good, bad, str(tmp_path / "bad.png")],
                                           return_errors=True))  # fmt: skip
        assert [result.source for result in results] == [str(tmp_path / "good.png"), "images[1]", "images[2]",
                                                         str(tmp_path / "bad.png")]  # fmt: skip
        assert [type(result) for result in results] == [Prediction, Prediction, RefusedError, RefusedError]
        assert str(results[2]) == f"images[2]: {results[2].message}" and results[2].kind == reason
        with pytest.raises(RefusedError, match=r"^images\[1\]: "):
            list(client.predict_many([good, bad]))
        with pytest.raises(RefusedError) as refused:
            client.predict(tmp_path / "bad.png")
        assert str(refused.value).startswith(f"{tmp_path / 'bad.png'}: ")
        assert client.predict(good).source is None


def test_a_server_url_needs_no_scheme(torchserve, subset):
    """`127.0.0.1:8080` means http://127.0.0.1:8080; another scheme is refused when the client is made."""
    address = torchserve.inference.removeprefix("http://")
    assert Client(address).predict(good_images(subset)["png"]).label in ("clean", "corrupted")
    assert server_url(" 127.0.0.1:8080/ ") == "http://127.0.0.1:8080"
    assert server_url("https://detector.example:443") == "https://detector.example:443"
    for wrong in ("ftp://127.0.0.1:8080", "http://"):
        with pytest.raises(ValueError, match="not a server URL"):
            Client(wrong)


def test_a_server_that_is_down_is_unreachable(subset):
    client = Client(f"http://127.0.0.1:{free_port()}", retries=0)
    with pytest.raises(ServerUnreachable):
        client.ping()
    with pytest.raises(ServerUnreachable):
        client.predict(good_images(subset)["png"])


def test_no_answer_in_time_is_a_timeout(torchserve, subset):
    large = encode(sample_rgb(subset).resize((2048, 1536)), "JPEG")
    with pytest.raises(RequestTimeout) as timed_out:
        Client(torchserve.inference, timeout=0.001).predict(large)
    assert isinstance(timed_out.value, TimeoutError)


def test_an_unreadable_file_is_a_client_error(tmp_path):
    with pytest.raises(ClientError) as error:
        Client().predict(tmp_path / "missing.png")
    assert error.value.kind == "unreadable_file"


def register_without_workers(server, version: str) -> str:
    """Register `version` and scale it to no workers: TorchServe answers its requests 503 itself."""
    url = f"{server.management}/models/corruption/{version}"
    params = {"url": f"corruption-{version}.mar", "synchronous": "false"}
    assert requests.post(f"{server.management}/models", params=params, timeout=TIMEOUT).status_code == 202
    scaled = requests.put(url, params={"min_worker": 0, "max_worker": 0, "synchronous": "true"}, timeout=240)
    assert scaled.status_code == 200, scaled.text
    return url


def test_503_is_retried_with_backoff_until_a_worker_answers(torchserve, subset):
    """The client keeps retrying a version without workers; once a worker starts, the same call succeeds."""
    url = register_without_workers(torchserve, "2.0")
    png = good_images(subset)["png"]
    try:
        with pytest.raises(OverloadedError) as overloaded:
            Client(torchserve.inference, version="2.0", retries=2, backoff=0.01).predict(png)
        assert overloaded.value.status == 503
        scale_up = threading.Timer(1.0, requests.put, [url], {"params": {"min_worker": 1, "synchronous": "false"}})
        scale_up.start()
        start = time.monotonic()
        prediction = Client(torchserve.inference, version="2.0", retries=8, backoff=0.5).predict(png)
        assert time.monotonic() - start > 1.0, "answered before any worker was started"
        assert_same_answer(prediction.body, answer(torchserve, png))
        scale_up.join()
    finally:
        assert requests.delete(url, timeout=TIMEOUT).status_code == 200


def test_the_local_client_runs_the_same_core_as_the_server(torchserve, local, subset):
    good, (bad, reason) = good_images(subset), bad_images(subset)["truncated_jpeg"]
    images = [good["png"], good["jpeg"], bad, good["large_webp"]]
    remote = list(Client(torchserve.inference).predict_many(images, return_errors=True))
    here = list(local.predict_many(images, return_errors=True))
    for mine, theirs in zip(here[:2] + here[3:], remote[:2] + remote[3:], strict=True):
        assert_same_answer(mine.body, theirs.body)
    assert isinstance(here[2], RefusedError) and here[2].kind == reason == remote[2].kind


def test_the_local_client_answers_the_api_schema(local, subset, tmp_path):
    (tmp_path / "photo.jpg").write_bytes(good_images(subset)["jpeg"])
    assert_prediction_schema(local.predict(tmp_path / "photo.jpg").body)
    with pytest.raises(RefusedError) as refused:
        local.predict(b"not an image")
    assert refused.value.kind == "not_an_image"
    with pytest.raises(FileNotFoundError):
        LocalClient(tmp_path / "no-such-weights.pt")
