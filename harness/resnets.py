"""The deeper ResNets people publish (34, 50), beside harness/models.py's resnet18.

Users bring torchvision ResNet-18/34/50 encoders, with the ImageNet stem (7x7
stride 2, max-pool) or a CIFAR stem (3x3 stride 1, no max-pool), and solo-learn's
CIFAR stem pads its 3x3 convolution by 2, not 1. `ResNet` builds any of them:
basic blocks (ResNet-18/34) or torchvision's bottleneck (ResNet-50, stride on the
3x3 convolution, four times as many output channels), at any width. It is an
`Encoder`: same stage taps, same pooled feature, same tensor names (a block's
projection is `shortcut`), so every defense runs on it unchanged.

Why a module of its own: harness/models.py's source is part of every cached
encoder's key, and the harness's resnet18 must keep computing what it computed
(tests/test_models.py checks it bit for bit). A configuration that resnet18's
`Encoder` can build (basic blocks, stem padding 1) is built by it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from harness.models import CHANNELS_LAST_MIN_WIDTH, STAGES, ArchConfig, BasicBlock, Encoder
from harness.registry import ARCHS

BLOCKS = ("basic", "bottleneck")


@dataclass(frozen=True)
class ResNetConfig(ArchConfig):
    block: str = "basic"  # "basic" (ResNet-18/34) or "bottleneck" (ResNet-50 and deeper)
    stem_padding: int = 1  # padding of the CIFAR stem's 3x3 convolution (solo-learn uses 2); the ImageNet stem pads 3

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.block not in BLOCKS:
            raise ValueError(f"block must be one of {BLOCKS}, got {self.block!r}")
        if self.stem_padding < 0 or (self.stem == "imagenet" and self.stem_padding != 1):
            raise ValueError(f"stem_padding applies to the CIFAR stem and must be >= 0, got {self.stem_padding} ({self.stem} stem)")

    @property
    def depth(self) -> int:
        """The number in the name: ResNet-18, -34, -50."""
        return 2 + sum(self.blocks) * (2 if self.block == "basic" else 3)

    def describe(self) -> str:
        stem = "ImageNet stem (7x7, max-pool)" if self.stem == "imagenet" else f"CIFAR stem (3x3, padding {self.stem_padding})"
        return f"resnet{self.depth} ({self.block} blocks {'-'.join(map(str, self.blocks))}, width {self.width}, {stem})"


class Bottleneck(nn.Module):
    """torchvision's bottleneck (ResNet v1.5): 1x1 -> 3x3 (stride) -> 1x1 to 4x the channels, plus the shortcut."""

    expansion = 4

    def __init__(self, c_in: int, planes: int, stride: int) -> None:
        super().__init__()
        c_out = planes * self.expansion
        self.conv1 = nn.Conv2d(c_in, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, c_out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + self.shortcut(x))


class ResNet(Encoder):
    """A ResNet of basic or bottleneck blocks; `feature_dim` = 8 * width (basic) or 32 * width (bottleneck)."""

    def __init__(self, config: ResNetConfig) -> None:
        nn.Module.__init__(self)  # Encoder's constructor builds basic blocks with a padding-1 stem only
        self.config = config
        w = config.width
        if config.stem == "cifar":
            conv = nn.Conv2d(3, w, 3, 1, config.stem_padding, bias=False)
            self.stem = nn.Sequential(conv, nn.BatchNorm2d(w), nn.ReLU(inplace=True))
        else:
            self.stem = nn.Sequential(
                nn.Conv2d(3, w, 7, 2, 3, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1)
            )
        c_in = w
        for i, (name, n) in enumerate(zip(STAGES, config.blocks)):
            planes = w * 2**i
            stride = 1 if i == 0 else 2
            blocks: list[nn.Module] = []
            for j in range(n):
                if config.block == "basic":
                    blocks.append(BasicBlock(c_in, planes, stride if j == 0 else 1))
                    c_in = planes
                else:
                    blocks.append(Bottleneck(c_in, planes, stride if j == 0 else 1))
                    c_in = planes * Bottleneck.expansion
            setattr(self, name, nn.Sequential(*blocks))
        self.feature_dim = c_in
        self.channels_last = w >= CHANNELS_LAST_MIN_WIDTH
        if self.channels_last:
            self.to(memory_format=torch.channels_last)


def build_resnet(config: ArchConfig) -> Encoder:
    """The encoder of `config`: resnet18's own `Encoder` when it can build it, else a `ResNet`."""
    if isinstance(config, ResNetConfig) and (config.block != "basic" or config.stem_padding != 1):
        return ResNet(config)
    if isinstance(config, ResNetConfig):
        config = ArchConfig(width=config.width, blocks=config.blocks, stem=config.stem)
    return Encoder(config)


@dataclass(frozen=True)
class ResNet34Config(ResNetConfig):
    blocks: tuple[int, int, int, int] = (3, 4, 6, 3)


@dataclass(frozen=True)
class ResNet34ImageNetConfig(ResNet34Config):
    stem: str = "imagenet"


@dataclass(frozen=True)
class ResNet50Config(ResNetConfig):
    blocks: tuple[int, int, int, int] = (3, 4, 6, 3)
    block: str = "bottleneck"


@dataclass(frozen=True)
class ResNet50ImageNetConfig(ResNet50Config):
    stem: str = "imagenet"


@ARCHS.register("resnet", config=ResNetConfig)
def resnet(config: ResNetConfig) -> Encoder:
    """Any ResNetConfig: the name files of the deeper ResNets are saved under."""
    return build_resnet(config)


@ARCHS.register("resnet34", config=ResNet34Config)
def resnet34(config: ResNetConfig) -> Encoder:
    return build_resnet(config)


@ARCHS.register("resnet34_imagenet", config=ResNet34ImageNetConfig)
def resnet34_imagenet(config: ResNetConfig) -> Encoder:
    return build_resnet(config)


@ARCHS.register("resnet50", config=ResNet50Config)
def resnet50(config: ResNetConfig) -> Encoder:
    return build_resnet(config)


@ARCHS.register("resnet50_imagenet", config=ResNet50ImageNetConfig)
def resnet50_imagenet(config: ResNetConfig) -> Encoder:
    return build_resnet(config)
