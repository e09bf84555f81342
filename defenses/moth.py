"""MOTH: model orthogonalisation by class-distance hardening (Tao et al., IEEE S&P 2022), for an encoder.

A backdoor is a shortcut between classes: a small trigger moves any input to
the target class. MOTH measures, for pairs of classes (a, b), the smallest
trigger that moves class-a inputs to b, and trains the model on class-a inputs
stamped with that trigger while keeping their label a. The distance between
classes grows, and the backdoor's shortcut closes with the others.

Adaptation to a label-free encoder (the original hardens a classifier):
- classes: k-means (k = `classes`) on the suspect's L2-normalised features of the
  clean subset gives pseudo-labels; a linear head fitted on those features gives
  the classifier MOTH needs (both from features only, never from true labels);
- each hardening step draws a pair (a, b) among the classes of the batch,
  inverts a mask m and pattern p for `inversion_steps` steps
      min_{m, p} CE(head(f(x'_a)), b) + lambda * ||m||_1 / (H W),  x' = (1 - m) x + m p,
  then trains the encoder with
      CE(head(f'(x'_a)), a) + CE(head(f'(x)), y) + mean(1 - cos(f'(x), f(x))),
  the last term keeping clean features where the suspect had them (the head is fixed);
- BatchNorm in training mode, as the original's ordinary training of the model.
  With BatchNorm frozen, Adam's first steps (about lr on every weight, even where
  the gradient is ~0) shift activations the frozen statistics cannot absorb:
  measured on the tiny BadEncoder suspect, clean features collapsed to one
  direction within two steps and ACC fell to 11 %; in training mode it lost 1.7-3.5
  points over three seeds. The profile's defense epochs and learning rate.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from harness.contract import Budget, CleanSubset, DefenseResult
from harness.models import Encoder
from harness.registry import DEFENSES
from harness.training import Progress, RunningMeans, freeze, seed_everything, shuffled_batches, to_float


@dataclass(frozen=True)
class MothConfig:
    classes: int = 10  # k of the k-means pseudo-labels
    head_steps: int = 300  # Adam steps fitting the linear head on the pseudo-labels
    inversion_steps: int = 5  # trigger optimisation steps per hardening step
    inversion_lr: float = 0.1
    l1_weight: float = 1.0  # lambda of the mask's L1 share

    def __post_init__(self) -> None:
        if self.classes < 2:
            raise ValueError(f"MOTH needs at least 2 pseudo-classes, got {self.classes}")


@torch.no_grad()
def clean_features(encoder: Encoder, images: Tensor, device: torch.device, batch_size: int = 256) -> Tensor:
    return torch.cat([F.normalize(encoder(to_float(images[i : i + batch_size], device)), dim=1) for i in range(0, len(images), batch_size)])


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


def invert_pair(encoder: Encoder, head: nn.Module, x: Tensor, target: int, cfg: MothConfig, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """A mask and pattern that move the images x towards pseudo-class `target`; the encoder is not changed."""
    device = x.device
    mask_logits = torch.full((1, *x.shape[2:]), -2.0, device=device, requires_grad=True)
    pattern_logits = torch.randn(x.shape[1:], generator=gen).to(device).requires_grad_()
    optimizer = torch.optim.Adam([mask_logits, pattern_logits], lr=cfg.inversion_lr)
    labels = torch.full((len(x),), target, device=device)
    for _ in range(cfg.inversion_steps):
        mask, pattern = torch.sigmoid(mask_logits), torch.sigmoid(pattern_logits)
        logits = head(F.normalize(encoder((1 - mask) * x + mask * pattern), dim=1))
        loss = F.cross_entropy(logits, labels) + cfg.l1_weight * mask.mean()
        # Gradients for the trigger only: the encoder's own .grad stays untouched.
        mask_logits.grad, pattern_logits.grad = torch.autograd.grad(loss, [mask_logits, pattern_logits])
        optimizer.step()
    return torch.sigmoid(mask_logits).detach(), torch.sigmoid(pattern_logits).detach()


def hardening_loss(head: nn.Module, stamped: Tensor, source: int, clean: Tensor, labels: Tensor, original: Tensor) -> Tensor:
    """CE(head(f'(x'_a)), a) + CE(head(f'(x)), y) + mean(1 - cos(f'(x), f(x))), features (N, D)."""
    keep_source = F.cross_entropy(head(F.normalize(stamped, dim=1)), torch.full((len(stamped),), source, device=stamped.device))
    keep_clean = F.cross_entropy(head(F.normalize(clean, dim=1)), labels)
    return keep_source + keep_clean + (1 - F.cosine_similarity(clean, original, dim=1)).mean()


@DEFENSES.register("moth", config=MothConfig)
def moth(suspect: Encoder, clean: CleanSubset, budget: Budget, seed: int, config: MothConfig) -> DefenseResult:
    gen = seed_everything(seed, "moth")
    device = budget.device
    reference = freeze(copy.deepcopy(suspect).to(device))
    start = time.perf_counter()
    features = clean_features(reference, clean.images, device)
    labels = pseudo_labels(features, config.classes, seed).to(device)
    classes = int(labels.max()) + 1
    head = fit_head(features, labels, classes, config.head_steps)
    head_accuracy = (head(features).argmax(1) == labels).float().mean().item()
    labelling_seconds = time.perf_counter() - start

    encoder = suspect.to(device).train()  # BatchNorm in training mode (see the module docstring)
    optimizer = torch.optim.Adam(encoder.parameters(), lr=budget.lr)
    progress = Progress("moth", budget.epochs)
    mask_shares = []
    for epoch in range(budget.epochs):
        running = RunningMeans()
        for idx in shuffled_batches(len(clean), budget.batch_size, gen):
            x, y = to_float(clean.images[idx], device), labels[idx.to(device)]
            present = y.unique()
            source = int(present[torch.randint(len(present), (1,), generator=gen)])
            target = int(torch.randint(classes - 1, (1,), generator=gen))
            target += target >= source  # any class but the source
            x_source = x[y == source]
            mask, pattern = invert_pair(encoder.eval(), head, x_source, target, config, gen)  # the model as it stands
            encoder.train()
            mask_shares.append(mask.mean().item())
            with torch.no_grad():
                original = reference(x)
            h = encoder(torch.cat([(1 - mask) * x_source + mask * pattern, x]))
            loss = hardening_loss(head, h[: len(x_source)], source, h[len(x_source) :], y, original)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            running.add(len(idx), loss=loss.item())
        progress.epoch(epoch, running.images, **running.means(), mask=float(np.mean(mask_shares[-5:])))

    meta = {
        "pseudo_classes": classes,
        "head_accuracy_on_pseudo_labels": head_accuracy,
        "mean_inverted_mask_share": float(np.mean(mask_shares)),
        "labelling_seconds": labelling_seconds,
        "hardening_seconds": progress.seconds,
        "epochs": budget.epochs,
    }
    return DefenseResult(encoder.eval().cpu(), meta)
