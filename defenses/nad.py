"""NAD: Neural Attention Distillation (Li et al., ICLR 2021), for a label-free encoder.

A teacher is the suspect fine-tuned on clean data; fine-tuning alone weakens the
backdoor a little. The suspect is then trained as the student to match the
teacher's attention maps stage by stage, which erases the backdoor's attention
pattern faster than fine-tuning does:

    L = L_ssl(student) + sum_l beta_l * d(A(S_l), A(T_l))

with A the normalised attention map sum_c |F_c|^p (p = 2) and d the mean squared
difference of the maps (harness/attention.py, shared with MIMIC).

Adaptations to a label-free encoder:
- The original's cross-entropy on labelled clean data, both for fine-tuning the
  teacher and as the student's task loss, becomes SimCLR's NT-Xent on two views
  (harness/finetune.py).
- The reference betas 500/1000/1000 weight the three groups of a WideResNet; here
  they weight ResNet-18's last three stages (layer2..layer4), layer1 gets 0.
- Budget: the reference fine-tunes the teacher for 5 epochs and distils for 20;
  here `teacher_share` of the profile's defense epochs go to the teacher and the
  rest to distillation, so NAD spends the epochs MIMIC spends.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from harness.attention import attention_distance
from harness.augment import simclr_view
from harness.contract import Budget, CleanSubset, DefenseResult
from harness.finetune import FinetuneConfig, ssl_finetune
from harness.models import STAGES, Encoder, Projector
from harness.registry import DEFENSES
from harness.ssl import nt_xent
from harness.training import Progress, RunningMeans, freeze, seed_everything, shuffled_batches, to_float


@dataclass(frozen=True)
class NADConfig:
    betas: tuple[float, float, float, float] = (0.0, 500.0, 1000.0, 1000.0)  # layer1..layer4
    teacher_share: float = 0.2  # of the budget's epochs, for fine-tuning the teacher (reference: 5 of 25)
    attention_p: int = 2
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)

    def __post_init__(self) -> None:
        if len(self.betas) != len(STAGES) or min(self.betas) < 0:
            raise ValueError(f"betas must be {len(STAGES)} non-negative weights, got {self.betas}")
        if not 0 < self.teacher_share < 1:
            raise ValueError(f"teacher_share must be in (0, 1), got {self.teacher_share}")


def nad_loss(
    s_stages: dict[str, Tensor], t_stages: dict[str, Tensor], z1: Tensor, z2: Tensor, cfg: NADConfig
) -> tuple[Tensor, dict[str, float]]:
    """L = NT-Xent(z1, z2) + sum_l beta_l * d(A(S_l), A(T_l)); returns the loss and its two terms."""
    task = nt_xent(z1, z2, cfg.finetune.temperature)
    attention = sum(beta * attention_distance(s_stages[s], t_stages[s], cfg.attention_p) for s, beta in zip(STAGES, cfg.betas))
    return task + attention, {"ssl": task.item(), "attention": attention.item()}


def teacher_drift(teacher: Encoder, suspect: Encoder, images: Tensor, device: torch.device) -> float:
    """Mean 1 - cos between teacher and suspect features on clean images (0 = not fine-tuned at all)."""
    with torch.no_grad():
        batches = [to_float(images[i : i + 256], device) for i in range(0, len(images), 256)]
        return torch.cat([1 - F.cosine_similarity(teacher(x), suspect(x), dim=1) for x in batches]).mean().item()


@DEFENSES.register("nad", config=NADConfig)
def nad(suspect: Encoder, clean: CleanSubset, budget: Budget, seed: int, config: NADConfig) -> DefenseResult:
    gen = seed_everything(seed, "nad")
    device = budget.device
    student = suspect.to(device).eval()
    teacher_epochs = max(1, round(config.teacher_share * budget.epochs))
    teacher = copy.deepcopy(student)
    fine_tuned = ssl_finetune(teacher, clean.images, teacher_epochs, budget.batch_size, budget.lr, config.finetune, gen, device, "nad teacher")
    freeze(teacher)
    drift = teacher_drift(teacher, student, clean.images, device)

    epochs = max(1, budget.epochs - teacher_epochs)
    student.train()
    projector = Projector(student.feature_dim, config.finetune.proj_dim).to(device).train()
    params = list(student.parameters()) + list(projector.parameters())
    optimizer = torch.optim.Adam(params, lr=budget.lr, weight_decay=config.finetune.weight_decay)
    progress = Progress("nad", epochs)
    for epoch in range(epochs):
        running = RunningMeans()
        for idx in shuffled_batches(len(clean), budget.batch_size, gen):
            x = to_float(clean.images[idx], device)
            views = torch.cat([simclr_view(x, config.finetune.augment, gen), simclr_view(x, config.finetune.augment, gen)])
            with torch.no_grad():
                t_stages, _ = teacher.forward_stages(views)
            s_stages, s_feat = student.forward_stages(views)
            z1, z2 = projector(s_feat).chunk(2)
            loss, terms = nad_loss(s_stages, t_stages, z1, z2, config)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            running.add(len(idx), loss=loss.item(), **terms)
        progress.epoch(epoch, running.images, **running.means())

    meta = {
        "teacher_epochs": teacher_epochs,
        "distillation_epochs": epochs,
        "teacher_drift": drift,
        "teacher_seconds": fine_tuned["seconds"],
        "distillation_seconds": progress.seconds,
    }
    return DefenseResult(student.eval().cpu(), meta)
