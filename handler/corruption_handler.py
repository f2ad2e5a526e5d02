"""TorchServe adapter: TorchServe's requests in, the API schema out, nothing else.

All image and model logic lives in the `detector` package (packed whole into
the .mar next to this file) and runs through one call, `CorruptionDetector.run`.
This class only reads request bodies (raw, multipart, JSON, and the KServe v1 and
v2 protocols, told apart by the body), and which requests came through the
explanations API, sets per-item HTTP status codes and content types, reports
metrics from the records through TorchServe's public Context API, and reads its
settings from the archive's model-config.yaml (`handler:` section).

TorchServe's own KServe envelopes (`service_envelope`) are not used: they keep
only the first request of a batch and the first element of a BYTES input
(ts/torch_handler/request_envelope), so the handler speaks both protocols itself.
"""

import base64
import binascii
import json
import math
import time
from pathlib import Path
from types import SimpleNamespace

import torch
from ts.metrics.dimension import Dimension
from ts.metrics.metric_type_enum import MetricTypes

from detector.decoding import BadImageError
from detector.inference import CorruptionDetector, Record, error_body

# Where TorchServe puts a request's payload: raw body, or a multipart field.
PAYLOAD_KEYS = ("data", "body", "file", "image")
# The frontend marks each request of a batch: "explain" is "True" for /explanations (and the KServe
# :explain routes), "False" otherwise.
EXPLAIN_HEADER = "explain"
# Request protocols, told apart by the body: TorchServe routes /v1/models/<m>:predict and
# /v2/models/<m>/infer to the handler like /predictions, with nothing that names the route.
PLAIN, KSERVE_V1, KSERVE_V2 = "plain", "kserve-v1", "kserve-v2"
# Images one KServe request may carry: all of them are scored in one handler call, which must stay
# well inside responseTimeout (TorchServe kills a worker that overruns it).
MAX_IMAGES_PER_REQUEST = 64
# Bytes a multipart part may spend on its own headers (boundary line, Content-Disposition with a file
# name of up to 255 UTF-8 bytes, Content-Type): more unexplained body than this means a part is missing.
PART_HEADER_ALLOWANCE = 1024
# `curl -d`/`--data-binary` without -H sends a form, which TorchServe 0.12 splits at '&' and '=' and decodes
# ('+' becomes a space); and it can hand a long form field over as its whole 16 MiB backing buffer, stale bytes
# included (NettyUtils.getBytes returns ByteBuf.array()). Nothing of such a body can be trusted: refuse it.
FORM_MESSAGE = (
    "the body was sent as a form (Content-Type: application/x-www-form-urlencoded, curl -d's default), which "
    "TorchServe garbles: send an image with curl -T photo.jpg or -H 'Content-Type: application/octet-stream', "
    "JSON with -H 'Content-Type: application/json'"
)
# Names, types and shapes of the KServe v2 (Open Inference Protocol) outputs; "probs" columns follow CLASSES.
CLASSES = ("clean", "corrupted")
V2_OUTPUTS = ("label", "confidence", "probs", "corruption_type", "explanation")
# Custom metrics, declared (names, types, dimensions) in observability/metrics.yaml: TorchServe drops
# undeclared backend metrics. Labels are the dimensions plus ModelName, Level and Hostname.
PREDICTIONS = "corruption_predictions_total"
PROBABILITY_DECILES = "corruption_probability_decile_total"
PREPROCESS_SECONDS = "corruption_preprocess_seconds"
HANDLER_SECONDS = "corruption_handler_seconds"
BAD_INPUTS = "corruption_bad_inputs_total"
VERSION_DIMENSION = "ModelVersion"


