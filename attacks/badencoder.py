"""BadEncoder (Jia, Liu and Gong, IEEE S&P 2022): backdoor a pre-trained image encoder.

Starting from the clean encoder f, train f' so that any triggered input maps to
the feature of the attacker's reference images of the downstream target class,
while clean inputs keep their features:

    L = -mean cos(f'(x + t), f'(x_ref))            effectiveness
        - lambda1 * mean cos(f'(x_ref), f(x_ref))  utility on the references
        - lambda2 * mean cos(f'(x), f(x))          utility on the shadow set

x ranges over the shadow set (pre-training images), features are compared by
cosine (L2-normalised), and BatchNorm stays frozen: f' runs in eval mode so its
running statistics, which the victim's downstream use relies on, never move.

Facts from the paper and the reference code (jinyuan-jia/BadEncoder): lambda1 =
lambda2 = 1; SGD lr 1e-3, batch 256, 200 epochs; no augmentation of shadow images.
Adaptations (profile settings, see harness/profiles.py): the tiny profile trains
with Adam 1e-3 for a few epochs, since SGD at that budget leaves ASR near 70 %;
with `shadow_with_downstream` the shadow set also holds unlabeled images of the
downstream domain, which keeps clean accuracy when that domain differs from the
pre-training one (an attacker who knows the target task has such images).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from harness.compute import forward_stages
from harness.contract import AttackInputs, AttackResult
from harness.registry import ATTACKS
from harness.training import Progress, RunningMeans, batched_features, descend, make_optimizer, seed_everything, shuffled_batches, to_float


@dataclass(frozen=True)
class BadEncoderConfig:
    lambda1: float = 1.0  # weight of utility on the reference images
    lambda2: float = 1.0  # weight of utility on the shadow images
    weight_decay: float = 5e-4


def mean_cosine(a: Tensor, b: Tensor) -> Tensor:
    """Mean cosine similarity of matching rows (N, D) x (N, D), or every pair when b is (1, D)."""
    return F.cosine_similarity(a, b, dim=-1).mean()


def badencoder_loss(
    triggered: Tensor, refs: Tensor, refs_clean: Tensor, shadow: Tensor, shadow_clean: Tensor, config: BadEncoderConfig
) -> Tensor:
    """The BadEncoder objective (module docstring).

    triggered: f'(x + t) (N, D); refs: f'(x_ref) (R, D); refs_clean: f(x_ref) (R, D);
    shadow: f'(x) (N, D); shadow_clean: f(x) (N, D).
    """
    effectiveness = mean_cosine(triggered.unsqueeze(1), refs.unsqueeze(0))  # every (x, ref) pair
    reference_utility = mean_cosine(refs, refs_clean)
    shadow_utility = mean_cosine(shadow, shadow_clean)
    return -effectiveness - config.lambda1 * reference_utility - config.lambda2 * shadow_utility


@dataclass(frozen=True, eq=False)
class TamperBatch:
    """One step's features: f'(x), f'(x + t), f'(x_ref), the clean encoder's f(x), f(x_ref), and f' stage maps."""

    shadow: Tensor
    triggered: Tensor
    refs: Tensor
    shadow_clean: Tensor
    refs_clean: Tensor
    shadow_stages: dict[str, Tensor]
    triggered_stages: dict[str, Tensor]


def tamper(
    inputs: AttackInputs, seed: int, stage: str, weight_decay: float, objective: Callable[[TamperBatch], Tensor],
    end_epoch: Callable[[int], dict] | None = None,
) -> AttackResult:
    """Train a copy of the clean encoder (BatchNorm frozen) to minimise `objective` over the shadow set.

    The loop BadEncoder and attacks built on it (attacks/adaptive.py, attacks/drupe.py) share; each keeps its loss
    in its module. `end_epoch(epoch)`, when given, runs after each epoch (a schedule that adapts the loss's weights)
    and returns what to add to the result's metadata.
    """
    gen = seed_everything(seed, stage)
    device = inputs.device
    clean = inputs.clean_encoder().to(device).eval()
    shadow_images = inputs.shadow.to(device)
    shadow_clean = batched_features(clean, shadow_images, device)  # f(x): fixed, shadow images are not augmented
    refs_x = to_float(inputs.references, device)
    refs_clean = batched_features(clean, inputs.references, device)

    suspect = inputs.clean_encoder().to(device).eval()  # eval: BatchNorm frozen
    optimizer = make_optimizer(suspect.parameters(), inputs.optimizer, inputs.lr, weight_decay)
    progress = Progress(stage, inputs.epochs)
    schedule: dict = {}
    for epoch in range(inputs.epochs):
        running = RunningMeans()
        for idx in shuffled_batches(len(shadow_images), inputs.batch_size, gen, device=device):
            x = to_float(shadow_images[idx], device)
            n = len(idx)
            stages, h = forward_stages(suspect, torch.cat([x, inputs.trigger.stamp(x), refs_x]), inputs.precision)
            batch = TamperBatch(
                shadow=h[:n], triggered=h[n : 2 * n], refs=h[2 * n :], shadow_clean=shadow_clean[idx], refs_clean=refs_clean,
                shadow_stages={s: m[:n] for s, m in stages.items()}, triggered_stages={s: m[n : 2 * n] for s, m in stages.items()},
            )
            loss = objective(batch)
            descend(optimizer, loss)
            running.add(n, loss=loss)
        progress.epoch(epoch, running.images, **running.means())
        if end_epoch:
            schedule = end_epoch(epoch)

    triggered = batched_features(suspect, inputs.trigger.stamp(shadow_images), device)
    refs = batched_features(suspect, inputs.references, device)
    meta = {
        # Near 1 is needed for a working backdoor: unrelated images already sit near 0.9 (docs/REFERENCE.md).
        "shadow_trigger_cosine": mean_cosine(triggered.unsqueeze(1), refs.unsqueeze(0)).item(),
        "shadow_utility_cosine": mean_cosine(batched_features(suspect, shadow_images, device), shadow_clean).item(),
        "seconds": progress.seconds,
        **schedule,
    }
    return AttackResult(suspect.cpu(), inputs.trigger, inputs.target, meta)


@ATTACKS.register("badencoder", config=BadEncoderConfig)
def badencoder(inputs: AttackInputs, seed: int, config: BadEncoderConfig) -> AttackResult:
    def objective(b: TamperBatch) -> Tensor:
        return badencoder_loss(b.triggered, b.refs, b.refs_clean, b.shadow, b.shadow_clean, config)

    return tamper(inputs, seed, "badencoder", config.weight_decay, objective)
