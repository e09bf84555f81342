"""Pieces every training loop shares: seeding, batching, optimisers, the epoch loop, the two-view distillation step, progress."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import random
import sys
import time
from dataclasses import dataclass
from typing import Callable, Iterator, TextIO

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from harness.augment import AugmentConfig, simclr_view
from harness.compute import forward_stages
from harness.models import Encoder, clone_architecture


def seed_everything(seed: int, stage: str) -> torch.Generator:
    """Seed Python, numpy and torch for one stage; return a CPU generator for the stage's own draws.

    Each stage draws from its own stream, derived from (stage, seed): a distillation
    student seeded like the pre-training run would otherwise start from the very
    initial weights the victim encoder started from.
    """
    seed = int.from_bytes(hashlib.sha256(f"{stage}:{seed}".encode()).digest()[:8], "little") % 2**63
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def to_float(images: Tensor, device: torch.device) -> Tensor:
    """uint8 (N, 3, H, W) -> float in [0, 1] on `device`."""
    return images.to(device, non_blocking=True).float().div_(255)


def shuffled_batches(n: int, batch_size: int, gen: torch.Generator, drop_last: bool = True,
                     device: torch.device | None = None) -> Iterator[Tensor]:
    """Index batches of a random permutation of range(n), drawn on the CPU (the same on every device) and moved to
    `device` once an epoch rather than once a batch."""
    order = torch.randperm(n, generator=gen)
    order = order if device is None else order.to(device)
    stop = n - n % batch_size if drop_last and n >= batch_size else n
    for i in range(0, stop, batch_size):
        yield order[i : i + batch_size]


def steps_per_epoch(n: int, batch_size: int) -> int:
    return max(1, n // batch_size)


def make_optimizer(params, kind: str, lr: float, weight_decay: float = 0.0) -> torch.optim.Optimizer:
    if kind == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if kind == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {kind!r}; choose adam or sgd")


def cosine_schedule(optimizer: torch.optim.Optimizer, total_steps: int) -> torch.optim.lr_scheduler.LRScheduler:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total_steps) / total_steps)))


def freeze(model: nn.Module) -> nn.Module:
    """Eval mode and no gradients: a teacher or a reference model."""
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def teacher_and_student(suspect: Encoder, device: torch.device) -> tuple[Encoder, Encoder]:
    """The suspect, frozen, as the teacher and a randomly initialised student of its architecture.

    The student's initial weights come from the torch seed the caller's stage has just set.
    """
    teacher = freeze(suspect.to(device))
    return teacher, clone_architecture(teacher).train()


@dataclass(frozen=True, eq=False)
class TwoViews:
    """Two fresh views of each image of a batch, through a frozen teacher (no gradient) and a student, in fp32."""

    views: Tensor  # (2N, 3, H, W): the first view of every image, then the second
    teacher_stages: dict[str, Tensor]
    teacher_feature: Tensor  # (2N, D)
    student_stages: dict[str, Tensor]
    student_feature: Tensor  # (2N, D)


def through_teacher_and_student(teacher: Encoder, student: Encoder, x: Tensor, augment: AugmentConfig, gen: torch.Generator,
                                precision: str) -> TwoViews:
    """The step distillation defenses share (MIMIC, NAD, MEDIC): draw two views of the float batch `x`, run the
    teacher on them without gradients and the student with, each under the run's precision."""
    views = torch.cat([simclr_view(x, augment, gen), simclr_view(x, augment, gen)])
    with torch.no_grad():
        t_stages, t_feat = forward_stages(teacher, views, precision)
    s_stages, s_feat = forward_stages(student, views, precision)
    return TwoViews(views, t_stages, t_feat, s_stages, s_feat)


