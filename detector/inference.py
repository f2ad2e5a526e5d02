"""The inference core, independent of any server: encoded images in, one record per request out.

`CorruptionDetector.run` is the one batch pipeline (decode -> views -> one forward pass ->
combine views -> answer, plus Grad-CAM for the requests that asked for an explanation).
The TorchServe handler, the evaluation, the benchmarks and the naive server all call it;
a server adapter only turns its requests into payloads and the records into responses.
"""

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from detector.corruptions import TYPES
from detector.decoding import BadImageError
from detector.explain import GradCamExplainer, explanation_body
from detector.model import LABELS, is_corrupted, load_model
from detector.preprocessing import TILES_PER_SIDE, image_bytes_to_views, normalise

# Damage that downscaling averages away: the only evidence trusted from tiles. Blur, brightness and
# occlusion are judged on the whole image (a native-resolution tile of a sharp photo can look soft).
FINE_TYPES = ("noise", "compression")


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
    """Loads the checkpoint once and answers batches of encoded images.

    With `corruption_type`, answers also carry the type head's probabilities; without
    `tiles`, large images are seen whole only (see preprocessing.image_bytes_to_views).
    """

    def __init__(
        self, weights: Path, device: torch.device | str = "cpu", corruption_type: bool = False, tiles: bool = True
    ) -> None:
        self.device = torch.device(device)
        self.model = load_model(weights, self.device)
        self.explainer = GradCamExplainer(self.model, self.device)
        self.corruption_type = corruption_type
        self.tiles = tiles

    def run(self, payloads: Sequence[bytes | BadImageError], explain: Sequence[bool] | None = None) -> list[Record]:
        """One record per payload, in order: every good image answered, every bad one refused on its own.

        A payload may already be a BadImageError (an adapter found no image in the request): it
        passes through in place, so one bad request never costs the rest of the batch its answer.
        `explain[i]` asks for a Grad-CAM explanation of request i instead of a plain prediction.
        """
        explain = list(explain) if explain is not None else [False] * len(payloads)
        prepared = [self._prepare(payload) for payload in payloads]
        good = [index for index, (views, _) in enumerate(prepared) if isinstance(views, torch.Tensor)]
        bodies = dict(zip(good, self.answer([prepared[i][0] for i in good], [explain[i] for i in good]), strict=True))
        return [
            Record(explain[index], bodies.get(index), None if index in bodies else views, seconds)
            for index, (views, seconds) in enumerate(prepared)
        ]

    def predict(self, payloads: Sequence[bytes]) -> list[dict | BadImageError]:
        """The prediction body of each encoded image, or why it was refused."""
        return [record.result for record in self.run(payloads)]

    def answer(self, images: Sequence[torch.Tensor], explain: Sequence[bool] = ()) -> list[dict]:
        """Bodies for preprocessed images (each a (V, 3, 32, 32) uint8 stack of views): one forward pass for all,
        one Grad-CAM pass for those to explain (their whole-image view, the one a person can compare). Without
        `explain`, none is explained."""
        predictions = [
            prediction_body(binary, types if self.corruption_type else None)
            for binary, types in self.probabilities(images)
        ]
        explained = [index for index, wanted in enumerate(explain) if wanted]
        if explained:
            wholes = [images[index][0] for index in explained]
            for index, whole, heatmap in zip(explained, wholes, self.explainer.heatmaps(wholes), strict=True):
                predictions[index] = explanation_body(predictions[index], whole, heatmap, self.explainer.layer)
        return predictions

    @torch.inference_mode()
    def probabilities(self, images: Sequence[torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(binary, type) probabilities per image, from all views of all images in one forward pass."""
        if not images:
            return []
        outputs = self.model.outputs(normalise(torch.cat(list(images))).to(self.device))
        counts = [len(image) for image in images]
        pairs = zip(outputs.probabilities.cpu().split(counts), outputs.types.cpu().split(counts), strict=True)
        return [combine_views(binary, types) for binary, types in pairs]

    def _prepare(self, payload: bytes | BadImageError) -> tuple[torch.Tensor | BadImageError, float | None]:
        """Decode one payload into its views, timed; an error an adapter already found passes through untimed."""
        if isinstance(payload, BadImageError):
            return payload, None
        start = time.perf_counter()
        try:
            views: torch.Tensor | BadImageError = image_bytes_to_views(payload, self.tiles)
        except BadImageError as error:
            views = error
        return views, time.perf_counter() - start
