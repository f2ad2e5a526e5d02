"""TorchServe adapter: TorchServe's requests in, the API schema out, nothing else.

All image and model logic lives in the `training` package (packed into the
.mar next to this file); this class only reads request bodies, sets per-item
HTTP status codes through TorchServe's public Context API, and reads its
settings from the archive's model-config.yaml (`handler:` section).
"""

import base64
import binascii
from pathlib import Path

import torch

from training.inference import CorruptionDetector, error_body
from training.preprocessing import BadImageError

# Where TorchServe puts a request's payload: raw body, or a multipart field.
PAYLOAD_KEYS = ("data", "body", "file", "image")


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
        self.detector = CorruptionDetector(weights, device)

    def handle(self, data: list[dict], context) -> list[dict]:
        """One JSON body per request; refused inputs get their own 400 and the others still succeed."""
        payloads: list[bytes | BadImageError] = []
        for row in data:
            try:
                payloads.append(request_bytes(row))
            except BadImageError as error:
                payloads.append(error)
        responses = []
        for index, result in enumerate(self.detector.predict(payloads)):
            if isinstance(result, BadImageError):
                context.set_response_status(400, result.message, idx=index)
                result = error_body(result)
            context.set_response_content_type(index, "application/json")
            responses.append(result)
        return responses
