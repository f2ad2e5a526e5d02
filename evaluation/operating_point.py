"""How steady a checkpoint's operating point is: its photo offset refit on resamples of its validation source groups,
and what each refit would flag of the held-out clean photos and catch of their visible damage.

    python -m evaluation.operating_point --model weights/model.pt --scores data/v4-scores.json

training.calibrate sets the photo offset where `target_fpr` of the validation photos' clean images (every
validation photo at every size and two JPEG qualities) score as corrupted: at 1.5% of about 240 images that is the
fourth-highest clean margin, and the validation photos come from a few dozen source groups. Which groups happen to
be in validation then moves the offset, and with it clean flagged and caught on photos from anywhere. Resampling the
validation groups with replacement (as evaluation.compare resamples test groups) and refitting the offset on each
draw measures that spread; the held-out test cases' margins come from the saved scores (`evaluation.evaluate
--save-scores`) less the offset they were scored with. Photos only: images too small for crops have their own
offset, fitted on CIFAR images.
"""

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from detector.model import CorruptionNet, load_model, read_checkpoint
from detector.preprocessing import has_crops
from evaluation.compare import held_out_cases
from evaluation.metrics import BOOTSTRAP_DRAWS, balanced_accuracy, group_resamples
from training.calibrate import clean_photo_views, combined_margins, operating_offset
from training.corpus import SPLITS, load_built
from training.photo_data import photo_group

PERCENTILES = (5, 50, 95)
# Saved probabilities are rounded: keep their log-odds finite (far beyond any offset the calibration can fit).
PROBABILITY_FLOOR = 1e-9


def validation_margins(model: CorruptionNet, validation: Sequence[str], photos: Path) -> tuple[np.ndarray, list]:
    """The combined clean margins (before the offset) of the validation photos at every size and quality, the
    images with crops only, and each one's source group."""
    corpus = {photo.id: photo for split in SPLITS for photo in load_built(photos, split)}
    missing = sorted(set(validation) - set(corpus))
    if missing:
        raise ValueError(
            f"{len(missing)} of the checkpoint's validation photos are not in the corpus at {photos} (built from an"
            f" older photo_corpus.json? `make photos`): {', '.join(missing[:5])}"
        )
    margins, groups = [], []
    for photo in (corpus[photo_id] for photo_id in validation):
        views = [view for view in clean_photo_views([photo], str(photos)) if len(view.crops)]
        if views:
            margins.extend(combined_margins(model, views).tolist())
            groups.extend([photo_group(photo)] * len(views))
    return np.array(margins), groups


def held_out_margins(
    model_path: Path, offset: float, scores: dict[str, float], cases_folder: Path, photos: Path
) -> tuple:
    """(margins before the photo `offset` they were scored with, labels) of the held-out clean and visible-damage
    cases with crops."""
    cases, _ = held_out_cases(cases_folder, photos, [model_path])
    cases = [case for case in cases if has_crops(case.width, case.height)]
    probability = np.clip([scores[case.id] for case in cases], PROBABILITY_FLOOR, 1 - PROBABILITY_FLOOR)
    return np.log(probability / (1 - probability)) - offset, np.array([case.label for case in cases])


def refits(margins: np.ndarray, groups: Sequence[str], target_fpr: float, draws: int) -> np.ndarray:
    """The photo offset fitted as training.calibrate fits it, on each resample of the validation groups."""
    return np.array(
        [operating_offset(torch.from_numpy(margins[draw]), target_fpr) for draw in group_resamples(groups, draws)]
    )


def outcomes(offsets: np.ndarray, margins: np.ndarray, labels: np.ndarray) -> dict[str, np.ndarray]:
    """Held-out clean flagged, damage caught and right (balanced) at each offset."""
    flagged = margins[None, :] + offsets[:, None] > 0
    clean, caught = flagged[:, labels == 0].mean(1), flagged[:, labels == 1].mean(1)
    return {"offset": offsets, "clean flagged": clean, "caught": caught, "right": balanced_accuracy(clean, caught)}


def table(fitted: dict[str, np.ndarray], drawn: dict[str, np.ndarray], groups: int, draws: int) -> str:
    """The fitted operating point and the spread of its refits, as Markdown."""
    head = " | ".join(f"{p}th percentile" for p in PERCENTILES)
    lines = [
        f"Photo offset refit on {draws} resamples of {groups} validation source groups",
        "",
        f"| | as fitted | {head} |",
        "|---|---:|" + "---:|" * len(PERCENTILES),
    ]
    for name, values in drawn.items():
        form = "{:+.3f}" if name == "offset" else "{:.1%}"
        spread = " | ".join(form.format(v) for v in np.percentile(values, PERCENTILES))
        lines.append(f"| {name} | {form.format(float(fitted[name][0]))} | {spread} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="a calibrated checkpoint")
    parser.add_argument("--scores", type=Path, required=True, help="its held-out scores (evaluate --save-scores)")
    parser.add_argument("--cases", type=Path, default=Path("data/eval-cases/test"), help="the scored case folder")
    parser.add_argument("--photos", type=Path, default=Path("data/photos"), help="the corpus (make photos)")
    parser.add_argument("--draws", type=int, default=BOOTSTRAP_DRAWS)
    args = parser.parse_args(argv)
    model, calibration = load_model(args.model), read_checkpoint(args.model)["metadata"]["calibration"]
    offset = float(model.corrupted_logit_offset)
    margins, groups = validation_margins(model, calibration["validation_photos"], args.photos)
    scores = json.loads(args.scores.read_text())
    held_out, labels = held_out_margins(args.model, offset, scores, args.cases, args.photos)
    drawn = outcomes(refits(margins, groups, calibration["target_fpr"], args.draws), held_out, labels)
    fitted = outcomes(np.array([offset]), held_out, labels)
    print(table(fitted, drawn, len(set(groups)), args.draws))


if __name__ == "__main__":
    main()
