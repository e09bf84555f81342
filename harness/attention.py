"""Attention maps of stage outputs (Zagoruyko and Komodakis, 2017), shared by MIMIC, NAD and MEDIC.

A(F) = sum over channels |F_c|^p, flattened over H x W and L2-normalised per
image, so the map says *where* a stage responds, independent of its scale and of
the order of its channels.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def attention_map(stage: Tensor, p: int = 2) -> Tensor:
    """(N, C, H, W) -> (N, H * W), unit L2 norm per image."""
    return F.normalize(stage.abs().pow(p).sum(dim=1).flatten(1), dim=1)


def attention_distance(student: Tensor, teacher: Tensor, p: int = 2) -> Tensor:
    """Mean squared difference of the normalised maps (the reference code's form of the paper's norm)."""
    return (attention_map(student, p) - attention_map(teacher, p)).pow(2).mean()
