"""The contract between the engine and every attack and defense.

An attack returns `AttackResult`: the suspect encoder and what evaluation needs
(trigger, target). A defense is called as

    defense(suspect: Encoder, clean: CleanSubset, budget: Budget, seed: int, config=...)

and returns `DefenseResult` (a purified encoder), or, for a defense of the
second kind, tagged `input_detection` in the registry, `DetectionResult`: an
`InputDetector` that flags inputs at test time while the suspect stays as it
is. Nothing through which a trigger, a target, labels or poisoned test data
could arrive is part of that call: `CleanSubset` holds unlabeled images only,
`Budget` holds sizes and the device; a detector's threshold is fixed on the
defender's clean images before it ever sees a test input.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Callable, Protocol

import torch
from torch import Tensor

from harness.models import Encoder
from harness.profiles import Profile
from harness.ssl import SimCLRConfig
from harness.triggers import Trigger


@dataclass(frozen=True, eq=False)
class AttackInputs:
    """What the attacker holds and the budget it may spend.

    An encoder-tampering attack (BadEncoder) starts from `clean_encoder()`; a
    data-poisoning attack (BASSL) pre-trains its own encoder with `ssl`.
    """

    clean_encoder: Callable[[], Encoder]  # a fresh copy of the clean pre-trained encoder, built on demand
    pretrain: Tensor  # (N, 3, 32, 32) uint8: the pre-training images
    pretrain_labels: Tensor  # (N,) their categories: a poisoning attacker picks images of one category
    shadow: Tensor  # (M, 3, 32, 32) uint8, unlabeled: the attacker's shadow set
    references: Tensor  # (R, 3, 32, 32) uint8: downstream images of the target class
    target_images: Tensor  # (T, 3, 32, 32) uint8: every downstream-train image of the target class (BASSL inserts a share)
    target: int
    target_in_pretrain: bool  # the downstream task has the pre-training classes, so `target` is also a pre-training category
    trigger: Trigger
    arch: str
    width: int
    ssl: SimCLRConfig  # the victim's pre-training recipe
    epochs: int
    batch_size: int
    lr: float
    optimizer: str
    device: torch.device
    precision: str = "fp32"  # of the training forwards (harness/compute.py)


class AttackNotApplicable(Exception):
    """The attack cannot aim at this downstream task (e.g. poisoning a pre-training category the task lacks)."""


@dataclass(frozen=True, eq=False)
class AttackResult:
    encoder: Encoder  # the suspect
    trigger: Trigger
    target: int
    meta: dict = field(default_factory=dict)


@dataclass(frozen=True, eq=False)
class CleanSubset:
    """The defender's data: unlabeled clean images of the pre-training distribution."""

    images: Tensor  # (N, 3, 32, 32) uint8

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim != 4 or self.images.shape[1] != 3:
            raise ValueError(f"clean subset must be uint8 (N, 3, H, W), got {self.images.dtype} {tuple(self.images.shape)}")
        if len(self.images) < 2:
            raise ValueError(f"clean subset needs at least 2 images, got {len(self.images)}")

    def __len__(self) -> int:
        return len(self.images)


@dataclass(frozen=True)
class Steps:
    """A defense's loop lengths under a budget, one field per loop of its reference recipe (the budget rule).

    Every defense's config answers `steps(budget) -> ` its own subclass of Steps; a row records them
    (`as_dict`) beside the defense's metadata, so a table says how long each defense ran.
    """

    def as_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


class DefenseConfig(Protocol):
    """What the engine needs of a defense's config: the loops it runs under a budget."""

    def steps(self, budget: "Budget") -> Steps: ...


MIN_EPOCHS = 5  # the budget rule's floor for a training loop: a few passes over the clean subset
MIN_STEPS = 10  # and for an inner loop of steps (mask iterations, trigger inversion)


@dataclass(frozen=True)
class Budget:
    """The compute a defense may spend: the same share of every defense's own reference recipe.

    The budget rule (harness/profiles.py): a defense counts each loop of its reference recipe
    (epochs, inner steps, inversion steps, MINE steps) and runs `steps(reference, minimum)` of it,
    the reference scaled by `fraction`, rounded up, never under the minimum that keeps the loop
    meaningful and never over the reference itself. `batch_size` and `lr` are the profile's optimiser settings for the defense's model;
    `device` and `precision` say where and how it computes (harness/compute.py).
    """

    fraction: float
    batch_size: int
    lr: float
    device: torch.device
    precision: str = "fp32"

    def __post_init__(self) -> None:
        if not 0 < self.fraction <= 1:
            raise ValueError(f"budget fraction must be in (0, 1], got {self.fraction}")

    @classmethod
    def of(cls, profile: Profile, device: torch.device, precision: str = "fp32") -> "Budget":
        """The profile's defense budget on `device`: its budget fraction, defense batch size and learning rate."""
        return cls(fraction=profile.budget_fraction, batch_size=profile.defense_batch, lr=profile.defense_lr, device=device,
                   precision=precision)

    def steps(self, reference: int, minimum: int = 1) -> int:
        """`reference` scaled by the fraction, rounded up, at least `minimum`, never more than `reference`."""
        return min(reference, max(minimum, math.ceil(self.fraction * reference - 1e-9)))


@dataclass(frozen=True, eq=False)
class DefenseResult:
    encoder: Encoder  # same interface as the suspect
    meta: dict = field(default_factory=dict)  # timings, per-stage weights, inverted triggers...


class InputScorer(Protocol):
    """Float images (N, 3, H, W) in [0, 1] on the run's device -> (N,) scores; higher is more suspicious."""

    def __call__(self, images: Tensor) -> Tensor: ...


@dataclass(frozen=True, eq=False)
class InputDetector:
    """A test-time detector: an input is flagged (and rejected) when its score exceeds `threshold`."""

    score: InputScorer
    threshold: float

    @torch.no_grad()
    def flags(self, images: Tensor, device: torch.device, batch_size: int = 512) -> Tensor:
        """(N,) bool on the CPU for images (N, 3, H, W), uint8 or float in [0, 1]."""
        out = []
        for start in range(0, len(images), batch_size):
            x = images[start : start + batch_size].to(device)
            x = x.float() / 255 if x.dtype == torch.uint8 else x.float()
            out.append((self.score(x) > self.threshold).cpu())
        return torch.cat(out) if out else torch.zeros(0, dtype=torch.bool)


@dataclass(frozen=True, eq=False)
class DetectionResult:
    detector: InputDetector
    meta: dict = field(default_factory=dict)  # timings, the threshold's calibration, steps
