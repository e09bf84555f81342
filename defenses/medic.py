"""MEDIC: remove model backdoors via importance-driven cloning (Xu et al., CVPR 2023), for an encoder.

A randomly initialised student of the suspect's architecture is cloned from the
suspect layer by layer. Each channel's activation loss is weighted by how much
the channel matters to the suspect's behaviour on clean data, so channels that
clean data leaves unimportant, where a backdoor hides, are not copied:

    w_{l,c} = mean over clean views of |F_{l,c} * dL/dF_{l,c}|, rescaled to mean 1 over each stage's channels
    L_clone = sum_{l active} mean_c w_{l,c} * mean (S_{l,c} - T_{l,c})^2  +  [layer4 active] * mean(1 - cos(S(v), T(v)))

Stages join one at a time: with E epochs and 4 stages, layer1 from epoch 0,
layer2 from E/4, layer3 from E/2, layer4 and the final feature from 3E/4; the
teacher is frozen (eval mode, no grad).

Adaptation to a label-free encoder: the original takes the gradient of the
classification loss on labelled clean data. Here L is the SSL loss of the
suspect itself: NT-Xent between its features of two augmented views of each
clean image (the suspect ships without its projector, so on features). The
budget is the profile's defense epochs, as MIMIC's.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from harness.augment import AugmentConfig, simclr_view
from harness.contract import Budget, CleanSubset, DefenseResult
from harness.models import STAGES, Encoder
from harness.registry import DEFENSES
from harness.ssl import nt_xent
from harness.training import Progress, RunningMeans, seed_everything, shuffled_batches, teacher_and_student, to_float


@dataclass(frozen=True)
class MedicConfig:
    stage_weight: float = 1.0  # weight of the importance-weighted activation loss
    feature_weight: float = 1.0  # weight of the final feature's clone loss
    progressive: bool = True  # stages join one at a time (False: all from the start)
    temperature: float = 0.5
    weight_decay: float = 1e-6
    augment: AugmentConfig = dataclasses.field(default_factory=lambda: AugmentConfig(crop_scale=(0.2, 1.0)))


def importance(teacher: Encoder, images: Tensor, cfg: MedicConfig, batch_size: int, gen: torch.Generator, device: torch.device) -> dict[str, Tensor]:
    """w_{l,c}: mean |activation x gradient of the SSL loss| per channel, non-negative, mean 1 per stage."""
    totals = {s: torch.zeros(0) for s in STAGES}
    for start in range(0, len(images), batch_size):
        x = to_float(images[start : start + batch_size], device)
        views = torch.cat([simclr_view(x, cfg.augment, gen), simclr_view(x, cfg.augment, gen)]).requires_grad_()
        stages, h = teacher.forward_stages(views)  # the input needs grad, so every activation has one
        h1, h2 = h.chunk(2)
        grads = torch.autograd.grad(nt_xent(h1, h2, cfg.temperature), [stages[s] for s in STAGES])
        for s, g in zip(STAGES, grads):
            batch = (stages[s] * g).abs().sum(dim=(0, 2, 3)).detach().cpu()
            totals[s] = batch if not totals[s].numel() else totals[s] + batch
    weights = {}
    for s, t in totals.items():
        weights[s] = (t / t.mean() if t.mean() > 0 else torch.ones_like(t)).to(device)
    return weights


def weighted_activation_loss(student: Tensor, teacher: Tensor, weights: Tensor) -> Tensor:
    """mean over channels of w_c * mean over (N, H, W) of (S_c - T_c)^2."""
    per_channel = (student - teacher).pow(2).mean(dim=(0, 2, 3))
    return (weights * per_channel).mean()


def active_stages(epoch: int, epochs: int, progressive: bool) -> tuple[str, ...]:
    """The stages whose loss counts at `epoch`: one more every epochs / 4 when progressive."""
    if not progressive:
        return STAGES
    return STAGES[: min(len(STAGES), 1 + epoch * len(STAGES) // epochs)]


def medic_loss(
    s_stages: dict[str, Tensor], s_feat: Tensor, t_stages: dict[str, Tensor], t_feat: Tensor,
    weights: dict[str, Tensor], active: tuple[str, ...], cfg: MedicConfig,
) -> Tensor:
    loss = cfg.stage_weight * sum(weighted_activation_loss(s_stages[s], t_stages[s], weights[s]) for s in active)
    if STAGES[-1] in active:
        loss = loss + cfg.feature_weight * (1 - F.cosine_similarity(s_feat, t_feat, dim=1)).mean()
    return loss


@DEFENSES.register("medic", config=MedicConfig)
def medic(suspect: Encoder, clean: CleanSubset, budget: Budget, seed: int, config: MedicConfig) -> DefenseResult:
    gen = seed_everything(seed, "medic")
    device = budget.device
    teacher, student = teacher_and_student(suspect, device)
    start = time.perf_counter()
    weights = importance(teacher, clean.images, config, budget.batch_size, gen, device)
    importance_seconds = time.perf_counter() - start

    optimizer = torch.optim.Adam(student.parameters(), lr=budget.lr, weight_decay=config.weight_decay)
    progress = Progress("medic", budget.epochs)
    for epoch in range(budget.epochs):
        active = active_stages(epoch, budget.epochs, config.progressive)
        running = RunningMeans()
        for idx in shuffled_batches(len(clean), budget.batch_size, gen):
            x = to_float(clean.images[idx], device)
            view = torch.cat([simclr_view(x, config.augment, gen), simclr_view(x, config.augment, gen)])  # two views, as MIMIC
            with torch.no_grad():
                t_stages, t_feat = teacher.forward_stages(view)
            s_stages, s_feat = student.forward_stages(view)
            loss = medic_loss(s_stages, s_feat, t_stages, t_feat, weights, active, config)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            running.add(len(idx), loss=loss.item())
        progress.epoch(epoch, running.images, **running.means(), stages=len(active))

    meta = {
        "importance_max_per_stage": {s: w.max().item() for s, w in weights.items()},
        "importance_share_below_0.1": {s: (w < 0.1).float().mean().item() for s, w in weights.items()},
        "importance_seconds": importance_seconds,
        "cloning_seconds": progress.seconds,
        "epochs": budget.epochs,
    }
    return DefenseResult(student.eval().cpu(), meta)
