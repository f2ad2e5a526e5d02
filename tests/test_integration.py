"""A real TorchServe (Java frontend + Python workers) serving the built corruption.mar over HTTP."""

import base64
import json
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from bench.inputs import bad_images, good_images
from tests.helpers import TIMEOUT, assert_prediction_schema


def predict(server, data: bytes, path: str = "predictions/corruption", **kwargs) -> requests.Response:
    return requests.post(f"{server.inference}/{path}", data=data, timeout=TIMEOUT, **kwargs)


def worker_pids(server) -> set[int]:
    description = requests.get(f"{server.management}/models/corruption", timeout=TIMEOUT).json()[0]
    return {worker["pid"] for worker in description["workers"] if worker["status"] == "READY"}


@pytest.mark.parametrize(
    "name",
    [
        "png",
        "jpeg",
        "rgba",
        "grayscale",
        "palette",
        "16bit",
        "la",
        "cmyk_jpeg",
        "animated_gif",
        "exif_rotated_jpeg",
        "large_webp",
    ],
)
def test_prediction_schema_for_every_image_mode(torchserve, subset, name):
    response = predict(torchserve, good_images(subset)[name])
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert_prediction_schema(response.json())


def test_multipart_and_base64_json_bodies(torchserve, subset):
    data = good_images(subset)["png"]
    expected = predict(torchserve, data).json()
    multipart = requests.post(f"{torchserve.inference}/predictions/corruption", files={"data": data}, timeout=TIMEOUT)
    as_json = predict(
        torchserve, json.dumps({"data": base64.b64encode(data).decode()}), headers={"Content-Type": "application/json"}
    )
    assert multipart.json() == expected
    assert as_json.json() == expected


@pytest.mark.parametrize(
    "files",
    [
        [("data", "a.png"), ("other", "b.jpg")],  # two fields
        [("data", "a.png"), ("data", "b.jpg")],  # one field twice: TorchServe keeps only one of them
    ],
)
def test_several_files_in_one_multipart_request_are_refused_not_dropped(torchserve, subset, files):
    images = {"a.png": good_images(subset)["png"], "b.jpg": good_images(subset)["jpeg"]}
    upload = [(field, (name, images[name])) for field, name in files]
    response = requests.post(f"{torchserve.inference}/predictions/corruption", files=upload, timeout=TIMEOUT)
    assert response.status_code == 400, response.text
    assert response.json()["type"] == "multiple_files"
    assert "one image per request" in response.json()["message"]


@pytest.mark.parametrize(
    "name", ["empty", "random_bytes", "truncated_png", "truncated_jpeg", "huge_declared_png", "over_limit_png", "pdf"]
)
def test_bad_input_gets_4xx_json_and_the_worker_survives(torchserve, subset, name):
    pids = worker_pids(torchserve)
    data, reason = bad_images(subset)[name]
    response = predict(torchserve, data)
    assert response.status_code == 400, response.text
    assert response.json()["type"] == reason
    assert response.json()["message"]
    assert predict(torchserve, good_images(subset)["png"]).status_code == 200
    assert worker_pids(torchserve) == pids


@pytest.mark.parametrize(
    "body, content_type, reason",
    [
        ("just some text", "text/plain", "not_an_image"),
        ('{"image_url": "http://example.com/cat.png"}', "application/json", "unsupported_json"),
        ("[1, 2, 3]", "application/json", "unsupported_json"),
    ],
)
def test_text_and_json_bodies_get_400(torchserve, body, content_type, reason):
    response = predict(torchserve, body.encode(), headers={"Content-Type": content_type})
    assert response.status_code == 400, response.text
    assert response.json()["type"] == reason


def test_concurrent_batch_with_one_bad_item(torchserve, subset):
    """Concurrent requests are batched by TorchServe; only the bad one fails."""
    good = good_images(subset)["png"]
    bodies = [good] * 7 + [b"definitely not an image"] + [good] * 8
    with ThreadPoolExecutor(max_workers=len(bodies)) as pool:
        responses = list(pool.map(lambda body: predict(torchserve, body), bodies))
    statuses = [response.status_code for response in responses]
    assert statuses == [200] * 7 + [400] + [200] * 8, statuses
    assert len({json.dumps(response.json()) for i, response in enumerate(responses) if i != 7}) == 1


def test_model_versions_through_the_management_api(torchserve, subset):
    management, image = torchserve.management, good_images(subset)["png"]
    registered = requests.post(
        f"{management}/models",
        params={"url": "corruption-2.0.mar", "initial_workers": 1, "synchronous": "true"},
        timeout=240,
    )
    assert registered.status_code == 200, registered.text
    try:
        versions = requests.get(f"{management}/models/corruption/all", timeout=TIMEOUT).json()
        assert sorted(v["modelVersion"] for v in versions) == ["1.0", "2.0"]
        assert predict(torchserve, image, "predictions/corruption/2.0").status_code == 200

        assert requests.put(f"{management}/models/corruption/2.0/set-default", timeout=TIMEOUT).status_code == 200
        assert requests.get(f"{management}/models/corruption", timeout=TIMEOUT).json()[0]["modelVersion"] == "2.0"
        assert requests.put(f"{management}/models/corruption/1.0/set-default", timeout=TIMEOUT).status_code == 200
    finally:
        unregistered = requests.delete(f"{management}/models/corruption/2.0", timeout=TIMEOUT)
    assert unregistered.status_code == 200, unregistered.text
    assert predict(torchserve, image, "predictions/corruption/2.0").status_code == 404
    assert predict(torchserve, image).status_code == 200


def test_registering_from_the_network_is_refused(torchserve):
    response = requests.post(
        f"{torchserve.management}/models", params={"url": "http://127.0.0.1:9/evil.mar"}, timeout=TIMEOUT
    )
    assert response.status_code == 404, response.text
    assert "does not match any allowed URL" in response.json()["message"]


def test_metrics_expose_request_counters(torchserve, subset):
    predict(torchserve, good_images(subset)["png"])
    metrics = requests.get(f"{torchserve.metrics}/metrics", timeout=TIMEOUT).text
    assert 'ts_inference_requests_total{model_name="corruption"' in metrics
    assert "Requests2XX" in metrics and "Requests4XX" in metrics
