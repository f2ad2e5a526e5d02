"""Calibrate a trained detector on held-out images: a temperature per view kind, then one operating point.

1. Temperature scaling (Guo et al. 2017): each head's margin is divided by its own temperature T, fitted
   by negative log-likelihood on validation samples of its own view kind (whole views of the validation
   photos and CIFAR images; native crops of the validation photos), made exactly as in training, so a
   0.9 from either head means right about 90% of the time there.
2. Operating points: the views combine (detector/model.py) and an offset shifts the combined log-odds so
   that the clean false-positive rate on validation images is `target_fpr` in each domain: images with
   native crops (validation photos at every size and two JPEG qualities, through the serving path) and
   images too small for crops (CIFAR validation images, and any validation photo variant without crops).
   One offset for both would let the stricter domain silence the other: a first shared offset flagged 1.5%
   of photos and 0% of CIFAR images, and caught no CIFAR blur at all. A logit shift is a change of prior:
   the shipped probabilities are calibrated for a stream in which corrupted images are `operating_prior`
   of the traffic, and the API's label stays "corrupted exactly when P(corrupted) > 0.5".

`python -m training.calibrate --model checkpoints/model.pt` recalibrates a trained checkpoint in place (a new
target rate, new validation photos) with the split its training run used.

Both are fitted within sane bounds (a degenerate short run, perfectly separable or with constant outputs,
would otherwise ask for T -> 0 or T -> infinity) and saved as fp32 buffers of the model.
"""

import argparse
import json
import math
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import torch

from detector.corruptions import to_pil
from detector.model import Calibration, CorruptionNet, load_model, read_checkpoint, save_checkpoint
from detector.preprocessing import Views, image_bytes_to_views, image_to_views
from training.corpus import BuiltPhoto
from training.data import split_cifar
from training.photo_data import (
    CifarSamples,
    CropSamples,
    PhotoSet,
    ViewBatches,
    WholeViewSamples,
    clean_variants,
    load_split,
    photo_group,
)

# Beyond these a temperature means the validation split could not tell anything apart (T -> infinity: every
# answer 0.5) or was separated perfectly (T -> 0: every answer 0 or 1); either way, stop at the bound.
TEMPERATURE_BOUNDS = (0.05, 20.0)
# The operating offset is a prior shift: +-20 logits is a prior of 2e-9 to 1 - 2e-9.
OFFSET_BOUND = 20.0
# Golden-section steps: each shrinks the bracket by 0.618, 80 steps reach float precision.
SEARCH_STEPS = 80
# Validation samples are drawn with their own seed, never a training one.
VALIDATION_SEED = 10**6
# Validation samples per view kind for the temperatures (whole views of photos and of CIFAR images each).
SAMPLES = 960
WHOLE_BATCH = 32


def temperature_nll(margins: torch.Tensor, labels: torch.Tensor, temperature: float) -> float:
    """Mean negative log-likelihood of the labels under sigmoid(margin / temperature)."""
    return float(torch.nn.functional.binary_cross_entropy_with_logits(margins / temperature, labels.double()))


def fit_temperature(margins: torch.Tensor, labels: torch.Tensor) -> float:
    """The T in TEMPERATURE_BOUNDS minimising the NLL of sigmoid(margin / T).

    The NLL is convex in 1/T (a one-parameter logistic regression), so a golden-section search over
    1/T finds the bounded optimum deterministically, without a step size to tune.
    """
    margins, labels = margins.double().cpu(), labels.double().cpu()
    low, high = 1 / TEMPERATURE_BOUNDS[1], 1 / TEMPERATURE_BOUNDS[0]
    ratio = (math.sqrt(5) - 1) / 2
    for _ in range(SEARCH_STEPS):
        left, right = high - ratio * (high - low), low + ratio * (high - low)
        if temperature_nll(margins, labels, 1 / left) <= temperature_nll(margins, labels, 1 / right):
            high = right
        else:
            low = left
    return 1 / ((low + high) / 2)


def operating_offset(clean_margins: torch.Tensor, target_fpr: float) -> float:
    """The logit shift (within +-OFFSET_BOUND) leaving a fraction `target_fpr` of the clean margins above 0."""
    offset = -float(torch.quantile(clean_margins.double(), 1.0 - target_fpr))
    return min(max(offset, -OFFSET_BOUND), OFFSET_BOUND)


@torch.inference_mode()
def head_margins(model: CorruptionNet, head: str, batches: Iterator[tuple[torch.Tensor, torch.Tensor]]) -> tuple:
    """(raw margins on the model's device, labels) of one head over batches of (normalised images, labels)
    made on the CPU: each batch goes to the model's device first (a CUDA run crashed here without it)."""
    device = model.whole_temperature.device
    margins, labels = [], []
    for images, batch_labels in batches:
        margins.append(getattr(model, head)(images.to(device))[0].float())
        labels.append(batch_labels)
    return torch.cat(margins), torch.cat(labels)


