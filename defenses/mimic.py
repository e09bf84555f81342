"""MIMIC: Mutual Information guided backdoor Mitigation for pre-trained enCoders (2024).

The suspect encoder is the teacher; a randomly initialised student of the same
architecture learns from it on a small unlabeled clean subset:

1. Benign-knowledge localisation. For each stage l, MINE estimates MI_l, the
   mutual information between the teacher's stage-l output and its final
   feature on clean images. Stage weights:
       beta_l = alpha0 + alpha1 * MI_l / sum_k MI_k.
2. Distillation:
       L = L0 + lambda1 * L1 + L2
       L0 = mean(1 - cos(S(v), T(v)))                    clone loss, same view v
       L1 = NT-Xent(g(S(v1)), g(S(v2)))                  contrastive loss on the student
       L2 = sum_l beta_l * d(A(S_l(v)), A(T_l(v)))       MI-weighted attention loss
   with A the normalised attention map sum_c |F_c|^2 and d the mean squared
   difference (harness/losses.py). The teacher is frozen, in eval mode.

Facts from the paper and its reference code (wssun/MIMIC): alpha0 = 1000,
alpha1 = 10000; Adam with weight decay 1e-6; batch 128; augmentations as
SimCLR's; MI estimated once, before distillation, by MINE trained 200 epochs per
stage over the 2,000-image clean subset at batch 128 (3,200 steps).

Budget (the rule of harness/profiles.py): the reference's 1000 distillation epochs
and 3,200 MINE steps per stage, both scaled by the budget's fraction.

Choices, with reasons:
- MI is estimated on the teacher, as the paper describes (the reference code uses
  the random student); `localise_on="student"` keeps the other reading.
- The reference code flattens whole stage maps into the statistics network
  (34M weights for layer1); here each map is average-pooled to a `pool_grid` x
  `pool_grid` grid and standardised first, which makes MINE cost seconds.
  MINE samples are `mine_views` augmented views of each clean image, and the
  estimate is read on held-out images (25 %), so memorised pairs do not count.
- lambda2 is the mean of beta over stages: beta_l = lambda2 * w_l with w_l the
  paper's alpha0 + alpha1 * share_l divided by its mean (alpha0 + alpha1 / L).
  The default lambda2 = alpha0 + alpha1 / 4 = 3500 gives exactly the reference's
  betas; without MI guidance every beta_l = lambda2, the same total weight.
- A negative MI estimate (no detectable information) counts as zero.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from harness.augment import AugmentConfig, simclr_view
from harness.compute import forward
from harness.contract import MIN_EPOCHS, Budget, CleanSubset, DefenseResult, Steps
from harness.losses import attention_distance, cosine_distance, nt_xent
from harness.mine import MineConfig, estimate_mi
from harness.models import STAGES, Encoder, Projector, clone_architecture
from harness.registry import DEFENSES
from harness.training import descend, freeze, run_epochs, seed_everything, teacher_and_student, through_teacher_and_student, to_float


MIN_MINE_STEPS = 100  # the budget rule's floor for MINE: enough steps for the bound to move off its start


@dataclass(frozen=True)
class MimicConfig:
    lambda1: float = 1.0  # weight of the contrastive term L1
    lambda2: float = 3500.0  # mean stage weight of the attention term L2 (see the module docstring)
    alpha0: float = 1000.0  # uniform part of beta
    alpha1: float = 10000.0  # MI-guided part of beta
    clone: bool = True  # ablation switches: keep L0, L1, L2, MI guidance
    contrastive: bool = True
    attention: bool = True
    mi_guidance: bool = True
    localise_on: str = "teacher"  # "teacher" (the paper) or "student" (the reference code)
    pool_grid: int = 2  # stage maps average-pooled to grid x grid before MINE
    mine_views: int = 4  # augmented views of each clean image used as MINE samples
    mine: MineConfig = dataclasses.field(default_factory=MineConfig)  # its `steps` is set by the budget
    epochs: int = 1000  # reference distillation epochs (scaled by the budget)
    mine_steps: int = 3200  # reference MINE steps per stage: 200 epochs of 16 batches (scaled by the budget)
    temperature: float = 0.5
    attention_p: int = 2
    proj_dim: int = 128
    weight_decay: float = 1e-6
    augment: AugmentConfig = dataclasses.field(default_factory=lambda: AugmentConfig(crop_scale=(0.2, 1.0)))

    def steps(self, budget: Budget) -> "MimicSteps":
        """The loop lengths under `budget` (the budget rule); MINE runs only with MI guidance and attention."""
        guided = self.attention and self.mi_guidance
        return MimicSteps(distillation_epochs=budget.steps(self.epochs, MIN_EPOCHS),
                          mine_steps_per_stage=budget.steps(self.mine_steps, MIN_MINE_STEPS) if guided else 0)

    def __post_init__(self) -> None:
        if self.localise_on not in ("teacher", "student"):
            raise ValueError(f"localise_on must be 'teacher' or 'student', got {self.localise_on!r}")
        if not (self.clone or self.contrastive or self.attention):
            raise ValueError("MIMIC needs at least one of its loss terms")


@dataclass(frozen=True)
class MimicSteps(Steps):
    distillation_epochs: int
    mine_steps_per_stage: int  # 0 without MI guidance or the attention term: no MI is estimated


# -- 1. benign-knowledge localisation ------------------------------------------------


def _standardise(train: Tensor, held_out: Tensor) -> tuple[Tensor, Tensor]:
    mean, std = train.mean(0, keepdim=True), train.std(0, keepdim=True) + 1e-6
    return (train - mean) / std, (held_out - mean) / std


@torch.no_grad()
def _mine_samples(teacher: Encoder, source: Encoder, images: Tensor, cfg: MimicConfig, device, gen) -> tuple[dict, Tensor]:
    """Pooled stage maps of `source` and final features of `teacher` on augmented views: (V, N, d) each."""
    stages: dict[str, list[Tensor]] = {s: [] for s in STAGES}
    features = []
    x = to_float(images, device)
    for _ in range(cfg.mine_views):
        view = simclr_view(x, cfg.augment, gen)
        maps, h = teacher.forward_stages(view)
        if source is not teacher:
            maps, _ = source.forward_stages(view)
        for s in STAGES:
            stages[s].append(F.adaptive_avg_pool2d(maps[s], cfg.pool_grid).flatten(1))
        features.append(h)
    return {s: torch.stack(v) for s, v in stages.items()}, torch.stack(features)


@dataclass(frozen=True)
class Localisation:
    mi: dict[str, float]  # nats per stage
    seconds: dict[str, float]  # "samples" (teacher forwards) and one entry per stage (MINE)


def localise(teacher: Encoder, source: Encoder, images: Tensor, cfg: MimicConfig, device, gen) -> Localisation:
    """MI_l (nats) between each stage of `source` and the teacher's final feature, on held-out clean images."""
    start = time.perf_counter()
    stages, features = _mine_samples(teacher, source, images, cfg, device, gen)
    n_eval = max(1, len(images) // 4)
    order = torch.randperm(len(images), generator=gen)
    train_idx, eval_idx = order[n_eval:], order[:n_eval]

    def split(t: Tensor) -> tuple[Tensor, Tensor]:  # (V, N, d) -> all views of the train / held-out images
        return _standardise(t[:, train_idx].flatten(0, 1), t[:, eval_idx].flatten(0, 1))

    z_train, z_eval = split(features)
    mi, seconds = {}, {"samples": time.perf_counter() - start}
    with torch.enable_grad():
        for s in STAGES:
            start = time.perf_counter()
            x_train, x_eval = split(stages[s])
            mi[s] = estimate_mi(x_train, z_train, x_eval, z_eval, cfg.mine, gen).mi
            seconds[s] = time.perf_counter() - start
    return Localisation(mi, seconds)


def stage_weights(mi: dict[str, float], cfg: MimicConfig) -> dict[str, float]:
    """beta_l = lambda2 * (alpha0 + alpha1 * share_l) / (alpha0 + alpha1 / L); uniform lambda2 without MI guidance."""
    if not cfg.mi_guidance:
        return {s: cfg.lambda2 for s in STAGES}
    positive = {s: max(mi[s], 0.0) for s in STAGES}
    total = sum(positive.values())
    share = {s: positive[s] / total if total > 0 else 1 / len(STAGES) for s in STAGES}
    mean = cfg.alpha0 + cfg.alpha1 / len(STAGES)
    return {s: cfg.lambda2 * (cfg.alpha0 + cfg.alpha1 * share[s]) / mean for s in STAGES}


# -- 2. distillation -----------------------------------------------------------------


def clone_loss(student: Tensor, teacher: Tensor) -> Tensor:
    """L0: mean(1 - cos) between student and teacher features of the same views, (N, D) each."""
    return cosine_distance(student, teacher)


def attention_loss(student: dict[str, Tensor], teacher: dict[str, Tensor], betas: dict[str, float], p: int) -> Tensor:
    """L2: sum_l beta_l * d(A(S_l), A(T_l))."""
    return sum(betas[s] * attention_distance(student[s], teacher[s], p) for s in STAGES)


def loss_weights(cfg: MimicConfig) -> dict[str, float]:
    """The weight of each term of L: 1, lambda1 and 1, or 0 for a part the ablation switches off (L2's betas apart)."""
    return {"l0": float(cfg.clone), "l1": cfg.lambda1 * cfg.contrastive, "l2": float(cfg.attention)}


def mimic_loss(
    s_stages: dict[str, Tensor], s_feat: Tensor, t_stages: dict[str, Tensor], t_feat: Tensor,
    z1: Tensor, z2: Tensor, betas: dict[str, float], cfg: MimicConfig,
) -> tuple[Tensor, dict[str, float]]:
    """L = L0 + lambda1 * L1 + L2 on a batch of two views (features (2N, D), projections (N, P) each).

    Returns the loss and its terms (unweighted, detached) for logging.
    """
    l0 = clone_loss(s_feat, t_feat)
    l1 = nt_xent(z1, z2, cfg.temperature)
    l2 = attention_loss(s_stages, t_stages, betas, cfg.attention_p)
    w = loss_weights(cfg)
    loss = w["l0"] * l0 + w["l1"] * l1 + w["l2"] * l2
    return loss, {"l0": l0.detach(), "l1": l1.detach(), "l2": l2.detach()}


def distillation_step(
    teacher: Encoder, student: Encoder, projector: Projector, x: Tensor, betas: dict[str, float], cfg: MimicConfig,
    gen: torch.Generator, precision: str = "fp32",
) -> tuple[Tensor, dict[str, Tensor]]:
    """MIMIC's loss on two fresh views of a float batch x (N, 3, H, W): the teacher under no_grad."""
    out = through_teacher_and_student(teacher, student, x, cfg.augment, gen, precision)
    z1, z2 = forward(projector, out.student_feature, precision).chunk(2)
    return mimic_loss(out.student_stages, out.student_feature, out.teacher_stages, out.teacher_feature, z1, z2, betas, cfg)


@DEFENSES.register("mimic", config=MimicConfig)
def mimic(suspect: Encoder, clean: CleanSubset, budget: Budget, seed: int, config: MimicConfig) -> DefenseResult:
    gen = seed_everything(seed, "mimic")
    device = budget.device
    teacher, student = teacher_and_student(suspect, device)
    steps = config.steps(budget)
    epochs, mine_steps = steps.distillation_epochs, steps.mine_steps_per_stage

    if config.attention and config.mi_guidance:
        source = teacher if config.localise_on == "teacher" else freeze(clone_architecture(teacher))
        located = localise(teacher, source, clean.images, dataclasses.replace(config, mine=dataclasses.replace(config.mine, steps=mine_steps)), device, gen)
        betas = stage_weights(located.mi, config)
    else:  # no MI is estimated: uniform betas (unused without the attention term)
        located = Localisation({}, {})
        betas = stage_weights({}, dataclasses.replace(config, mi_guidance=False))

    projector = Projector(student.feature_dim, config.proj_dim).to(device)
    optimizer = torch.optim.Adam([*student.parameters(), *projector.parameters()], lr=budget.lr, weight_decay=config.weight_decay)
    images = clean.images.to(device)

    def step(idx: Tensor, epoch: int) -> dict[str, Tensor]:
        x = to_float(images[idx], device)
        loss, terms = distillation_step(teacher, student, projector, x, betas, config, gen, budget.precision)
        descend(optimizer, loss)
        return {"loss": loss.detach(), **terms}

    progress = run_epochs("mimic", epochs, len(clean), budget.batch_size, gen, step, device=device)
    meta = {
        "mi_per_stage": located.mi,
        "beta_per_stage": betas,
        "localisation_seconds": sum(located.seconds.values()),
        "localisation_seconds_per_stage": located.seconds,
        "distillation_seconds": progress.seconds,
        "steps": steps.as_dict(),
        "loss_weights": loss_weights(config),
    }
    return DefenseResult(student.eval().cpu(), meta)
