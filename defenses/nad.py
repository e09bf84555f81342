"""NAD: Neural Attention Distillation (Li et al., ICLR 2021), for a label-free encoder.

A teacher is the suspect fine-tuned on clean data; fine-tuning alone weakens the
backdoor a little. The suspect is then trained as the student to match the
teacher's attention maps stage by stage, which erases the backdoor's attention
pattern faster than fine-tuning does:

    L = L_ssl(student) + sum_l beta_l * d(A(S_l), A(T_l))

with A the normalised attention map sum_c |F_c|^p (p = 2) and d the mean squared
difference of the maps (harness/losses.py, shared with MIMIC).

Adaptations to a label-free encoder:
- The original's cross-entropy on labelled clean data, both for fine-tuning the
  teacher and as the student's task loss, becomes SimCLR's NT-Xent on two views
  (harness/finetune.py).
- The reference betas 500/1000/1000 weight the three groups of a WideResNet; here
  they weight ResNet-18's last three stages (layer2..layer4), layer1 gets 0.
- Budget: the reference (bboylyg/NAD) distils for 20 epochs, after a teacher
  fine-tuned for "5~10" epochs (10 in MEDIC's NAD baseline); both loops are
  scaled by the budget's fraction (the rule of harness/profiles.py).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from torch import Tensor

from harness.compute import forward
from harness.contract import MIN_EPOCHS, Budget, CleanSubset, DefenseResult, Steps
from harness.finetune import FinetuneConfig, ssl_finetune
from harness.losses import attention_distance, cosine_distance, nt_xent
from harness.models import STAGES, Encoder, Projector
from harness.registry import DEFENSES
from harness.training import batched_features, descend, freeze, run_epochs, seed_everything, through_teacher_and_student, to_float


@dataclass(frozen=True)
class NADConfig:
    betas: tuple[float, float, float, float] = (0.0, 500.0, 1000.0, 1000.0)  # layer1..layer4
    teacher_epochs: int = 10  # reference epochs fine-tuning the teacher (scaled by the budget)
    epochs: int = 20  # reference distillation epochs (scaled by the budget)
    attention_p: int = 2
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)

    def steps(self, budget: Budget) -> "NADSteps":
        return NADSteps(teacher_epochs=budget.steps(self.teacher_epochs, MIN_EPOCHS), distillation_epochs=budget.steps(self.epochs, MIN_EPOCHS))

    def __post_init__(self) -> None:
        if len(self.betas) != len(STAGES) or min(self.betas) < 0:
            raise ValueError(f"betas must be {len(STAGES)} non-negative weights, got {self.betas}")


@dataclass(frozen=True)
class NADSteps(Steps):
    teacher_epochs: int
    distillation_epochs: int


def nad_loss(
    s_stages: dict[str, Tensor], t_stages: dict[str, Tensor], z1: Tensor, z2: Tensor, cfg: NADConfig
) -> tuple[Tensor, dict[str, Tensor]]:
    """L = NT-Xent(z1, z2) + sum_l beta_l * d(A(S_l), A(T_l)); returns the loss and its two terms (detached)."""
    task = nt_xent(z1, z2, cfg.finetune.temperature)
    attention = sum(beta * attention_distance(s_stages[s], t_stages[s], cfg.attention_p) for s, beta in zip(STAGES, cfg.betas))
    return task + attention, {"ssl": task.detach(), "attention": attention.detach()}


def teacher_drift(teacher: Encoder, suspect: Encoder, images: Tensor, device: torch.device) -> float:
    """Mean 1 - cos between teacher and suspect features on clean images (0 = not fine-tuned at all)."""
    return cosine_distance(batched_features(teacher, images, device), batched_features(suspect, images, device)).item()


@DEFENSES.register("nad", config=NADConfig)
def nad(suspect: Encoder, clean: CleanSubset, budget: Budget, seed: int, config: NADConfig) -> DefenseResult:
    gen = seed_everything(seed, "nad")
    device = budget.device
    student = suspect.to(device).eval()
    steps = config.steps(budget)
    teacher = copy.deepcopy(student)
    fine_tuned = ssl_finetune(teacher, clean.images, steps.teacher_epochs, budget, config.finetune, gen, "nad teacher")
    freeze(teacher)
    drift = teacher_drift(teacher, student, clean.images, device)

    student.train()
    projector = Projector(student.feature_dim, config.finetune.proj_dim).to(device).train()
    optimizer = torch.optim.Adam([*student.parameters(), *projector.parameters()], lr=budget.lr, weight_decay=config.finetune.weight_decay)
    images = clean.images.to(device)

    def step(idx: Tensor, epoch: int) -> dict[str, Tensor]:
        x = to_float(images[idx], device)
        out = through_teacher_and_student(teacher, student, x, config.finetune.augment, gen, budget.precision)
        z1, z2 = forward(projector, out.student_feature, budget.precision).chunk(2)
        loss, terms = nad_loss(out.student_stages, out.teacher_stages, z1, z2, config)
        descend(optimizer, loss)
        return {"loss": loss.detach(), **terms}

    progress = run_epochs("nad", steps.distillation_epochs, len(clean), budget.batch_size, gen, step, device=device)
    meta = {
        "teacher_drift": drift,
        "teacher_seconds": fine_tuned["seconds"],
        "distillation_seconds": progress.seconds,
        "steps": steps.as_dict(),
    }
    return DefenseResult(student.eval().cpu(), meta)
