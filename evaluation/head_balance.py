"""Which view sets a checkpoint's photo operating point, and what weighing the crops' evidence against the whole
view's would change: every image's calibrated evidence per head (whole view; crops' median), the rule with the
crops' evidence shifted by d before the photo offset is refitted (d = 0 is the shipped rule, detector.model), d
chosen on the validation photos' visible damage, and the test cases' P(corrupted) under it for evaluation.compare.

    python -m evaluation.head_balance --model weights/model.pt --save-scores /tmp/shifted-scores.json

(after the committed report command, whose test cases it scores: data/eval-cases/test).
The offset is refitted as training.calibrate fits it (the validation photos' clean images at every size and
quality); d is the grid value catching most visible damage of the validation photos' cases at that offset. Only
validation photos choose anything; the test cases are scored once, with what was chosen. A rule examined, not
shipped (MODEL_CARD "Ablations", 2026-12-07).
"""

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from detector.corruptions import VISIBLE_SEVERITIES
from detector.model import CorruptionNet, crop_medians, load_model
from detector.preprocessing import Views, image_bytes_to_views
from evaluation.photo_eval import CaseSet
from training.calibrate import clean_photo_views, operating_offset
from training.corpus import load_built

# Crop shifts tried, in calibrated log-odds.
SHIFTS = tuple(np.round(np.arange(-3.0, 3.001, 0.25), 2))
EVALUATED_BUCKETS = ("640", "1024")


def head_evidence(model: CorruptionNet, views: Sequence[Views], batch: int = 8) -> np.ndarray:
    """(N, 2): each image's calibrated whole-view margin and its crops' median margin (-inf without crops)."""
    parts = []
    for start in range(0, len(views), batch):
        whole, _, crops, _ = model.head_evidence(views[start : start + batch])
        parts.append(torch.stack([whole, crop_medians(crops).to(whole)], dim=1).double().cpu().numpy())
    return np.concatenate(parts) if parts else np.empty((0, 2))


def case_evidence(model: CorruptionNet, cases: CaseSet, batch: int = 8) -> tuple[list, np.ndarray]:
    """(the folder's cases, their head evidence), read through the serving path a batch at a time."""
    listed = cases.cases()
    parts = [
        head_evidence(model, [image_bytes_to_views(cases.read(case)) for case in listed[start : start + batch]])
        for start in tqdm(range(0, len(listed), batch), desc="head evidence", unit="batch")
    ]
    return listed, np.concatenate(parts)


def shifted(evidence: np.ndarray, shift: float) -> np.ndarray:
    """The combined evidence with the crops' shifted by `shift` (an image without crops is its whole view)."""
    return np.maximum(evidence[:, 0], evidence[:, 1] + shift)


def fit_shift(
    clean: np.ndarray, damaged: np.ndarray, target_fpr: float, shifts: Sequence[float] = SHIFTS
) -> list[dict[str, float]]:
    """Per shift: the photo offset flagging `target_fpr` of `clean` (training.calibrate.operating_offset) and the
    share of `damaged` caught at it. Every row of both has crops."""
    rows = []
    for shift in shifts:
        offset = operating_offset(torch.from_numpy(shifted(clean, shift)), target_fpr)
        caught = float(np.mean(shifted(damaged, shift) + offset > 0))
        rows.append({"shift": float(shift), "offset": offset, "caught": caught})
    return rows


def probabilities(evidence: np.ndarray, shift: float, offset: float, small_image_offset: float) -> np.ndarray:
    """P(corrupted) under the shifted rule; images without crops keep the small-image offset, as served."""
    has_crops = np.isfinite(evidence[:, 1])
    logits = np.where(has_crops, shifted(evidence, shift) + offset, evidence[:, 0] + small_image_offset)
    return 1 / (1 + np.exp(-logits))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--photos", type=Path, default=Path("data/photos"), help="the corpus (make photos)")
    parser.add_argument("--cases", type=Path, default=Path("data/eval-cases"), help="as evaluation.evaluate's")
    parser.add_argument("--target-fpr", type=float, default=0.015, help="as training.train's")
    parser.add_argument("--save-scores", type=Path, required=True, help="the test cases' P(corrupted), by case id")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    model = load_model(args.model)
    validation = load_built(args.photos, "val")
    fit_cases = CaseSet(args.cases / "val-visible")
    fit_cases.build(validation, args.photos, VISIBLE_SEVERITIES, EVALUATED_BUCKETS)
    with torch.inference_mode():
        clean = head_evidence(model, clean_photo_views(validation, str(args.photos)))
        listed, evidence = case_evidence(model, fit_cases)
        damaged = evidence[np.array([case.label == 1 for case in listed]) & np.isfinite(evidence[:, 1])]
        rows = fit_shift(clean, damaged, args.target_fpr)
        best = max(rows, key=lambda row: row["caught"])
        test_cases, test_evidence = case_evidence(model, CaseSet(args.cases / "test"))
    print("| crop shift | photo offset | validation damage caught |\n|---:|---:|---:|")
    for row in rows:
        print(f"| {row['shift']:+.2f} | {row['offset']:+.3f} | {row['caught']:.1%} |")
    print(f"chosen: shift {best['shift']:+.2f}, photo offset {best['offset']:+.3f}")
    values = probabilities(test_evidence, best["shift"], best["offset"], float(model.small_image_offset))
    args.save_scores.write_text(json.dumps({case.id: float(p) for case, p in zip(test_cases, values, strict=True)}))


if __name__ == "__main__":
    main()
