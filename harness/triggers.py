"""Triggers: a pattern and a mask, stamped onto images.

`stamp` computes (1 - mask) * image + mask * pattern for float images in [0, 1]
and for uint8 images (pattern scaled to 0..255, rounded). A mask of ones and
zeros pastes an opaque patch; a fractional mask blends. The attack and the
evaluation stamp through this one function, so what the encoder learned is what
the downstream test sees.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from harness.data import IMAGE_SIZE, fingerprint
from harness.registry import TRIGGERS


@dataclass(frozen=True, eq=False)
class Trigger:
    name: str
    pattern: Tensor  # (3, H, W) float in [0, 1]
    mask: Tensor  # (1, H, W) float in [0, 1]; 1 replaces the pixel by the pattern

    def __post_init__(self) -> None:
        if self.pattern.ndim != 3 or self.pattern.shape[0] != 3:
            raise ValueError(f"trigger pattern must be (3, H, W), got {tuple(self.pattern.shape)}")
        if self.mask.shape != (1, *self.pattern.shape[1:]):
            raise ValueError(f"trigger mask must be (1, H, W) = {(1, *self.pattern.shape[1:])}, got {tuple(self.mask.shape)}")
        for t, what in ((self.pattern, "pattern"), (self.mask, "mask")):
            if not torch.is_floating_point(t) or t.min() < 0 or t.max() > 1:
                raise ValueError(f"trigger {what} must be float in [0, 1]")

    def stamp(self, images: Tensor) -> Tensor:
        """Images (N, 3, H, W), uint8 or float in [0, 1], with the trigger applied; dtype kept."""
        if images.shape[-3:] != self.pattern.shape:
            raise ValueError(f"trigger {self.name} is {tuple(self.pattern.shape)}, images are {tuple(images.shape[-3:])}")
        mask = self.mask.to(images.device)
        if images.dtype == torch.uint8:
            pattern = self.pattern.to(images.device) * 255
            return ((1 - mask) * images.float() + mask * pattern).round().to(torch.uint8)
        pattern = self.pattern.to(images.device, images.dtype)
        mask = mask.to(images.dtype)
        return (1 - mask) * images + mask * pattern

    def fingerprint(self) -> str:
        return fingerprint(self.pattern, self.mask)

    def describe(self) -> dict:
        rows, cols = torch.nonzero(self.mask[0] > 0, as_tuple=True)
        box = [int(rows.min()), int(cols.min()), int(rows.max()), int(cols.max())] if rows.numel() else []
        return {"name": self.name, "pixels": int(rows.numel()), "box": box, "fingerprint": self.fingerprint()}


@dataclass(frozen=True)
class PatchConfig:
    size: int = 10  # side of the square, pixels
    margin: int = 1  # distance from the bottom-right corner (the reference's 10x10 covers rows/cols 21..30)
    color: tuple[float, float, float] = (1.0, 1.0, 1.0)
    image_size: int = IMAGE_SIZE


@TRIGGERS.register("patch", config=PatchConfig)
def patch(config: PatchConfig) -> Trigger:
    """An opaque square near the bottom-right corner, the trigger of BadEncoder and MIMIC's evaluation."""
    s, m, n = config.size, config.margin, config.image_size
    if s < 1 or m < 0 or s + m > n:
        raise ValueError(f"a {s}x{s} patch {m} px from the corner does not fit a {n}x{n} image")
    top = n - s - m
    mask = torch.zeros(1, n, n)
    mask[:, top : top + s, top : top + s] = 1
    pattern = torch.tensor(config.color, dtype=torch.float32).view(3, 1, 1).expand(3, n, n).clone() * mask
    return Trigger(f"patch{s}", pattern, mask)


@dataclass(frozen=True)
class CheckerboardConfig:
    size: int = 10  # side of the square, pixels
    margin: int = 1
    cell: int = 1  # side of one checkerboard cell, pixels
    image_size: int = IMAGE_SIZE


@TRIGGERS.register("checkerboard", config=CheckerboardConfig)
def checkerboard(config: CheckerboardConfig) -> Trigger:
    """An opaque black-and-white checkerboard square near the bottom-right corner.

    Unlike a uniform white square, a one-pixel checkerboard does not occur in
    augmented crops of grayscale garments, so a defender's clean Fashion-MNIST data
    never shows the backdoor's response (see harness/profiles.py, tiny).
    """
    square = patch(PatchConfig(size=config.size, margin=config.margin, image_size=config.image_size))
    rows = torch.arange(config.image_size).view(-1, 1) // config.cell
    cols = torch.arange(config.image_size).view(1, -1) // config.cell
    board = ((rows + cols) % 2).float().expand(3, -1, -1)
    return Trigger(f"checkerboard{config.size}", board * square.mask, square.mask)


def make_trigger(name: str, size: int) -> Trigger:
    return TRIGGERS.create(name, size=size)()