def descend(optimizer: torch.optim.Optimizer, loss: Tensor) -> None:
    """One optimiser step on `loss`."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def run_epochs(
    stage: str, epochs: int, n: int, batch_size: int, gen: torch.Generator,
    step: Callable[[Tensor, int], dict[str, float | Tensor]], note: Callable[[int], dict[str, float]] | None = None,
    device: torch.device | None = None,
) -> "Progress":
    """The loop every method shares: `epochs` passes over shuffled index batches of range(n).

    `step(idx, epoch)` trains on one batch and returns its loss terms (floats or 0-d tensors, read once an
    epoch); each epoch's
    progress line shows their means over the epoch's images, plus what `note(epoch)` adds.
    Index batches are on `device` when given. Returns the finished `Progress` (its `seconds` is the loop's time).
    """
    progress = Progress(stage, epochs)
    for epoch in range(epochs):
        running = RunningMeans()
        for idx in shuffled_batches(n, batch_size, gen, device=device):
            running.add(len(idx), **step(idx, epoch))
        means = running.means()
        for k, v in means.items():
            progress.history.setdefault(k, []).append(v)
        progress.epoch(epoch, running.images, **means, **(note(epoch) if note else {}))
    return progress


@torch.no_grad()
def batched_features(encoder: nn.Module, images: Tensor, device: torch.device, batch_size: int = 512, normalise: bool = False,
                     to_cpu: bool = False) -> Tensor:
    """Features of images (N, 3, H, W), uint8 or float in [0, 1], in batches and without gradients, in the encoder's
    current mode; L2-normalised when asked; on `device`, or gathered on the CPU (`to_cpu`) for large sets."""
    encoder = encoder.to(device)  # wherever the store, a cache hit or a user's file left it
    out = []
    for i in range(0, len(images), batch_size):
        batch = images[i : i + batch_size]
        h = encoder(to_float(batch, device) if batch.dtype == torch.uint8 else batch.to(device))
        h = F.normalize(h, dim=1) if normalise else h
        out.append(h.cpu() if to_cpu else h)
    return torch.cat(out)


# -- progress -----------------------------------------------------------------------

# The standard logging module, so that a host decides where progress goes: pytest captures it with each
# test's output and shows it live with --log-cli-level=INFO; `harness` commands send it to stderr.
log = logging.getLogger("harness")


@contextlib.contextmanager
def progress_to(stream: TextIO | None = None) -> Iterator[None]:
    """Inside the block, write the harness's progress lines to `stream` (default: stderr), as `harness` commands do."""
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    level = log.level
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        yield
    finally:
        log.removeHandler(handler)
        log.setLevel(level)


class RunningMeans:
    """An epoch's loss terms averaged over its images (each batch weighted by its size).

    Terms may be floats or 0-d tensors: tensors are summed where they are, in float64 (what Python floats
    would give), and read once, by `means`, so a training loop on a GPU waits for it once an epoch, not
    once a step.
    """

    def __init__(self) -> None:
        self.images = 0
        self._sums: dict[str, float | Tensor] = {}

    def add(self, batch_size: int, **values: float | Tensor) -> None:
        self.images += batch_size
        for k, v in values.items():
            v = v.detach().double() if isinstance(v, Tensor) else v
            self._sums[k] = self._sums.get(k, 0.0) + v * batch_size

    def means(self) -> dict[str, float]:
        return {k: float(total / self.images) for k, total in self._sums.items()}


class Progress:
    """One line per epoch, readable live and in a CI log: stage, epoch, loss, images/s, elapsed."""

    def __init__(self, stage: str, epochs: int) -> None:
        self.stage, self.epochs = stage, epochs
        self.history: dict[str, list[float]] = {}  # per-epoch means of each loss term (run_epochs fills it)
        self.start = time.perf_counter()
        self._epoch_start = self.start

    def epoch(self, epoch: int, images: int, **metrics: float) -> None:
        now = time.perf_counter()
        rate = images / max(now - self._epoch_start, 1e-9)
        shown = " ".join(f"{k} {v:.4f}" for k, v in metrics.items())
        log.info("[%s] epoch %d/%d %s %.0f img/s %.1fs", self.stage, epoch + 1, self.epochs, shown, rate, now - self.start)
        self._epoch_start = now

    def note(self, text: str) -> None:
        log.info("[%s] %s", self.stage, text)

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.start
