"""Downstream evaluation: frozen, L2-normalised features -> probe -> ACC and ASR.

The probe is trained on clean downstream-train features only. ASR is reported two
ways, both kept in every row because the literature uses both:
- `asr_all`: share of *all* triggered test images classified as the target
  (what the BadEncoder/MIMIC reference code reports);
- `asr_nontarget`: the same over test images whose true class is not the target
  (the NAD/ANP convention; a clean encoder scores near 0 here).

Behind a test-time input detector (a defense tagged `input_detection`), a flagged
input is rejected: it is neither a correct clean prediction nor a successful
triggered one, so ACC counts clean test images accepted and classified right,
ASR triggered test images accepted and classified as the target, each over all
of its images; the detector's true-positive rate (triggered images flagged) and
false-positive rate (clean images flagged) are reported beside them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from harness.contract import InputDetector
from harness.data import LabeledImages
from harness.models import Encoder
from harness.training import batched_features, seed_everything, shuffled_batches
from harness.triggers import Trigger


@dataclass(frozen=True)
class ProbeConfig:
    kind: str = "linear"  # "linear" or "mlp"
    epochs: int = 100
    batch_size: int = 256
    lr: float = 1e-2  # Adam
    hidden: tuple[int, ...] = (512, 256)  # the paper's MLP: D-512-256-C
    dropout: float = 0.5


@dataclass(frozen=True)
class Metrics:
    acc: float  # clean test accuracy, %
    asr_all: float  # triggered test images -> target, %, all test images
    asr_nontarget: float  # the same over test images of other classes, %
    n_test: int
    n_nontarget: int
    tpr: float | None = None  # behind a detector: triggered test images flagged, %
    fpr: float | None = None  # behind a detector: clean test images flagged, %

    def as_dict(self) -> dict:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


def extract_features(encoder: Encoder, images: Tensor, device: torch.device, batch_size: int = 512) -> Tensor:
    """L2-normalised features (N, D) on the CPU of uint8 images, the encoder in eval mode (its mode restored after)."""
    was_training = encoder.training
    features = batched_features(encoder.eval(), images, device, batch_size, normalise=True, to_cpu=True)
    encoder.train(was_training)
    return features


class RawPixels(nn.Module):
    """The image itself as its feature, flattened: what a probe reaches with no encoder at all (a usability control)."""

    def forward(self, x: Tensor) -> Tensor:
        return x.flatten(1)


def build_probe(in_dim: int, num_classes: int, cfg: ProbeConfig) -> nn.Module:
    if cfg.kind == "linear":
        return nn.Linear(in_dim, num_classes)
    layers: list[nn.Module] = []
    for width in cfg.hidden:
        layers += [nn.Linear(in_dim, width), nn.ReLU(), nn.Dropout(cfg.dropout)]
        in_dim = width
    return nn.Sequential(*layers, nn.Linear(in_dim, num_classes))


def train_probe(features: Tensor, labels: Tensor, num_classes: int, cfg: ProbeConfig, seed: int, device: torch.device) -> nn.Module:
    """A probe fitted with Adam and cross-entropy; the last epoch's probe is returned (as in the paper)."""
    gen = seed_everything(seed, "probe")
    probe = build_probe(features.shape[1], num_classes, cfg).to(device).train()
    optimizer = torch.optim.Adam(probe.parameters(), lr=cfg.lr)
    features, labels = features.to(device), labels.to(device)
    for _ in range(cfg.epochs):
        for idx in shuffled_batches(len(features), cfg.batch_size, gen, drop_last=False, device=device):
            loss = F.cross_entropy(probe(features[idx]), labels[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return probe.eval()


@torch.no_grad()
def predict(probe: nn.Module, features: Tensor, device: torch.device) -> Tensor:
    return probe(features.to(device)).argmax(1).cpu()


def evaluate(
    encoder: Encoder,
    train: LabeledImages,
    test: LabeledImages,
    trigger: Trigger,
    target: int,
    probe: ProbeConfig,
    seed: int,
    device: torch.device,
    detector: InputDetector | None = None,
) -> Metrics:
    """ACC and ASR of a probe on `encoder`'s frozen features, behind `detector` when given; see the module docstring."""
    if not 0 <= target < test.num_classes:
        raise ValueError(f"target class {target} is not a class of {test.name} (0..{test.num_classes - 1})")
    head = train_probe(extract_features(encoder, train.images, device), train.labels, train.num_classes, probe, seed, device)
    return classifier_metrics(encoder, head, test, trigger, target, device, detector)


def classifier_metrics(encoder: Encoder, head: nn.Module, test: LabeledImages, trigger: Trigger, target: int, device: torch.device,
                       detector: InputDetector | None = None) -> Metrics:
    """ACC and ASR of the classifier head(normalised encoder features) on clean and triggered test images, with the
    inputs `detector` flags rejected when one is given."""
    stamped = trigger.stamp(test.images)
    clean = predict(head, extract_features(encoder, test.images, device), device)
    triggered = predict(head, extract_features(encoder, stamped, device), device)
    correct, hit = clean == test.labels, triggered == target
    rates = {}
    if detector is not None:
        flagged_clean, flagged_triggered = detector.flags(test.images, device), detector.flags(stamped, device)
        correct, hit = correct & ~flagged_clean, hit & ~flagged_triggered
        rates = {"tpr": 100.0 * flagged_triggered.float().mean().item(), "fpr": 100.0 * flagged_clean.float().mean().item()}
    others = test.labels != target
    n_nontarget = int(others.sum())
    return Metrics(
        acc=100.0 * correct.float().mean().item(),
        asr_all=100.0 * hit.float().mean().item(),
        asr_nontarget=100.0 * hit[others].float().mean().item() if n_nontarget else float("nan"),
        n_test=len(test),
        n_nontarget=n_nontarget,
        **rates,
    )
