"""The classifier: torchvision's ResNet18 with a stem chosen for 32x32 inputs.

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
from typing import Any

import torch
import torchvision
from torch import nn

LABELS = ("clean", "corrupted")
ARCHITECTURE = "resnet18-stem3x3s2"


def build_model() -> nn.Module:
    """ResNet18 with the 32x32 stem described above and two logits (clean, corrupted)."""
    model = torchvision.models.resnet18(weights=None, num_classes=len(LABELS))
    model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=2, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model


def save_checkpoint(model: nn.Module, path: Path, metadata: dict[str, Any]) -> None:
    """Save fp16 weights (half the size; fp16 rounding does not move the metrics) plus metadata."""
    state = {
        name: tensor.detach().to("cpu", torch.float16) if tensor.is_floating_point() else tensor.cpu()
        for name, tensor in model.state_dict().items()
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"architecture": ARCHITECTURE, "labels": list(LABELS), "state_dict": state, "metadata": metadata}, path)


def load_model(path: Path, device: torch.device | str = "cpu") -> nn.Module:
    """Load a checkpoint written by `save_checkpoint` as an fp32 model in eval mode."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    if checkpoint.get("architecture") != ARCHITECTURE:
        raise ValueError(f"{path} holds {checkpoint.get('architecture')!r}, expected {ARCHITECTURE!r}")
    model = build_model()
    model.load_state_dict(
        {
            name: tensor.float() if tensor.is_floating_point() else tensor
            for name, tensor in checkpoint["state_dict"].items()
        }
    )
    return model.to(device).eval()
