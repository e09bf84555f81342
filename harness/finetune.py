"""SimCLR fine-tuning of an existing encoder on a small clean set.

The label-free stand-in for "fine-tune on clean data" that FT, Fine-Pruning and
NAD's teacher share: the supervised originals fine-tune with cross-entropy on
labelled clean data; an SSL encoder's defender has unlabeled images, so the loss
is NT-Xent on two augmented views (harness/ssl.py) through a fresh projector.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from harness.augment import AugmentConfig
from harness.contract import Budget, Steps
from harness.models import Encoder, Projector
from harness.ssl import SimCLRConfig, simclr_step
from harness.training import descend, run_epochs, to_float


@dataclass(frozen=True)
class FinetuneSteps(Steps):
    """The loop of a defense that fine-tunes (FT, Fine-Pruning)."""

    finetune_epochs: int


@dataclass(frozen=True)
class FinetuneConfig:
    temperature: float = 0.5
    proj_dim: int = 128
    weight_decay: float = 1e-6
    augment: AugmentConfig = dataclasses.field(default_factory=lambda: AugmentConfig(crop_scale=(0.2, 1.0)))


def ssl_finetune(
    encoder: Encoder, images: Tensor, epochs: int, budget: Budget, cfg: FinetuneConfig, gen: torch.Generator, stage: str,
    after_step: Callable[[], None] | None = None,
) -> dict:
    """Fine-tune `encoder` in place (train mode, Adam at the budget's batch size, learning rate, device and
    precision) with NT-Xent on uint8 `images`; it ends in eval mode.

    `after_step` runs after every optimiser step (Fine-Pruning keeps its pruned weights at zero there).
    Returns {"loss_per_epoch", "seconds"}.
    """
    device = budget.device
    simclr = SimCLRConfig(epochs=epochs, batch_size=budget.batch_size, lr=budget.lr, temperature=cfg.temperature, proj_dim=cfg.proj_dim,
                          augment=cfg.augment, precision=budget.precision)
    images = images.to(device)
    encoder = encoder.to(device).train()
    projector = Projector(encoder.feature_dim, cfg.proj_dim).to(device).train()
    optimizer = torch.optim.Adam([*encoder.parameters(), *projector.parameters()], lr=budget.lr, weight_decay=cfg.weight_decay)

    def step(idx: Tensor, epoch: int) -> dict[str, Tensor]:
        loss = simclr_step(encoder, projector, to_float(images[idx], device), simclr, gen)
        descend(optimizer, loss)
        if after_step is not None:
            after_step()
        return {"loss": loss.detach()}

    progress = run_epochs(stage, epochs, len(images), budget.batch_size, gen, step, device=device)
    losses = progress.history["loss"]
    encoder.eval()
    return {"loss_per_epoch": losses, "seconds": progress.seconds}
