"""MOTH: model orthogonalisation by class-distance hardening (Tao et al., IEEE S&P 2022), for an encoder.

A backdoor is a shortcut between classes: a small trigger moves any input to
the target class. MOTH measures, for pairs of classes (a, b), the smallest
trigger that moves class-a inputs to b, and trains the model on class-a inputs
stamped with that trigger while keeping their label a. The distance between
classes grows, and the backdoor's shortcut closes with the others.

Facts from the reference code (Gwinhen/MOTH, src_torch): a warm-up inverts one
universal trigger per target class (500 steps, success bound 0.99); then, for 2
epochs, a new class pair every 3 batches, its trigger inverted for 200 steps the
first time and 50 on later visits, warm-started from the pair's stored trigger
(the warm-up's trigger of the target class before the first), keeping the
smallest mask that reaches a success bound of 0.9 under an L1 cost raised or
lowered every 10 steps (Adam 0.1, betas 0.5/0.9); a share (`portion` 0.1) of the pair's samples in the
batch is stamped, only while the mask covers under a quarter of the image; the
model is trained with plain cross-entropy on the batch, stamped samples keeping
their true labels.

Adaptations to a label-free encoder (the original hardens a classifier), stated:
- classes: k-means (k = `classes`) on the suspect's L2-normalised features of the
  clean subset gives pseudo-labels; a linear head fitted on those features gives
  the classifier MOTH needs (both from features only, never from true labels);
  the head stays fixed while the encoder is hardened;
- pairs are drawn at random (the reference mixes 30 % random pairs with those its
  distance matrix favours) and inverted in one direction, source to target;
- BatchNorm in training mode while hardening. The reference hardens in eval mode
  with SGD at 1e-4; with the harness's Adam at the profile's learning rate and
  BatchNorm frozen, the first steps shifted activations the frozen statistics
  could not absorb and clean features collapsed to one direction;
- `feature_anchor` (off by default) adds mean(1 - cos(f'(x), f(x))), a term the
  original lacks, for those who want MOTH to keep clean features explicitly.
Budget (the rule of harness/profiles.py): the hardening epochs and every
inversion's step count, scaled by the budget's fraction.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from harness.contract import MIN_EPOCHS, MIN_STEPS, Budget, CleanSubset, DefenseResult, Steps
from harness.losses import cosine_distance
from harness.models import Encoder
from harness.registry import DEFENSES
from harness.training import batched_features, descend, freeze, run_epochs, seed_everything, to_float


@dataclass(frozen=True)
class MothConfig:
    classes: int = 10  # k of the k-means pseudo-labels
    head_steps: int = 300  # Adam steps fitting the linear head on the pseudo-labels
    epochs: int = 2  # reference hardening epochs (scaled by the budget)
    warmup_steps: int = 500  # reference inversion steps of each warm-up trigger (scaled)
    pair_steps_first: int = 200  # reference inversion steps on a pair's first visit (scaled)
    pair_steps_later: int = 50  # and on later visits, warm-started (scaled)
    warmup_bound: float = 0.99  # success bound of the warm-up triggers
    pair_bound: float = 0.9  # success bound of the pair triggers
    batches_per_pair: int = 3  # a new pair every this many batches
    portion: float = 0.1  # share of the pair's source samples in a batch that are stamped
    max_mask_share: float = 0.25  # stamp only while the mask covers less of the image than this
    inversion_lr: float = 0.1
    l1_weight: float = 1e-3  # the initial cost on the mask's L1 norm (a sum over its H x W pixels)
    cost_factor: float = 1.5  # the cost's step up after `patience` successful steps (down by its power 1.5)
    patience: int = 10
    feature_anchor: float = 0.0  # weight of mean(1 - cos(f'(x), f(x))); 0: off, as the original

    def __post_init__(self) -> None:
        if self.classes < 2:
            raise ValueError(f"MOTH needs at least 2 pseudo-classes, got {self.classes}")
        if not 0 < self.portion <= 1 or not 0 < self.pair_bound <= 1 or not 0 < self.warmup_bound <= 1:
            raise ValueError("portion and the success bounds must be in (0, 1]")

    def steps(self, budget: Budget) -> "MothSteps":
        return MothSteps(budget.steps(self.epochs, MIN_EPOCHS), budget.steps(self.warmup_steps, MIN_STEPS),
                         budget.steps(self.pair_steps_first, MIN_STEPS), budget.steps(self.pair_steps_later, MIN_STEPS))


@dataclass(frozen=True)
class MothSteps(Steps):
    """The inversion and hardening loop lengths under a budget."""

    hardening_epochs: int
    warmup_steps: int
    pair_steps_first: int
    pair_steps_later: int


def pseudo_labels(features: Tensor, classes: int, seed: int) -> Tensor:
    """k-means cluster of each feature row: the classes MOTH hardens, from features alone."""
    from sklearn.cluster import KMeans

    k = min(classes, len(features))
    labels = KMeans(n_clusters=k, n_init=4, random_state=seed).fit_predict(features.cpu().numpy().astype(np.float64))
    return torch.as_tensor(labels, dtype=torch.long)


def fit_head(features: Tensor, labels: Tensor, classes: int, steps: int) -> nn.Linear:
    head = nn.Linear(features.shape[1], classes).to(features.device)
    optimizer = torch.optim.Adam(head.parameters(), lr=1e-2)
    for _ in range(steps):
        loss = F.cross_entropy(head(features), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return freeze(head)


@dataclass(frozen=True)
class Inverted:
    mask: Tensor  # (1, H, W) in [0, 1]
    pattern: Tensor  # (3, H, W) in [0, 1]
    success: float  # share of the stamped images the head assigns to the target
    steps: int  # inversion steps taken

    @property
    def share(self) -> float:
        return self.mask.mean().item()

    def stamp(self, x: Tensor) -> Tensor:
        return (1 - self.mask) * x + self.mask * self.pattern


def _logit(p: Tensor) -> Tensor:
    p = p.clamp(1e-4, 1 - 1e-4)
    return torch.log(p / (1 - p))


def invert(
    encoder: Encoder, head: nn.Module, x: Tensor, target: int, steps: int, bound: float, cfg: MothConfig,
    gen: torch.Generator, start: Inverted | None = None,
) -> Inverted:
    """A mask and pattern that move the images x to pseudo-class `target`; the encoder is not changed.

    Warm-started from `start` when given (a random mask otherwise, as the original). Every step runs:
    the L1 cost on the mask starts at `l1_weight` and, as in the original, grows by `cost_factor` after
    `patience` steps in a row at or above `bound` and shrinks by cost_factor ** 1.5 after as many below
    it. Returns the smallest-mask trigger that reached `bound` (else the last one).
    """
    device = x.device
    if start is None:
        mask_logits = _logit(torch.rand((1, *x.shape[2:]), generator=gen)).to(device).requires_grad_()
        pattern_logits = torch.randn(x.shape[1:], generator=gen).to(device).requires_grad_()
    else:
        mask_logits, pattern_logits = _logit(start.mask).requires_grad_(), _logit(start.pattern).requires_grad_()
    optimizer = torch.optim.Adam([mask_logits, pattern_logits], lr=cfg.inversion_lr, betas=(0.5, 0.9))
    labels = torch.full((len(x),), target, device=device)
    best: Inverted | None = None
    cost, above, below = cfg.l1_weight, 0, 0
    for step in range(steps):
        mask, pattern = torch.sigmoid(mask_logits), torch.sigmoid(pattern_logits)
        logits = head(F.normalize(encoder((1 - mask) * x + mask * pattern), dim=1))
        success = (logits.argmax(1) == target).float().mean().item()
        if success >= bound and (best is None or mask.mean().item() < best.share):
            best = Inverted(mask.detach().clone(), pattern.detach().clone(), success, step + 1)
        above, below = (above + 1, 0) if success >= bound else (0, below + 1)
        if above >= cfg.patience:
            cost, above = cost * cfg.cost_factor, 0
        elif below >= cfg.patience:
            cost, below = cost / cfg.cost_factor**1.5, 0
        loss = F.cross_entropy(logits, labels) + cost * mask.sum()
        # Gradients for the trigger only: the encoder's own .grad stays untouched.
        mask_logits.grad, pattern_logits.grad = torch.autograd.grad(loss, [mask_logits, pattern_logits])
        optimizer.step()
    if best is not None:
        return dataclasses.replace(best, steps=steps)
    mask, pattern = torch.sigmoid(mask_logits).detach(), torch.sigmoid(pattern_logits).detach()
    return Inverted(mask, pattern, success, steps)


def hardening_loss(head: nn.Module, features: Tensor, labels: Tensor, original: Tensor, cfg: MothConfig) -> Tensor:
    """CE(head(f'(x~)), y) on the batch whose stamped samples keep their labels; plus the optional anchor."""
    loss = F.cross_entropy(head(F.normalize(features, dim=1)), labels)
    if cfg.feature_anchor:
        loss = loss + cfg.feature_anchor * cosine_distance(features, original)
    return loss


@DEFENSES.register("moth", config=MothConfig)
def moth(suspect: Encoder, clean: CleanSubset, budget: Budget, seed: int, config: MothConfig) -> DefenseResult:
    gen = seed_everything(seed, "moth")
    device = budget.device
    steps = config.steps(budget)
    reference = freeze(copy.deepcopy(suspect).to(device))
    start = time.perf_counter()
    features = batched_features(reference, clean.images, device, normalise=True)
    labels = pseudo_labels(features, config.classes, seed).to(device)
    classes = int(labels.max()) + 1
    head = fit_head(features, labels, classes, config.head_steps)
    head_accuracy = (head(features).argmax(1) == labels).float().mean().item()
    labelling_seconds = time.perf_counter() - start

    encoder = suspect.to(device).train()  # BatchNorm in training mode (see the module docstring)
    optimizer = torch.optim.Adam(encoder.parameters(), lr=budget.lr)
    images = to_float(clean.images, device)
    triggers: dict[tuple[int, int], Inverted] = {}
    log = {"inversions": 0, "inversion_steps": 0, "successful": 0, "stamped": 0}

    def harden(x: Tensor, y: Tensor, stamp: Tensor | None = None, trigger: Inverted | None = None) -> Tensor:
        """One hardening step on the batch, the `stamp`ed samples carrying the trigger (and keeping their labels)."""
        if trigger is not None and stamp is not None:
            x = torch.where(stamp.view(-1, 1, 1, 1), trigger.stamp(x), x)
            log["stamped"] += int(stamp.sum())
        with torch.no_grad():
            original = reference(x)
        loss = hardening_loss(head, encoder(x), y, original, config)
        descend(optimizer, loss)
        return loss.detach()

    def inverted(source_x: Tensor, pair: tuple[int, int], n_steps: int, bound: float, warm: Inverted | None) -> Inverted:
        found = invert(encoder.eval(), head, source_x, pair[1], n_steps, bound, config, gen, warm)
        encoder.train()
        log["inversions"] += 1
        log["inversion_steps"] += found.steps
        log["successful"] += found.success >= bound
        return found

    # Warm-up: one universal trigger per target pseudo-class, hardened on once.
    for target in range(classes):
        others = (labels != target).nonzero().flatten()
        if not len(others):
            continue
        pick = others[torch.randperm(len(others), generator=gen)[: budget.batch_size].to(device)]
        trigger = inverted(images[pick], (-1, target), steps.warmup_steps, config.warmup_bound, None)
        for source in range(classes):  # the warm start of every pair into this class, as the original
            if source != target:
                triggers[(source, target)] = trigger
        stamp = torch.rand(len(pick), generator=gen).to(device) < 0.5  # the reference's warm_ratio
        harden(images[pick], labels[pick], stamp, trigger)

    batch_count = 0
    pair = (0, 1)
    visited: set[tuple[int, int]] = set()  # pairs inverted at least once after the warm-up

    def step(idx: Tensor, epoch: int) -> dict[str, float | Tensor]:
        nonlocal batch_count, pair
        idx = idx.to(device)
        x, y = images[idx], labels[idx]
        if batch_count % config.batches_per_pair == 0:
            source = int(torch.randint(classes, (1,), generator=gen))
            target = int(torch.randint(classes - 1, (1,), generator=gen))
            pair = (source, target + (target >= source))  # any class but the source
        batch_count += 1
        from_source = (y == pair[0]).nonzero().flatten()
        if not len(from_source):
            return {"loss": harden(x, y)}
        warm = triggers.get(pair)
        first = pair not in visited
        visited.add(pair)
        trigger = inverted(x[from_source], pair, steps.pair_steps_first if first else steps.pair_steps_later, config.pair_bound, warm)
        succeeded = trigger.success >= config.pair_bound
        if warm is None or (succeeded and (warm.success < config.pair_bound or trigger.share <= warm.share)):
            triggers[pair] = trigger  # the warm start of the pair's next visit: its smallest successful trigger
        stamp = torch.zeros_like(y, dtype=torch.bool)
        if trigger.share < config.max_mask_share:
            chosen = from_source[torch.randperm(len(from_source), generator=gen)[: max(1, round(config.portion * len(from_source)))].to(device)]
            stamp[chosen] = True
        return {"loss": harden(x, y, stamp, trigger), "mask": trigger.share}

    progress = run_epochs("moth", steps.hardening_epochs, len(clean), budget.batch_size, gen, step, device=device)
    meta = {
        "pseudo_classes": classes,
        "head_accuracy_on_pseudo_labels": head_accuracy,
        "mean_inverted_mask_share": float(np.mean([t.share for t in triggers.values()])) if triggers else 1.0,
        "pairs_inverted": len(triggers),
        **log,
        "labelling_seconds": labelling_seconds,
        "hardening_seconds": progress.seconds,
        "steps": steps.as_dict(),
    }
    return DefenseResult(encoder.eval().cpu(), meta)
