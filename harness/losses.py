"""The loss pieces every method shares: NT-Xent, cosine distance, pairwise cosine, attention maps.

Attention maps of stage outputs (Zagoruyko and Komodakis, 2017): A(F) = sum over
channels |F_c|^p, flattened over H x W and L2-normalised per image, so the map
says *where* a stage responds, independent of its scale and of the order of its
channels (MIMIC, NAD, the adaptive attack).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def nt_xent(z1: Tensor, z2: Tensor, temperature: float = 0.5) -> Tensor:
    """NT-Xent of two views' projections z1, z2: (N, D) each -> scalar."""
    z = F.normalize(torch.cat([z1, z2]), dim=1)  # (2N, D)
    n = z1.shape[0]
    logits = z @ z.T / temperature  # (2N, 2N)
    logits.fill_diagonal_(float("-inf"))
    positives = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(z.device)
    return F.cross_entropy(logits, positives)


def cosine_distance(a: Tensor, b: Tensor) -> Tensor:
    """mean(1 - cos) of matching rows of (N, D) and (N, D) (or (1, D), broadcast)."""
    return (1 - F.cosine_similarity(a, b, dim=-1)).mean()


def mean_pairwise_cosine(features: Tensor) -> Tensor:
    """Mean cosine over all pairs i != j of the rows of (N, D): 1 when the features collapse to one direction."""
    f = F.normalize(features, dim=1)
    n = len(f)
    return ((f @ f.T).sum() - n) / (n * (n - 1))


def attention_map(stage: Tensor, p: int = 2) -> Tensor:
    """(N, C, H, W) -> (N, H * W), unit L2 norm per image."""
    return F.normalize(stage.abs().pow(p).sum(dim=1).flatten(1), dim=1)


def attention_distance(student: Tensor, teacher: Tensor, p: int = 2) -> Tensor:
    """Mean squared difference of the normalised maps (the reference code's form of the paper's norm)."""
    return (attention_map(student, p) - attention_map(teacher, p)).pow(2).mean()
