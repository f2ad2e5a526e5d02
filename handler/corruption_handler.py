"""TorchServe adapter: TorchServe's requests in, the API schema out, nothing else.

All image and model logic lives in the `detector` package (packed whole into the .mar next to this
file) and runs through one call, `CorruptionDetector.run`, which holds every request to the work
budget of detector.budget. The protocols (plain, multipart, JSON, KServe v1 and v2) are read and
answered by handler/protocols.py, packed beside it. This class only asks which requests came through the
explanations API, sets per-item HTTP status codes and content types, reports metrics from the records
through TorchServe's public Context API, and reads its settings from the archive's model-config.yaml
(`handler:` section).

Status lines carry fixed phrases only (`http.HTTPStatus`): TorchServe writes the phrase into its reply
frame with its character count and into the HTTP status line, so client text there (CR/LF, anything not
ASCII) broke the frame and killed the worker with its whole batch. What went wrong is in the JSON body.
"""

import time
from http import HTTPStatus
from pathlib import Path

import torch
from ts.metrics.dimension import Dimension
from ts.metrics.metric_type_enum import MetricTypes

from detector.decoding import BadImageError
from detector.inference import CorruptionDetector, Record
from handler.protocols import KSERVE_V1, KSERVE_V2, Request, parse_request, refusal, v2_outputs

# The frontend marks each request of a batch: "explain" is "True" for /explanations (and the KServe
# :explain routes), "False" otherwise.
EXPLAIN_HEADER = "explain"
# Custom metrics, declared (names, types, dimensions) in observability/metrics.yaml: TorchServe drops
# undeclared backend metrics. Labels are the dimensions plus ModelName, Level and Hostname.
PREDICTIONS = "corruption_predictions_total"
PROBABILITY_DECILES = "corruption_probability_decile_total"
PREPROCESS_SECONDS = "corruption_preprocess_seconds"
HANDLER_SECONDS = "corruption_handler_seconds"
BAD_INPUTS = "corruption_bad_inputs_total"
VERSION_DIMENSION = "ModelVersion"


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


def first_error(records: list[Record]) -> BadImageError | None:
    return next((record.error for record in records if record.error is not None), None)


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
            pipeline=str(settings.get("pipeline", "auto")),
            precision=str(settings.get("precision", "auto")),
        )

    def handle(self, data: list[dict], context) -> list[dict]:
        """One JSON body per request; refused inputs get their own 400 and the others still succeed.

        The images of all requests (a KServe body may carry several) go through one detector call.
        """
        start = time.perf_counter()
        parsed = [parse_request(row, self._headers(context, index)) for index, row in enumerate(data)]
        explain = [is_explanation(context, index) for index in range(len(data))]
        grouped = self.detector.run_requests([one.payloads for one in parsed], explain)
        responses = [self.respond(context, i, one, grouped[i], explain[i]) for i, one in enumerate(parsed)]
        answered = [(i, record) for i, records in enumerate(grouped) for record in records]
        refused = [(i, Record(explain[i], None, one.error, None)) for i, one in enumerate(parsed) if one.error]
        seconds = time.perf_counter() - start
        record_metrics(context.metrics, answered + refused, seconds, self.model_version)
        return responses

    @staticmethod
    def _headers(context, index: int) -> dict:
        processors = getattr(context, "request_processor", None) or []
        return processors[index].get_request_properties() if index < len(processors) else {}

    def respond(self, context, index: int, parsed: Request, records: list[Record], explain: bool) -> dict:
        """The JSON body of request `index` in its protocol, with its own status: 400 if refused, else 200."""
        context.set_response_content_type(index, "application/json")
        error = parsed.error or first_error(records)
        if error is not None:
            context.set_response_status(HTTPStatus.BAD_REQUEST.value, HTTPStatus.BAD_REQUEST.phrase, idx=index)
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
