"""The inference core, independent of any server: image bytes in, the API's JSON schema out.

A server adapter (handler/corruption_handler.py for TorchServe) only turns its
requests into bytes and this module's results into its responses.
"""

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

import torch

from training.model import LABELS, load_model
from training.preprocessing import BadImageError, image_bytes_to_input, normalise

Result = dict | BadImageError


class Prepared(NamedTuple):
    """One payload after preprocessing: the model input or why it was refused, and the seconds it took."""

    input: torch.Tensor | BadImageError
    seconds: float


def prepare(payload: bytes | BadImageError) -> Prepared:
    """Decode and resize one payload, timed; an error an adapter already found passes through."""
    start = time.perf_counter()
    try:
        item = payload if isinstance(payload, BadImageError) else image_bytes_to_input(payload)
    except BadImageError as error:
        item = error
    return Prepared(item, time.perf_counter() - start)


def run_on_inputs(prepared: Sequence[Prepared], run: Callable[[list[torch.Tensor]], list[dict]]) -> list[Result]:
    """Call `run` once on all good inputs; each refused one keeps its place as its BadImageError."""
    images = [item.input for item in prepared if isinstance(item.input, torch.Tensor)]
    answers = iter(run(images) if images else [])
    return [next(answers) if isinstance(item.input, torch.Tensor) else item.input for item in prepared]


def prediction_body(probabilities: torch.Tensor) -> dict:
    """{"label", "confidence", "probs"} for one row of (clean, corrupted) probabilities."""
    clean = round(float(probabilities[0]), 6)
    corrupted = round(1.0 - clean, 6)
    label = LABELS[1] if corrupted > clean else LABELS[0]
    return {"label": label, "confidence": max(clean, corrupted), "probs": {LABELS[0]: clean, LABELS[1]: corrupted}}


def error_body(error: BadImageError) -> dict:
    """The JSON body of a refused input, shaped like TorchServe's own error responses."""
    return {"code": 400, "type": error.reason, "message": error.message}


class CorruptionDetector:
    """Loads the checkpoint once and scores batches of encoded images."""

    def __init__(self, weights: Path, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self.model = load_model(weights, self.device)

    @torch.inference_mode()
    def predict_inputs(self, images: Sequence[torch.Tensor]) -> list[dict]:
        """Score preprocessed uint8 CHW images in one forward pass."""
        batch = normalise(torch.stack(list(images))).to(self.device)
        probabilities = self.model(batch).float().softmax(dim=1).cpu()
        return [prediction_body(row) for row in probabilities]

    def predict(self, payloads: Sequence[bytes | BadImageError]) -> list[Result]:
        """Score a batch of encoded images; each bad one becomes its own BadImageError.

        Errors an adapter already found while reading a request pass through in
        place, so one bad item never costs the rest of the batch its answer.
        """
        return run_on_inputs([prepare(payload) for payload in payloads], self.predict_inputs)