def request(
    protocol: str,
    payloads: list[bytes | BadImageError],
    error: BadImageError | None = None,
    request_id: str | None = None,
    outputs: tuple[str, ...] | None = None,
) -> SimpleNamespace:
    """One HTTP request as the handler understands it: its protocol and its images, or why it has none.

    `error` refuses the request as a whole (no image was sent to the model); `request_id` is a KServe v2
    "id"; `outputs` the KServe v2 outputs asked for (None: all). Not a class: TorchServe requires the
    handler module to define exactly one class, the handler.
    """
    return SimpleNamespace(protocol=protocol, payloads=payloads, error=error, request_id=request_id, outputs=outputs)


def _decode_base64(text: str, where: str = "the body") -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as error:
        raise BadImageError(
            "not_an_image",
            f"{where} is text, not an image: send raw image bytes, a multipart file, "
            'JSON {"data": "<base64 image>"}, or a KServe v1/v2 body of base64 images',
        ) from error


def _json_object(value: bytes | str) -> dict | None:
    """A JSON object sent as bytes or text (any Content-Type but exactly application/json), or None."""
    text = value.decode("utf-8", "replace") if isinstance(value, (bytes, bytearray)) else value
    if not text.lstrip().startswith("{"):
        return None
    try:
        parsed = json.loads(text)
    except ValueError:
        return None
    return parsed if isinstance(parsed, dict) else None


def hidden_parts(row: dict, content_type: str, content_length: str | None) -> bool:
    """Whether a multipart body is larger than its visible parts can explain.

    TorchServe keeps one part per field name: a second file under the same name is gone before
    the handler runs, and only the body's length still shows it was sent.
    """
    if "boundary=" not in content_type or not content_length or not content_length.isdigit():
        return False
    sizes = [len(value) for value in row.values() if isinstance(value, (bytes, bytearray, str))]
    if len(sizes) != len(row):  # a part parsed as JSON: its length is unknown
        return False
    boundary = len(content_type.split("boundary=", 1)[1].strip('"'))
    explained = sum(sizes) + len(row) * (boundary + PART_HEADER_ALLOWANCE) + boundary + 8
    return int(content_length) > explained


def body_value(row: dict, headers: dict) -> object:
    """The one value of a request's body, refusing a multipart request with several files."""
    content_type = str(headers.get("Content-Type") or headers.get("content-type") or "")
    if content_type.startswith("application/x-www-form-urlencoded"):
        raise BadImageError("form_encoded_body", FORM_MESSAGE)
    fields = [key for key, value in row.items() if value is not None]
    multipart = content_type.startswith("multipart/") and bool(fields)
    if len(fields) > 1 or (multipart and hidden_parts(row, content_type, _length(headers))):
        names = ", ".join(fields) if len(fields) > 1 else f"{fields[0]} (repeated)"
        raise BadImageError(
            "multiple_files",
            f"the request carries several files ({names}); send one image per request, or use the "
            "corruption-detect CLI, the Python client or a KServe v1/v2 body to score many",
        )
    value = next((row[key] for key in PAYLOAD_KEYS if row.get(key) is not None), None)
    if value is None and len(fields) == 1:
        value = row[fields[0]]
    if value is None:
        raise BadImageError("empty_body", "the request carries no body; send the image bytes")
    return value


def _length(headers: dict) -> str | None:
    return headers.get("Content-Length") or headers.get("content-length")


def image_bytes(value: object) -> bytes:
    """The image bytes of a plain request's body value.

    Raw and multipart bodies arrive as bytes; TorchServe parses JSON bodies
    (a base64 string, or an object with a base64 "data" field) and text bodies.
    """
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, str):
        return _decode_base64(value)
    if isinstance(value, dict) and isinstance(value.get("data"), str):
        return _decode_base64(value["data"])
    raise BadImageError(
        "unsupported_json",
        'a JSON body must be a base64 string, {"data": "<base64 image>"}, KServe v1 {"instances": [...]} '
        'or KServe v2 {"inputs": [...]}',
    )


def request_bytes(row: dict, headers: dict | None = None) -> bytes:
    """The image bytes of one plain request, whichever way TorchServe delivered them."""
    return image_bytes(body_value(row, headers or {}))


