"""BASSL: Backdoor Attacks on Self-Supervised Learning (Saha et al., CVPR 2022).

The attacker never touches the encoder; it only publishes poisoned images that
end up in the victim's pre-training set:

    1. choose round(poison_rate * n) of the n pre-training images of the target
       category (the reference poisons all of them);
    2. paste the trigger onto each at a random in-bounds position, drawn once
       (the poisoned file is fixed across epochs);
    3. the victim pre-trains SimCLR on the poisoned set with its usual recipe.

SimCLR's augmented views of a poisoned image share the trigger, so the encoder
learns the trigger as a feature of the target category; triggered images of
other categories then land near that category downstream.

Choices, documented:
- The trigger is an opaque colour patch (Saha et al. paste colourful patches) of
  the profile's trigger size; `color` is a setting, red by default. Measured on
  the tiny profile (seed 0, Fashion-MNIST): with the profile's one-pixel
  checkerboard BASSL did nothing (ASR(non-target) 2.81 %, the clean encoder's
  2.81 %), since SimCLR's resized crops blur a one-pixel pattern and views cannot
  agree on it; a white patch gave 8.4 % (clean 3.1 %); a red patch, a feature
  no grayscale garment has and every crop keeps, gave 83.9 % (clean 2.1 %).
- The victim run is the clean encoder's run of the same seed (same
  initialisation, augmentation stream and recipe): the only difference between
  the clean control and the suspect is the poison.
- Evaluation stamps the trigger at its default place (the bottom-right corner,
  one of the positions seen in training), the same place every attack uses.
- The target is a pre-training category, so BASSL aims only at downstream tasks
  with the pre-training classes; elsewhere it raises `AttackNotApplicable`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import Tensor

from harness.contract import AttackInputs, AttackNotApplicable, AttackResult
from harness.models import build_encoder
from harness.registry import ATTACKS
from harness.ssl import train_simclr
from harness.training import seed_everything
from harness.triggers import PatchConfig, Trigger, patch


@dataclass(frozen=True)
class BASSLConfig:
    poison_rate: float = 1.0  # share of the target category's pre-training images that carry the trigger
    color: tuple[float, float, float] = (1.0, 0.0, 0.0)  # of the patch trigger, RGB in [0, 1]

    def __post_init__(self) -> None:
        if not 0 < self.poison_rate <= 1:
            raise ValueError(f"poison_rate must be in (0, 1], got {self.poison_rate}")


@dataclass(frozen=True, eq=False)
class Poisoning:
    indices: Tensor  # (P,) positions in the pre-training set, ascending
    tops: Tensor  # (P,) row of each pasted trigger's box
    lefts: Tensor  # (P,) column


def poison(images: Tensor, labels: Tensor, category: int, trigger: Trigger, rate: float, gen: torch.Generator) -> tuple[Tensor, Poisoning]:
    """A copy of uint8 `images` with the trigger pasted at random positions on `rate` of `category`'s images."""
    candidates = (labels == category).nonzero().flatten()
    chosen = candidates[torch.randperm(len(candidates), generator=gen)[: round(rate * len(candidates))]].sort().values
    top, left, bottom, right = trigger.box()
    rows, cols = images.shape[-2] - (bottom - top + 1), images.shape[-1] - (right - left + 1)  # the last in-bounds box corner
    tops = torch.randint(0, rows + 1, (len(chosen),), generator=gen)
    lefts = torch.randint(0, cols + 1, (len(chosen),), generator=gen)
    poisoned = images.clone()
    for i, t, l in zip(chosen.tolist(), tops.tolist(), lefts.tolist()):
        poisoned[i] = trigger.placed(t, l).stamp(images[i : i + 1])[0]
    return poisoned, Poisoning(chosen, tops, lefts)


@ATTACKS.register("bassl", config=BASSLConfig)
def bassl(inputs: AttackInputs, seed: int, config: BASSLConfig) -> AttackResult:
    if not inputs.target_in_pretrain:
        raise AttackNotApplicable("BASSL poisons a pre-training category, and this downstream task does not have the pre-training classes")
    start = time.perf_counter()
    top, _, bottom, _ = inputs.trigger.box()
    trigger = patch(PatchConfig(size=bottom - top + 1, color=config.color))  # the profile's trigger size
    poisoned, plan = poison(inputs.pretrain, inputs.pretrain_labels, inputs.target, trigger, config.poison_rate, seed_everything(seed, "bassl"))
    seed_everything(seed, "simclr")  # the victim's own initialisation and stream: only the poison differs from the clean run
    encoder, trained = train_simclr(build_encoder(inputs.arch, inputs.width), poisoned, inputs.ssl, seed, inputs.device, stage="bassl")
    meta = {
        "poisoned_images": len(plan.indices),
        "poisoned_share_of_pretraining": len(plan.indices) / len(inputs.pretrain),
        "loss_per_epoch": trained["loss_per_epoch"],
        "seconds": time.perf_counter() - start,
    }
    return AttackResult(encoder.cpu(), trigger, inputs.target, meta)
