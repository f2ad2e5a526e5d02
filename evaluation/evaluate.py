"""Detection quality on camera photos of sources the model never saw and on CIFAR: scores, peers, targets and
the robustness report.

python -m evaluation.evaluate --model weights/model.pt [--reports checkpoints/reports] [--check]

- Photos (evaluation/photo_eval.py): the corpus's test photos (`--all-groups`: every photo; `--groups G..`:
  those of some source groups) at four sizes (`--buckets`), clean and under every family x severity, through
  the serving path, beside the variance-of-Laplacian rule, BRISQUE and the heuristic baseline on the same bytes
  (`--no-peers`: the detector alone; any other scorer's saved scores, `--extra-scores NAME=FILE`). The headline
  and the targets count the source groups the model never saw; the groups it saw are reported apart, each
  group's clean false alarms, false alarms by content tag and the flagged clean photos as thumbnails.
- CIFAR: the 32x32 test images clean and under the CIFAR table (detector.corruptions.CIFAR_CORRUPTIONS), and
  under 12 CIFAR-10-C kinds never trained on (evaluation/heldout.py), beside the heuristic baseline.

Writes REPORTS/robustness.md, its figures and robustness.json (evaluation/report.py), always prints the
headline numbers and where the report went, and with `--check` exits 1 when a target is not met. The
default REPORTS is checkpoints/reports: the committed reports/ is regenerated only on purpose.
`--list-groups` prints the corpus's source groups (for leave-one-group-out folds: evaluation/report.py).
"""

import argparse
import hashlib
import json
import shlex
import sys
from dataclasses import asdict
from datetime import date
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from detector.corruptions import CIFAR_CORRUPTIONS, SEVERITIES, TYPES
from detector.inference import CorruptionDetector
from detector.model import is_corrupted
from evaluation.baseline import HeuristicBaseline
from evaluation.grid import CorruptionGrid, Materialised
from evaluation.heldout import HELDOUT, HELDOUT_KINDS
from evaluation.metrics import Scores, calibration, score, summarise, type_confusion
from evaluation.photo_eval import (
    BUCKETS,
    CaseSet,
    Scorer,
    evaluate_photos,
    laplacian_peer,
    model_photos,
    model_scores,
    peers,
    photo_sources,
)
from evaluation.report import headline, targets, write_report
from training.corpus import SPLITS, BuiltPhoto, load_built
from training.data import SUBSET, load_clean_images
from training.photo_data import photo_group, shared_groups

CIFAR_KINDS = tuple(CIFAR_CORRUPTIONS)


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
        scorers.append(Scorer(name, json.loads(Path(path).read_text()), is_corrupted))
    return scorers


def evaluated_photos(corpus: list[BuiltPhoto], args: argparse.Namespace) -> tuple[str, list[BuiltPhoto]]:
    """(scope, photos): the test split (default), every photo (--all-groups) or those of some groups (--groups)."""
    if args.groups:
        return "groups", [p for p in corpus if photo_group(p) in args.groups]
    if args.all_groups:
        return "all", corpus
    return "test", [p for p in corpus if p.split == "test"]


def case_folder(scope: str, groups: list[str] | None) -> str:
    """Where under --cases a scope's cases lie: its name, and for --groups one folder per set of groups, so two
    sets are never written into one folder (by two runs at once, or rebuilt each time they alternate)."""
    if scope != "groups":
        return scope
    return "groups-" + hashlib.sha256("\n".join(sorted(groups or ())).encode()).hexdigest()[:12]


def evaluate_photo_corpus(detector: CorruptionDetector, args: argparse.Namespace) -> dict:
    """The photo evaluation, headlined on the sources the model never saw (validation photos only set BRISQUE's
    threshold; training photos fit the heuristic baseline)."""
    corpus = [photo for split in SPLITS for photo in load_built(args.photos, split)]
    seen = model_photos(args.model, corpus)
    scope, photos = evaluated_photos(corpus, args)
    cases, val = CaseSet(args.cases / case_folder(scope, args.groups)), CaseSet(args.cases / "val")
    cases.build(photos[: args.photo_limit], args.photos, args.severities, args.buckets)
    model = Scorer("detector", model_scores(detector, cases), is_corrupted)
    if args.save_scores:
        args.save_scores.write_text(json.dumps(model.score))
    scorers = extra_scorers(args.extra_scores)
    if args.laplacian_only:
        scorers = [laplacian_peer(cases), *scorers]
    elif not args.no_peers:
        val.build([p for p in corpus if p.split == "val"], args.photos, severities=(), buckets=args.buckets)
        train = [p for p in corpus if p.split == "train"]
        scorers = [*peers(cases, train, val, args.photos), *scorers]
    return {
        "scope": scope,
        "model_photos": seen.record,
        "shared_groups": shared_groups(corpus),
        "buckets": list(args.buckets),
        "severities": list(args.severities),
        **evaluate_photos(model, cases, scorers, photo_sources(corpus, seen)),
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="checkpoint written by training.train")
    parser.add_argument("--photos", type=Path, default=Path("data/photos"), help="the corpus (make photos)")
    parser.add_argument("--cases", type=Path, default=Path("data/eval-cases"), help="where photo cases are kept")
    parser.add_argument("--photo-limit", type=int, default=None, help="use only the first N evaluated photos")
    parser.add_argument(
        "--all-groups",
        action="store_true",
        help="evaluate every photo of the corpus, not only the test split (sources the model saw reported apart)",
    )
    parser.add_argument("--groups", nargs="+", default=None, help="evaluate the photos of these source groups only")
    parser.add_argument("--list-groups", action="store_true", help="print the corpus's source groups and stop")
    parser.add_argument("--buckets", nargs="+", default=list(BUCKETS), choices=BUCKETS, help="photo size buckets")
    peers_wanted = parser.add_mutually_exclusive_group()
    peers_wanted.add_argument("--no-peers", action="store_true", help="score photos with the detector only")
    peers_wanted.add_argument(
        "--laplacian-only", action="store_true", help="of the peers, only the Laplacian rule (BRISQUE takes 2.5 s/img)"
    )
    parser.add_argument("--severities", type=int, nargs="*", default=list(SEVERITIES), help="none: clean photos only")
    parser.add_argument("--extra-scores", nargs="*", default=[], help="NAME=FILE.json of P(corrupted) per case id")
    parser.add_argument("--save-scores", type=Path, default=None, help="write the detector's scores (--extra-scores)")
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
    if args.list_groups:
        print("\n".join(sorted({photo_group(p) for split in SPLITS for p in load_built(args.photos, split)})))
        return
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    detector = CorruptionDetector(args.model, device)
    results = {
        "model": str(args.model),
        "date": str(date.today()),
        "command": "python -m evaluation.evaluate " + shlex.join(argv if argv is not None else sys.argv[1:]),
        "calibration_buffers": asdict(detector.model.calibration()),
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
