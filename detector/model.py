"""The classifier, how its views combine, its decision rule, and checkpoints that carry (and check) their contract.

One backbone (detector/backbones.py) reads both kinds of view (detector/preprocessing.py); each kind has
its own head, because each judges different damage:

- the whole-view head judges every family (`TYPES`), from the trunk's features and the view's scene
  statistics (detector/photometry.py: luminance percentiles, clipping, saturation, cast, gradient energy);
- the crop head judges what native pixels show and a downscale hides (`CROP_TYPES`): noise, compression,
  pixelation, and blur and motion, which on a large photo are about a pixel of the whole view. The crops
  sit where the photo has most detail (detector/preprocessing.py), so a soft background is not blur.

How views combine, stated per family and calibrated on held-out photos (training/calibrate.py):
each head's margin (log-odds of "corrupted") is divided by its own temperature; the crops' evidence is
their median, so one odd crop (a patch of grainy shadow, a flat sky) cannot decide; the image is as
corrupted as the stronger of the two, shifted by an operating offset chosen for the target clean
false-positive rate. Because the offset is fitted on the combined evidence, adding the crop view does not
add its false alarms on top of the whole view's. Images with native crops (photos) and images too small for
them (CIFAR-sized) have an offset each: one offset for both would let the stricter domain silence the other.
"""

from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

from detector.backbones import build_backbone
from detector.corruptions import CLEAN, TYPES
from detector.device_path import pixel_chunks
from detector.photometry import STATISTICS, scene_statistics
from detector.preprocessing import Views, input_contract, normalise

LABELS = ("clean", "corrupted")
ARCHITECTURE = "whole-view-with-scene-statistics-and-detail-crops/v2"
# What the crop head judges: damage a downscale averages away.
FINE_TYPES = ("noise", "blur", "motion", "compression", "pixelation")
CROP_TYPES = (CLEAN, *FINE_TYPES)
# An image is called corrupted when its calibrated P(corrupted) is above this: the API's label and every metric.
THRESHOLD = 0.5
DROPOUT = 0.2
# Pixels per forward pass of the trunk, by device: views go through it several at a time (whole views of one size,
# a camera's photos share one; crops), at most this many pixels a pass, so a call's activations stay bounded
# whatever it holds. On a CPU, passes of about 4 whole views or 32 crops keep the activations in cache: the model's
# share of a batch of eight distinct 1024x768 photos, one thread, with detector.allocator's settings, cost 19.7 ms a
# photo at 140,000 pixels a pass, 22.1 at 70,000, 25.7 at 35,000 (one whole view), 23.6 at 300,000 and 23.3 at
# 600,000 (at 320x240: 14.6 ms at 140,000, the best there too).
# A GPU wants every view it can hold: its value is a guess until bench.gpu measures one.
PASS_PIXELS = {"cpu": 140_000, "cuda": 4_000_000}


@dataclass(frozen=True)
class Calibration:
    """How the heads' margins become the API's probabilities (module docstring); the defaults change nothing.

    Each field is a buffer of the model, saved in fp32 whatever the weights' precision. The operating offsets:
    `corrupted_logit_offset` for images with native crops, `small_image_offset` for images too small for them.
    """

    whole_temperature: float = 1.0
    crop_temperature: float = 1.0
    corrupted_logit_offset: float = 0.0
    small_image_offset: float = 0.0


CALIBRATION_BUFFERS = tuple(field.name for field in fields(Calibration))


class Outputs(NamedTuple):
    """What the model says about a batch of images."""

    margin: torch.Tensor  # combined evidence (log-odds) before the operating offset, (N,)
    probabilities: torch.Tensor  # calibrated (clean, corrupted) probabilities, (N, 2)
    types: torch.Tensor  # corruption-type probabilities of the deciding view, one column per TYPES, (N, len(TYPES))
    decided_by_crops: torch.Tensor  # whether the crops' evidence decided, (N,) bool


def is_corrupted(corrupted_probability: torch.Tensor) -> torch.Tensor:
    """The decision rule, written once: corrupted exactly when P(corrupted) > THRESHOLD."""
    return corrupted_probability > THRESHOLD


