"""Calibrate a trained detector on its validation split: temperature, then operating point.

1. Temperature scaling (Guo et al. 2017): one scalar T dividing the binary logits,
   fitted by negative log-likelihood on the validation split (balanced clean/corrupted),
   so a 0.9 means right about 90% of the time there.
2. Operating point: the "corrupted" logit is shifted so that the validation clean
   false-positive rate equals `target_fpr`. A logit shift is a change of prior: the
   shipped probabilities are calibrated for a stream in which corrupted images are
   `operating_prior` of the traffic (rather than the validation split's 50%), and the
   API's label stays "corrupted exactly when P(corrupted) > 0.5".

Both are buffers of the model (training/model.py), saved in the checkpoint.
"""

import math
from pathlib import Path

import torch
from torch.utils.data import Dataset

from training.model import load_model, read_checkpoint, save_checkpoint


def fit_temperature(margins: torch.Tensor, labels: torch.Tensor) -> float:
    """The T minimising the NLL of sigmoid(margin / T) (margin = corrupted logit - clean logit)."""
    log_t = torch.zeros((), requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.1, max_iter=200)
    margins, targets = margins.clone(), labels.float().clone()  # scores come from inference mode

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(margins / log_t.exp(), targets)
        loss.backward()
        return loss

    optimizer.step(closure)
    return float(log_t.detach().exp())


def operating_offset(clean_margins: torch.Tensor, temperature: float, target_fpr: float) -> float:
    """The logit shift after which a fraction `target_fpr` of the clean margins stays above 0."""
    return -float(torch.quantile(clean_margins / temperature, 1.0 - target_fpr))


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


def calibrate_checkpoint(path: Path, validation: Dataset, target_fpr: float, device: torch.device) -> dict:
    """Fit temperature and operating offset on `validation` and write them into the checkpoint at `path`."""
    from training.metrics import score  # metrics imports this module's ECE

    model = load_model(path, device)
    scores = score(model, validation, device, progress=False)
    temperature = fit_temperature(scores.raw_margin, scores.label)
    offset = operating_offset(scores.raw_margin[scores.label == 0], temperature, target_fpr)
    model.temperature.fill_(temperature)
    model.corrupted_logit_offset.fill_(offset)
    calibration = {
        "temperature": round(temperature, 4),
        "corrupted_logit_offset": round(offset, 4),
        "operating_prior": round(1 / (1 + math.exp(-offset)), 4),
        "target_fpr": target_fpr,
        "validation_samples": len(scores.label),
    }
    metadata = read_checkpoint(path)["metadata"]
    save_checkpoint(model, path, {**metadata, "calibration": calibration})
    return calibration
