"""The TorchServe handler in-process, driven through TorchServe's own Context class (and, for metrics, its own
metrics cache reading observability/metrics.yaml)."""

import base64
import json
import logging
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from ts.metrics.metric_cache_yaml_impl import MetricsCacheYamlImpl
from ts.utils.util import list_classes_from_module

from bench.inputs import bad_images, encode, good_images
from bench.torchserve import ROOT
from detector.budget import MAX_EXPLANATIONS, MAX_IMAGES
from detector.corruptions import TYPES
from detector.decoding import BadImageError
from handler import corruption_handler
from handler.corruption_handler import decile
from handler.protocols import hidden_parts, parse_request, request_bytes
from tests.helpers import assert_prediction_schema, context, run_batch, start_handler


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def nested(data: list, depth: int) -> list:
    """`data` wrapped in `depth` more lists."""
    for _ in range(depth):
        data = [data]
    return data


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


def test_crops_setting_reaches_the_detector(handler, tmp_path):
    assert handler.detector.crops, "the shipped config judges large images on native crops too"
    assert not start_handler(tmp_path, crops=False).detector.crops


def test_pipeline_and_precision_settings_reach_the_detector(handler, tmp_path):
    assert (handler.detector.pipeline, handler.detector.precision) == ("cpu", "fp32"), "auto on a CPU worker"
    forced = start_handler(tmp_path, pipeline="device", precision="bf16").detector
    assert (forced.pipeline, forced.precision) == ("device", "bf16")


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


@pytest.mark.parametrize(
    "row",
    [
        {"data": b"first", "other": b"second"},  # two multipart fields
        {"data": b"first", "body": b"second"},
    ],
)
def test_several_files_in_one_request_are_refused_not_dropped(row):
    with pytest.raises(BadImageError) as refused:
        request_bytes(row)
    assert refused.value.reason == "multiple_files"
    assert "data" in refused.value.message


def test_a_repeated_multipart_field_is_seen_from_the_body_length():
    """TorchServe keeps one part per field name; the Content-Length still counts the dropped one."""
    boundary = "------------------------8608af3a1a8f5c44"
    kept = b"x" * 2000
    headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    one_part = len(boundary) + 200 + len(kept) + len(boundary) + 8
    assert not hidden_parts({"data": kept}, headers["Content-Type"], str(one_part))
    assert hidden_parts({"data": kept}, headers["Content-Type"], str(one_part + len(boundary) + 150 + 2000))
    with pytest.raises(BadImageError) as refused:
        request_bytes({"data": kept}, {**headers, "Content-Length": str(2 * one_part)})
    assert refused.value.reason == "multiple_files"
    assert "'data' (repeated)" in refused.value.message


def test_a_form_encoded_body_is_refused_with_how_to_send_it(subset):
    """`curl -d @body.json` without a Content-Type sends a form, which TorchServe splits and garbles."""
    text = json.dumps({"instances": [{"data": b64(good_images(subset)["png"])}]})
    name, _, value = text.replace("+", " ").partition("=")
    with pytest.raises(BadImageError) as refused:
        request_bytes({name: value.encode()}, {"Content-Type": "application/x-www-form-urlencoded"})
    assert refused.value.reason == "form_encoded_body"
    assert "Content-Type: application/json" in refused.value.message


def kserve_v2(*images: bytes, **extra) -> dict:
    """A KServe v2 (Open Inference Protocol) body: one BYTES input of base64 images."""
    tensor = {"name": "image", "datatype": "BYTES", "shape": [len(images)], "data": [b64(i) for i in images]}
    return {"inputs": [tensor], **extra}


