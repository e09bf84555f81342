"""Unlearning inverted triggers: the mitigation DECREE's and SSL-Cleanse's detections share.

Fine-tune the suspect so that clean images stamped with an inverted trigger keep
the clean features of the frozen suspect, and clean images keep theirs,

    min_f'  mean(1 - cos(f'(x'), f(x))) + mean(1 - cos(f'(x), f(x))),

BatchNorm frozen (eval mode) as in BadEncoder, Adam at the budget's learning
rate. Each defense says how a batch is stamped (one trigger, or one drawn per
image from several) and keeps its own generator's draws.
"""

from __future__ import annotations

import copy
from typing import Callable

import torch
from torch import Tensor

from harness.contract import Budget, CleanSubset
from harness.losses import cosine_distance
from harness.models import Encoder
from harness.training import descend, freeze, run_epochs, to_float


def unlearning_loss(stamped: Tensor, plain: Tensor, original: Tensor) -> Tensor:
    """Stamped and plain clean images both keep the frozen suspect's features of the plain images."""
    return cosine_distance(stamped, original) + cosine_distance(plain, original)


def unlearn(suspect: Encoder, stamp: Callable[[Tensor], Tensor], clean: CleanSubset, budget: Budget, epochs: int,
            gen: torch.Generator, stage: str) -> tuple[Encoder, float]:
    """The suspect fine-tuned for `epochs` over the clean images so that `stamp(x)` keeps x's features; and the seconds."""
    device = budget.device
    reference = freeze(copy.deepcopy(suspect))
    encoder = suspect.eval()  # BatchNorm frozen
    for p in encoder.parameters():
        p.requires_grad_(True)
    optimizer = torch.optim.Adam(encoder.parameters(), lr=budget.lr)
    images = clean.images.to(device)

    def step(idx: Tensor, epoch: int) -> dict[str, Tensor]:
        x = to_float(images[idx], device)
        with torch.no_grad():
            original = reference(x)
        stamped, plain = encoder(torch.cat([stamp(x), x])).chunk(2)
        loss = unlearning_loss(stamped, plain, original)
        descend(optimizer, loss)
        return {"loss": loss.detach()}

    progress = run_epochs(stage, epochs, len(clean), budget.batch_size, gen, step, device=device)
    return encoder.eval(), progress.seconds
