"""Detection metrics for a model on clean images and their corrupted copies.

`python -m training.evaluate --model weights/corruption_resnet18.pt --data ../shared/data/cifar10-subset/test`
scores every image clean and under every kind x severity and prints the table
used in MODEL_CARD.md (and writes it as JSON with --out).
"""

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from training.corruptions import KINDS, SEVERITIES
from training.data import KIND_NAMES, CorruptionGrid, load_clean_images
from training.model import load_model

# A sample is called corrupted when P(corrupted) > THRESHOLD, as the API's label does.
THRESHOLD = 0.5


@dataclass
class Scores:
    """Per-sample corrupted probability with the sample's ground truth."""

    corrupted_probability: torch.Tensor
    label: torch.Tensor
    kind: torch.Tensor
    severity: torch.Tensor


@torch.inference_mode()
def score(
    model: nn.Module,
    dataset: Dataset,
    device: torch.device,
    batch_size: int = 256,
    workers: int = 0,
    progress: bool = True,
) -> Scores:
    """Run the model over a dataset of (image, label, kind, severity) items."""
    model.eval()
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers)
    parts: list[tuple[torch.Tensor, ...]] = []
    for images, labels, kinds, severities in tqdm(
        loader, desc="scoring", unit="batch", disable=not progress, leave=False
    ):
        logits = model(images.to(device, non_blocking=True))
        parts.append((logits.float().softmax(dim=1)[:, 1].cpu(), labels, kinds, severities))
    return Scores(*(torch.cat(column) for column in zip(*parts, strict=True)))


def _rate(mask: torch.Tensor, flagged: torch.Tensor) -> float:
    return float(flagged[mask].float().mean()) if mask.any() else float("nan")


def summarise(scores: Scores, threshold: float = THRESHOLD) -> dict:
    """Accuracy, clean false-positive rate and detection rate per kind and per kind x severity."""
    flagged = scores.corrupted_probability > threshold
    clean = scores.kind == 0
    detection = {KIND_NAMES[k]: _rate(scores.kind == k, flagged) for k in range(1, len(KIND_NAMES))}
    by_severity = {
        KIND_NAMES[k]: {str(s): _rate((scores.kind == k) & (scores.severity == s), flagged) for s in SEVERITIES}
        for k in range(1, len(KIND_NAMES))
    }
    false_positive_rate = _rate(clean, flagged)
    mean_detection = sum(detection.values()) / len(detection)
    return {
        "samples": len(flagged),
        "accuracy": float((flagged == scores.label.bool()).float().mean()),
        "balanced_accuracy": (1 - false_positive_rate + mean_detection) / 2,
        "clean_false_positive_rate": false_positive_rate,
        "detection_rate": detection,
        "detection_rate_by_severity": by_severity,
    }


def markdown_table(metrics: dict) -> str:
    """Detection rate per kind x severity, plus the clean false-positive rate."""
    lines = [
        "| kind | " + " | ".join(f"sev {s}" for s in SEVERITIES) + " | all |",
        "|---" * (len(SEVERITIES) + 2) + "|",
    ]
    for kind in KINDS:
        cells = [f"{metrics['detection_rate_by_severity'][kind][str(s)]:.1%}" for s in SEVERITIES]
        lines.append(f"| {kind} | " + " | ".join(cells) + f" | {metrics['detection_rate'][kind]:.1%} |")
    lines.append("")
    lines.append(
        f"Clean images flagged as corrupted (false-positive rate): "
        f"{metrics['clean_false_positive_rate']:.1%}; accuracy over all samples: {metrics['accuracy']:.1%}; "
        f"balanced accuracy: {metrics['balanced_accuracy']:.1%} ({metrics['samples']} samples)."
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="checkpoint written by training.train")
    parser.add_argument("--data", required=True, help="folder of clean images (recursive) or 'cifar10' (test split)")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N images")
    parser.add_argument("--seed", type=int, default=0, help="seed of the corruptions")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--out", type=Path, default=None, help="write the metrics as JSON here")
    args = parser.parse_args(argv)

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = load_model(args.model, device)
    images = load_clean_images(args.data, limit=args.limit, train=False)
    metrics = summarise(score(model, CorruptionGrid(images, seed=args.seed), device, args.batch_size))
    metrics.update(model=str(args.model), data=args.data, images=len(images), seed=args.seed)
    print(markdown_table(metrics))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(metrics, indent=2) + "\n")


if __name__ == "__main__":
    main()
