"""DECREE (Feng et al., CVPR 2023): find a backdoor in an encoder alone, then unlearn it.

Detection. A backdoored encoder maps every triggered image to (nearly) one
feature, so a small trigger that collapses the features of all clean images
exists. DECREE searches for the smallest such trigger:

    min_{m, p}  -mean_{i != j} cos(f(x'_i), f(x'_j)) + lambda * ||m||_1 / (H W),
    x' = (1 - m) * x + m * p,   m = sigmoid(mask logits) in [0, 1]^(H x W),  p = sigmoid(pattern logits)

lambda adapts as in Neural Cleanse: it grows while the batch's mean pairwise
cosine is at least `target_cosine` (0.99) and shrinks below it, so the mask
shrinks to the smallest one that still collapses the features. The evidence is
the L1 share ||m||_1 / (H W) of the smallest mask that reached the target cosine
on a batch (1.0 when none did; the cosine it gives the whole clean subset is
reported with it); the encoder is flagged when that share is under `flag_below`.

Mitigation (DECREE itself only detects; the MIMIC paper's Table I runs "an
inversed trigger to nullify the trigger information" on every suspect, so the
mitigation always runs, flagged or not, and the verdict is reported beside it):
fine-tune the suspect so that stamped clean images keep their clean features and
clean images keep theirs,

    min_f'  mean(1 - cos(f'(x'), f(x))) + mean(1 - cos(f'(x), f(x))),

f the frozen suspect, BatchNorm frozen (eval mode) as in BadEncoder (harness/unlearning.py,
which SSL-Cleanse shares).

Budget (the rule of harness/profiles.py): the reference inverts for 1000 epochs
over a 1,000-image shadow set at batch 256, 4,000 steps, scaled by the budget's
fraction; the unlearning, which the reference lacks, takes FT's recipe (100
epochs), scaled the same way.

Choices, documented: batches of 64 clean images, Adam 0.1 on the logits, and a
per-step lambda update (x or / 1.1) in place of the reference's patience counter.
`flag_below` = 0.05: a detector's threshold is a false-positive budget, fixed on
clean encoders (encoder side): on the tiny profile's clean encoders the smallest
collapsing mask covers 6-7 % of the image, so the reference's usual 0.1 would flag
every one of them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import Tensor

from harness.contract import MIN_EPOCHS, MIN_STEPS, Budget, CleanSubset, DefenseResult, Steps
from harness.losses import mean_pairwise_cosine
from harness.models import Encoder
from harness.registry import DEFENSES
from harness.training import Progress, freeze, seed_everything, to_float
from harness.unlearning import unlearn


@dataclass(frozen=True)
class DecreeConfig:
    inversion_steps: int = 4000  # reference inversion steps (scaled by the budget)
    unlearning_epochs: int = 100  # FT's reference fine-tuning epochs (scaled by the budget)
    batch_size: int = 64
    lr: float = 0.1  # Adam on the mask and pattern logits
    target_cosine: float = 0.99  # mean pairwise cosine that counts as "features collapsed"
    init_lambda: float = 0.1
    lambda_factor: float = 1.1  # lambda is multiplied or divided by this after every step
    flag_below: float = 0.05  # flag when the smallest collapsing mask covers less than this share of the image

    def steps(self, budget: Budget) -> "DecreeSteps":
        return DecreeSteps(inversion_steps=budget.steps(self.inversion_steps, MIN_STEPS),
                           unlearning_epochs=budget.steps(self.unlearning_epochs, MIN_EPOCHS))

    def __post_init__(self) -> None:
        if self.inversion_steps < 1 or self.unlearning_epochs < 1 or self.batch_size < 1:
            raise ValueError("inversion_steps, unlearning_epochs and batch_size must be at least 1")
        if not 0 < self.target_cosine < 1 or not 0 < self.flag_below <= 1 or self.lambda_factor <= 1:
            raise ValueError("need target_cosine in (0, 1), flag_below in (0, 1] and lambda_factor > 1")


@dataclass(frozen=True)
class DecreeSteps(Steps):
    inversion_steps: int
    unlearning_epochs: int


@dataclass(frozen=True, eq=False)
class Inversion:
    mask: Tensor  # (1, H, W) in [0, 1]
    pattern: Tensor  # (3, H, W) in [0, 1]
    l1_share: float  # ||mask||_1 / (H W); 1.0 when no mask reached the target cosine
    cosine: float  # mean pairwise cosine of the stamped clean subset's features
    flagged: bool

    def stamp(self, x: Tensor) -> Tensor:
        return (1 - self.mask) * x + self.mask * self.pattern


def decree_objective(features: Tensor, mask: Tensor, lam: float) -> tuple[Tensor, Tensor]:
    """-mean pairwise cosine + lambda * L1 share of the mask; returns (loss, cosine)."""
    cosine = mean_pairwise_cosine(features)
    return -cosine + lam * mask.mean(), cosine


@torch.no_grad()
def _stamped_cosine(encoder: Encoder, images: Tensor, mask: Tensor, pattern: Tensor, device: torch.device, batch_size: int) -> float:
    """Mean pairwise cosine of the stamped images' features, forwarded a batch at a time (a scan's folder may be large)."""
    features = [encoder((1 - mask) * to_float(images[i : i + batch_size], device) + mask * pattern)
                for i in range(0, len(images), batch_size)]
    return mean_pairwise_cosine(torch.cat(features)).item()


def invert(encoder: Encoder, clean: CleanSubset, config: DecreeConfig, gen: torch.Generator, device: torch.device, steps: int | None = None) -> Inversion:
    """The smallest mask and pattern that collapse the frozen `encoder`'s features of clean images.

    `steps` inversion steps (default: the config's reference count, as `harness scan` runs it).
    """
    steps = config.inversion_steps if steps is None else steps
    _, height, width = clean.images.shape[1:]
    mask_logits = torch.zeros(1, height, width, device=device, requires_grad=True)
    pattern_logits = torch.randn(3, height, width, generator=gen).to(device).requires_grad_()
    optimizer = torch.optim.Adam([mask_logits, pattern_logits], lr=config.lr)
    lam = config.init_lambda
    best: tuple[float, Tensor, Tensor] | None = None
    progress = Progress("decree inversion", 1)
    for step in range(steps):
        idx = torch.randperm(len(clean), generator=gen)[: config.batch_size]
        x = to_float(clean.images[idx], device)
        mask, pattern = torch.sigmoid(mask_logits), torch.sigmoid(pattern_logits)
        loss, cosine = decree_objective(encoder((1 - mask) * x + mask * pattern), mask, lam)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        share = mask.mean().item()
        if cosine.item() >= config.target_cosine:
            if best is None or share < best[0]:
                best = (share, mask.detach().clone(), pattern.detach().clone())
            lam *= config.lambda_factor
        else:
            lam /= config.lambda_factor
    progress.epoch(0, steps * config.batch_size, **({"l1_share": best[0]} if best else {"cosine": cosine.item()}))
    if best is None:
        mask, pattern = torch.sigmoid(mask_logits).detach(), torch.sigmoid(pattern_logits).detach()
        return Inversion(mask, pattern, 1.0, _stamped_cosine(encoder, clean.images, mask, pattern, device, config.batch_size), False)
    share, mask, pattern = best
    return Inversion(mask, pattern, share, _stamped_cosine(encoder, clean.images, mask, pattern, device, config.batch_size), share < config.flag_below)


@DEFENSES.register("decree", config=DecreeConfig)
def decree(suspect: Encoder, clean: CleanSubset, budget: Budget, seed: int, config: DecreeConfig) -> DefenseResult:
    gen = seed_everything(seed, "decree")
    device = budget.device
    encoder = freeze(suspect.to(device))
    steps = config.steps(budget)
    start = time.perf_counter()
    inversion = invert(encoder, clean, config, gen, device, steps.inversion_steps)
    meta = {
        "l1_share": inversion.l1_share,
        "flagged": inversion.flagged,
        "stamped_cosine": inversion.cosine,
        "inversion_seconds": time.perf_counter() - start,
        "steps": steps.as_dict(),
    }
    encoder, meta["unlearning_seconds"] = unlearn(encoder, inversion.stamp, clean, budget, steps.unlearning_epochs, gen,
                                                  "decree unlearning")
    return DefenseResult(encoder.cpu(), meta)