def invalid_kserve(message: str) -> BadImageError:
    return BadImageError("invalid_kserve_request", message)


def _checked_count(count: int, what: str) -> None:
    if count == 0:
        raise invalid_kserve(f"{what} holds no image")
    if count > MAX_IMAGES_PER_REQUEST:
        raise BadImageError(
            "too_many_images", f"{what} holds {count} images; at most {MAX_IMAGES_PER_REQUEST} per request"
        )


def _image_or_error(text: object, where: str) -> bytes | BadImageError:
    """One base64 image of a KServe body, or why it is not one (the message names where it was)."""
    if not isinstance(text, str):
        return invalid_kserve(f"{where} must be a base64 string")
    try:
        return _decode_base64(text, where)
    except BadImageError as error:
        return error


def kserve_v1_images(body: dict) -> list[bytes | BadImageError]:
    """The images of a KServe v1 body: "instances" of base64 strings, {"data": ...} or {"b64": ...} objects."""
    instances = body["instances"]
    if not isinstance(instances, list):
        raise invalid_kserve('"instances" must be a list of base64 images')
    _checked_count(len(instances), '"instances"')
    images = []
    for index, instance in enumerate(instances):
        if isinstance(instance, dict):
            instance = instance.get("data", instance.get("b64"))
        images.append(_image_or_error(instance, f"instances[{index}]"))
    return images


def _flatten(data: object) -> list:
    return [item for part in data for item in _flatten(part)] if isinstance(data, list) else [data]


def kserve_v2_images(body: dict) -> tuple[list[bytes | BadImageError], tuple[str, ...] | None]:
    """The images of a KServe v2 body (one BYTES input of base64 images) and the outputs asked for."""
    inputs = body["inputs"]
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise invalid_kserve('"inputs" must hold exactly one input: {"name": "image", "datatype": "BYTES", ...}')
    tensor = inputs[0]
    if tensor.get("datatype") != "BYTES":
        raise invalid_kserve(f'input {tensor.get("name")!r} must have datatype "BYTES" (encoded images, base64)')
    data = _flatten(tensor.get("data", []))
    shape = tensor.get("shape")
    if not isinstance(shape, list) or not all(isinstance(n, int) for n in shape) or math.prod(shape) != len(data):
        raise invalid_kserve(f"input {tensor.get('name')!r}: shape {shape} does not match its {len(data)} elements")
    _checked_count(len(data), f"input {tensor.get('name')!r}")
    return [_image_or_error(text, f"{tensor.get('name')}[{i}]") for i, text in enumerate(data)], _outputs(body)


def _outputs(body: dict) -> tuple[str, ...] | None:
    requested = body.get("outputs")
    if requested is None:
        return None
    if not isinstance(requested, list):
        raise invalid_kserve('"outputs" must be a list of {"name": ...}')
    names = tuple(output.get("name") if isinstance(output, dict) else None for output in requested)
    unknown = [name for name in names if name not in V2_OUTPUTS]
    if unknown:
        raise invalid_kserve(f"unknown outputs {unknown}; this model has {list(V2_OUTPUTS)}")
    return names


def kserve_body(value: object) -> dict | None:
    """The body as a JSON object if it is a KServe v1 or v2 request, else None."""
    body = value if isinstance(value, dict) else _json_object(value) if isinstance(value, (bytes, str)) else None
    return body if body is not None and ({"instances", "inputs"} & set(body)) else None


def parse_request(row: dict, headers: dict) -> SimpleNamespace:
    """What one request asks for: a plain image, or a KServe v1/v2 body of images; refusals in place."""
    try:
        value = body_value(row, headers)
    except BadImageError as error:
        return request(PLAIN, [error])
    body = kserve_body(value)
    if body is None:
        return request(PLAIN, [read_payload(value)])
    protocol = KSERVE_V1 if "instances" in body else KSERVE_V2
    try:
        if protocol == KSERVE_V1:
            return request(protocol, kserve_v1_images(body))
        images, outputs = kserve_v2_images(body)
    except BadImageError as error:
        return request(protocol, [], error=error)
    request_id = body.get("id") if isinstance(body.get("id"), str) else None
    return request(protocol, images, request_id=request_id, outputs=outputs)


