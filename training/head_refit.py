"""Refit a checkpoint's linear heads on its own frozen trunk (a linear probe after a weight soup), then calibrate
it as training calibrates a run.

Why: a uniform soup (training.soup) averages the trunks of its runs and, separately, their heads. Each run's
head was fitted to that run's trunk, so the averaged head reads features the averaged trunk does not quite
make. With the trunk frozen the heads' problem is convex (logistic margin plus softmax types): refitting them on
fresh samples of the same training data aligns them with the soup's features at about half an hour's cost here
(the trunk's forward pass over the samples), where a run of the trunk costs two hours or more on this machine.
Refitting v6's heads ranked exposure and colour higher but the held-out photos as a whole no higher (MODEL_CARD,
Ablations, stop 39).

    python -m training.head_refit --model weights/model.pt --out checkpoints/refit/model.pt \
        --extra-cifar data/cifar10-jpeg-q75/train

The samples are the training streams' own (training.photo_data, corrupted at --min-severity and above), drawn
with a seed of their own; the heads see the trunk's features as serving makes them (eval mode) and, as in
training, through dropout. The whole-view head learns from photos and CIFAR images in training's proportion
(two photo batches to one CIFAR batch, per sample), the crop head from native crops.
"""

import argparse
import json
import math
import time
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader

from detector.model import DROPOUT, CorruptionNet, load_model, read_checkpoint, save_checkpoint
from detector.photometry import scene_statistics
from training.calibrate import add_calibration_arguments, cifar_split_seed, recalibrate
from training.corpus import sha256
from training.photo_data import CifarSamples, CropSamples, PhotoSet, ViewBatches, WholeViewSamples, load_split
from training.train import CYCLE, cifar_images, read_training_log, write_training_log

# Each head's sample streams, weighted as training's cycle weighs them (training.train.CYCLE: two photo batches to one
# CIFAR batch for the whole-view head).
WHOLE_STREAMS = ("whole", "cifar")
HEAD_STREAMS = {
    "whole": {stream: CYCLE.count(stream) / sum(map(CYCLE.count, WHOLE_STREAMS)) for stream in WHOLE_STREAMS},
    "crop": {"crop": 1.0},
}
FIT_BATCH = 512


class Features:
    """What a head reads for a set of samples, with their labels: (N, inputs) fp16 features, labels, type indices."""

    def __init__(self, inputs: torch.Tensor, labels: torch.Tensor, types: torch.Tensor) -> None:
        self.inputs, self.labels, self.types = inputs, labels, types

    @classmethod
    def concat(cls, parts: list["Features"]) -> "Features":
        return cls(*(torch.cat([getattr(part, name) for part in parts]) for name in ("inputs", "labels", "types")))


@torch.inference_mode()
def head_inputs(model: CorruptionNet, head: str, images: torch.Tensor) -> torch.Tensor:
    """What `head` reads before its dropout: the trunk's pooled features (and the whole view's scene statistics)."""
    features = model.trunk(images)
    if head == "whole":
        features = torch.cat([features, scene_statistics(images).to(features.dtype)], dim=1)
    return features.half()


def extract(model: CorruptionNet, head: str, loader: Iterator, count: int) -> Features:
    """Features of the first `count` samples `loader` yields (batches of (images, labels, kinds, types))."""
    parts, seen, started = [], 0, time.monotonic()
    for images, labels, _, types in loader:
        parts.append(Features(head_inputs(model, head, images), labels, types))
        seen += len(labels)
        if seen >= count:
            break
    print(f"{head}: {seen} samples in {(time.monotonic() - started) / 60:.1f} min", flush=True)
    return Features.concat(parts)


def sample_loaders(args: argparse.Namespace, photos: PhotoSet, cifar: torch.Tensor) -> dict[str, DataLoader]:
    """The three training streams, drawn with `args.seed` (one DataLoader worker each: samples are the bound)."""
    options = {"num_workers": args.workers}
    whole_batches = ViewBatches(math.ceil(args.samples / args.batch_size), args.batch_size, args.seed)
    return {
        "whole": DataLoader(
            WholeViewSamples(photos, args.seed, args.min_severity), batch_sampler=whole_batches, **options
        ),
        "crop": DataLoader(CropSamples(photos, args.seed, args.min_severity), batch_size=64, **options),
        "cifar": DataLoader(CifarSamples(cifar, args.seed, args.min_severity), batch_size=64, **options),
    }