def test_kserve_v1_and_v2_bodies_are_scored_image_by_image(handler, subset):
    good = good_images(subset)
    (plain_png, plain_jpeg), _ = run_batch(handler, [{"body": good["png"]}, {"body": good["jpeg"]}])
    rows = [
        {"body": {"instances": [b64(good["png"]), {"data": b64(good["jpeg"])}, {"b64": b64(good["png"])}]}},
        {"body": kserve_v2(good["png"], good["jpeg"], id="request-7")},
        {"body": json.dumps({"instances": [b64(good["jpeg"])]}).encode()},  # JSON with another Content-Type
    ]
    (v1, v2, v1_bytes), statuses = run_batch(handler, rows)
    assert statuses == [200, 200, 200]
    assert v1 == {"predictions": [plain_png, plain_jpeg, plain_png]}
    assert v1_bytes == {"predictions": [plain_jpeg]}
    assert v2["id"] == "request-7" and v2["model_name"] == "corruption"
    outputs = {output["name"]: output for output in v2["outputs"]}
    assert list(outputs) == ["label", "confidence", "probs"]
    assert outputs["label"] == {"name": "label", "datatype": "BYTES", "shape": [2],
                                "data": [plain_png["label"], plain_jpeg["label"]]}  # fmt: skip
    assert outputs["confidence"]["datatype"] == "FP32"
    assert outputs["confidence"]["data"] == [plain_png["confidence"], plain_jpeg["confidence"]]
    assert outputs["probs"]["shape"] == [2, 2] and outputs["probs"]["parameters"] == {"classes": "clean,corrupted"}
    assert outputs["probs"]["data"] == [*plain_png["probs"].values(), *plain_jpeg["probs"].values()]


def test_kserve_v2_returns_the_outputs_asked_for_and_explanations(handler, subset):
    png = good_images(subset)["png"]
    body = kserve_v2(png, outputs=[{"name": "probs"}])
    (only_probs, explained), statuses = run_batch(handler, [{"body": body}, {"body": kserve_v2(png)}], [False, True])
    assert statuses == [200, 200]
    assert [output["name"] for output in only_probs["outputs"]] == ["probs"]
    outputs = {output["name"]: output for output in explained["outputs"]}
    assert list(outputs) == ["label", "confidence", "probs", "explanation"]
    assert json.loads(outputs["explanation"]["data"][0])["method"] == "grad-cam"


def test_kserve_v1_explain_answers_explanations(handler, subset):
    (body,), statuses = run_batch(handler, [{"body": {"instances": [b64(good_images(subset)["png"])]}}], [True])
    assert statuses == [200]
    assert list(body) == ["explanations"]
    assert body["explanations"][0]["explanation"]["method"] == "grad-cam"


def test_the_largest_answer_fits_in_max_response_size(handler):
    """An explanation request at the budget's limit, of noisy square images (the least compressible overlays),
    serialised as TorchServe's worker does (indent=2), stays under half of config.properties' max_response_size."""
    noise = np.random.default_rng(0).integers(0, 256, (1024, 1024, 3), dtype=np.uint8)
    image = b64(encode(Image.fromarray(noise), "PNG"))
    (body,), statuses = run_batch(handler, [{"body": {"instances": [image] * MAX_EXPLANATIONS}}], [True])
    assert statuses == [200]
    limit = int(re.search(r"^max_response_size=(\d+)$", (ROOT / "config.properties").read_text(), re.M)[1])
    assert len(json.dumps(body, indent=2).encode()) < limit / 2


