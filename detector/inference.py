"""The inference core, independent of any server: encoded images in, one record per request out.

`CorruptionDetector.run` is the one batch pipeline (decode -> views -> the model's combined verdict ->
answer, plus an explanation for the requests that asked for one). The TorchServe handler, the CLI's
local mode, the evaluation, the benchmarks and the naive server all call it; a server adapter only turns
its requests into payloads and the records into responses.
"""

import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from detector.allocator import reuse_freed_memory
from detector.backbones import fold_batch_norms
from detector.budget import over_budget
from detector.corruptions import TYPES
from detector.decoding import BadImageError, open_image
from detector.device_path import (
    CUDA_PRECISION,
    DECODE_CHUNK_PIXELS,
    autocast,
    chunk_views,
    dct_scaling,
    pixel_chunks,
    takes_device_path,
    to_device,
)
from detector.explain import GradCamExplainer, explanation_body
from detector.model import LABELS, is_corrupted, load_model
from detector.preprocessing import Views, opened_to_views


@dataclass(frozen=True)
class Record:
    """What became of one request: its answer or why it was refused, and what it cost."""

    explain: bool
    body: dict | None  # the prediction (or explanation) body; None when refused
    error: BadImageError | None  # why the request was refused; None when answered
    preprocess_seconds: float | None  # decode + views; None when the request carried no image to decode

    @property
    def result(self) -> dict | BadImageError:
        return self.body if self.error is None else self.error


def prediction_body(probabilities: torch.Tensor, type_probabilities: torch.Tensor | None = None) -> dict:
    """{"label", "confidence", "probs"} for one row of (clean, corrupted) probabilities.

    With `type_probabilities` (one per TYPES), adds "corruption_type": {type: probability}.
    """
    corrupted = bool(is_corrupted(probabilities[1]))
    clean_probability = round(float(probabilities[0]), 6)
    probs = {LABELS[0]: clean_probability, LABELS[1]: round(1.0 - clean_probability, 6)}
    label = LABELS[int(corrupted)]
    body = {"label": label, "confidence": probs[label], "probs": probs}
    if type_probabilities is not None:
        body["corruption_type"] = {name: round(float(p), 6) for name, p in zip(TYPES, type_probabilities, strict=True)}
    return body


def error_body(error: BadImageError) -> dict:
    """The JSON body of a refused input, shaped like TorchServe's own error responses."""
    return {"code": 400, "type": error.reason, "message": error.message}