def fit_head(
    head: nn.Linear, streams: list[tuple[Features, float]], trunk_width: int, args: argparse.Namespace
) -> list[float]:
    """Fit `head` (margin, then type logits) to weighted streams of features by training's loss
    (training.train.Trainer), the trunk's features through training's dropout, with AdamW on a cosine; returns
    each epoch's mean loss."""
    generator = torch.Generator().manual_seed(args.seed)
    optimizer = torch.optim.AdamW(head.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    dropout = nn.Dropout(DROPOUT)
    steps = math.ceil(max(len(features.labels) for features, _ in streams) / FIT_BATCH)
    history = []
    for epoch in range(args.epochs):
        orders = [torch.randperm(len(features.labels), generator=generator) for features, _ in streams]
        total = 0.0
        for step in range(steps):
            progress = (epoch * steps + step) / (args.epochs * steps)
            for group in optimizer.param_groups:
                group["lr"] = args.lr * 0.5 * (1 + math.cos(math.pi * progress))
            loss = sum(
                weight * batch_loss(head, dropout, features, batch(order, step), trunk_width, args.type_loss_weight)
                for (features, weight), order in zip(streams, orders, strict=True)
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item()
        history.append(round(total / steps, 5))
        print(f"epoch {epoch + 1}: loss {history[-1]:.4f}", flush=True)
    return history


def batch(order: torch.Tensor, step: int) -> torch.Tensor:
    """The `step`th batch of a shuffled stream, wrapping round a stream shorter than the longest."""
    return order[torch.arange(step * FIT_BATCH, (step + 1) * FIT_BATCH) % len(order)]


def batch_loss(
    head: nn.Linear, dropout: nn.Dropout, features: Features, pick: torch.Tensor, trunk_width: int, type_weight: float
) -> torch.Tensor:
    """Training's loss on the picked samples: margin BCE plus `type_weight` x type cross-entropy."""
    inputs = features.inputs[pick].float()
    out = head(torch.cat([dropout(inputs[:, :trunk_width]), inputs[:, trunk_width:]], dim=1))
    loss = nn.functional.binary_cross_entropy_with_logits(out[:, 0], features.labels[pick].float())
    return loss + type_weight * nn.functional.cross_entropy(out[:, 1:], features.types[pick])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="the checkpoint whose heads are refitted")
    parser.add_argument("--out", type=Path, required=True, help="where the refitted model.pt goes")
    parser.add_argument("--extra-cifar", nargs="*", default=[], help="as given to training")
    parser.add_argument("--download-root", type=Path, default=Path("data"), help="as given to training")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N CIFAR images (tests)")
    parser.add_argument(
        "--heads", nargs="+", choices=tuple(HEAD_STREAMS), default=list(HEAD_STREAMS), help="the heads refitted"
    )
    parser.add_argument("--samples", type=int, default=36_000, help="photo whole views, crops and CIFAR images each")
    parser.add_argument("--min-severity", type=float, default=3.0, help="as training.train's")
    parser.add_argument("--seed", type=int, default=21, help="the samples' draws (not a seed the trunk trained on)")
    parser.add_argument("--batch-size", type=int, default=24, help="whole views per sampled batch (one shape each)")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--weight-decay", type=float, default=0.02)
    parser.add_argument("--type-loss-weight", type=float, default=0.3, help="as training.train's")
    parser.add_argument("--workers", type=int, default=1, help="DataLoader workers per stream")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    add_calibration_arguments(parser)
    args = parser.parse_args(argv)
    args.cifar_split_seed = cifar_split_seed(args.model, args)  # resolved once: trained apart from, calibrated on
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)  # dropout's draws
    model = load_model(args.model)
    photos = PhotoSet.load(str(args.photos), load_split(args.photos, "train"))
    loaders = sample_loaders(args, photos, cifar_images(args)[0])  # training's CIFAR images: no copy of validation's
    losses = {}
    for head in args.heads:
        streams = [
            (extract(model, head, iter(loaders[name]), args.samples), w) for name, w in HEAD_STREAMS[head].items()
        ]
        losses[head] = fit_head(getattr(model, f"{head}_head"), streams, model.trunk.num_features, args)
    model.reset_calibration()
    metadata = read_checkpoint(args.model)["metadata"]
    refit = {"of_sha256": sha256(args.model.read_bytes()), "arguments": {k: str(v) for k, v in vars(args).items()}}
    save_checkpoint(model, args.out, {**metadata, "head_refit": refit})
    calibration = recalibrate(args.out, args)
    summary = {
        "head_refit": refit,
        "losses": losses,
        "calibration": calibration,
        "refit_of": read_training_log(args.model),
    }
    write_training_log(args.out, summary)
    print(f"saved {args.out}; calibration {json.dumps(calibration)}")


if __name__ == "__main__":
    main()
