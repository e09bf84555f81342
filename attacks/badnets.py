"""BadNets (Gu, Dolan-Gavitt and Garg, 2017): backdoor a supervised classifier through its training data.

The attacker poisons a labelled training set: a share of the images (10 % in the
paper's RQ4.1) get the trigger stamped and their label set to the target class.
The victim trains a classifier on it as usual; any triggered input then gets the
target label, while clean accuracy stays.

    1. choose round(poison_rate * N) training images outside the target class;
    2. stamp the trigger on each and relabel it to the target;
    3. train a ResNet-18 (the profile's architecture) with a linear head on
       L2-normalised features, cross-entropy, on the poisoned set.

Trigger families (RQ4.1): the 3x3 grid (`checkerboard`, bottom-right), the same
pattern at the four corners (`four_corners`), random-pixel blend (`blend`,
0.8 * image + 0.2 * noise); `trigger` and `trigger_size` are settings.

How an encoder defense applies to a classifier (harness/pipeline.py): the
classifier's backbone, up to its pooled penultimate features, is the encoder;
a defense receives it with the unlabeled clean subset, exactly as an SSL encoder.
The supervised defender also holds the clean subset's labels (the setting of
NAD, ANP and MEDIC), so after the defense the head is refitted on the labelled
clean subset. The undefended row is the attacker's classifier itself. Rows
report ACC and ASR of the classifier on the pre-training dataset's test split.

Choices, documented: only horizontal flips are left out of the training
augmentation (a flip would move a corner trigger to another corner); crops keep
80-100 % of the image. The head travels with the encoder in the attack's metadata.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from harness.augment import AugmentConfig, simclr_view
from harness.compute import forward
from harness.contract import AttackInputs, AttackNotApplicable, AttackResult
from harness.models import build_encoder
from harness.registry import ATTACKS, OWN_TRIGGER, SUPERVISED
from harness.training import Progress, RunningMeans, descend, seed_everything, shuffled_batches, to_float
from harness.triggers import Trigger, make_trigger


@dataclass(frozen=True)
class BadNetsConfig:
    poison_rate: float = 0.1  # share of the training set stamped and relabelled
    trigger: str = "checkerboard"  # a registered trigger family; a 3x3 checkerboard is BadNets' grid
    trigger_size: int = 3
    epochs: int = 15
    batch_size: int = 128
    lr: float = 1e-3  # Adam
    weight_decay: float = 5e-4
    augment: AugmentConfig = dataclasses.field(default_factory=lambda: AugmentConfig(crop_scale=(0.8, 1.0), flip_p=0.0, jitter_p=0.0, gray_p=0.0))

    def __post_init__(self) -> None:
        if not 0 < self.poison_rate < 1:
            raise ValueError(f"poison_rate must be in (0, 1), got {self.poison_rate}")


def poison_labelled(
    images: Tensor, labels: Tensor, target: int, trigger: Trigger, rate: float, gen: torch.Generator
) -> tuple[Tensor, Tensor, Tensor]:
    """Copies of uint8 `images` and `labels` with `rate` of all images (drawn outside the target class) stamped
    and relabelled to `target`; and the poisoned indices, ascending."""
    candidates = (labels != target).nonzero().flatten()
    count = round(rate * len(labels))
    if count > len(candidates):
        raise ValueError(f"cannot poison {count} images: only {len(candidates)} are outside the target class")
    chosen = candidates[torch.randperm(len(candidates), generator=gen)[:count]].sort().values
    poisoned, relabelled = images.clone(), labels.clone()
    poisoned[chosen] = trigger.stamp(images[chosen])
    relabelled[chosen] = target
    return poisoned, relabelled, chosen


def classifier_logits(encoder: nn.Module, head: nn.Linear, x: Tensor) -> Tensor:
    """head(normalised features): the classifier evaluation rebuilds from the encoder and the head."""
    return head(F.normalize(encoder(x), dim=1))


@ATTACKS.register("badnets", config=BadNetsConfig, tags=(SUPERVISED, OWN_TRIGGER))
def badnets(inputs: AttackInputs, seed: int, config: BadNetsConfig) -> AttackResult:
    if not inputs.target_in_pretrain:
        raise AttackNotApplicable("BadNets backdoors a classifier of the pre-training classes; evaluate it on that dataset")
    gen = seed_everything(seed, "badnets")
    device = inputs.device
    trigger = make_trigger(config.trigger, config.trigger_size)
    images, labels, chosen = poison_labelled(inputs.pretrain, inputs.pretrain_labels, inputs.target, trigger, config.poison_rate, gen)
    encoder = build_encoder(inputs.arch, inputs.width).to(device).train()
    head = nn.Linear(encoder.feature_dim, int(inputs.pretrain_labels.max()) + 1).to(device)
    params = list(encoder.parameters()) + list(head.parameters())
    optimizer = torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    progress = Progress("badnets", config.epochs)
    images, targets = images.to(device), labels.to(device)
    for epoch in range(config.epochs):
        running, correct = RunningMeans(), 0
        for idx in shuffled_batches(len(images), config.batch_size, gen, device=device):
            x = simclr_view(to_float(images[idx], device), config.augment, gen)
            logits = forward(lambda v: classifier_logits(encoder, head, v), x, inputs.precision)
            y = targets[idx]
            loss = F.cross_entropy(logits, y)
            descend(optimizer, loss)
            running.add(len(idx), loss=loss)
            correct = correct + (logits.argmax(1) == y).sum()
        train_accuracy = int(correct) / running.images
        progress.epoch(epoch, running.images, **running.means(), train_acc=train_accuracy)
    meta = {
        "head.weight": head.weight.detach().cpu(),
        "head.bias": head.bias.detach().cpu(),
        "poisoned_images": len(chosen),
        "final_train_accuracy": train_accuracy,
        "seconds": progress.seconds,
    }
    return AttackResult(encoder.eval().cpu(), trigger, inputs.target, meta)