class CorruptionNet(nn.Module):
    """A backbone with a whole-view head and a crop head, each giving a margin and type logits."""

    def __init__(self, backbone: str) -> None:
        super().__init__()
        self.backbone = backbone
        self.trunk = build_backbone(backbone)
        self.dropout = nn.Dropout(DROPOUT)
        self.whole_head = nn.Linear(self.trunk.num_features + STATISTICS, 1 + len(TYPES))
        self.crop_head = nn.Linear(self.trunk.num_features, 1 + len(CROP_TYPES))
        for name, value in asdict(Calibration()).items():
            self.register_buffer(name, torch.tensor(value))
        self.register_buffer("crop_type_columns", torch.tensor([TYPES.index(name) for name in CROP_TYPES]))

    def calibration(self) -> Calibration:
        """The calibration the model holds."""
        return Calibration(**{name: float(getattr(self, name)) for name in CALIBRATION_BUFFERS})

    def set_calibration(self, calibration: Calibration) -> None:
        """Hold this calibration (training/calibrate.py fits it)."""
        for name, value in asdict(calibration).items():
            getattr(self, name).fill_(value)

    def reset_calibration(self) -> None:
        """Forget the calibration (fine-tuning changes the margins it was fitted to)."""
        self.set_calibration(Calibration())

    def whole(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Uncalibrated (margin, type logits) of normalised whole views of one size."""
        features = torch.cat([self.dropout(self.trunk(images)), scene_statistics(images).to(images.dtype)], dim=1)
        out = self.whole_head(features)
        return out[:, 0], out[:, 1:]

    def crop(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Uncalibrated (margin, crop-type logits) of normalised native crops."""
        out = self.crop_head(self.dropout(self.trunk(images)))
        return out[:, 0], out[:, 1:]

    def calibrated_crop(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(calibrated margin, crop-type logits) of normalised native crops: the margin over the crop temperature."""
        margins, logits = self.crop(images)
        return margins.float() / self.crop_temperature, logits

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """P(corrupted) logit of whole views alone, with the photo offset: what Grad-CAM follows (an offset
        does not move gradients; `score_views` is what the API answers)."""
        return self.whole(images)[0] / self.whole_temperature + self.corrupted_logit_offset

    def outputs(self, images: torch.Tensor) -> Outputs:
        """Outputs for a batch of normalised whole views of one size (images too small for crops)."""
        margin, type_logits = self.whole(images)
        no_crops = torch.zeros(len(margin), dtype=torch.bool, device=margin.device)
        return self.decide(margin / self.whole_temperature, type_logits.float().softmax(dim=1), no_crops, no_crops)

    def offsets(self, has_crops: torch.Tensor) -> torch.Tensor:
        """Each image's operating offset: the photo one where it has native crops, the small-image one elsewhere."""
        return torch.where(has_crops, self.corrupted_logit_offset, self.small_image_offset)

    def decide(
        self, margin: torch.Tensor, types: torch.Tensor, has_crops: torch.Tensor, crops_decided: torch.Tensor
    ) -> Outputs:
        """Outputs from calibrated evidence: the operating offset applied, probabilities as the API reports them."""
        corrupted = torch.sigmoid(margin.float() + self.offsets(has_crops))
        return Outputs(margin.float(), torch.stack([1 - corrupted, corrupted], dim=1), types, crops_decided)

    def crop_evidence(self, crops: torch.Tensor, counts: Sequence[int]) -> tuple[list, list]:
        """Per image: its crops' calibrated margins and their mean type probabilities over TYPES."""
        if not crops.numel():
            return [torch.empty(0)] * len(counts), [torch.zeros(len(TYPES))] * len(counts)
        per_pass = max(1, self.pass_pixels() // (crops.shape[-2] * crops.shape[-1]))
        passes = [self.calibrated_crop(part) for part in normalise(crops).split(per_pass)]
        margins, logits = torch.cat([margin for margin, _ in passes]), torch.cat([logit for _, logit in passes])
        spread = torch.zeros(len(margins), len(TYPES), device=margins.device)
        spread[:, self.crop_type_columns] = logits.float().softmax(dim=1)
        types = [part.mean(dim=0) if len(part) else spread.new_zeros(len(TYPES)) for part in spread.split(counts)]
        return list(margins.split(counts)), types

    def pass_pixels(self) -> int:
        """Pixels per forward pass on the model's device (PASS_PIXELS)."""
        return PASS_PIXELS.get(self.whole_temperature.device.type, PASS_PIXELS["cpu"])

    def head_evidence(self, views: Sequence[Views]) -> tuple[torch.Tensor, torch.Tensor, list, list]:
        """Each head's calibrated evidence before they combine: whole views' margins (N,) and type probabilities
        (N, TYPES), and per image its crops' margins and mean type probabilities (crop_evidence)."""
        device = self.whole_temperature.device
        margins = torch.empty(len(views), device=device)
        types = torch.empty(len(views), len(TYPES), device=device)
        for batch in same_size_batches(views, self.pass_pixels()):
            margin, logits = self.whole(normalise(torch.stack([views[i].whole for i in batch])).to(device))
            margins[batch] = margin.float() / self.whole_temperature
            types[batch] = logits.float().softmax(dim=1)
        crops = torch.cat([image.crops for image in views]).to(device)
        return margins, types, *self.crop_evidence(crops, [len(image.crops) for image in views])

    def score_views(self, views: Sequence[Views]) -> Outputs:
        """Outputs for whole images: every view of every image, combined as the module docstring states."""
        device = self.whole_temperature.device
        margins, types, crop_margins, crop_types = self.head_evidence(views)
        combined, crops_decided = combine_margins(margins, crop_margins)
        chosen = torch.where(crops_decided[:, None], torch.stack(crop_types).to(device), types)
        has_crops = torch.tensor([len(image.crops) > 0 for image in views], device=device)
        return self.decide(combined, chosen, has_crops, crops_decided)


def same_size_batches(views: Sequence[Views], pixels: int) -> Iterator[list[int]]:
    """Indices of images whose whole views share a size, at most `pixels` of them per batch (one at least)."""
    by_size: dict[tuple[int, ...], list[int]] = {}
    for index, image in enumerate(views):
        by_size.setdefault(tuple(image.whole.shape), []).append(index)
    for (_, height, width), indices in by_size.items():
        for chunk in pixel_chunks([height * width] * len(indices), pixels):
            yield [indices[position] for position in chunk]


def crop_medians(crops: Sequence[torch.Tensor]) -> torch.Tensor:
    """Each image's crop evidence: its crops' median calibrated margin, -inf for an image without crops (on the
    margins' device: a GPU batch mixing photos and small images must not stack CUDA and CPU tensors).

    The median, not the maximum: one odd crop (grainy shadow, a flat sky) must not decide, and taking the
    most alarmed of several views multiplies false alarms.
    """
    return torch.stack([m.quantile(0.5) if len(m) else torch.tensor(float("-inf"), device=m.device) for m in crops])


def combine_margins(whole: torch.Tensor, crops: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Each image's evidence: its whole view's calibrated margin, or its crops' median (crop_medians) when that is
    stronger. Images without crops are their whole view. Returns (combined margins, whether the crops decided).
    """
    medians = crop_medians(crops).to(whole)
    decided = medians > whole
    return torch.where(decided, medians, whole), decided


def build_model(backbone: str) -> CorruptionNet:
    """A freshly initialised detector on the named backbone (detector.backbones.BACKBONES)."""
    return CorruptionNet(backbone)


def contract() -> dict[str, Any]:
    """What a checkpoint must agree with the code on: the design, what its outputs mean, what it expects in."""
    return {
        "architecture": ARCHITECTURE,
        "labels": list(LABELS),
        "types": list(TYPES),
        "crop_types": list(CROP_TYPES),
        "calibration_buffers": list(CALIBRATION_BUFFERS),
        "input": input_contract(),
    }


class CheckpointMismatchError(ValueError):
    """A checkpoint written for other labels, types, input or architecture than this code's."""


def save_checkpoint(model: CorruptionNet, path: Path, metadata: dict[str, Any]) -> None:
    """Save fp16 weights (half the size; fp16 rounding does not move the metrics), fp32 calibration, the contract."""
    state = {
        name: tensor.detach().to("cpu", torch.float16 if name not in CALIBRATION_BUFFERS else torch.float32)
        if tensor.is_floating_point()
        else tensor.cpu()
        for name, tensor in model.state_dict().items()
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({**contract(), "backbone": model.backbone, "state_dict": state, "metadata": metadata}, path)


def lineage(metadata: dict[str, Any]) -> list[str]:
    """The sha256 of every checkpoint a model with this metadata was fine-tuned from, nearest first
    (training.train records `init_sha256` and its `ancestors`)."""
    return [metadata["init_sha256"], *metadata.get("ancestors", [])] if "init_sha256" in metadata else []


def read_checkpoint(path: Path) -> dict[str, Any]:
    """The checkpoint dictionary, refusing one whose contract differs from the code's.

    Reordering the corruption table, renaming a label or changing the views would otherwise
    silently relabel an older model's outputs or feed it inputs it never saw.
    """
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    differences = [
        f"{key}: checkpoint has {checkpoint.get(key)!r}, this code expects {expected!r}"
        for key, expected in contract().items()
        if checkpoint.get(key) != expected
    ]
    if differences:
        raise CheckpointMismatchError(f"{path} does not fit this code; " + "; ".join(differences))
    return checkpoint


def load_model(path: Path, device: torch.device | str = "cpu") -> CorruptionNet:
    """Load a checkpoint written by `save_checkpoint` as an fp32 model in eval mode."""
    checkpoint = read_checkpoint(path)
    model = build_model(checkpoint["backbone"])
    model.load_state_dict(
        {
            name: tensor.float() if tensor.is_floating_point() else tensor
            for name, tensor in checkpoint["state_dict"].items()
        }
    )
    return model.to(device).eval()
