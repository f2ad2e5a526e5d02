"""Detection and calibration metrics of a model on clean images and their corrupted copies.

Light enough to validate every training epoch (training/train.py) and to calibrate
(training/calibrate.py); the evaluation adds its report on top. A sample is called
corrupted by the API's own rule, `detector.model.is_corrupted`.

Photos of one source fail together, so a figure over a few source groups is uncertain by more than its number of
images suggests: `group_bootstrap` resamples whole groups (a cluster bootstrap) for its intervals.
"""

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from detector.corruptions import CORRUPTIONS, KINDS, SEVERITIES, TYPES, VISIBLE_SEVERITIES
from detector.model import CorruptionNet, is_corrupted


@dataclass
class Scores:
    """Per-sample outputs with the sample's ground truth.

    corrupted_probability is what the API answers (calibrated); raw_margin is the evidence (log-odds)
    before the operating offset; type_probability has a column per TYPES.
    """

    corrupted_probability: torch.Tensor
    raw_margin: torch.Tensor
    type_probability: torch.Tensor
    label: torch.Tensor
    kind: torch.Tensor
    severity: torch.Tensor


@torch.inference_mode()
def score(
    model: CorruptionNet,
    dataset: Dataset,
    device: torch.device,
    batch_size: int = 256,
    workers: int = 0,
    progress: bool = True,
) -> Scores:
    """Run the model over a dataset of (normalised image, label, kind, severity) items."""
    model.eval()
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers)
    parts: list[tuple[torch.Tensor, ...]] = []
    for images, labels, kinds, severities in tqdm(
        loader, desc="scoring", unit="batch", disable=not progress, leave=False
    ):
        outputs = model.outputs(images.to(device, non_blocking=True))
        parts.append(
            (outputs.probabilities[:, 1].cpu(), outputs.margin.cpu(), outputs.types.cpu(), labels, kinds, severities)
        )
    return Scores(*(torch.cat(column) for column in zip(*parts, strict=True)))


def balanced_accuracy(clean_flagged: float, damage_caught: float) -> float:
    """Right on clean images and on damaged ones, the two weighted equally, however many there are of each."""
    return (1 - clean_flagged + damage_caught) / 2


BOOTSTRAP_DRAWS = 2000
INTERVAL_LEVEL = 0.95


def group_resamples(groups: Sequence[str], draws: int, seed: int = 0) -> list[np.ndarray]:
    """Case indices of each draw: as many groups as there are, drawn with replacement, each with all its cases.
    The same groups and seed give the same draws, so models scored on the same cases are compared paired."""
    names = sorted(set(groups))
    members = {name: np.flatnonzero(np.asarray(groups) == name) for name in names}
    rng = np.random.default_rng(seed)
    return [np.concatenate([members[names[i]] for i in rng.integers(0, len(names), len(names))]) for _ in range(draws)]


def auroc_and_right(
    labels: np.ndarray, scores: np.ndarray, flagged: np.ndarray, counted: np.ndarray | None = None
) -> tuple[float, float]:
    """(AUROC, right balanced) of corrupted (1) against clean (0) cases, right over the `counted` ones only (the
    visible damage and the clean; default all); NaN where a class is missing."""
    if labels.min() == labels.max():
        return float("nan"), float("nan")
    damaged = (labels == 1) if counted is None else (labels == 1) & counted
    clean_flagged = float(flagged[labels == 0].mean())
    right = balanced_accuracy(clean_flagged, float(flagged[damaged].mean())) if damaged.any() else float("nan")
    return float(roc_auc_score(labels, scores)), right


def group_bootstrap(
    labels: np.ndarray,
    scores: np.ndarray,
    flagged: np.ndarray,
    groups: Sequence[str],
    draws: int = BOOTSTRAP_DRAWS,
    counted: np.ndarray | None = None,
) -> np.ndarray:
    """(draws, 2): AUROC and right (balanced, over `counted`) over each resample of the source groups
    (`group_resamples`)."""
    counted = np.ones(len(labels), bool) if counted is None else counted
    return np.array(
        [auroc_and_right(labels[i], scores[i], flagged[i], counted[i]) for i in group_resamples(groups, draws)]
    )


def interval(values: np.ndarray) -> tuple[float, float]:
    """The central INTERVAL_LEVEL interval of bootstrap values, draws that held one class only (NaN) left out."""
    finite = values[np.isfinite(values)]
    if not len(finite):
        return float("nan"), float("nan")
    tail = (1 - INTERVAL_LEVEL) / 2 * 100
    return float(np.percentile(finite, tail)), float(np.percentile(finite, 100 - tail))


def _rate(mask: torch.Tensor, flagged: torch.Tensor) -> float:
    return float(flagged[mask].float().mean()) if mask.any() else float("nan")


def auroc(scores: Scores, kind: int, severities: tuple[int, ...] = SEVERITIES) -> float:
    """AUROC separating clean images from one kind (at the given severities); NaN if either is absent."""
    clean = scores.kind == 0
    corrupted = (scores.kind == kind) & torch.isin(scores.severity, torch.tensor(severities))
    if not (clean.any() and corrupted.any()):
        return float("nan")
    keep = clean | corrupted
    return float(roc_auc_score(corrupted[keep].numpy(), scores.raw_margin[keep].numpy()))


