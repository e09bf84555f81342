"""Triggers: a pattern and a mask, stamped onto images, and an optional additive offset.

`stamp` computes clamp((1 - mask) * image + mask * pattern + offset, 0, 1) for
float images in [0, 1] and for uint8 images (pattern and offset scaled to
0..255, rounded). A mask of ones and zeros pastes an opaque patch; a fractional
mask blends; an offset adds a fixed perturbation to every pixel it touches (a
frequency-domain trigger such as CTRL's is linear, so it is one fixed offset).
The attack and the evaluation stamp through this one function, so what the
encoder learned is what the downstream test sees.
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
    offset: Tensor | None = None  # (3, H, W) float in [-1, 1], added after the blend (then clamped to [0, 1])

    def __post_init__(self) -> None:
        if self.pattern.ndim != 3 or self.pattern.shape[0] != 3:
            raise ValueError(f"trigger pattern must be (3, H, W), got {tuple(self.pattern.shape)}")
        if self.mask.shape != (1, *self.pattern.shape[1:]):
            raise ValueError(f"trigger mask must be (1, H, W) = {(1, *self.pattern.shape[1:])}, got {tuple(self.mask.shape)}")
        for t, what in ((self.pattern, "pattern"), (self.mask, "mask")):
            if not torch.is_floating_point(t) or t.min() < 0 or t.max() > 1:
                raise ValueError(f"trigger {what} must be float in [0, 1]")
        if self.offset is not None:
            if self.offset.shape != self.pattern.shape:
                raise ValueError(f"trigger offset must be (3, H, W) = {tuple(self.pattern.shape)}, got {tuple(self.offset.shape)}")
            if not torch.is_floating_point(self.offset) or not torch.isfinite(self.offset).all() or self.offset.abs().max() > 1:
                raise ValueError("trigger offset must be float in [-1, 1]")

    def stamp(self, images: Tensor) -> Tensor:
        """Images (N, 3, H, W), uint8 or float in [0, 1], with the trigger applied; dtype kept."""
        if images.shape[-3:] != self.pattern.shape:
            raise ValueError(f"trigger {self.name} is {tuple(self.pattern.shape)}, images are {tuple(images.shape[-3:])}")
        mask = self.mask.to(images.device)
        if images.dtype == torch.uint8:
            pattern = self.pattern.to(images.device) * 255
            stamped = (1 - mask) * images.float() + mask * pattern
            if self.offset is not None:
                stamped = (stamped + self.offset.to(images.device) * 255).clamp(0, 255)
            return stamped.round().to(torch.uint8)
        pattern = self.pattern.to(images.device, images.dtype)
        mask = mask.to(images.dtype)
        stamped = (1 - mask) * images + mask * pattern
        if self.offset is not None:
            stamped = (stamped + self.offset.to(images.device, images.dtype)).clamp(0, 1)
        return stamped

    def fingerprint(self) -> str:
        return fingerprint(self.pattern, self.mask) if self.offset is None else fingerprint(self.pattern, self.mask, self.offset)

    def touched(self) -> Tensor:
        """(H, W) bool: the pixels the trigger changes on some image (under its mask or its offset)."""
        touched = self.mask[0] > 0
        return touched if self.offset is None else touched | (self.offset != 0).any(0)

    def box(self) -> tuple[int, int, int, int]:
        """(top, left, bottom, right) of the pixels the trigger touches, inclusive."""
        rows, cols = torch.nonzero(self.touched(), as_tuple=True)
        if not rows.numel():
            raise ValueError(f"trigger {self.name} touches no pixel")
        return int(rows.min()), int(cols.min()), int(rows.max()), int(cols.max())

    def placed(self, top: int, left: int) -> Trigger:
        """The same trigger moved so that its box starts at (top, left); the box must stay inside the image."""
        t, l, b, r = self.box()
        h, w = self.mask.shape[1:]
        if not (0 <= top <= h - (b - t + 1) and 0 <= left <= w - (r - l + 1)):
            raise ValueError(f"trigger {self.name} ({b - t + 1}x{r - l + 1}) does not fit at ({top}, {left}) in {h}x{w}")
        shift = (top - t, left - l)
        offset = None if self.offset is None else torch.roll(self.offset, shift, dims=(1, 2))
        return Trigger(self.name, torch.roll(self.pattern, shift, dims=(1, 2)), torch.roll(self.mask, shift, dims=(1, 2)), offset)

    def tensors(self) -> dict[str, Tensor]:
        """What stores the trigger: `pattern`, `mask` and, when it has one, `offset` (`from_tensors` reads them back)."""
        return {"pattern": self.pattern, "mask": self.mask, **({} if self.offset is None else {"offset": self.offset})}

    @classmethod
    def from_tensors(cls, name: str, tensors: dict[str, Tensor]) -> Trigger:
        return cls(name, tensors["pattern"], tensors["mask"], tensors.get("offset"))

    def describe(self) -> dict:
        pixels = int(self.touched().sum())
        return {"name": self.name, "pixels": pixels, "box": list(self.box()) if pixels else [], "fingerprint": self.fingerprint()}


@dataclass(frozen=True)
class PatchConfig:
    size: int = 10  # side of the square, pixels
    margin: int = 1  # distance from the bottom-right corner (the reference's 10x10 covers rows/cols 21..30)
    color: tuple[float, float, float] = (1.0, 1.0, 1.0)
    position: tuple[int, int] | None = None  # (top, left) of the square; None: `margin` from the bottom-right corner
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
    colour = "" if tuple(config.color) == (1.0, 1.0, 1.0) else "-" + "".join(f"{round(255 * c):02x}" for c in config.color)
    square = Trigger(f"patch{s}{colour}", pattern, mask)  # a white square is "patch10", a red one "patch10-ff0000"
    return square if config.position is None else square.placed(*config.position)


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


@dataclass(frozen=True)
class FourCornersConfig:
    size: int = 3  # side of each square, pixels
    margin: int = 1
    cell: int = 1
    image_size: int = IMAGE_SIZE


@TRIGGERS.register("four_corners", config=FourCornersConfig)
def four_corners(config: FourCornersConfig) -> Trigger:
    """The checkerboard square at each of the four corners (BadNets' four-corner trigger)."""
    one = checkerboard(CheckerboardConfig(size=config.size, margin=config.margin, cell=config.cell, image_size=config.image_size))
    far = config.image_size - config.size - config.margin
    pattern, mask = torch.zeros_like(one.pattern), torch.zeros_like(one.mask)
    for top in (config.margin, far):
        for left in (config.margin, far):
            corner = one.placed(top, left)
            pattern, mask = torch.maximum(pattern, corner.pattern), torch.maximum(mask, corner.mask)
    if int(mask.sum()) != 4 * config.size**2:
        raise ValueError(f"four {config.size}x{config.size} squares {config.margin} px from the corners overlap in a {config.image_size}x{config.image_size} image")
    return Trigger(f"four_corners{config.size}", pattern, mask)


@dataclass(frozen=True)
class BlendConfig:
    size: int = IMAGE_SIZE  # side of the blended square at the bottom-right (the whole image by default)
    alpha: float = 0.2  # share of the noise pattern: 0.8 * image + 0.2 * noise
    noise_seed: int = 0  # the pattern is fixed: one noise image for every stamped input
    image_size: int = IMAGE_SIZE


@TRIGGERS.register("blend", config=BlendConfig)
def blend(config: BlendConfig) -> Trigger:
    """Random-pixel blend: (1 - alpha) * image + alpha * a fixed uniform-noise image."""
    if not 0 < config.alpha <= 1:
        raise ValueError(f"blend alpha must be in (0, 1], got {config.alpha}")
    square = patch(PatchConfig(size=config.size, margin=0, image_size=config.image_size))
    noise = torch.rand(3, config.image_size, config.image_size, generator=torch.Generator().manual_seed(config.noise_seed))
    return Trigger(f"blend{config.size}", noise * square.mask, config.alpha * square.mask)


def make_trigger(name: str, size: int) -> Trigger:
    return TRIGGERS.create(name, size=size)()
