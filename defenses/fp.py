"""Fine-Pruning (Liu, Dolan-Gavitt and Garg, RAID 2018), for a label-free encoder.

Backdoor behaviour tends to live in channels that clean inputs leave dormant.
Fine-Pruning removes the channels of the last convolutional layer that are least
active on clean data, then fine-tunes to recover what pruning cost.

    1. a_c = mean over clean images and positions of relu(bn2(conv2(.)))_c in the
       last block of the last stage (the encoder's last convolutional layer);
    2. prune channels in increasing order of a_c: their filter and BatchNorm
       affine weights become zero, so the channel's output is exactly zero;
    3. fine-tune with the SSL loss, holding the pruned weights at zero.

Adaptation to a label-free encoder: the original prunes until clean *accuracy*
drops by a set amount, which needs labels. Here pruning stops before the mean
cosine between the pruned and the unpruned encoder's features on the clean
subset falls below `min_cosine` (and at most `max_share` of the channels go).
The fine-tuning is harness/finetune.py's SimCLR loss.

Budget: the fine-tuning of the common re-implementation (BackdoorBench's fp: 100
epochs), scaled by the budget's fraction; pruning itself is one pass.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from harness.contract import MIN_EPOCHS, Budget, CleanSubset, DefenseResult
from harness.finetune import FinetuneConfig, FinetuneSteps, ssl_finetune
from harness.models import BasicBlock, Encoder
from harness.registry import DEFENSES
from harness.training import seed_everything, to_float


@dataclass(frozen=True)
class FinePruningConfig:
    min_cosine: float = 0.95  # the label-free stopping rule: clean features must stay this close to the unpruned ones
    max_share: float = 0.9  # never prune more than this share of the channels
    epochs: int = 100  # reference fine-tuning epochs (scaled by the budget)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)

    def steps(self, budget: Budget) -> FinetuneSteps:
        return FinetuneSteps(finetune_epochs=budget.steps(self.epochs, MIN_EPOCHS))

    def __post_init__(self) -> None:
        if not 0 < self.min_cosine <= 1 or not 0 <= self.max_share < 1:
            raise ValueError(f"min_cosine must be in (0, 1] and max_share in [0, 1), got {self.min_cosine}, {self.max_share}")


def last_conv_block(encoder: Encoder) -> BasicBlock:
    """The last block of the last stage, whose second convolution is pruned; refused unless it is a basic block."""
    block = encoder.layer4[-1]
    if not isinstance(block, BasicBlock):
        raise ValueError(f"fine-pruning (fp) handles basic blocks only; this encoder's last block is a {type(block).__name__}: "
                         "choose another defense")
    return block


@torch.no_grad()
def last_conv_activity(encoder: Encoder, images: Tensor, device: torch.device, batch_size: int = 256) -> tuple[Tensor, Tensor]:
    """(shortcut input, last conv layer's BatchNorm output) of the last block on clean images: (N, C, H, W) each."""
    block = last_conv_block(encoder)
    shortcuts, branches = [], []
    for i in range(0, len(images), batch_size):
        maps, _ = encoder.forward_stages(to_float(images[i : i + batch_size], device))
        x = maps["layer3"]
        for earlier in encoder.layer4[:-1]:
            x = earlier(x)
        branches.append(block.bn2(block.conv2(F.relu(block.bn1(block.conv1(x))))))
        shortcuts.append(block.shortcut(x))
    return torch.cat(shortcuts), torch.cat(branches)


def channels_to_prune(shortcut: Tensor, branch: Tensor, min_cosine: float, max_share: float) -> tuple[list[int], float]:
    """The least active channels whose removal keeps clean features within `min_cosine`; and that cosine.

    Features after pruning channels P are avgpool(relu(branch * keep + shortcut)): the last block's output
    with the pruned channels' convolution removed, computed here for every prefix of the activity order.
    """
    order = branch.relu().mean(dim=(0, 2, 3)).argsort()  # least active first
    unpruned = F.adaptive_avg_pool2d(F.relu(branch + shortcut), 1).flatten(1)
    keep = torch.ones(branch.shape[1], device=branch.device)
    chosen, cosine = [], 1.0
    for c in order[: int(max_share * len(order))].tolist():
        keep[c] = 0
        pruned = F.adaptive_avg_pool2d(F.relu(branch * keep.view(1, -1, 1, 1) + shortcut), 1).flatten(1)
        trial = F.cosine_similarity(pruned, unpruned, dim=1).mean().item()
        if trial < min_cosine:
            break
        chosen.append(c)
        cosine = trial
    return chosen, cosine


@torch.no_grad()
def prune(encoder: Encoder, channels: list[int]) -> None:
    """Zero the filters and BatchNorm affine weights of `channels` in the last convolutional layer."""
    block = last_conv_block(encoder)
    block.conv2.weight[channels] = 0
    block.bn2.weight[channels] = 0
    block.bn2.bias[channels] = 0


@DEFENSES.register("fp", config=FinePruningConfig)
def fp(suspect: Encoder, clean: CleanSubset, budget: Budget, seed: int, config: FinePruningConfig) -> DefenseResult:
    gen = seed_everything(seed, "fp")
    device = budget.device
    encoder = suspect.to(device).eval()
    start = time.perf_counter()
    shortcut, branch = last_conv_activity(encoder, clean.images, device)
    channels, cosine = channels_to_prune(shortcut, branch, config.min_cosine, config.max_share)
    prune(encoder, channels)
    pruning_seconds = time.perf_counter() - start
    epochs = config.steps(budget).finetune_epochs
    trained = ssl_finetune(encoder, clean.images, epochs, budget, config.finetune, gen, "fp", after_step=lambda: prune(encoder, channels))
    meta = {
        "pruned_channels": sorted(channels),
        "pruned_share": len(channels) / branch.shape[1],
        "clean_cosine_after_pruning": cosine,
        "final_loss": trained["loss_per_epoch"][-1],
        "pruning_seconds": pruning_seconds,
        "finetune_seconds": trained["seconds"],
        "steps": config.steps(budget).as_dict(),
    }
    return DefenseResult(encoder.cpu(), meta)
