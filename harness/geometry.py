"""Input geometry: the image size and mean/std normalisation an encoder was trained with.

The harness's images are 32x32 in [0, 1] everywhere (data, triggers, augmentations,
defenses), and its own encoders take them as they are. A published encoder
expects its own geometry, e.g. 224x224 ImageNet-normalised for torchvision's
ResNets. `with_geometry` wraps such an encoder in a `GeometryEncoder`, which
resizes (bilinear) and normalises inside `forward_stages`: scan, purify and
evaluate hand the wrapped encoder around, so every image it sees, clean or
stamped with a trigger at 32x32, reaches the weights the way the encoder's
authors fed theirs. The wrapper is an `Encoder` (same stage taps and feature,
its stages delegated), so defenses run on it unchanged and never learn of it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from harness.data import IMAGE_SIZE
from harness.models import STAGES, ArchConfig, Encoder

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MAX_SIZE = 512  # side of the largest input: a file's recorded geometry must not decide what every forward pass allocates


@dataclass(frozen=True)
class InputGeometry:
    size: int = IMAGE_SIZE  # side of the square image the encoder takes
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)  # subtracted per channel from images in [0, 1]
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)  # then divided by

    def __post_init__(self) -> None:
        if not 8 <= self.size <= MAX_SIZE:
            raise ValueError(f"image size must be in [8, {MAX_SIZE}] pixels, got {self.size}")
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ValueError(f"mean and std take 3 values (R, G, B), got {len(self.mean)} and {len(self.std)}")
        if not all(math.isfinite(v) for v in (*self.mean, *self.std)):
            raise ValueError(f"mean and std must be finite, got {self.mean} and {self.std}")
        if not all(s > 0 for s in self.std):
            raise ValueError(f"std must be positive, got {self.std}")

    @classmethod
    def from_dict(cls, recorded: Any) -> "InputGeometry":
        """The geometry `as_dict` wrote, from JSON read from a file: exactly its fields, of their types, else ValueError."""
        if not isinstance(recorded, dict) or set(recorded) != {"size", "mean", "std"}:
            raise ValueError("expected an object of size, mean and std")
        size, mean, std = recorded["size"], recorded["mean"], recorded["std"]
        if type(size) is not int:
            raise ValueError("size is not a whole number")
        for values in (mean, std):
            if not isinstance(values, list) or len(values) != 3 or not all(type(v) in (int, float) for v in values):
                raise ValueError("mean and std are not three numbers each")
        try:
            return cls(size, tuple(float(v) for v in mean), tuple(float(v) for v in std))
        except OverflowError:  # a JSON integer too large for a float
            raise ValueError("mean and std must be finite") from None

    @property
    def is_identity(self) -> bool:
        """The harness's own geometry: 32x32, no normalisation."""
        return self.size == IMAGE_SIZE and self.mean == (0.0, 0.0, 0.0) and self.std == (1.0, 1.0, 1.0)

    def describe(self) -> str:
        norm = "no normalisation" if self.mean == (0.0, 0.0, 0.0) and self.std == (1.0, 1.0, 1.0) else f"mean {self.mean}, std {self.std}"
        resize = "" if self.size == IMAGE_SIZE else f" (resized from the harness's {IMAGE_SIZE}x{IMAGE_SIZE})"
        return f"{self.size}x{self.size}{resize}, {norm}"

    def as_dict(self) -> dict[str, Any]:
        return {"size": self.size, "mean": list(self.mean), "std": list(self.std)}


@dataclass(frozen=True)
class GeometryConfig:
    encoder_type: type  # the wrapped encoder's class, built from `encoder` (as models.clone_architecture does)
    encoder: ArchConfig
    geometry: InputGeometry


class GeometryEncoder(Encoder):
    """An encoder behind a resize-and-normalise step; its `state_dict` is the inner one's under `inner.`."""

    def __init__(self, config: GeometryConfig, inner: Encoder | None = None) -> None:
        nn.Module.__init__(self)  # the stages are the inner encoder's: nothing of Encoder's own to build
        self.config = config
        self.inner = inner if inner is not None else config.encoder_type(config.encoder)
        self.register_buffer("mean", torch.tensor(config.geometry.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(config.geometry.std).view(1, 3, 1, 1), persistent=False)

    # The attributes defenses read on an Encoder (feature size, stage modules, e.g. fine-pruning's layer4).
    @property
    def feature_dim(self) -> int:  # type: ignore[override]
        return self.inner.feature_dim

    @property
    def stem(self) -> nn.Module:  # type: ignore[override]
        return self.inner.stem

    def __getattr__(self, name: str) -> Any:
        if name in STAGES:
            return getattr(self._modules["inner"], name)
        return super().__getattr__(name)

    def prepare(self, x: Tensor) -> Tensor:
        """Images (N, 3, H, W) in [0, 1] as the inner encoder takes them."""
        size = self.config.geometry.size
        if x.shape[-2:] != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=size < x.shape[-1])
        return (x - self.mean) / self.std

    def forward_stages(self, x: Tensor) -> tuple[dict[str, Tensor], Tensor]:
        return self.inner.forward_stages(self.prepare(x))


def with_geometry(encoder: Encoder, geometry: InputGeometry) -> Encoder:
    """`encoder` as it should see the harness's 32x32 images: itself for the identity geometry, else wrapped."""
    if geometry.is_identity:
        return encoder
    return GeometryEncoder(GeometryConfig(type(encoder), encoder.config, geometry), encoder).train(encoder.training)


def unwrap(encoder: Encoder) -> Encoder:
    """The weights-bearing encoder inside `with_geometry`'s wrapper (what is saved)."""
    return encoder.inner if isinstance(encoder, GeometryEncoder) else encoder
