"""TorchServe adapter: TorchServe's requests in, the API schema out, nothing else.

All image and model logic lives in the `detector` package (packed whole into
the .mar next to this file) and runs through one call, `CorruptionDetector.run`.
This class only reads request bodies and which requests came through the
explanations API (POST /explanations/<model>), sets per-item HTTP status codes
and content types, reports metrics from the records through TorchServe's public
Context API, and reads its settings from the archive's model-config.yaml
(`handler:` section).
"""

import base64
import binascii
import time
from pathlib import Path

import torch
from ts.metrics.dimension import Dimension
from ts.metrics.metric_type_enum import MetricTypes

from detector.decoding import BadImageError
from detector.inference import CorruptionDetector, Record, error_body

# Where TorchServe puts a request's payload: raw body, or a multipart field.
PAYLOAD_KEYS = ("data", "body", "file", "image")
# The frontend marks each request of a batch: "explain" is "True" for /explanations, "False" for /predictions.
EXPLAIN_HEADER = "explain"
# Custom metrics, declared (names, types, dimensions) in observability/metrics.yaml: TorchServe drops
# undeclared backend metrics. Labels are the dimensions plus ModelName, Level and Hostname.
PREDICTIONS = "corruption_predictions_total"
CORRUPTED_PROBABILITY = "corruption_corrupted_probability"
PREPROCESS_SECONDS = "corruption_preprocess_seconds"
HANDLER_SECONDS = "corruption_handler_seconds"
BAD_INPUTS = "corruption_bad_inputs_total"


def _decode_base64(text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as error:
        raise BadImageError(
            "not_an_image",
            "the body is text, not an image: send raw image bytes, a multipart file, "
            'or JSON {"data": "<base64 image>"}',
        ) from error


def request_bytes(row: dict) -> bytes:
    """The image bytes of one request, whichever way TorchServe delivered them.

    Raw and multipart bodies arrive as bytes; TorchServe parses JSON bodies
    (a base64 string, or an object with a base64 "data" field) and text bodies.
    """
    value = next((row[key] for key in PAYLOAD_KEYS if row.get(key) is not None), None)
    if value is None and len(row) == 1:
        value = next(iter(row.values()))
    if value is None:
        raise BadImageError("empty_body", "the request carries no body; send the image bytes")
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, str):
        return _decode_base64(value)
    if isinstance(value, dict) and isinstance(value.get("data"), str):
        return _decode_base64(value["data"])
    raise BadImageError("unsupported_json", 'a JSON body must be a base64 string or {"data": "<base64 image>"}')


def read_payload(row: dict) -> bytes | BadImageError:
    """The image bytes of one request, or why it has none."""
    try:
        return request_bytes(row)
    except BadImageError as error:
        return error


def is_explanation(context, index: int) -> bool:
    """Whether request `index` of the batch came in through the explanations API."""
    return context.get_request_header(index, EXPLAIN_HEADER) == "True"


def _observe(metrics, name: str, value: float, unit: str, index: int, dimensions: list[Dimension]) -> None:
    metrics.add_metric(name, value, unit, idx=index, dimensions=dimensions, metric_type=MetricTypes.HISTOGRAM)


def record_metrics(metrics, records: list[Record], seconds: float) -> None:
    """One observation per request: label and probability, or refusal reason; preprocessing and handler time.

    Every request of a batch waited for the whole batch, so each gets the batch's handler time.
    """
    if metrics is None:  # TorchServe always sets one; a Context built in-process may not
        return
    for index, record in enumerate(records):
        endpoint = "explanations" if record.explain else "predictions"
        _observe(metrics, HANDLER_SECONDS, seconds, "Seconds", index, [Dimension("endpoint", endpoint)])
        if record.preprocess_seconds is not None:
            _observe(metrics, PREPROCESS_SECONDS, record.preprocess_seconds, "Seconds", index, [])
        if record.error is not None:
            metrics.add_counter(BAD_INPUTS, 1, idx=index, dimensions=[Dimension("reason", record.error.reason)])
        else:
            metrics.add_counter(PREDICTIONS, 1, idx=index, dimensions=[Dimension("label", record.body["label"])])
            _observe(metrics, CORRUPTED_PROBABILITY, record.body["probs"]["corrupted"], "Probability", index, [])


def respond(context, index: int, record: Record) -> dict:
    """The JSON body of request `index`, with its own status: 400 for a refused input, 200 otherwise."""
    context.set_response_content_type(index, "application/json")
    if record.error is None:
        return record.body
    context.set_response_status(400, record.error.message, idx=index)
    return error_body(record.error)


class CorruptionHandler:
    """Custom TorchServe service: initialize once per worker, handle one (dynamic) batch per call."""

    def __init__(self) -> None:
        self.detector: CorruptionDetector | None = None

    def initialize(self, context) -> None:
        """Load the checkpoint named in the archive's manifest, with the configured thread count."""
        properties = context.system_properties
        settings = (context.model_yaml_config or {}).get("handler", {})
        # One thread per worker: several workers each using every core thrash on a small node.
        torch.set_num_threads(int(settings.get("torch_threads", 1)))
        gpu = properties.get("gpu_id")
        device = f"cuda:{gpu}" if gpu is not None and torch.cuda.is_available() else "cpu"
        weights = Path(properties["model_dir"]) / context.manifest["model"]["serializedFile"]
        self.detector = CorruptionDetector(
            weights,
            device,
            corruption_type=bool(settings.get("corruption_type", False)),
            tiles=bool(settings.get("tiles", True)),
        )

    def handle(self, data: list[dict], context) -> list[dict]:
        """One JSON body per request; refused inputs get their own 400 and the others still succeed."""
        start = time.perf_counter()
        payloads = [read_payload(row) for row in data]
        explain = [is_explanation(context, index) for index in range(len(data))]
        records = self.detector.run(payloads, explain)
        responses = [respond(context, index, record) for index, record in enumerate(records)]
        record_metrics(context.metrics, records, time.perf_counter() - start)
        return responses