@pytest.mark.parametrize(
    "body, reason, message",
    [
        ({"instances": "not a list"}, "invalid_kserve_request", '"instances" must be a list'),
        ({"instances": []}, "invalid_kserve_request", "holds no image"),
        ({"instances": [5]}, "invalid_kserve_request", "instances[0] must be a base64 string"),
        ({"instances": ["not base64!"]}, "not_an_image", "instances[0] is text"),
        ({"instances": ["aGVsbG8="] * (MAX_IMAGES + 1)}, "too_many_images", "at most"),
        ({"inputs": [{"name": "image", "datatype": "FP32", "shape": [1], "data": [0.5]}]}, "invalid_kserve_request",
         'datatype "BYTES"'),
        ({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [2], "data": ["aGVsbG8="]}]},
         "invalid_kserve_request", "does not match"),
        ({"inputs": []}, "invalid_kserve_request", "exactly one input"),
        ({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": ["aGVsbG8="]}],
          "outputs": [{"name": "logits"}]}, "invalid_kserve_request", "unknown outputs"),
        ({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": ["aGVsbG8="]}], "outputs": 5},
         "invalid_kserve_request", '"outputs" must be a list'),
        ({"inputs": "image"}, "invalid_kserve_request", "exactly one input"),
        ({"inputs": [{"datatype": "BYTES", "shape": "x", "data": {}}]}, "invalid_kserve_request", 'needs a "name"'),
        ({"inputs": [{"name": "image", "datatype": "BYTES", "shape": "x", "data": []}]}, "invalid_kserve_request",
         "non-negative integers"),
        ({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [-1, -1], "data": ["aGVsbG8="]}]},
         "invalid_kserve_request", "non-negative integers"),
        ({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [True], "data": ["aGVsbG8="]}]},
         "invalid_kserve_request", "non-negative integers"),
        ({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": nested(["aGVsbG8="], 900)}]},
         "invalid_kserve_request", "nests deeper"),
        ({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [10**6], "data": ["aGVsbG8="] * 10**6}]},
         "too_many_images", "at most"),
        ({"inputs": [{"name": "\u00e9\r\n" * 50, "datatype": "FP32", "shape": [1], "data": [1]}]},
         "invalid_kserve_request", "'\\xe9\\r\\n"),
        ({"instances": ["aGVsbG8="], "inputs": []}, "invalid_kserve_request", "not both"),
        ({"id": "x" * 257, "inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": ["aGVsbG8="]}]},
         "invalid_kserve_request", '"id" must be at most 256'),
        ({"instances": [{"data": 5}]}, "invalid_kserve_request", "must be a base64 string"),
    ],
)  # fmt: skip
def test_bad_kserve_requests_get_a_400_in_kserves_error_shape(handler, subset, body, reason, message):
    good = {"instances": [b64(good_images(subset)["png"])]}
    (refused, answered), statuses = run_batch(handler, [{"body": body}, {"body": good}])
    assert statuses == [400, 200], "one bad request never costs the others of its batch"
    assert refused["type"] == reason and message in refused["message"]
    assert refused["message"].isascii() and len(refused["message"]) < 400, "client text is quoted short and escaped"
    assert refused["error"] == refused["message"] and refused["code"] == 400
    assert len(answered["predictions"]) == 1


def test_one_bad_image_refuses_its_kserve_request_naming_it(handler, subset):
    good, (truncated, reason) = good_images(subset)["png"], bad_images(subset)["truncated_png"]
    (body,), statuses = run_batch(handler, [{"body": kserve_v2(good, truncated)}])
    assert statuses == [400]
    assert body["type"] == reason


def test_parse_request_tells_the_protocols_apart(subset):
    png = good_images(subset)["png"]
    assert parse_request({"body": png}, {}).protocol == "plain"
    assert parse_request({"body": {"data": b64(png)}}, {}).protocol == "plain"
    assert parse_request({"body": {"instances": [b64(png)]}}, {}).protocol == "kserve-v1"
    assert parse_request({"body": kserve_v2(png)}, {}).protocol == "kserve-v2"
    (refused,) = parse_request({"x": b"1"}, {"Content-Type": "application/x-www-form-urlencoded"}).payloads
    assert refused.reason == "form_encoded_body"


@pytest.mark.parametrize("probability, label", [(0.0, "0.0-0.1"), (0.05, "0.0-0.1"), (0.1, "0.1-0.2"),
                                                (0.55, "0.5-0.6"), (0.999, "0.9-1.0"), (1.0, "0.9-1.0")])  # fmt: skip
