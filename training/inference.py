"""The inference core, independent of any server: image bytes in, the API's JSON schema out.

A server adapter (handler/corruption_handler.py for TorchServe) only turns its
requests into bytes and this module's results into its responses.
"""

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

import torch

from training.corruptions import TYPES
from training.model import LABELS, load_model
from training.preprocessing import TILES_PER_SIDE, BadImageError, image_bytes_to_views, normalise

Result = dict | BadImageError


class Prepared(NamedTuple):
    """One payload after preprocessing: the model input or why it was refused, and the seconds it took."""

    input: torch.Tensor | BadImageError  # the image's views (V, 3, 32, 32), see preprocessing.image_to_views
    seconds: float


def prepare(payload: bytes | BadImageError, tiles: bool = True) -> Prepared:
    """Decode one payload into its views, timed; an error an adapter already found passes through."""
    start = time.perf_counter()
    try:
        item = payload if isinstance(payload, BadImageError) else image_bytes_to_views(payload, tiles)
    except BadImageError as error:
        item = error
    return Prepared(item, time.perf_counter() - start)


def run_on_inputs(prepared: Sequence[Prepared], run: Callable[[list[torch.Tensor]], list[dict]]) -> list[Result]:
    """Call `run` once on all good inputs; each refused one keeps its place as its BadImageError."""
    images = [item.input for item in prepared if isinstance(item.input, torch.Tensor)]
    answers = iter(run(images) if images else [])
    return [next(answers) if isinstance(item.input, torch.Tensor) else item.input for item in prepared]


def prediction_body(probabilities: torch.Tensor, type_probabilities: torch.Tensor | None = None) -> dict:
    """{"label", "confidence", "probs"} for one row of (clean, corrupted) probabilities.

    With `type_probabilities` (one per TYPES), adds "corruption_type": {type: probability}.
    """
    clean = round(float(probabilities[0]), 6)
    corrupted = round(1.0 - clean, 6)
    label = LABELS[1] if corrupted > clean else LABELS[0]
    body = {"label": label, "confidence": max(clean, corrupted), "probs": {LABELS[0]: clean, LABELS[1]: corrupted}}
    if type_probabilities is not None:
        body["corruption_type"] = {name: round(float(p), 6) for name, p in zip(TYPES, type_probabilities, strict=True)}
    return body


# Damage that downscaling averages away: the only evidence trusted from tiles. Blur, brightness and
# occlusion are judged on the whole image (a native-resolution tile of a sharp photo can look soft).
FINE_TYPES = ("noise", "compression")


def combine_views(binary: torch.Tensor, types: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One image's (clean, corrupted) and type probabilities from those of its views.

    View 0 is the whole image. Each tile level (TILES_PER_SIDE**2 tiles at one scale) votes
    with the median over its tiles of P(noise or compression), so a few odd tiles cannot flip
    the answer; the image is as corrupted as the whole view or its most damaged level says.
    """
    if len(binary) == 1:
        return binary[0], types[0]
    fine = types[1:, [TYPES.index(name) for name in FINE_TYPES]].sum(dim=1)
    level_votes = fine.view(-1, TILES_PER_SIDE**2).median(dim=1).values
    level = int(level_votes.argmax())
    if level_votes[level] <= binary[0, 1]:
        return binary[0], types[0]
    corrupted = level_votes[level]
    level_types = types[1:].view(-1, TILES_PER_SIDE**2, len(TYPES))[level].mean(dim=0)
    return torch.stack([1 - corrupted, corrupted]), level_types


def error_body(error: BadImageError) -> dict:
    """The JSON body of a refused input, shaped like TorchServe's own error responses."""
    return {"code": 400, "type": error.reason, "message": error.message}


class CorruptionDetector:
    """Loads the checkpoint once and scores batches of encoded images.

    With `corruption_type`, answers also carry the type head's probabilities; without
    `tiles`, large images are seen whole only (see preprocessing.image_bytes_to_views).
    """

    def __init__(
        self, weights: Path, device: torch.device | str = "cpu", corruption_type: bool = False, tiles: bool = True
    ) -> None:
        self.device = torch.device(device)
        self.model = load_model(weights, self.device)
        self.corruption_type = corruption_type
        self.tiles = tiles

    @torch.inference_mode()
    def probabilities(self, images: Sequence[torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(binary, type) probabilities per image, from all views of all images in one forward pass."""
        views = torch.cat(list(images))
        binary, types = self.model.predict(normalise(views).to(self.device))
        counts = [len(image) for image in images]
        return [combine_views(b, t) for b, t in zip(binary.cpu().split(counts), types.cpu().split(counts), strict=True)]

    def predict_inputs(self, images: Sequence[torch.Tensor]) -> list[dict]:
        """Answers for preprocessed images, each a (V, 3, 32, 32) uint8 stack of views."""
        return [
            prediction_body(binary, types if self.corruption_type else None)
            for binary, types in self.probabilities(images)
        ]

    def predict(self, payloads: Sequence[bytes | BadImageError]) -> list[Result]:
        """Score a batch of encoded images; each bad one becomes its own BadImageError.

        Errors an adapter already found while reading a request pass through in
        place, so one bad item never costs the rest of the batch its answer.
        """
        return run_on_inputs([prepare(payload, self.tiles) for payload in payloads], self.predict_inputs)
