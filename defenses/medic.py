"""MEDIC: remove model backdoors via importance-driven cloning (Xu et al., CVPR 2023), for an encoder.

A randomly initialised student of the suspect's architecture is cloned from the
suspect layer by layer. Each channel's activation loss is weighted by how much
the channel matters to the suspect's behaviour on clean data, so channels that
clean data leaves unimportant, where a backdoor hides, are not copied:

    w_l(x) = sqrt(softmax(tau * T_l(x) / sigma_l) * softmax(tau * |dL/dT_l(x)| * sigma_l)),
             each softmax over the C x H x W elements of one image's stage-l map
    L_clone = hook_weight * sum_l mean_x sum_elements w_l(x) * ((T_l(x) - S_l(x)) / sigma_l)^2
              + mean(1 - cos(S(v), T(v)))

with sigma_l the teacher's per-channel standard deviation on the clean subset
(measured once, before cloning) and the importance recomputed on every batch
from the current views. The teacher is frozen (eval mode).

Facts from the reference code (qiulingxu/MEDIC): importance per batch and per
element as above with temperature 5, from the gradient of the classification
loss at the teacher's activations; hook weight 10; Adam (weight decay 1e-4),
lr 0.01 with a cosine schedule, 60 epochs; every hooked layer cloned at once
(the paper describes a layer-by-layer schedule, `progressive` keeps it as an
option, off by default as in the code).

Adaptation to a label-free encoder, stated: the classification loss becomes the
suspect's own SSL loss, NT-Xent between its features of the two augmented views
of each clean image (the suspect ships without its projector), and the final
feature's clone loss stands for the student's task loss.
Budget (the rule of harness/profiles.py): the 60 epochs scaled by the budget's
fraction, at the profile's optimiser settings.

"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import Tensor

from harness.augment import AugmentConfig
from harness.contract import MIN_EPOCHS, Budget, CleanSubset, DefenseResult, Steps
from harness.losses import cosine_distance, nt_xent
from harness.models import STAGES, Encoder
from harness.registry import DEFENSES
from harness.training import descend, run_epochs, seed_everything, teacher_and_student, through_teacher_and_student, to_float


@dataclass(frozen=True)
class MedicConfig:
    epochs: int = 60  # reference cloning epochs (scaled by the budget)
    hook_weight: float = 10.0  # weight of the importance-weighted activation loss
    feature_weight: float = 1.0  # weight of the final feature's clone loss
    importance_temperature: float = 5.0  # tau of the two softmaxes
    progressive: bool = False  # stages join one at a time (the paper), or all from the start (the code)
    temperature: float = 0.5  # of the label-free NT-Xent whose gradient gives the importance
    weight_decay: float = 1e-4
    augment: AugmentConfig = dataclasses.field(default_factory=lambda: AugmentConfig(crop_scale=(0.2, 1.0)))

    def steps(self, budget: Budget) -> "MedicSteps":
        return MedicSteps(cloning_epochs=budget.steps(self.epochs, MIN_EPOCHS))


@dataclass(frozen=True)
class MedicSteps(Steps):
    cloning_epochs: int


@torch.no_grad()
def stage_std(teacher: Encoder, images: Tensor, device: torch.device, batch_size: int = 256) -> dict[str, Tensor]:
    """sigma_l: the teacher's per-channel standard deviation of each stage on clean images, (1, C, 1, 1).

    Floored at a tenth of the stage's mean deviation: a channel clean images leave (nearly) constant
    would otherwise divide its error by ~0 and drown every other term.
    """
    sums: dict[str, list[Tensor]] = {s: [] for s in STAGES}
    for i in range(0, len(images), batch_size):
        maps, _ = teacher.forward_stages(to_float(images[i : i + batch_size], device))
        for s in STAGES:
            sums[s].append(maps[s].transpose(0, 1).flatten(1))
    std = {s: torch.cat(v, dim=1).std(dim=1) for s, v in sums.items()}
    return {s: sd.clamp_min(0.1 * sd.mean().item() + 1e-8).view(1, -1, 1, 1) for s, sd in std.items()}


def importance(stages: dict[str, Tensor], grads: dict[str, Tensor], std: dict[str, Tensor], tau: float) -> dict[str, Tensor]:
    """w_l: per image and element, sqrt(softmax(tau * T / sigma) * softmax(tau * |g| * sigma)), detached."""
    weights = {}
    for s in stages:
        n = len(stages[s])
        activation = torch.softmax(tau * (stages[s] / std[s]).flatten(1), dim=1)
        gradient = torch.softmax(tau * (grads[s].abs() * std[s]).flatten(1), dim=1)
        weights[s] = (activation * gradient).sqrt().view(n, *stages[s].shape[1:]).detach()
    return weights


def teacher_importance(teacher: Encoder, views: Tensor, std: dict[str, Tensor], cfg: MedicConfig) -> tuple[dict[str, Tensor], Tensor]:
    """This batch's importance from the gradient of the teacher's own NT-Xent at its stage maps; and its features."""
    views = views.detach().requires_grad_()  # so that every stage map of the frozen teacher carries a gradient
    stages, h = teacher.forward_stages(views)
    grads = torch.autograd.grad(nt_xent(*h.chunk(2), cfg.temperature), [stages[s] for s in STAGES])
    return importance({s: stages[s].detach() for s in STAGES}, dict(zip(STAGES, grads)), std, cfg.importance_temperature), h.detach()


def weighted_activation_loss(student: Tensor, teacher: Tensor, weights: Tensor, std: Tensor) -> Tensor:
    """mean over images of sum over elements of w * ((T - S) / sigma)^2."""
    return (weights * ((teacher - student) / std).pow(2)).flatten(1).sum(1).mean()


def active_stages(epoch: int, epochs: int, progressive: bool) -> tuple[str, ...]:
    """The stages whose loss counts at `epoch`: one more every epochs / 4 when progressive."""
    if not progressive:
        return STAGES
    return STAGES[: min(len(STAGES), 1 + epoch * len(STAGES) // epochs)]


def medic_loss(
    s_stages: dict[str, Tensor], s_feat: Tensor, t_stages: dict[str, Tensor], t_feat: Tensor,
    weights: dict[str, Tensor], std: dict[str, Tensor], active: tuple[str, ...], cfg: MedicConfig,
) -> Tensor:
    """hook_weight * sum_l importance-weighted activation loss + feature_weight * clone loss."""
    hooked = sum(weighted_activation_loss(s_stages[s], t_stages[s], weights[s], std[s]) for s in active)
    return cfg.hook_weight * hooked + cfg.feature_weight * cosine_distance(s_feat, t_feat)


@DEFENSES.register("medic", config=MedicConfig)
def medic(suspect: Encoder, clean: CleanSubset, budget: Budget, seed: int, config: MedicConfig) -> DefenseResult:
    gen = seed_everything(seed, "medic")
    device = budget.device
    teacher, student = teacher_and_student(suspect, device)
    std = stage_std(teacher, clean.images, device)
    epochs = config.steps(budget).cloning_epochs
    optimizer = torch.optim.Adam(student.parameters(), lr=budget.lr, weight_decay=config.weight_decay)
    spread: list[Tensor] = []  # how concentrated each batch's importance is: max weight over mean, layer1
    images = clean.images.to(device)

    def step(idx: Tensor, epoch: int) -> dict[str, Tensor]:
        x = to_float(images[idx], device)
        out = through_teacher_and_student(teacher, student, x, config.augment, gen, budget.precision)
        weights, t_feat = teacher_importance(teacher, out.views, std, config)  # fp32: a gradient's softmax
        active = active_stages(epoch, epochs, config.progressive)
        loss = medic_loss(out.student_stages, out.student_feature, out.teacher_stages, t_feat, weights, std, active, config)
        descend(optimizer, loss)
        w = weights[STAGES[0]].flatten(1)
        spread.append((w.max(1).values / w.mean(1)).mean().detach())
        return {"loss": loss.detach()}

    progress = run_epochs("medic", epochs, len(clean), budget.batch_size, gen, step, device=device)
    meta = {
        "importance_peak_over_mean_layer1": sum(v.item() for v in spread) / len(spread),
        "cloning_seconds": progress.seconds,
        "steps": config.steps(budget).as_dict(),
    }
    return DefenseResult(student.eval().cpu(), meta)
