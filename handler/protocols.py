"""The request protocols: one TorchServe row in, what that request asks for out, whatever the client sent.

Plain bodies (raw bytes, one multipart file, JSON with a base64 image) and the KServe v1 and v2 (Open
Inference Protocol) bodies, told apart by the body: TorchServe routes /v1/models/<m>:predict and
/v2/models/<m>/infer to the handler like /predictions, with nothing that names the route.

Parsing is total: `parse_request` returns a `Request` for any row, its refusal in place, and never raises,
so one body can never fail the batch it was sent in. Client text quoted in a refusal message is shortened
and escaped to ASCII (`quoted`); messages go in JSON bodies only, never in an HTTP status line.

TorchServe's own KServe envelopes (`service_envelope`) are not used: they keep only the first request of a
batch and the first element of a BYTES input (ts/torch_handler/request_envelope). Packed into the model
archive beside the handler (handler/archive.py).
"""

import base64
import binascii
import json
import math
import re
from dataclasses import dataclass

from detector.budget import MAX_IMAGES
from detector.decoding import BadImageError
from detector.inference import error_body

PLAIN, KSERVE_V1, KSERVE_V2 = "plain", "kserve-v1", "kserve-v2"
# Where TorchServe puts a request's payload: raw body, or a multipart field.
PAYLOAD_KEYS = ("data", "body", "file", "image")
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
# Names of the KServe v2 outputs; "probs" columns follow CLASSES.
CLASSES = ("clean", "corrupted")
V2_OUTPUTS = ("label", "confidence", "probs", "corruption_type", "explanation")
# A v2 tensor has at most this many dimensions (its "data" nests at most this deep).
MAX_V2_DIMENSIONS = 8
# What a JSON object body starts with (JSON's whitespace, then a brace).
JSON_OBJECT_START = re.compile(r"[ \t\r\n]*\{")
JSON_OBJECT_START_BYTES = re.compile(rb"[ \t\r\n]*\{")
# A KServe v2 request "id" (echoed in the answer) has at most this many characters.
MAX_ID_CHARACTERS = 256
# Client text quoted in a refusal message: at most this many characters.
QUOTE_CHARACTERS = 40


@dataclass(frozen=True)
class Request:
    """One HTTP request as the handler understands it: its protocol and its images, or why it has none.

    `error` refuses the request as a whole (no image was sent to the model); `request_id` is a KServe v2
    "id"; `outputs` the KServe v2 outputs asked for (None: all).
    """

    protocol: str
    payloads: list[bytes | BadImageError]
    error: BadImageError | None = None
    request_id: str | None = None
    outputs: tuple[str, ...] | None = None


def quoted(value: object) -> str:
    """Client text fit to quote in a message: ASCII only (escapes for the rest), at most QUOTE_CHARACTERS."""
    text = value if isinstance(value, str) else repr(value)
    short = text[:QUOTE_CHARACTERS] + ("..." if len(text) > QUOTE_CHARACTERS else "")
    return ascii(short)


def parse_request(row: dict, headers: dict) -> Request:
    """What one request asks for: a plain image, or a KServe v1/v2 body of images; refusals in place."""
    try:
        return _parse(row, headers)
    except Exception:  # whatever a body does to a parser, it costs that request alone
        return Request(PLAIN, [BadImageError("unreadable_request", "the request could not be read: see the README")])


def _parse(row: dict, headers: dict) -> Request:
    try:
        value = body_value(row, headers)
        body = kserve_body(value)
    except BadImageError as error:
        return Request(PLAIN, [error])
    if body is None:
        return Request(PLAIN, [read_payload(value)])
    protocol = KSERVE_V1 if "instances" in body else KSERVE_V2
    try:
        if "instances" in body and "inputs" in body:
            raise invalid_kserve('a body holds "instances" (KServe v1) or "inputs" (KServe v2), not both')
        if protocol == KSERVE_V1:
            return Request(protocol, kserve_v1_images(body))
        images, outputs = kserve_v2_images(body)
        request_id = _request_id(body)
    except BadImageError as error:
        return Request(protocol, [], error=error)
    return Request(protocol, images, request_id=request_id, outputs=outputs)


def _request_id(body: dict) -> str | None:
    """A v2 body's "id", echoed in its answer: a long one would make the answer larger than TorchServe lets a worker
    send (it kills the worker), so it is refused past MAX_ID_CHARACTERS."""
    request_id = body.get("id")
    if not isinstance(request_id, str):
        return None
    if len(request_id) > MAX_ID_CHARACTERS:
        raise invalid_kserve(f'"id" must be at most {MAX_ID_CHARACTERS} characters')
    return request_id


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
    """A JSON object sent as bytes or text (any Content-Type but exactly application/json), or None if the body
    is not JSON at all. A body that starts like a JSON object but does not parse is refused: no image starts so."""
    start = JSON_OBJECT_START if isinstance(value, str) else JSON_OBJECT_START_BYTES
    if not start.match(value):  # no copy of a 16 MiB image body just to look at its first byte
        return None
    try:
        parsed = json.loads(value)
    except (ValueError, RecursionError) as error:  # RecursionError: nested deeper than the parser recurses
        raise BadImageError(
            "invalid_json", "the body starts like a JSON object but is not valid JSON (or nests too deep)"
        ) from error
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
        shown = ", ".join(quoted(field) for field in fields[:4])
        names = shown if len(fields) > 1 else f"{shown} (repeated)"
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


