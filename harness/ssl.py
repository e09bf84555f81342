"""SimCLR pre-training (Chen et al., 2020): two augmented views, NT-Xent loss.

    L = -1/2N sum_i [log softmax_j(sim(z_i, z_j) / tau)]_{j = positive(i)},
    sim = cosine, over the 2N projections of a batch, self-pairs excluded.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import Tensor

from harness.augment import AugmentConfig, simclr_view
from harness.compute import forward
from harness.losses import nt_xent
from harness.models import Encoder, Projector, build_encoder
from harness.training import RunningMeans, Progress, cosine_schedule, descend, seed_everything, shuffled_batches, steps_per_epoch, to_float


@dataclass(frozen=True)
class SimCLRConfig:
    epochs: int
    batch_size: int = 256
    lr: float = 1e-3
    temperature: float = 0.5
    proj_dim: int = 128
    augment: AugmentConfig = dataclasses.field(default_factory=AugmentConfig)
    precision: str = "fp32"  # of the encoder and projector forwards (harness/compute.py); the loss is fp32


def simclr_step(encoder: Encoder, projector: Projector, x: Tensor, cfg: SimCLRConfig, gen: torch.Generator) -> Tensor:
    """NT-Xent loss of one float batch (two fresh views)."""
    v1, v2 = simclr_view(x, cfg.augment, gen), simclr_view(x, cfg.augment, gen)
    z = forward(lambda views: projector(encoder(views)), torch.cat([v1, v2]), cfg.precision)
    z1, z2 = z.chunk(2)
    return nt_xent(z1, z2, cfg.temperature)


def train_simclr(
    encoder: Encoder, images: Tensor, cfg: SimCLRConfig, seed: int, device: torch.device, stage: str = "simclr"
) -> tuple[Encoder, dict]:
    """Train `encoder` in place with SimCLR on uint8 `images` (moved to `device` once); returns it with training metadata."""
    gen = seed_everything(seed, "simclr")
    images = images.to(device)
    encoder = encoder.to(device).train()
    projector = Projector(encoder.feature_dim, cfg.proj_dim).to(device).train()
    params = list(encoder.parameters()) + list(projector.parameters())
    optimizer = torch.optim.Adam(params, lr=cfg.lr, weight_decay=1e-6)
    scheduler = cosine_schedule(optimizer, cfg.epochs * steps_per_epoch(len(images), cfg.batch_size))
    progress = Progress(stage, cfg.epochs)
    losses = []
    for epoch in range(cfg.epochs):
        running = RunningMeans()
        for idx in shuffled_batches(len(images), cfg.batch_size, gen, device=device):
            loss = simclr_step(encoder, projector, to_float(images[idx], device), cfg, gen)
            descend(optimizer, loss)
            scheduler.step()
            running.add(len(idx), loss=loss)
        losses.append(running.means()["loss"])
        progress.epoch(epoch, running.images, loss=losses[-1])
    encoder.eval()
    return encoder, {"loss_per_epoch": losses, "images": len(images), "img_per_s": cfg.epochs * len(images) / progress.seconds}


def pretrain(arch: str, width: int, images: Tensor, cfg: SimCLRConfig, seed: int, device: torch.device) -> tuple[Encoder, dict]:
    """A SimCLR encoder trained from a seeded random initialisation."""
    seed_everything(seed, "simclr")
    return train_simclr(build_encoder(arch, width), images, cfg, seed, device)
