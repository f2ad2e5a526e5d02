"""The TorchServe handler in-process, driven through TorchServe's own Context class."""

import base64
import shutil

import pytest
import yaml
from ts.context import Context, RequestProcessor

from handler.corruption_handler import CorruptionHandler, request_bytes
from tests.images import bad_images, good_images
from tests.torchserve_process import ROOT
from training.archive import SHIPPED_WEIGHTS
from training.corruptions import TYPES
from training.preprocessing import BadImageError


def start_handler(model_dir, **settings) -> CorruptionHandler:
    """A handler initialised as TorchServe would, from the archive's model-config.yaml plus `settings`."""
    shutil.copy(SHIPPED_WEIGHTS, model_dir / "model.pt")
    config = yaml.safe_load((ROOT / "handler" / "model-config.yaml").read_text())
    config["handler"].update(settings)
    context = Context(
        "corruption",
        str(model_dir),
        {"model": {"serializedFile": "model.pt"}},
        8,
        None,
        "0.12.0",
        model_yaml_config=config,
    )
    service = CorruptionHandler()
    service.initialize(context)
    return service


@pytest.fixture(scope="module")
def handler(tmp_path_factory) -> CorruptionHandler:
    return start_handler(tmp_path_factory.mktemp("model_dir"))


def run_batch(handler: CorruptionHandler, rows: list[dict]) -> tuple[list[dict], list[int]]:
    """Handle one batch as TorchServe would; returns the bodies and per-item status codes."""
    context = Context("corruption", "", {}, len(rows), None, "0.12.0")
    context.request_processor = [RequestProcessor({}) for _ in rows]
    bodies = handler.handle(rows, context)
    return bodies, [context.get_response_status(i)[0] for i in range(len(rows))]


def assert_prediction_schema(body: dict) -> None:
    assert set(body) == {"label", "confidence", "probs"}
    assert set(body["probs"]) == {"clean", "corrupted"}
    assert body["probs"]["clean"] + body["probs"]["corrupted"] == pytest.approx(1.0, abs=1e-6)
    assert body["confidence"] == max(body["probs"].values())
    assert body["label"] == max(body["probs"], key=body["probs"].get)


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
