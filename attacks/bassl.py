"""BASSL: Backdoor Attacks on Self-Supervised Learning (Saha et al., CVPR 2022).

The attacker never touches the encoder; it only publishes poisoned images that
end up in the victim's pre-training set. The MIMIC paper's protocol, for any
downstream task: "we migrate more than half of the downstream target class to
inject backdoors":

    1. take round(inserted_share * T) of the T downstream-train images of the
       target class (`inserted_share` 0.6 by default: more than half);
    2. paste the trigger onto each at a random in-bounds position, drawn once
       (the poisoned file is fixed across epochs), and add them to the
       pre-training set;
    3. the victim pre-trains SimCLR on the poisoned set with its usual recipe.

Saha et al.'s own protocol, poisoning `poison_rate` of the pre-training images of
the target category, stays as a setting (0 by default; it needs a downstream task
with the pre-training classes).

SimCLR's augmented views of a poisoned image share the trigger, so the encoder
learns the trigger as a feature of the target category; triggered images of
other categories then land near that category downstream.

Choices, documented:
- The trigger is an opaque colour patch (Saha et al. paste colourful patches) of
  the profile's trigger size; `color` is a setting, red by default: on grayscale
  pre-training data a red patch is a feature no clean image has and every crop
  keeps, where SimCLR's resized crops blur a one-pixel pattern (an attack-side
  choice; on tiny no colour tried implants, see `BASSLConfig`).
- The victim run is the clean encoder's run of the same seed (same
  initialisation, augmentation stream and recipe): the only difference between
  the clean control and the suspect is the poison.
- Evaluation stamps the trigger at its default place (the bottom-right corner,
  one of the positions seen in training), the same place every attack uses.
- Inserted images are the downstream task's own training images, so the victim's
  pre-training set grows by their number; the downstream probe later trains on the
  same (clean) images.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import Tensor

from harness.contract import AttackInputs, AttackNotApplicable, AttackResult
from harness.models import build_encoder
from harness.registry import ATTACKS, OWN_TRIGGER
from harness.ssl import train_simclr
from harness.training import seed_everything
from harness.triggers import PatchConfig, Trigger, patch


@dataclass(frozen=True)
class BASSLConfig:
    # Attack side, the implant criterion: on tiny each of the attacker's levers was tried on seed 0,
    # Fashion-MNIST (every target-class image inserted, Saha et al.'s poisoning of half the target
    # pre-training category, a green and a yellow patch) by `python benchmarks/calibrate.py implant bassl
    # --attack-set SETTING=VALUE --downstream fmnist --seeds 1`; none implants under the tiny victim's
    # SimCLR recipe, so the defaults stay the paper's protocol and tiny's BASSL rows read "attack did not
    # implant" (README). Re-check on another profile.
    inserted_share: float = 0.6  # of the downstream target class's training images, triggered and inserted (the paper: more than half)
    poison_rate: float = 0.0  # Saha et al.: share of the target pre-training category's images that carry the trigger
    color: tuple[float, float, float] = (1.0, 0.0, 0.0)  # of the patch trigger, RGB in [0, 1]

    def __post_init__(self) -> None:
        if not 0 <= self.inserted_share <= 1 or not 0 <= self.poison_rate <= 1:
            raise ValueError(f"inserted_share and poison_rate must be in [0, 1], got {self.inserted_share}, {self.poison_rate}")
        if not self.inserted_share and not self.poison_rate:
            raise ValueError("BASSL needs inserted_share or poison_rate above 0")


def paste_at_random(images: Tensor, trigger: Trigger, gen: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
    """A copy of uint8 `images` with the trigger pasted at one random in-bounds position each; and (tops, lefts)."""
    top, left, bottom, right = trigger.box()
    rows, cols = images.shape[-2] - (bottom - top + 1), images.shape[-1] - (right - left + 1)  # the last in-bounds box corner
    tops = torch.randint(0, rows + 1, (len(images),), generator=gen)
    lefts = torch.randint(0, cols + 1, (len(images),), generator=gen)
    pasted = images.clone()
    for i, (t, l) in enumerate(zip(tops.tolist(), lefts.tolist())):
        pasted[i] = trigger.placed(t, l).stamp(images[i : i + 1])[0]
    return pasted, tops, lefts


@dataclass(frozen=True, eq=False)
class Poisoning:
    indices: Tensor  # (P,) positions in the poisoned pre-training set of the images that carry the trigger, ascending
    tops: Tensor  # (P,) row of each pasted trigger's box
    lefts: Tensor  # (P,) column


def poison(images: Tensor, labels: Tensor, category: int, trigger: Trigger, rate: float, gen: torch.Generator) -> tuple[Tensor, Poisoning]:
    """Saha et al.: a copy of uint8 `images` with the trigger pasted on `rate` of `category`'s images."""
    candidates = (labels == category).nonzero().flatten()
    chosen = candidates[torch.randperm(len(candidates), generator=gen)[: round(rate * len(candidates))]].sort().values
    pasted, tops, lefts = paste_at_random(images[chosen], trigger, gen)
    poisoned = images.clone()
    poisoned[chosen] = pasted
    return poisoned, Poisoning(chosen, tops, lefts)


def insert(pretrain: Tensor, target_images: Tensor, trigger: Trigger, share: float, gen: torch.Generator) -> tuple[Tensor, Poisoning]:
    """The MIMIC paper's protocol: `pretrain` followed by round(share * T) triggered target-class images."""
    chosen = torch.randperm(len(target_images), generator=gen)[: round(share * len(target_images))].sort().values
    pasted, tops, lefts = paste_at_random(target_images[chosen], trigger, gen)
    return torch.cat([pretrain, pasted]), Poisoning(torch.arange(len(pretrain), len(pretrain) + len(chosen)), tops, lefts)


@ATTACKS.register("bassl", config=BASSLConfig, tags=(OWN_TRIGGER,))
def bassl(inputs: AttackInputs, seed: int, config: BASSLConfig) -> AttackResult:
    if config.poison_rate and not inputs.target_in_pretrain:
        raise AttackNotApplicable("poison_rate poisons a pre-training category, and this downstream task does not have the pre-training classes")
    start = time.perf_counter()
    gen = seed_everything(seed, "bassl")
    top, _, bottom, _ = inputs.trigger.box()
    trigger = patch(PatchConfig(size=bottom - top + 1, color=config.color))  # the profile's trigger size
    images, saha = inputs.pretrain, None
    if config.poison_rate:
        images, saha = poison(images, inputs.pretrain_labels, inputs.target, trigger, config.poison_rate, gen)
    images, inserted = insert(images, inputs.target_images, trigger, config.inserted_share, gen)
    seed_everything(seed, "simclr")  # the victim's own initialisation and stream: only the poison differs from the clean run
    encoder, trained = train_simclr(build_encoder(inputs.arch, inputs.width), images, inputs.ssl, seed, inputs.device, stage="bassl")
    poisoned = len(inserted.indices) + (len(saha.indices) if saha else 0)
    meta = {
        "inserted_images": len(inserted.indices),
        "poisoned_pretraining_images": len(saha.indices) if saha else 0,
        "poisoned_share_of_pretraining": poisoned / len(images),
        "loss_per_epoch": trained["loss_per_epoch"],
        "seconds": time.perf_counter() - start,
    }
    return AttackResult(encoder.cpu(), trigger, inputs.target, meta)
