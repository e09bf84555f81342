"""Exposure: does the defender's clean data exercise the backdoor?

A defense that distils or fine-tunes on clean data can only meet a backdoor
where that data, under the augmentations the defense draws, already evokes the
backdoor's response. A random student never inherits what its teacher never
shows it, so a defense "removing" an unexposed backdoor proves little about an
exposed one. Exposure is measured before, and independently of, any defense.

Definition (evaluation side: it uses the trigger, so it never reaches a defense):
- the backdoor region of an encoder f: t* = the mean L2-normalised feature of the
  triggered test images, tau = the `quantile` (10th percentile) of their cosines
  to t*, region = {z : cos(z, t*) >= tau} (it holds 90 % of triggered images);
- E(f) = share of augmented views of the defender's clean images whose feature
  lies in the region, minus the share of clean (untriggered) test images that do:
  how much more the defender's data evokes the trigger's response than ordinary
  inputs;
- the row's exposure = E(suspect) - E(clean encoder), in percentage points. The
  clean encoder's region is that of a trigger it never learned, so E(clean) is
  the baseline of what augmentation alone does.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from harness.augment import AugmentConfig, simclr_view
from harness.models import Encoder
from harness.training import seed_everything, to_float
from harness.triggers import Trigger


@dataclass(frozen=True)
class ExposureConfig:
    views: int = 4  # augmented views drawn per clean image
    quantile: float = 0.1  # tau: this quantile of the triggered test images' cosines to t*
    # The augmentation the distilling and fine-tuning defenses draw (MIMIC, MEDIC, FT, FP, NAD).
    augment: AugmentConfig = dataclasses.field(default_factory=lambda: AugmentConfig(crop_scale=(0.2, 1.0)))

    def __post_init__(self) -> None:
        if self.views < 1 or not 0 < self.quantile < 1:
            raise ValueError(f"need views >= 1 and quantile in (0, 1), got {self.views}, {self.quantile}")


@dataclass(frozen=True)
class Exposure:
    views_in_region: float  # share of augmented clean views in the backdoor region, %
    test_in_region: float  # share of clean test images in it, %
    tau: float  # the region's cosine bound

    @property
    def score(self) -> float:
        """E(f): percentage points by which the defender's views exceed ordinary inputs."""
        return self.views_in_region - self.test_in_region


@torch.no_grad()
def _features(encoder: Encoder, x: Tensor, device: torch.device, batch_size: int = 512) -> Tensor:
    """L2-normalised features of float or uint8 images, in batches."""
    out = []
    for i in range(0, len(x), batch_size):
        batch = x[i : i + batch_size]
        batch = to_float(batch, device) if batch.dtype == torch.uint8 else batch.to(device)
        out.append(F.normalize(encoder(batch), dim=1).cpu())
    return torch.cat(out)


@torch.no_grad()
def measure(
    encoder: Encoder, clean: Tensor, test: Tensor, trigger: Trigger, cfg: ExposureConfig, seed: int, device: torch.device
) -> Exposure:
    """E(encoder) for the defender's uint8 `clean` images and uint8 downstream `test` images."""
    gen = seed_everything(seed, "exposure")
    encoder = encoder.to(device).eval()
    triggered = _features(encoder, trigger.stamp(test), device)
    centre = F.normalize(triggered.mean(0, keepdim=True), dim=1)
    tau = torch.quantile(triggered @ centre.T, cfg.quantile).item()
    x = to_float(clean, device)
    views = torch.cat([simclr_view(x, cfg.augment, gen) for _ in range(cfg.views)])
    in_views = (_features(encoder, views, device) @ centre.T >= tau).float().mean().item()
    in_test = (_features(encoder, test, device) @ centre.T >= tau).float().mean().item()
    return Exposure(100.0 * in_views, 100.0 * in_test, tau)


def exposure(suspect: Exposure, clean_encoder: Exposure) -> float:
    """The row's exposure: E(suspect) - E(clean encoder), percentage points."""
    return suspect.score - clean_encoder.score
