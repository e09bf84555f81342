"""SimCLR augmentations, batched on tensors on the model's device.

Per-image random parameters are drawn on the CPU from a seeded torch.Generator
(so a seed gives the same views on CPU and GPU) and applied to the whole batch at
once: the random resized crop and flip are one affine `grid_sample`, colour
jitter is arithmetic on the batch. On two CPU cores this keeps augmentation a
small share of a training step, where PIL transforms per image would dominate.

Adaptations from torchvision's per-image pipeline, for batching:
- the four colour-jitter operations run in a fixed order (brightness, contrast,
  saturation, hue) instead of a random order per image;
- hue is shifted by rotating the chroma plane in YIQ space, a linear stand-in
  for the HSV round trip.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

_GRAY = (0.299, 0.587, 0.114)  # ITU-R 601 luma, as torchvision's rgb_to_grayscale


@dataclass(frozen=True)
class AugmentConfig:
    crop_scale: tuple[float, float] = (0.08, 1.0)  # area share of the random resized crop
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float = 0.5
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1)  # brightness, contrast, saturation, hue
    jitter_p: float = 0.8
    gray_p: float = 0.2


def _uniform(n: int, low: float, high: float, gen: torch.Generator) -> Tensor:
    return low + (high - low) * torch.rand(n, generator=gen)


def _bernoulli(n: int, p: float, gen: torch.Generator) -> Tensor:
    return torch.rand(n, generator=gen) < p


def grayscale(x: Tensor) -> Tensor:
    """(N, 3, H, W) -> (N, 1, H, W) luma."""
    r, g, b = x.unbind(1)
    return (_GRAY[0] * r + _GRAY[1] * g + _GRAY[2] * b).unsqueeze(1)


def random_resized_crop_flip(x: Tensor, cfg: AugmentConfig, gen: torch.Generator) -> Tensor:
    n = x.shape[0]
    area = _uniform(n, *cfg.crop_scale, gen)
    log_ratio = _uniform(n, math.log(cfg.crop_ratio[0]), math.log(cfg.crop_ratio[1]), gen)
    ratio = log_ratio.exp()
    w = (area * ratio).sqrt().clamp(max=1.0)  # crop width as a share of the image side
    h = (area / ratio).sqrt().clamp(max=1.0)
    cx = (1 - w) * _uniform(n, -1.0, 1.0, gen)  # crop centre in [-1, 1] coordinates, crop inside the image
    cy = (1 - h) * _uniform(n, -1.0, 1.0, gen)
    flip = torch.where(_bernoulli(n, cfg.flip_p, gen), -1.0, 1.0)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = w * flip
    theta[:, 0, 2] = cx
    theta[:, 1, 1] = h
    theta[:, 1, 2] = cy
    grid = F.affine_grid(theta.to(x.device, x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def _per_image(v: Tensor, x: Tensor) -> Tensor:
    return v.to(x.device, x.dtype).view(-1, 1, 1, 1)


def color_jitter(x: Tensor, cfg: AugmentConfig, gen: torch.Generator) -> Tensor:
    n = x.shape[0]
    bri, con, sat, hue = cfg.jitter
    apply = _per_image(_bernoulli(n, cfg.jitter_p, gen).float(), x)
    b = _per_image(_uniform(n, max(0.0, 1 - bri), 1 + bri, gen), x)
    c = _per_image(_uniform(n, max(0.0, 1 - con), 1 + con, gen), x)
    s = _per_image(_uniform(n, max(0.0, 1 - sat), 1 + sat, gen), x)
    angle = _uniform(n, -hue, hue, gen) * 2 * math.pi

    y = (x * b).clamp(0, 1)
    mean = grayscale(y).mean(dim=(2, 3), keepdim=True)
    y = ((y - mean) * c + mean).clamp(0, 1)
    gray = grayscale(y)
    y = ((y - gray) * s + gray).clamp(0, 1)
    if hue > 0:
        y = _rotate_hue(y, angle.to(x.device, x.dtype)).clamp(0, 1)
    return apply * y + (1 - apply) * x


_RGB_TO_YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])


def _rotate_hue(x: Tensor, angle: Tensor) -> Tensor:
    to_yiq = _RGB_TO_YIQ.to(x.device, x.dtype)
    yiq = torch.einsum("ij,njhw->nihw", to_yiq, x)
    cos, sin = angle.cos().view(-1, 1, 1), angle.sin().view(-1, 1, 1)
    i, q = yiq[:, 1], yiq[:, 2]
    yiq = torch.stack((yiq[:, 0], cos * i - sin * q, sin * i + cos * q), dim=1)
    return torch.einsum("ij,njhw->nihw", torch.linalg.inv(to_yiq), yiq)


def random_grayscale(x: Tensor, cfg: AugmentConfig, gen: torch.Generator) -> Tensor:
    apply = _per_image(_bernoulli(x.shape[0], cfg.gray_p, gen).float(), x)
    return apply * grayscale(x).expand_as(x) + (1 - apply) * x


def simclr_view(x: Tensor, cfg: AugmentConfig, gen: torch.Generator) -> Tensor:
    """One random SimCLR view of each image of a float batch (N, 3, H, W) in [0, 1]."""
    x = random_resized_crop_flip(x, cfg, gen)
    x = color_jitter(x, cfg, gen)
    return random_grayscale(x, cfg, gen)
