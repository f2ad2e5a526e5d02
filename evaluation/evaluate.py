"""Detection quality on camera photos and on CIFAR: scores, peers, targets and the robustness report.

python -m evaluation.evaluate --model weights/model.pt [--reports checkpoints/reports] [--check]

- Photos (evaluation/photo_eval.py): the corpus's test photos at four sizes, clean and under every family
  x severity, through the serving path, beside the variance-of-Laplacian rule, BRISQUE and the heuristic
  baseline on the same bytes (and any other scorer's saved scores, `--extra-scores NAME=FILE`).
- CIFAR: the 32x32 test images clean and under the CIFAR table (detector.corruptions.CIFAR_CORRUPTIONS), and
  under 12 CIFAR-10-C kinds never trained on (evaluation/heldout.py), beside the heuristic baseline.

Writes REPORTS/robustness.md, its figures and robustness.json (evaluation/report.py), always prints the
headline numbers and where the report went, and with `--check` exits 1 when a target is not met. The
default REPORTS is checkpoints/reports: the committed reports/ is regenerated only on purpose.
"""

import argparse
import json
import shlex
import sys
from datetime import date
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from detector.corruptions import CIFAR_CORRUPTIONS, SEVERITIES, TYPES
from detector.inference import CorruptionDetector
from detector.model import CALIBRATION_BUFFERS
from evaluation.baseline import HeuristicBaseline
from evaluation.grid import CorruptionGrid, Materialised
from evaluation.heldout import HELDOUT
from evaluation.metrics import Scores, calibration, score, summarise, type_confusion
from evaluation.photo_eval import CaseSet, Scorer, evaluate_photos, peers
from evaluation.report import headline, targets, write_report
from training.corpus import load_built
from training.data import SUBSET, load_clean_images

CIFAR_KINDS = tuple(CIFAR_CORRUPTIONS)
HELDOUT_KINDS = tuple(HELDOUT)


def baseline_scores(baseline: HeuristicBaseline, grid: Materialised) -> Scores:
    """The heuristic baseline's scores on a grid, shaped like the detector's (its margin is the log-odds)."""
    probability = torch.from_numpy(baseline.corrupted_probability(grid.images)).float()
    margin = torch.logit(probability.clamp(1e-6, 1 - 1e-6))
    no_types = torch.zeros(len(probability), len(TYPES))
    return Scores(probability, margin, no_types, grid.label, grid.kind, grid.severity)


def spread(images: torch.Tensor, count: int) -> torch.Tensor:
    """`count` images evenly spaced through `images` (folders load class by class: the first N are few classes)."""
    return images[torch.linspace(0, len(images) - 1, min(count, len(images))).long()]


def fit_cifar_baseline(train_images: torch.Tensor, seed: int) -> HeuristicBaseline:
    """The baseline fitted like the CIFAR grid is made: each training image clean and under one table kind."""
    rng = np.random.default_rng(seed)
    corruptions = list(CIFAR_CORRUPTIONS.values())
    images, labels = [], []
    for image in tqdm(train_images, desc="baseline data", unit="img", leave=False):
        corruption = corruptions[int(rng.integers(len(corruptions)))]
        corrupted = corruption(image, int(rng.choice(SEVERITIES)), int(rng.integers(2**31)))
        images += [image, corrupted]
        labels += [0, 1]
    return HeuristicBaseline().fit(torch.stack(images), np.array(labels))