def summarise(scores: Scores, names: tuple[str, ...] = KINDS) -> dict:
    """Accuracy, clean false-positive rate, detection rate per kind and per kind x severity, AUROC per kind.

    `names` are the kinds behind kind indices 1.. (the training table unless told otherwise).
    """
    flagged = is_corrupted(scores.corrupted_probability)
    clean = scores.kind == 0
    kinds = range(1, len(names) + 1)
    detection = {names[k - 1]: _rate(scores.kind == k, flagged) for k in kinds}
    target = torch.isin(scores.severity, torch.tensor(VISIBLE_SEVERITIES))
    false_positive_rate = _rate(clean, flagged)
    return {
        "samples": len(flagged),
        "accuracy": float((flagged == scores.label.bool()).float().mean()),
        "balanced_accuracy": balanced_accuracy(false_positive_rate, _rate(~clean, flagged)),
        "clean_false_positive_rate": false_positive_rate,
        # [[clean kept, clean flagged], [corrupted missed, corrupted caught]]
        "confusion": [
            [int((clean & ~flagged).sum()), int((clean & flagged).sum())],
            [int((~clean & ~flagged).sum()), int((~clean & flagged).sum())],
        ],
        "detection_rate": detection,
        "detection_rate_sev3_5": {names[k - 1]: _rate((scores.kind == k) & target, flagged) for k in kinds},
        "detection_rate_by_severity": {
            names[k - 1]: {str(s): _rate((scores.kind == k) & (scores.severity == s), flagged) for s in SEVERITIES}
            for k in kinds
        },
        "auroc": {names[k - 1]: auroc(scores, k) for k in kinds},
        "auroc_sev3_5": {names[k - 1]: auroc(scores, k, VISIBLE_SEVERITIES) for k in kinds},
    }


def type_confusion(scores: Scores, kinds: tuple[str, ...]) -> list[list[int]]:
    """Counts of (true type, predicted type) over TYPES; sample kind k (1..) is `kinds[k - 1]`, counted as its
    family's type."""
    predicted = scores.type_probability.argmax(dim=1)
    kind_types = [0, *(TYPES.index(CORRUPTIONS[kind].family) for kind in kinds)]
    true = torch.tensor(kind_types)[scores.kind]
    matrix = torch.zeros(len(TYPES), len(TYPES), dtype=torch.long)
    matrix.index_put_((true, predicted), torch.ones_like(predicted), accumulate=True)
    return matrix.tolist()


def reliability_bins(
    confidence: torch.Tensor, correct: torch.Tensor, weights: torch.Tensor | None = None, bins: int = 15
) -> list[dict]:
    """Per equal-width confidence bin over [0.5, 1]: its share of the (weighted) samples, mean confidence, accuracy.

    `weights` re-balance the classes: a test grid that is 96% corrupted would otherwise
    judge probabilities meant for another mix of clean and corrupted images.
    """
    weights = torch.ones_like(confidence) if weights is None else weights
    index = torch.bucketize(confidence, torch.linspace(0.5, 1.0, bins + 1)[1:-1])
    rows = []
    for b in range(bins):
        w = weights * (index == b)
        if w.sum() > 0:
            rows.append(
                {
                    "share": float(w.sum() / weights.sum()),
                    "confidence": float((w * confidence).sum() / w.sum()),
                    "accuracy": float((w * correct.float()).sum() / w.sum()),
                }
            )
    return rows


def expected_calibration_error(
    confidence: torch.Tensor, correct: torch.Tensor, weights: torch.Tensor | None = None, bins: int = 15
) -> float:
    """ECE: the |accuracy - confidence| gap per equal-width confidence bin, weighted by the bin's share."""
    return sum(
        row["share"] * abs(row["accuracy"] - row["confidence"])
        for row in reliability_bins(confidence, correct, weights, bins)
    )


def class_weights(labels: torch.Tensor, corrupted_share: float) -> torch.Tensor:
    """Per-sample weights that make corrupted samples `corrupted_share` of the total weight."""
    corrupted = labels.bool()
    return torch.where(corrupted, corrupted_share / corrupted.sum(), (1 - corrupted_share) / (~corrupted).sum())


def calibration(scores: Scores, operating_prior: float) -> dict:
    """ECE and reliability curves of the binary probability: temperature-scaled and as shipped.

    Each is judged on the class mix it is meant for: the temperature-scaled evidence on a balanced mix (the
    validation samples'), the shipped probabilities at the operating prior (training/calibrate.py).
    """
    variants = {
        "temperature": (torch.sigmoid(scores.raw_margin), 0.5),
        "shipped": (scores.corrupted_probability, operating_prior),
    }
    result = {}
    for name, (corrupted, prior) in variants.items():
        confidence = torch.maximum(corrupted, 1 - corrupted)
        correct = is_corrupted(corrupted) == scores.label.bool()
        weights = class_weights(scores.label, prior)
        result[name] = {
            "corrupted_share": prior,
            "ece": expected_calibration_error(confidence, correct, weights),
            "curve": reliability_bins(confidence, correct, weights, bins=10),
        }
    return result