def test_probability_deciles(probability, label):
    assert decile(probability) == label


def test_every_handler_metric_is_declared_and_carries_the_model_version(handler, subset, caplog):
    """TorchServe's own metrics cache, reading observability/metrics.yaml, accepts every metric the handler emits."""
    cache = MetricsCacheYamlImpl(str(ROOT / "observability" / "metrics.yaml"))
    cache.initialize_cache()
    cache.model_name = "corruption"
    batch = context([{"explain": "False"}, {"explain": "True"}, {"explain": "False"}], metrics=cache)
    cache.set_request_ids({0: "a", 1: "b", 2: "c"})
    png = good_images(subset)["png"]
    handler.model_version = "2.0"
    try:
        with caplog.at_level(logging.INFO):
            handler.handle([{"body": png}, {"body": png}, {"body": b"no image"}], batch)
    finally:
        handler.model_version = "unknown"
    lines = [record.getMessage() for record in caplog.records if "[METRICS]" in record.getMessage()]
    assert not [line for line in lines if "Failed" in line], lines
    emitted = {line.split("[METRICS]")[1].split(".")[0] for line in lines}
    assert emitted == {
        "corruption_predictions_total",
        "corruption_probability_decile_total",
        "corruption_preprocess_seconds",
        "corruption_handler_seconds",
        "corruption_bad_inputs_total",
    }
    assert all("ModelVersion:2.0" in line for line in lines), lines
    assert any("decile:" in line for line in lines)


def test_the_handler_module_defines_exactly_one_class():
    """TorchServe instantiates the handler module's only class and refuses a module with two."""
    assert list_classes_from_module(corruption_handler) == [corruption_handler.CorruptionHandler]


@pytest.mark.parametrize(
    "body",
    [
        b"{" + b'"inputs": [' * 5000 + b"]" * 5000 + b"}",
        b'{"inputs": [{"name": "x", "datatype": "BYTES", "shape": [' + b"9" * 5000 + b'], "data": []}]}',
        b'{"instances": ["aGVsbG8="',
        '{"inputs": "\u00e9"'.encode(),
    ],
    ids=["nested 5000 deep", "5000-digit shape", "cut short", "not ascii"],
)
def test_a_body_that_starts_like_json_but_does_not_parse_is_refused_as_invalid_json(body):
    (refused,) = parse_request({"body": bytearray(body)}, {"Content-Type": "application/octet-stream"}).payloads
    assert refused.reason == "invalid_json"


@given(st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                    max_leaves=30))  # fmt: skip
@settings(max_examples=300, deadline=None, derandomize=True)
def test_parsing_any_json_value_never_raises(value):
    for body in (value, {"inputs": [{"name": "i", "datatype": "BYTES", "shape": [1], "data": value}]},
                 {"instances": value}, {"inputs": value, "outputs": value}, {"inputs": [value]}):  # fmt: skip
        request = parse_request({"body": body}, {})
        assert request.error is not None or request.payloads
        refused = [payload for payload in request.payloads if isinstance(payload, BadImageError)]
        assert "unreadable_request" not in {error.reason for error in refused}, "every body gets a typed answer"


def test_status_lines_carry_a_fixed_phrase_whatever_the_client_sent(handler):
    """TorchServe frames the phrase by its character count: only a fixed ASCII phrase is ever set."""
    name = "\u00e9\r\nX-Injected: 1"
    rows = [{"body": {"inputs": [{"name": name, "datatype": "FP32", "shape": [1], "data": [1]}]}},
            {name: b"a", "data": b"b"}, {"body": b"\xff\xd8" + "\u00e9".encode()}]  # fmt: skip
    batch = context([{"explain": "False"}] * len(rows))
    bodies = handler.handle(rows, batch)
    assert [batch.get_response_status(i) for i in range(len(rows))] == [(400, "Bad Request")] * len(rows)
    assert all(body["message"].isascii() for body in bodies)
