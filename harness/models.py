"""Encoders with stage taps, and the SimCLR projector.

The encoder is the CIFAR variant of ResNet-18 used by SimCLR, BadEncoder and MIMIC
(3x3 stride-1 stem, no max-pool, no classifier) with a width multiplier, so the
tiny CPU profile runs the same architecture as the paper at a fraction of the cost.
Input: float images in [0, 1], shape (N, 3, H, W). Output: the pooled feature
(N, 8 * width); `forward_stages` also returns the four stage maps that MIMIC,
NAD and MEDIC read. `resnet18_imagenet` is torchvision's layout (7x7 stride-2
stem and max-pool), for encoders users bring (harness/external.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from harness.registry import ARCHS

STAGES: tuple[str, ...] = ("layer1", "layer2", "layer3", "layer4")
# Channels-last (NHWC) convolutions train ~1.6x faster on two CPU cores. PyTorch 2.14's CPU backward
# aborts ("double free or corruption") in channels-last when a stage has fewer than 16 channels,
# so narrower encoders keep the default layout.
CHANNELS_LAST_MIN_WIDTH = 16


@dataclass(frozen=True)
class ArchConfig:
    width: int = 64  # channels of the first stage; stages have width * (1, 2, 4, 8)
    blocks: tuple[int, int, int, int] = (2, 2, 2, 2)
    stem: str = "cifar"  # "cifar": 3x3 stride 1, no max-pool; "imagenet": torchvision's 7x7 stride 2 and max-pool

    def __post_init__(self) -> None:
        if self.stem not in ("cifar", "imagenet"):
            raise ValueError(f"stem must be 'cifar' or 'imagenet', got {self.stem!r}")


@dataclass(frozen=True)
class ImageNetStemConfig(ArchConfig):
    stem: str = "imagenet"


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class Encoder(nn.Module):
    """CIFAR-style ResNet; `feature_dim` = 8 * width."""

    def __init__(self, config: ArchConfig) -> None:
        super().__init__()
        self.config = config
        w = config.width
        if config.stem == "cifar":
            self.stem = nn.Sequential(nn.Conv2d(3, w, 3, 1, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True))
        else:
            self.stem = nn.Sequential(
                nn.Conv2d(3, w, 7, 2, 3, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1)
            )
        widths = (w, 2 * w, 4 * w, 8 * w)
        c_in = w
        for i, (name, c_out, n) in enumerate(zip(STAGES, widths, config.blocks)):
            stride = 1 if i == 0 else 2
            blocks = [BasicBlock(c_in if j == 0 else c_out, c_out, stride if j == 0 else 1) for j in range(n)]
            setattr(self, name, nn.Sequential(*blocks))
            c_in = c_out
        self.feature_dim = widths[-1]
        self.channels_last = w >= CHANNELS_LAST_MIN_WIDTH
        if self.channels_last:
            self.to(memory_format=torch.channels_last)

    def forward_stages(self, x: Tensor) -> tuple[dict[str, Tensor], Tensor]:
        """Stage maps {layer1..layer4: (N, C_l, H_l, W_l)} and the pooled feature (N, D)."""
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        out = self.stem(x)
        stages: dict[str, Tensor] = {}
        for name in STAGES:
            out = getattr(self, name)(out)
            stages[name] = out
        return stages, torch.flatten(F.adaptive_avg_pool2d(out, 1), 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_stages(x)[1]


class Projector(nn.Module):
    """SimCLR head: D -> D (BN, ReLU) -> out_dim."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_dim, in_dim, bias=False), nn.BatchNorm1d(in_dim), nn.ReLU(inplace=True), nn.Linear(in_dim, out_dim)
        )

    def forward(self, h: Tensor) -> Tensor:
        return self.net(h)


@ARCHS.register("resnet18", config=ArchConfig)
def resnet18(config: ArchConfig) -> Encoder:
    return Encoder(config)


@ARCHS.register("resnet18_imagenet", config=ImageNetStemConfig)
def resnet18_imagenet(config: ArchConfig) -> Encoder:
    """torchvision's ResNet-18 layout (7x7 stem, max-pool) without its classifier: for users' own encoders."""
    return Encoder(config)


def build_encoder(arch: str, width: int) -> Encoder:
    """A freshly initialised encoder of a registered architecture."""
    return ARCHS.create(arch, width=width)()


def clone_architecture(encoder: Encoder) -> Encoder:
    """A new, randomly initialised encoder of the same architecture (for distillation students)."""
    return type(encoder)(encoder.config).to(next(encoder.parameters()).device)
