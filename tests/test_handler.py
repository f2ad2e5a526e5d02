"""The TorchServe handler in-process, driven through TorchServe's own Context class."""

import base64

import pytest

from bench.inputs import bad_images, good_images
from detector.corruptions import TYPES
from detector.decoding import BadImageError
from handler.corruption_handler import request_bytes
from tests.helpers import assert_prediction_schema, run_batch, start_handler


def test_every_image_mode_gets_the_exact_schema(handler, subset):
    images = good_images(subset)
    bodies, statuses = run_batch(handler, [{"body": data} for data in images.values()])
    assert statuses == [200] * len(images)
    for body in bodies:
        assert_prediction_schema(body)


def test_one_bad_item_does_not_cost_the_batch(handler, subset):
    good = good_images(subset)
    rows = [{"body": good["png"]}, {"body": b"not an image"}, {"data": good["jpeg"]}, {"body": b""}]
    bodies, statuses = run_batch(handler, rows)
    assert statuses == [200, 400, 200, 400]
    assert_prediction_schema(bodies[0])
    assert_prediction_schema(bodies[2])
    assert bodies[1] == {"code": 400, "type": "not_an_image", "message": bodies[1]["message"]}
    assert bodies[3]["type"] == "empty_body"


def test_every_bad_input_gets_a_400_naming_the_problem(handler, subset):
    cases = bad_images(subset)
    bodies, statuses = run_batch(handler, [{"body": data} for data, _ in cases.values()])
    assert statuses == [400] * len(cases)
    assert [body["type"] for body in bodies] == [reason for _, reason in cases.values()]
    assert all(body["message"] for body in bodies)


def test_corruption_type_is_added_only_when_enabled(handler, tmp_path, subset):
    data = good_images(subset)["png"]
    typed = start_handler(tmp_path, corruption_type=True)
    (plain,), _ = run_batch(handler, [{"body": data}])
    (body,), statuses = run_batch(typed, [{"body": data}])
    assert statuses == [200]
    assert {key: body[key] for key in plain} == plain, "the binary answer is the same either way"
    assert list(body["corruption_type"]) == list(TYPES)
    assert sum(body["corruption_type"].values()) == pytest.approx(1.0, abs=1e-5)


def test_tiles_setting_reaches_the_detector(handler, tmp_path):
    assert handler.detector.tiles, "the shipped config scores large images as tiles too"
    assert not start_handler(tmp_path, tiles=False).detector.tiles


def test_request_bytes_reads_every_transport(subset):
    data = good_images(subset)["png"]
    encoded = base64.b64encode(data).decode()
    assert request_bytes({"body": data}) == data
    assert request_bytes({"data": bytearray(data)}) == data
    assert request_bytes({"upload": data}) == data
    assert request_bytes({"body": encoded}) == data
    assert request_bytes({"body": {"data": encoded}}) == data


@pytest.mark.parametrize(
    "row, reason",
    [
        ({}, "empty_body"),
        ({"body": "hello, this is text"}, "not_an_image"),
        ({"body": {"image_url": "http://example.com/x.png"}}, "unsupported_json"),
        ({"body": [1, 2, 3]}, "unsupported_json"),
        ({"body": 5}, "unsupported_json"),
    ],
)
def test_request_bytes_refuses_non_images(row, reason):
    with pytest.raises(BadImageError) as refused:
        request_bytes(row)
    assert refused.value.reason == reason
