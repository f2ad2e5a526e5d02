"""Detection quality: scores, metrics and the robustness report.

python -m evaluation.evaluate --model weights/model.pt --data ../shared/data/cifar10-subset/test

scores every test image clean and under every training kind x severity, under the
held-out CIFAR-10-C kinds (evaluation/heldout.py), and real photographs at native
resolution through the serving path (evaluation/photos.py); fits the heuristic
baseline (evaluation/baseline.py) on training images; and writes reports/robustness.md
with its figures and reports/robustness.json (evaluation/report.py).
"""

import argparse
import io
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from detector.corruptions import CAMERA_JPEG_QUALITY, KINDS, TYPES, corrupt
from detector.decoding import decode_image
from detector.inference import CorruptionDetector
from evaluation.baseline import HeuristicBaseline
from evaluation.grid import CorruptionGrid, Materialised
from evaluation.heldout import HELDOUT, HELDOUT_KINDS
from evaluation.metrics import Scores, calibration, score, summarise, type_confusion
from evaluation.photos import Photo, jpeg_quality, load_photos
from evaluation.report import write_report
from training.data import SUBSET, CorruptionDataset, load_clean_images


def baseline_scores(baseline: HeuristicBaseline, grid: Materialised) -> Scores:
    """The heuristic baseline's scores on a grid, shaped like the CNN's (its margin is the log-odds)."""
    probability = torch.from_numpy(baseline.corrupted_probability(grid.images)).float()
    margin = torch.logit(probability.clamp(1e-6, 1 - 1e-6))
    no_types = torch.zeros(len(probability), len(TYPES))
    return Scores(probability, margin, no_types, grid.label, grid.kind, grid.severity)


def spread(images: torch.Tensor, count: int) -> torch.Tensor:
    """`count` images evenly spaced through `images` (folders load class by class: the first N are few classes)."""
    return images[torch.linspace(0, len(images) - 1, min(count, len(images))).long()]


def fit_baseline(train_images: torch.Tensor, seed: int) -> HeuristicBaseline:
    """Fit the baseline on the same kind of data the CNN trains on: each image clean and corrupted once."""
    dataset = CorruptionDataset(train_images, seed=seed, augment=True)
    samples = [dataset.sample(i) for i in tqdm(range(len(dataset)), desc="baseline data", unit="img", leave=False)]
    images = torch.stack([image for image, *_ in samples])
    labels = np.array([label for _, label, *_ in samples])
    return HeuristicBaseline().fit(images, labels)


# Real photographs: each at native resolution, clean as published, re-saved at the lowest camera JPEG quality
# (clean), and under each training family at a strength that is plainly visible on the whole photo.
PHOTO_SEVERITY = 3
CAMERA_QUALITY = CAMERA_JPEG_QUALITY[0]


def encode_png(image: torch.Tensor) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image.permute(1, 2, 0).numpy()).save(buffer, format="PNG")
    return buffer.getvalue()


def encode_jpeg(image: torch.Tensor, quality: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image.permute(1, 2, 0).numpy()).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def photo_variant(image: torch.Tensor, kind: str, seed: int) -> bytes:
    """One corrupted photo at native resolution (spatial parameters scale with its size), as lossless PNG."""
    return encode_png(corrupt(image, kind, PHOTO_SEVERITY, seed))


def photo_cases(photos: list[Photo]) -> list[dict]:
    """Every photo as published, re-encoded at camera quality, and under each training kind."""
    cases = []
    for index, photo in enumerate(photos):
        image = torch.from_numpy(np.array(decode_image(photo.data))).permute(2, 0, 1).contiguous()
        about = {"photo": photo.name, "size": f"{image.shape[2]}x{image.shape[1]}"}
        cases.append({**about, "variant": "original", "label": 0, "data": photo.data,
                      "jpeg_quality": jpeg_quality(photo.data)})  # fmt: skip
        cases.append({**about, "variant": f"jpeg q{CAMERA_QUALITY}", "label": 0,
                      "data": encode_jpeg(image, CAMERA_QUALITY)})  # fmt: skip
        for kind in KINDS:
            cases.append({**about, "variant": kind, "label": 1, "data": photo_variant(image, kind, seed=index)})
    return cases


def evaluate_photos(detector: CorruptionDetector, photos: list[Photo]) -> list[dict]:
    """Score every photo case through the serving path (bytes -> views -> model), one request at a time."""
    results = []
    for case in tqdm(photo_cases(photos), desc="photos", unit="img", leave=False):
        started = time.perf_counter()
        answer = detector.predict([case.pop("data")])[0]
        seconds = time.perf_counter() - started
        predicted = int(answer["label"] == "corrupted")
        results.append(
            {
                **case,
                "corrupted_probability": answer["probs"]["corrupted"],
                "correct": predicted == case["label"],
                "seconds": seconds,
            }
        )
    return results


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="checkpoint written by training.train")
    parser.add_argument("--data", required=True, help="test images: a folder (recursive) or 'cifar10' (test split)")
    parser.add_argument("--train-data", default=str(SUBSET / "train"), help="images the baseline is fitted on")
    parser.add_argument("--baseline-images", type=int, default=2000, help="training images for the baseline")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N test images")
    parser.add_argument("--seed", type=int, default=0, help="seed of the corruptions")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--no-photos", action="store_true", help="skip the real photographs")
    parser.add_argument("--reports", type=Path, default=Path("reports"), help="where robustness.md and figures go")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    detector = CorruptionDetector(args.model, device)  # its model scores the grids; the photos go through it whole
    model = detector.model
    images = load_clean_images(args.data, limit=args.limit, train=False)
    grids = {
        "training": Materialised(CorruptionGrid(images, seed=args.seed)),
        "heldout": Materialised(CorruptionGrid(images, seed=args.seed, table=HELDOUT)),
    }
    scores = {name: score(model, grid, device, args.batch_size) for name, grid in grids.items()}
    baseline = fit_baseline(spread(load_clean_images(args.train_data), args.baseline_images), args.seed)
    baseline_by_grid = {name: baseline_scores(baseline, grid) for name, grid in grids.items()}
    names = {"training": KINDS, "heldout": HELDOUT_KINDS}
    results = {
        "model": str(args.model),
        "data": args.data,
        "images": len(images),
        "seed": args.seed,
        "calibration_buffers": {
            "temperature": float(model.temperature),
            "corrupted_logit_offset": float(model.corrupted_logit_offset),
        },
        "training_kinds": summarise(scores["training"]),
        "heldout_kinds": summarise(scores["heldout"], HELDOUT_KINDS),
        "baseline": {name: summarise(baseline_by_grid[name], names[name]) for name in grids},
        "type_confusion": type_confusion(scores["training"]),
        "calibration": calibration(
            scores["training"], float(model.temperature), float(torch.sigmoid(model.corrupted_logit_offset))
        ),
        "photos": [] if args.no_photos else evaluate_photos(detector, load_photos()),
    }
    write_report(results, args.reports)


if __name__ == "__main__":
    main()