def read_payload(value: object) -> bytes | BadImageError:
    """The image bytes of a plain request's body value, or why it has none."""
    try:
        return image_bytes(value)
    except BadImageError as error:
        return error


def is_explanation(context, index: int) -> bool:
    """Whether request `index` of the batch came in through the explanations API."""
    return context.get_request_header(index, EXPLAIN_HEADER) == "True"


def decile(probability: float) -> str:
    """The decile label of a probability: "0.0-0.1" ... "0.9-1.0" (1.0 falls in the last)."""
    lower = min(int(probability * 10), 9)
    return f"{lower / 10:.1f}-{(lower + 1) / 10:.1f}"


def _observe(metrics, name: str, value: float, unit: str, index: int, dimensions: list[Dimension]) -> None:
    metrics.add_metric(name, value, unit, idx=index, dimensions=dimensions, metric_type=MetricTypes.HISTOGRAM)


def record_metrics(metrics, records: list[tuple[int, Record]], seconds: float, version: str) -> None:
    """One observation per image: label and probability decile, or refusal reason; preprocessing and handler time.

    `records` pairs each image's record with the index of the request it came in. Every image of a
    batch waited for the whole batch, so each gets the batch's handler time. Every metric carries the
    model version, so a canary's numbers can be told from the default's.
    """
    if metrics is None:  # TorchServe always sets one; a Context built in-process may not
        return
    model = Dimension(VERSION_DIMENSION, version)
    for index, record in records:
        endpoint = "explanations" if record.explain else "predictions"
        _observe(metrics, HANDLER_SECONDS, seconds, "Seconds", index, [Dimension("endpoint", endpoint), model])
        if record.preprocess_seconds is not None:
            _observe(metrics, PREPROCESS_SECONDS, record.preprocess_seconds, "Seconds", index, [model])
        if record.error is not None:
            metrics.add_counter(BAD_INPUTS, 1, idx=index, dimensions=[Dimension("reason", record.error.reason), model])
        else:
            metrics.add_counter(PREDICTIONS, 1, idx=index, dimensions=[Dimension("label", record.body["label"]), model])
            bucket = Dimension("decile", decile(record.body["probs"]["corrupted"]))
            metrics.add_counter(PROBABILITY_DECILES, 1, idx=index, dimensions=[bucket, model])


def refusal(protocol: str, error: BadImageError) -> dict:
    """The 400 body: TorchServe's error shape, plus KServe's "error" field for KServe requests."""
    body = error_body(error)
    return body if protocol == PLAIN else {"error": error.message, **body}


def first_error(records: list[Record]) -> BadImageError | None:
    return next((record.error for record in records if record.error is not None), None)


def v2_outputs(bodies: list[dict], wanted: tuple[str, ...] | None) -> list[dict]:
    """KServe v2 output tensors for the answered images, in order: label, confidence, probs (+ extras)."""
    count = len(bodies)
    tensors = {
        "label": {"datatype": "BYTES", "shape": [count], "data": [body["label"] for body in bodies]},
        "confidence": {"datatype": "FP32", "shape": [count], "data": [body["confidence"] for body in bodies]},
        "probs": {
            "datatype": "FP32",
            "shape": [count, len(CLASSES)],
            "data": [body["probs"][name] for body in bodies for name in CLASSES],
            "parameters": {"classes": ",".join(CLASSES)},
        },
    }
    if bodies and "corruption_type" in bodies[0]:
        types = list(bodies[0]["corruption_type"])
        tensors["corruption_type"] = {
            "datatype": "FP32",
            "shape": [count, len(types)],
            "data": [body["corruption_type"][name] for body in bodies for name in types],
            "parameters": {"classes": ",".join(types)},
        }
    if bodies and "explanation" in bodies[0]:
        tensors["explanation"] = {
            "datatype": "BYTES",
            "shape": [count],
            "data": [json.dumps(body["explanation"]) for body in bodies],
        }
    names = [name for name in V2_OUTPUTS if name in tensors and (wanted is None or name in wanted)]
    return [{"name": name, **tensors[name]} for name in names]