class CorruptionDetector:
    """Loads the checkpoint once and answers batches of encoded images.

    With `corruption_type`, answers also carry the type probabilities of the view that decided; without
    `crops`, large images are judged on their whole view only (cheaper, blind to fine noise and blocks).
    `pipeline` "device" makes the views of JPEGs on the model's device, decoded in batches of at most
    `chunk_pixels` (detector.device_path); "cpu" makes every view on the CPU, `view_threads` images at a time; "auto" is
    "device" on CUDA. Either way the model runs with its batch norms folded into its convolutions, in channels_last,
    with the process's allocator set to reuse the pass's freed buffers (detector.allocator): together a forward pass
    about 30% cheaper on one CPU thread (bench.large_images). `precision` (a device_path.PRECISIONS name) is what the
    model runs at; "auto" is device_path.CUDA_PRECISION on CUDA, fp32 elsewhere.

    The CPU views of a batch are made on `view_threads` threads at once (default: the process's torch threads, a
    worker's share of the cores): Pillow's and libjpeg-turbo's decoders and Pillow's resize release the GIL, so a
    worker with N threads decodes N images at a time. Never more: one call holds at most N images' pixels.
    """

    def __init__(
        self,
        weights: Path,
        device: torch.device | str = "cpu",
        corruption_type: bool = False,
        crops: bool = True,
        pipeline: str = "auto",
        precision: str = "auto",
        chunk_pixels: int = DECODE_CHUNK_PIXELS,
        view_threads: int | None = None,
    ) -> None:
        self.device = torch.device(device)
        self.model = load_model(weights, self.device)
        cuda = self.device.type == "cuda"
        self.pipeline = ("device" if cuda else "cpu") if pipeline == "auto" else pipeline
        self.precision = (CUDA_PRECISION if cuda else "fp32") if precision == "auto" else precision
        self.chunk_pixels = chunk_pixels
        autocast(self.device, self.precision)  # refuses an unknown precision now, not at the first request
        reuse_freed_memory()
        fold_batch_norms(self.model.trunk)
        self.model.to(memory_format=torch.channels_last)
        self.explainer = GradCamExplainer(self.model, self.device)
        self.corruption_type = corruption_type
        self.crops = crops
        threads = view_threads or torch.get_num_threads()
        self.view_pool = ThreadPoolExecutor(threads, "views") if threads > 1 else None

    def run(
        self,
        payloads: Sequence[bytes | BadImageError],
        explain: Sequence[bool] | None = None,
        requests: Sequence[int] | None = None,
    ) -> list[Record]:
        """One record per payload, in order: every good image answered, every bad one refused on its own.

        A payload may already be a BadImageError (an adapter found no image in the request): it
        passes through in place, so one bad request never costs the rest of the batch its answer.
        `explain[i]` asks for an explanation of payload i with its prediction. `requests[i]` names the
        request payload i came in (default: each payload is a request of its own): each request is held
        to detector.budget, from the headers alone, before any of its pixels is decoded.
        """
        explain = list(explain) if explain is not None else [False] * len(payloads)
        requests = list(requests) if requests is not None else list(range(len(payloads)))
        opened = [self._open(payload) for payload in payloads]
        sizes = [None if isinstance(image, BadImageError) else image.size for image, _ in opened]
        refusals = over_budget(sizes, explain, requests)
        refused = [refusals.get(request) for request in requests]
        if self.pipeline == "device":
            prepared = self._device_views(opened, refused, payloads)
        else:
            prepared = self._cpu_views(range(len(payloads)), opened, refused, payloads)
        good = [index for index, (views, _) in enumerate(prepared) if isinstance(views, Views)]
        bodies = dict(zip(good, self.answer([prepared[i][0] for i in good], [explain[i] for i in good]), strict=True))
        return [
            Record(explain[index], bodies.get(index), None if index in bodies else views, seconds)
            for index, (views, seconds) in enumerate(prepared)
        ]

    def run_requests(
        self, requests: Sequence[Sequence[bytes | BadImageError]], explain: Sequence[bool]
    ) -> list[list[Record]]:
        """`run` over the payloads of several requests in one pass, each request held to the budget as a whole;
        the records come back grouped by request. `explain[r]` asks explanations of every image of request r."""
        owners = [index for index, request in enumerate(requests) for _ in request]
        records = self.run(
            [payload for payloads in requests for payload in payloads], [explain[o] for o in owners], owners
        )
        grouped: list[list[Record]] = [[] for _ in requests]
        for owner, record in zip(owners, records, strict=True):
            grouped[owner].append(record)
        return grouped

    def predict(self, payloads: Sequence[bytes]) -> list[dict | BadImageError]:
        """The prediction body of each encoded image, or why it was refused."""
        return [record.result for record in self.run(payloads)]

    def answer(self, views: Sequence[Views], explain: Sequence[bool] = ()) -> list[dict]:
        """Bodies for preprocessed images: one pass of the model over all their views, then an explanation of
        the view that decided for each image whose request asked for one."""
        if not views:
            return []
        with torch.inference_mode(), autocast(self.device, self.precision):
            outputs = self.model.score_views(views)
        bodies = [
            prediction_body(probabilities, types if self.corruption_type else None)
            for probabilities, types in zip(outputs.probabilities.cpu(), outputs.types.cpu(), strict=True)
        ]
        for index, wanted in enumerate(explain):
            if wanted:
                method, heatmap = self.explainer.explain(views[index], bool(outputs.decided_by_crops[index]))
                layer = self.explainer.layer if method == "grad-cam" else "crop_head"
                bodies[index] = explanation_body(bodies[index], views[index].whole.cpu(), heatmap, method, layer)
        return bodies

    def prepare(self, payload: bytes | BadImageError) -> tuple[Views | BadImageError, float | None]:
        """One payload's views (or why it has none) and the seconds they took, outside any request's budget."""
        return self._views(*self._open(payload), None, payload)

    @staticmethod
    def _open(payload: bytes | BadImageError) -> tuple[Image.Image | BadImageError, float | None]:
        """A payload's checked header (nothing decoded yet), timed; an adapter's error passes through untimed."""
        if isinstance(payload, BadImageError):
            return payload, None
        start = time.perf_counter()
        try:
            image: Image.Image | BadImageError = open_image(payload)
        except BadImageError as error:
            image = error
        return image, time.perf_counter() - start

    def _views(
        self,
        image: Image.Image | BadImageError,
        seconds: float | None,
        refused: BadImageError | None,
        payload: bytes | BadImageError,
    ) -> tuple[Views | BadImageError, float | None]:
        """An opened image's views (from its payload's bytes), unless it or its request was refused; the time adds
        to the header's."""
        if isinstance(image, BadImageError) or refused is not None:
            return (image if isinstance(image, BadImageError) else refused), seconds
        start = time.perf_counter()
        try:
            views: Views | BadImageError = opened_to_views(image, payload, self.crops)
        except BadImageError as error:
            views = error
        return views, (seconds or 0.0) + time.perf_counter() - start

    def _device_views(
        self,
        opened: list[tuple[Image.Image | BadImageError, float | None]],
        refusals: Sequence[BadImageError | None],
        payloads: Sequence[bytes | BadImageError],
    ) -> list[tuple[Views | BadImageError, float | None]]:
        """`_views` of every payload, all on the model's device: the JPEGs the device takes decoded there together,
        at most `chunk_pixels` at a time (each image is charged an equal share of its chunk's time); the rest, and
        a JPEG the device fails to decode, on the CPU path `view_threads` at a time, as `run` makes them."""
        prepared: list = [None] * len(payloads)
        batch, rest = [], []
        for index, ((image, _), refused) in enumerate(zip(opened, refusals, strict=True)):
            device = refused is None and isinstance(image, Image.Image) and takes_device_path(image, payloads[index])
            (batch if device else rest).append(index)
        for index, views in zip(rest, self._cpu_views(rest, opened, refusals, payloads), strict=True):
            prepared[index] = self._views_to_device(*views)
        for chunk in pixel_chunks(
            [opened[index][0].width * opened[index][0].height for index in batch], self.chunk_pixels
        ):
            indices = [batch[position] for position in chunk]
            start = time.perf_counter()
            scalings = [dct_scaling(opened[index][0], self.crops) for index in indices]
            made = chunk_views([payloads[index] for index in indices], self.device, self.crops, scalings)
            share = (time.perf_counter() - start) / len(indices)
            for index, views in zip(indices, made, strict=True):
                image, seconds = opened[index]
                opened[index] = None
                prepared[index] = (
                    (views, (seconds or 0.0) + share)
                    if views is not None
                    else self._views_to_device(*self._views(image, seconds, None, payloads[index]))
                )
        return prepared

    def _cpu_views(
        self,
        indices: Sequence[int],
        opened: list[tuple[Image.Image | BadImageError, float | None]],
        refusals: Sequence[BadImageError | None],
        payloads: Sequence[bytes | BadImageError],
    ) -> list[tuple[Views | BadImageError, float | None]]:
        """`_views` of the payloads at `indices`, in order, on the CPU: `view_threads` at a time."""

        def views_of(index: int) -> tuple[Views | BadImageError, float | None]:
            image, seconds = opened[index]
            opened[index] = None  # an opened image keeps its decoded pixels: they go with its views made
            return self._views(image, seconds, refusals[index], payloads[index])

        if self.view_pool is None or len(indices) < 2:
            return [views_of(index) for index in indices]
        return list(self.view_pool.map(views_of, indices))

    def _views_to_device(
        self, views: Views | BadImageError, seconds: float | None
    ) -> tuple[Views | BadImageError, float | None]:
        return (to_device(views, self.device) if isinstance(views, Views) else views), seconds
