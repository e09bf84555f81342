"""Exposure: does the defender's clean data exercise the backdoor?

A defense that distils or fine-tunes on clean data can only meet a backdoor
where that data, under the augmentations the defense draws, already evokes the
backdoor's response. A random student never inherits what its teacher never
shows it, so a defense "removing" an unexposed backdoor proves little about an
exposed one. Exposure is measured before, and independently of, any defense.

Definition (evaluation side: it uses the trigger, so it never reaches a defense).
For an encoder f, with features centred on the mean feature of the reference
images R (clean held-out test images of the pre-training domain: the defender's
kind of image, never poisoned) and L2-normalised:
- the backdoor direction t* = the normalised mean of the triggered downstream
  test images' features, and s(x) = cos(f(x), t*);
- the halfway bound h = the midpoint of the median s over R and the median s
  over the triggered images: "at least halfway from an ordinary input to the
  trigger's response";
- E(f) = the share of augmented views of the defender's clean images with
  s >= h, minus the share of R with s >= h, in percentage points;
- the row's exposure = E(suspect) - E(clean encoder). The clean encoder has no
  backdoor, so E(clean) is what augmentation alone does along the direction
  triggered images take in a backdoor-free encoder.

Why centred, and why a graded bound: post-ReLU features lie in the positive
orthant, where any two images are close in cosine, and a backdoored encoder
collapses triggered images onto one point, so a region drawn around that point
holds no clean view at all. A definition with either flaw scores only the clean
encoder's geometry (tests/test_exposure.py holds both cases).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from harness.augment import AugmentConfig, simclr_view
from harness.models import Encoder
from harness.training import batched_features, seed_everything, to_float
from harness.triggers import Trigger


@dataclass(frozen=True)
class ExposureConfig:
    views: int = 4  # augmented views drawn per clean image
    # The augmentation the distilling and fine-tuning defenses draw (MIMIC, MEDIC, FT, FP, NAD).
    augment: AugmentConfig = dataclasses.field(default_factory=lambda: AugmentConfig(crop_scale=(0.2, 1.0)))

    def __post_init__(self) -> None:
        if self.views < 1:
            raise ValueError(f"need views >= 1, got {self.views}")


@dataclass(frozen=True)
class Exposure:
    views_past_bound: float  # share of augmented clean views at least halfway to the trigger's response, %
    reference_past_bound: float  # share of the reference images there, %
    bound: float  # h, the halfway cosine bound

    @property
    def score(self) -> float:
        """E(f): percentage points by which the defender's views exceed ordinary inputs of their domain."""
        return self.views_past_bound - self.reference_past_bound


@torch.no_grad()
def measure(
    encoder: Encoder, clean: Tensor, reference: Tensor, test: Tensor, trigger: Trigger, cfg: ExposureConfig, seed: int,
    device: torch.device,
) -> Exposure:
    """E(encoder) for the defender's uint8 `clean` images, the uint8 `reference` images R and uint8 downstream `test` images."""
    gen = seed_everything(seed, "exposure")
    encoder = encoder.to(device).eval()
    of_reference = batched_features(encoder, reference, device, to_cpu=True)
    centre = of_reference.mean(0, keepdim=True)

    def unit(z: Tensor) -> Tensor:
        return F.normalize(z - centre, dim=1)

    of_triggered = unit(batched_features(encoder, trigger.stamp(test), device, to_cpu=True))
    direction = F.normalize(of_triggered.mean(0), dim=0)
    s_reference, s_triggered = unit(of_reference) @ direction, of_triggered @ direction
    bound = ((s_reference.median() + s_triggered.median()) / 2).item()
    x = to_float(clean, device)
    views = torch.cat([simclr_view(x, cfg.augment, gen) for _ in range(cfg.views)])
    past_views = (unit(batched_features(encoder, views, device, to_cpu=True)) @ direction >= bound).float().mean().item()
    past_reference = (s_reference >= bound).float().mean().item()
    return Exposure(100.0 * past_views, 100.0 * past_reference, bound)


def exposure(suspect: Exposure, clean_encoder: Exposure) -> float:
    """The row's exposure: E(suspect) - E(clean encoder), percentage points."""
    return suspect.score - clean_encoder.score
