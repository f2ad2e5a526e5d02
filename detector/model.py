"""The classifier, its decision rule, and checkpoints that carry (and check) their contract.

The network is torchvision's ResNet18 with a stem chosen for 32x32 inputs.
ImageNet's stem (7x7 stride-2 conv + max-pool) shrinks a 32x32 image to 8x8
before the first residual block, throwing away exactly the pixel-level detail
(noise grain, JPEG blocks, lost sharpness) this detector has to see. The
CIFAR-style stem (3x3 stride 1, no max-pool) keeps it but costs about six
times more compute on a CPU (measured: 38 vs 226 training images/s on 2 cores).
We use a 3x3 stride-2 conv without max-pool: every input pixel still enters
the first convolution through overlapping 3x3 windows, layer1 runs at 16x16,
and serving stays cheap.
"""

from pathlib import Path
from typing import Any, NamedTuple

import torch
import torchvision
from torch import nn

from detector.corruptions import TYPES
from detector.preprocessing import INPUT_SIZE, MEAN, STD

LABELS = ("clean", "corrupted")
ARCHITECTURE = "resnet18-stem3x3s2-typehead"
FEATURES = 512  # ResNet18's pooled feature width
# An image is called corrupted when its calibrated P(corrupted) is above this: the API's label and every metric.
THRESHOLD = 0.5
# Buffers that hold the calibration: saved in fp32 whatever the weights' precision.
CALIBRATION_BUFFERS = ("temperature", "corrupted_logit_offset")


class Outputs(NamedTuple):
    """What the model says about a batch: the raw evidence and the shipped probabilities."""

    margin: torch.Tensor  # uncalibrated corrupted-minus-clean logit, (N,)
    probabilities: torch.Tensor  # calibrated (clean, corrupted) probabilities, (N, 2)
    types: torch.Tensor  # corruption-type probabilities, one column per TYPES, (N, len(TYPES))


def is_corrupted(corrupted_probability: torch.Tensor) -> torch.Tensor:
    """The decision rule, written once: corrupted exactly when P(corrupted) > THRESHOLD."""
    return corrupted_probability > THRESHOLD


class CorruptionNet(nn.Module):
    """A shared ResNet18 trunk with two heads: clean vs corrupted, and the corruption type (`TYPES`).

    `forward` returns the calibrated binary logits, so every caller (the API, Grad-CAM,
    benchmarks) gets the shipped probabilities; `heads` gives the raw logits of both
    heads for training. Calibration lives in two buffers saved with the weights: a
    temperature and a logit offset for "corrupted" (see training/calibrate.py).
    """

    def __init__(self) -> None:
        super().__init__()
        self.trunk = torchvision.models.resnet18(weights=None)
        self.trunk.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=2, padding=1, bias=False)
        self.trunk.maxpool = nn.Identity()
        self.trunk.fc = nn.Identity()
        self.binary_head = nn.Linear(FEATURES, len(LABELS))
        self.type_head = nn.Linear(FEATURES, len(TYPES))
        self.register_buffer("temperature", torch.ones(()))
        self.register_buffer("corrupted_logit_offset", torch.zeros(()))

    def heads(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Uncalibrated (binary, type) logits."""
        features = self.trunk(images)
        return self.binary_head(features), self.type_head(features)

    def calibrate(self, binary_logits: torch.Tensor) -> torch.Tensor:
        """Temperature-scale binary logits and shift the "corrupted" one by the operating offset."""
        offset = torch.stack([torch.zeros_like(self.corrupted_logit_offset), self.corrupted_logit_offset])
        return binary_logits / self.temperature + offset

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.calibrate(self.heads(images)[0])

    def outputs(self, images: torch.Tensor) -> Outputs:
        """Raw margin, calibrated binary probabilities and type probabilities, in one pass."""
        binary, types = self.heads(images)
        return Outputs(
            margin=(binary[:, 1] - binary[:, 0]).float(),
            probabilities=self.calibrate(binary).float().softmax(dim=1),
            types=types.float().softmax(dim=1),
        )


def build_model() -> CorruptionNet:
    """A freshly initialised detector (ResNet18 trunk with the 32x32 stem described above)."""
    return CorruptionNet()


def contract() -> dict[str, Any]:
    """What a checkpoint must agree with the code on: the network, what its outputs mean, what it expects in."""
    return {
        "architecture": ARCHITECTURE,
        "labels": list(LABELS),
        "types": list(TYPES),
        "input": {"size": INPUT_SIZE, "mean": list(MEAN), "std": list(STD)},
    }


class CheckpointMismatchError(ValueError):
    """A checkpoint written for other labels, types, input or architecture than this code's."""


def save_checkpoint(model: nn.Module, path: Path, metadata: dict[str, Any]) -> None:
    """Save fp16 weights (half the size; fp16 rounding does not move the metrics), fp32 calibration, the contract."""
    state = {
        name: tensor.detach().to("cpu", torch.float16 if name not in CALIBRATION_BUFFERS else torch.float32)
        if tensor.is_floating_point()
        else tensor.cpu()
        for name, tensor in model.state_dict().items()
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({**contract(), "state_dict": state, "metadata": metadata}, path)


def read_checkpoint(path: Path) -> dict[str, Any]:
    """The checkpoint dictionary, refusing one whose contract differs from the code's.

    Reordering the corruption table, renaming a label or changing the input size would
    otherwise silently relabel an older model's outputs.
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
    model = build_model()
    model.load_state_dict(
        {
            name: tensor.float() if tensor.is_floating_point() else tensor
            for name, tensor in checkpoint["state_dict"].items()
        }
    )
    return model.to(device).eval()