def evaluate_cifar(detector: CorruptionDetector, args: argparse.Namespace) -> dict:
    """The CIFAR grid (CIFAR table) and the held-out CIFAR-10-C grid, the detector beside the baseline."""
    model, device = detector.model, detector.device
    images = load_clean_images(args.cifar_test, limit=args.limit, train=False)
    grids = {
        "training": Materialised(CorruptionGrid(images, seed=args.seed, table=CIFAR_CORRUPTIONS)),
        "heldout": Materialised(CorruptionGrid(images, seed=args.seed, table=HELDOUT)),
    }
    scores = {name: score(model, grid, device, args.batch_size) for name, grid in grids.items()}
    baseline = fit_cifar_baseline(spread(load_clean_images(args.cifar_train), args.baseline_images), args.seed)
    names = {"training": CIFAR_KINDS, "heldout": HELDOUT_KINDS}
    return {
        "images": len(images),
        "training_kinds": summarise(scores["training"], CIFAR_KINDS),
        "heldout_kinds": summarise(scores["heldout"], HELDOUT_KINDS),
        "baseline": {name: summarise(baseline_scores(baseline, grid), names[name]) for name, grid in grids.items()},
        "type_confusion": type_confusion(scores["training"], CIFAR_KINDS),
        "calibration": calibration(scores["training"], float(torch.sigmoid(model.small_image_offset))),
    }


def extra_scorers(specs: list[str]) -> list[Scorer]:
    """Scorers whose P(corrupted) per case was saved elsewhere (NAME=FILE.json): the previous model, say."""
    scorers = []
    for spec in specs:
        name, path = spec.split("=", 1)
        scorers.append(Scorer(name, json.loads(Path(path).read_text()), lambda s: s > 0.5))
    return scorers


def evaluate_photo_corpus(detector: CorruptionDetector, args: argparse.Namespace) -> dict:
    """The photo evaluation on the corpus's test split (validation photos only set BRISQUE's threshold)."""
    test, val = CaseSet(args.cases / "test"), CaseSet(args.cases / "val")
    test_photos = load_built(args.photos, "test")[: args.photo_limit]
    test.build(test_photos, args.photos, args.severities)
    val.build(load_built(args.photos, "val"), args.photos, severities=())
    scorers = [*peers(test, load_built(args.photos, "train"), val, args.photos), *extra_scorers(args.extra_scores)]
    return evaluate_photos(detector, test, scorers)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="checkpoint written by training.train")
    parser.add_argument("--photos", type=Path, default=Path("data/photos"), help="the corpus (make photos)")
    parser.add_argument("--cases", type=Path, default=Path("data/eval-cases"), help="where photo cases are kept")
    parser.add_argument("--photo-limit", type=int, default=None, help="use only the first N test photos")
    parser.add_argument("--severities", type=int, nargs="+", default=list(SEVERITIES))
    parser.add_argument("--extra-scores", nargs="*", default=[], help="NAME=FILE.json of P(corrupted) per case id")
    parser.add_argument("--no-photos", action="store_true", help="skip the photo evaluation")
    parser.add_argument("--cifar-test", default=str(SUBSET / "test"), help="CIFAR test images (folder or 'cifar10')")
    parser.add_argument("--cifar-train", default=str(SUBSET / "train"), help="images the CIFAR baseline is fitted on")
    parser.add_argument("--baseline-images", type=int, default=2000, help="training images for the CIFAR baseline")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N CIFAR test images")
    parser.add_argument("--seed", type=int, default=0, help="seed of the CIFAR corruptions")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--reports", type=Path, default=Path("checkpoints/reports"), help="where the report goes")
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is not met")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    detector = CorruptionDetector(args.model, device)
    results = {
        "model": str(args.model),
        "date": str(date.today()),
        "command": "python -m evaluation.evaluate " + shlex.join(argv if argv is not None else sys.argv[1:]),
        "calibration_buffers": {name: float(getattr(detector.model, name)) for name in CALIBRATION_BUFFERS},
        "cifar": evaluate_cifar(detector, args),
        "photos": None if args.no_photos else evaluate_photo_corpus(detector, args),
    }
    report = write_report(results, args.reports)
    print(headline(results))
    print(f"report: {report}")
    unmet = [name for name, _, met in targets(results) if not met]
    if args.check and unmet:
        print(f"{len(unmet)} target(s) not met: " + "; ".join(unmet), file=sys.stderr)
        raise SystemExit(1)


if __name__ == "__main__":
    main()