def read_payload(value: object) -> bytes | BadImageError:
    """The image bytes of a plain request's body value, or why it has none."""
    try:
        return image_bytes(value)
    except BadImageError as error:
        return error


def invalid_kserve(message: str) -> BadImageError:
    return BadImageError("invalid_kserve_request", message)


def _checked_count(count: int, what: str) -> None:
    if count == 0:
        raise invalid_kserve(f"{what} holds no image")
    if count > MAX_IMAGES:
        raise BadImageError("too_many_images", f"{what} holds {count} images or more; at most {MAX_IMAGES} per request")


def _image_or_error(text: object, where: str) -> bytes | BadImageError:
    """One base64 image of a KServe body, or why it is not one (the message names where it was)."""
    if not isinstance(text, str):
        return invalid_kserve(f"{where} must be a base64 string")
    try:
        return _decode_base64(text, where)
    except BadImageError as error:
        return error


def kserve_body(value: object) -> dict | None:
    """The body as a JSON object if it is a KServe v1 or v2 request, else None."""
    # TorchServe hands raw bodies over as bytearray (a body it could not parse as JSON too).
    text = isinstance(value, (bytes, bytearray, str))
    body = value if isinstance(value, dict) else _json_object(value) if text else None
    return body if body is not None and ({"instances", "inputs"} & set(body)) else None


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


def flatten(data: object, what: str) -> list:
    """A v2 tensor's elements in row-major order, without recursion: at most MAX_V2_DIMENSIONS deep, and it
    stops counting past MAX_IMAGES + 1 elements (a body of millions is refused without walking them)."""
    elements: list = []
    stack = [(data, 0)]
    while stack:
        item, depth = stack.pop()
        if not isinstance(item, list):
            elements.append(item)
            if len(elements) > MAX_IMAGES:
                break
        elif depth >= MAX_V2_DIMENSIONS:
            raise invalid_kserve(f"{what}: data nests deeper than {MAX_V2_DIMENSIONS} dimensions")
        else:
            stack.extend((part, depth + 1) for part in reversed(item))
    return elements


def checked_shape(shape: object, what: str) -> list[int]:
    """A v2 shape as the protocol defines it: a list of at most MAX_V2_DIMENSIONS non-negative integers."""
    valid = (
        isinstance(shape, list)
        and len(shape) <= MAX_V2_DIMENSIONS
        and all(type(size) is int and size >= 0 for size in shape)  # not bool, which is an int to Python
    )
    if not valid:
        raise invalid_kserve(f"{what}: shape must be a list of at most {MAX_V2_DIMENSIONS} non-negative integers")
    return shape


def kserve_v2_images(body: dict) -> tuple[list[bytes | BadImageError], tuple[str, ...] | None]:
    """The images of a KServe v2 body (one BYTES input of base64 images) and the outputs asked for."""
    inputs = body["inputs"]
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise invalid_kserve('"inputs" must hold exactly one input: {"name": "image", "datatype": "BYTES", ...}')
    tensor = inputs[0]
    name = tensor.get("name")
    if not isinstance(name, str):
        raise invalid_kserve('the input needs a "name" string')
    what = f"input {quoted(name)}"
    if tensor.get("datatype") != "BYTES":
        raise invalid_kserve(f'{what} must have datatype "BYTES" (encoded images, base64)')
    shape = checked_shape(tensor.get("shape"), what)
    data = flatten(tensor.get("data", []), what)
    _checked_count(len(data), what)
    if math.prod(shape) != len(data):
        raise invalid_kserve(f"{what}: shape {quoted(shape)} does not match its {len(data)} elements")
    return [_image_or_error(text, f"{quoted(name)}[{i}]") for i, text in enumerate(data)], _outputs(body)


def _outputs(body: dict) -> tuple[str, ...] | None:
    requested = body.get("outputs")
    if requested is None:
        return None
    if not isinstance(requested, list):
        raise invalid_kserve('"outputs" must be a list of {"name": ...}')
    names = tuple(output.get("name") if isinstance(output, dict) else None for output in requested)
    unknown = [quoted(name) for name in names if name not in V2_OUTPUTS][:4]
    if unknown:
        raise invalid_kserve(f"unknown outputs {', '.join(unknown)}; this model has {list(V2_OUTPUTS)}")
    return names


def refusal(protocol: str, error: BadImageError) -> dict:
    """The 400 body: TorchServe's error shape, plus KServe's "error" field for KServe requests."""
    body = error_body(error)
    return body if protocol == PLAIN else {"error": error.message, **body}


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