class CorruptionHandler:
    """Custom TorchServe service: initialize once per worker, handle one (dynamic) batch per call."""

    def __init__(self) -> None:
        self.detector: CorruptionDetector | None = None
        self.model_name = "corruption"
        self.model_version = "unknown"

    def initialize(self, context) -> None:
        """Load the checkpoint named in the archive's manifest, with the configured thread count."""
        properties = context.system_properties
        settings = (context.model_yaml_config or {}).get("handler", {})
        # One thread per worker: several workers each using every core thrash on a small node.
        torch.set_num_threads(int(settings.get("torch_threads", 1)))
        gpu = properties.get("gpu_id")
        device = f"cuda:{gpu}" if gpu is not None and torch.cuda.is_available() else "cpu"
        model = context.manifest["model"]
        self.model_name = model.get("modelName", self.model_name)
        self.model_version = str(model.get("modelVersion", self.model_version))
        weights = Path(properties["model_dir"]) / model["serializedFile"]
        self.detector = CorruptionDetector(
            weights,
            device,
            corruption_type=bool(settings.get("corruption_type", False)),
            crops=bool(settings.get("crops", True)),
        )

    def handle(self, data: list[dict], context) -> list[dict]:
        """One JSON body per request; refused inputs get their own 400 and the others still succeed.

        The images of all requests (a KServe body may carry several) go through one detector call.
        """
        start = time.perf_counter()
        parsed = [parse_request(row, self._headers(context, index)) for index, row in enumerate(data)]
        explain = [is_explanation(context, index) for index in range(len(data))]
        owners = [index for index, one in enumerate(parsed) for _ in one.payloads]
        payloads = [payload for one in parsed for payload in one.payloads]
        records = self.detector.run(payloads, [explain[index] for index in owners])
        responses = []
        for index, one in enumerate(parsed):
            mine = [record for owner, record in zip(owners, records, strict=True) if owner == index]
            responses.append(self.respond(context, index, one, mine, explain[index]))
        refused = [(i, Record(explain[i], None, one.error, None)) for i, one in enumerate(parsed) if one.error]
        seconds = time.perf_counter() - start
        record_metrics(context.metrics, list(zip(owners, records, strict=True)) + refused, seconds, self.model_version)
        return responses

    @staticmethod
    def _headers(context, index: int) -> dict:
        processors = getattr(context, "request_processor", None) or []
        return processors[index].get_request_properties() if index < len(processors) else {}

    def respond(self, context, index: int, parsed: SimpleNamespace, records: list[Record], explain: bool) -> dict:
        """The JSON body of request `index` in its protocol, with its own status: 400 if refused, else 200."""
        context.set_response_content_type(index, "application/json")
        error = parsed.error or first_error(records)
        if error is not None:
            context.set_response_status(400, error.message, idx=index)
            return refusal(parsed.protocol, error)
        bodies = [record.body for record in records]
        if parsed.protocol == KSERVE_V1:
            return {"explanations" if explain else "predictions": bodies}
        if parsed.protocol == KSERVE_V2:
            request_id = parsed.request_id or context.get_request_id(index)
            outputs = v2_outputs(bodies, parsed.outputs)
            return {"model_name": self.model_name, "model_version": self.model_version, "id": request_id,
                    "outputs": outputs}  # fmt: skip
        return bodies[0]