def whole_batches(photos: PhotoSet, cifar: torch.Tensor, count: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """`count` validation whole views of photos (batches of one shape each), then `count` of CIFAR images."""
    samples = WholeViewSamples(photos, VALIDATION_SEED)
    for requests in ViewBatches(max(1, count // WHOLE_BATCH), min(count, WHOLE_BATCH), VALIDATION_SEED):
        items = [samples[request] for request in requests]
        yield torch.stack([item[0] for item in items]), torch.tensor([item[1] for item in items])
    yield from sample_batches(CifarSamples(cifar, VALIDATION_SEED), count)


def sample_batches(dataset, count: int, size: int = 64) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    for start in range(0, count, size):
        items = [dataset[index] for index in range(start, min(count, start + size))]
        yield torch.stack([item[0] for item in items]), torch.tensor([item[1] for item in items])


@torch.inference_mode()
def combined_margins(model: CorruptionNet, views: list[Views]) -> torch.Tensor:
    """The combined evidence (temperatures applied, before the offset) of whole images, a few at a time."""
    return torch.cat([model.score_views(views[i : i + 8]).margin for i in range(0, len(views), 8)])


def clean_margins_by_domain(model: CorruptionNet, photo_views: list[Views], cifar_views: list[Views]) -> dict:
    """Combined clean evidence per operating offset: images with native crops, and images too small for them."""
    views = {"photos": [], "small images": cifar_views[:]}
    for image in photo_views:
        views["photos" if len(image.crops) else "small images"].append(image)
    return {name: combined_margins(model, domain) for name, domain in views.items() if domain}


def clean_photo_views(photos: list[BuiltPhoto], folder: str) -> list[Views]:
    """Every validation photo at every evaluation size and JPEG quality, through the serving path (bytes)."""
    return [image_bytes_to_views(data) for photo in photos for data in clean_variants(f"{folder}/{photo.file}")]


def calibrate(
    model: CorruptionNet, photos: list[BuiltPhoto], folder: str, cifar: torch.Tensor, target_fpr: float, samples: int
) -> dict:
    """Fit both temperatures (on `samples` validation samples per view kind) and the operating offset into
    `model`'s buffers; returns what was fitted."""
    photo_set = PhotoSet.load(folder, photos)
    whole_t = fit_temperature(*head_margins(model, "whole", whole_batches(photo_set, cifar, samples)))
    crops = sample_batches(CropSamples(photo_set, VALIDATION_SEED), samples)
    crop_t = fit_temperature(*head_margins(model, "crop", crops))
    model.set_calibration(Calibration(whole_t, crop_t))  # the offsets apply after the margins they are fitted on
    cifar_views = [image_to_views(to_pil(image)) for image in cifar]
    clean = clean_margins_by_domain(model, clean_photo_views(photos, folder), cifar_views)
    offsets = {name: operating_offset(margins, target_fpr) for name, margins in clean.items()}
    for name in ("photos", "small images"):  # a domain without validation images takes the stricter offset
        offsets.setdefault(name, min(offsets.values()))
    fitted = Calibration(whole_t, crop_t, offsets["photos"], offsets["small images"])
    model.set_calibration(fitted)
    return {
        **{name: round(value, 4) for name, value in asdict(fitted).items()},
        "operating_prior": {name: round(1 / (1 + math.exp(-offset)), 4) for name, offset in offsets.items()},
        "target_fpr": target_fpr,
        "validation_clean_fpr": {name: float((m + offsets[name] > 0).float().mean()) for name, m in clean.items()},
        "validation_clean_images": {name: len(m) for name, m in clean.items()},
        # The photos it was calibrated on, by source group: the evaluation holds out every other group.
        "validation_photos": {photo.id: photo_group(photo) for photo in photos},
    }


def calibrate_checkpoint(
    path: Path,
    photos: list[BuiltPhoto],
    folder: str,
    cifar: torch.Tensor,
    target_fpr: float,
    device: torch.device,
    samples: int = SAMPLES,
) -> dict:
    """Calibrate the checkpoint at `path` on validation photos and CIFAR images, and write it back."""
    model = load_model(path, device)
    calibration = calibrate(model, photos, folder, cifar, target_fpr, samples)
    metadata = read_checkpoint(path)["metadata"]
    save_checkpoint(model, path, {**metadata, "calibration": calibration})
    return calibration


def add_calibration_arguments(parser: argparse.ArgumentParser) -> None:
    """The validation data a recalibration needs: the same photos and CIFAR split as the training run."""
    parser.add_argument("--photos", type=Path, default=Path("data/photos"), help="the corpus (make photos)")
    parser.add_argument("--cifar", default="../shared/data/cifar10-subset/train", help="as given to training")
    parser.add_argument("--cifar-val-fraction", type=float, default=0.1, help="as given to training")
    parser.add_argument(
        "--cifar-split-seed",
        type=int,
        default=None,
        help="the CIFAR validation split to calibrate on (default: the one the checkpoint records holding out, else 0)",
    )
    parser.add_argument("--target-fpr", type=float, default=0.015, help="validation clean false-positive rate")
    parser.add_argument("--calibration-samples", type=int, default=SAMPLES, help="per view kind, for temperatures")


def cifar_split_seed(path: Path, args: argparse.Namespace) -> int:
    """The CIFAR split to calibrate on: the one asked for, else the one the checkpoint held out in training, else 0
    (runs from before the checkpoint recorded it held out the split of their --seed; their training.json has it)."""
    if args.cifar_split_seed is not None:
        return args.cifar_split_seed
    return read_checkpoint(path)["metadata"].get("cifar_split_seed", 0)


def recalibrate(path: Path, args: argparse.Namespace) -> dict:
    """Calibrate the checkpoint at `path` in place on the validation data `args` names (on the CPU)."""
    _, cifar_validation = split_cifar(args.cifar, args.cifar_val_fraction, cifar_split_seed(path, args))
    validation = load_split(args.photos, "val")
    cpu = torch.device("cpu")
    return calibrate_checkpoint(
        path, validation, str(args.photos), cifar_validation, args.target_fpr, cpu, args.calibration_samples
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Recalibrate a trained checkpoint in place.")
    parser.add_argument("--model", type=Path, required=True, help="checkpoint written by training.train")
    add_calibration_arguments(parser)
    args = parser.parse_args(argv)
    print(json.dumps(recalibrate(args.model, args)))


if __name__ == "__main__":
    main()
