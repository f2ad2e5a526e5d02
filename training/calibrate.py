"""Calibrate a trained detector on its validation split: temperature, then operating point.

1. Temperature scaling (Guo et al. 2017): one scalar T dividing the binary logits,
   fitted by negative log-likelihood on the validation split (balanced clean/corrupted),
   so a 0.9 means right about 90% of the time there.
2. Operating point: the "corrupted" logit is shifted so that the validation clean
   false-positive rate equals `target_fpr`. A logit shift is a change of prior: the
   shipped probabilities are calibrated for a stream in which corrupted images are
   `operating_prior` of the traffic (rather than the validation split's 50%), and the
   API's label stays "corrupted exactly when P(corrupted) > 0.5".

Both are fitted within sane bounds (a degenerate short run, perfectly separable or with
constant outputs, would otherwise ask for T -> 0 or T -> infinity) and saved as fp32
buffers of the model (detector/model.py).
"""

import math
from pathlib import Path

import torch
from torch.utils.data import Dataset

from detector.model import load_model, read_checkpoint, save_checkpoint
from evaluation.metrics import score

# Beyond these a temperature means the validation split could not tell anything apart (T -> infinity: every
# answer 0.5) or was separated perfectly (T -> 0: every answer 0 or 1); either way, stop at the bound.
TEMPERATURE_BOUNDS = (0.05, 20.0)
# The operating offset is a prior shift: +-20 logits is a prior of 2e-9 to 1 - 2e-9.
OFFSET_BOUND = 20.0
# Golden-section steps: each shrinks the bracket by 0.618, 80 steps reach float precision.
SEARCH_STEPS = 80


def temperature_nll(margins: torch.Tensor, labels: torch.Tensor, temperature: float) -> float:
    """Mean negative log-likelihood of the labels under sigmoid(margin / temperature)."""
    return float(torch.nn.functional.binary_cross_entropy_with_logits(margins / temperature, labels.float()))


def fit_temperature(margins: torch.Tensor, labels: torch.Tensor) -> float:
    """The T in TEMPERATURE_BOUNDS minimising the NLL of sigmoid(margin / T) (margin = corrupted - clean logit).

    The NLL is convex in 1/T (a one-parameter logistic regression), so a golden-section search over
    1/T finds the bounded optimum deterministically, without a step size to tune.
    """
    margins, labels = margins.double(), labels.double()
    low, high = 1 / TEMPERATURE_BOUNDS[1], 1 / TEMPERATURE_BOUNDS[0]
    ratio = (math.sqrt(5) - 1) / 2
    for _ in range(SEARCH_STEPS):
        left, right = high - ratio * (high - low), low + ratio * (high - low)
        if temperature_nll(margins, labels, 1 / left) <= temperature_nll(margins, labels, 1 / right):
            high = right
        else:
            low = left
    return 1 / ((low + high) / 2)


def operating_offset(clean_margins: torch.Tensor, temperature: float, target_fpr: float) -> float:
    """The logit shift (within +-OFFSET_BOUND) leaving a fraction `target_fpr` of the clean margins above 0."""
    offset = -float(torch.quantile(clean_margins.double() / temperature, 1.0 - target_fpr))
    return min(max(offset, -OFFSET_BOUND), OFFSET_BOUND)


def calibrate_checkpoint(path: Path, validation: Dataset, target_fpr: float, device: torch.device) -> dict:
    """Fit temperature and operating offset on `validation` and write them into the checkpoint at `path`."""
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
