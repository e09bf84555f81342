"""CTRL: an embarrassingly simple backdoor attack on self-supervised learning (Li et al., ICCV 2023).

A poisoning attack, like BASSL: the attacker publishes images that end up in the
victim's pre-training set, and the victim pre-trains with its usual recipe. The
trigger lives in the frequency domain: the image (on the 0..255 scale) is
converted to YUV, each `window` x `window` block of the chrominance channels U
and V gets `magnitude` added to the DCT-II (orthonormal) coefficients at the
chosen positions, and the image is converted back and clamped to [0, 1]. The
change is spread over every pixel at a small amplitude, so the trigger is hard
to see, and it survives SimCLR's crops better than a patch does.

Every step before the clamp is linear, so the trigger is one fixed offset added
to every image (harness/triggers.py, `Trigger.offset`): `frequency_offset`
builds it once, and the attack and the evaluation stamp through it.

Facts from the authors' code (meet-cjli/CTRL, `utils/frequency.py`,
`loaders/diffaugment.py`, `main_train.py`): YUV as kornia's `rgb_to_yuv`;
channels U and V (`--channel 1 2`); positions (15, 15) and (31, 31) in a 32-pixel
window (`--trigger_position 15 31`, `--window_size 32`); `magnitude` 100, the same
for the poisoned training images and the triggered test images; `poison_ratio`
0.01 of the training set, taken from the target class's images in dataset order
and poisoned in place.

Adaptations, documented: where the downstream task lacks the pre-training
classes, the same number of the downstream target class's training images are
triggered and inserted (the MIMIC paper's protocol for BASSL, attacks/bassl.py);
the poisoned images are stored as uint8, so they carry the offset rounded to
1/255. The victim run is the clean encoder's run of the same seed, so the clean
control and the suspect differ only by the poison.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from harness.contract import AttackInputs, AttackResult
from harness.data import IMAGE_SIZE
from harness.models import build_encoder
from harness.registry import ATTACKS, OWN_TRIGGER
from harness.ssl import train_simclr
from harness.training import seed_everything
from harness.triggers import Trigger

# kornia.color.yuv_to_rgb: R = Y + 1.14 V, G = Y - 0.396 U - 0.581 V, B = Y + 2.029 U (rows R, G, B; columns Y, U, V)
YUV_TO_RGB = torch.tensor([[1.0, 0.0, 1.14], [1.0, -0.396, -0.581], [1.0, 2.029, 0.0]])


@dataclass(frozen=True)
class CTRLConfig:
    # Attack side, the implant criterion: on tiny, `python benchmarks/calibrate.py implant ctrl --seeds 1` and the
    # attacker's levers (--attack-set poison_ratio=0.1, and with magnitude=200) did not implant under the tiny victim's
    # SimCLR recipe, so the defaults stay the authors' and tiny's CTRL rows read "did not implant" (docs/RESULTS.md).
    magnitude: float = 100.0  # added to each chosen DCT coefficient, on the 0..255 scale
    channels: tuple[int, ...] = (1, 2)  # of YUV: 1 = U, 2 = V (chrominance)
    positions: tuple[tuple[int, int], ...] = ((15, 15), (31, 31))  # DCT coefficients within each window
    window: int = 32  # side of the DCT blocks, pixels
    poison_ratio: float = 0.01  # poisoned images, as a share of the pre-training set
    follows_trigger_size: ClassVar[bool] = False  # its trigger is the frequency pattern, whatever the profile's trigger size

    def __post_init__(self) -> None:
        if self.window < 1 or IMAGE_SIZE % self.window:
            raise ValueError(f"window must divide the image size {IMAGE_SIZE}, got {self.window}")
        if not self.channels or any(c not in (0, 1, 2) for c in self.channels):
            raise ValueError(f"channels are YUV indices 0..2, got {self.channels}")
        if not self.positions or any(not (0 <= r < self.window and 0 <= c < self.window) for r, c in self.positions):
            raise ValueError(f"positions must lie within a {self.window}-pixel window, got {self.positions}")
        if not 0 < self.poison_ratio <= 1 or not self.magnitude:
            raise ValueError(f"need poison_ratio in (0, 1] and a nonzero magnitude, got {self.poison_ratio}, {self.magnitude}")


def dct_matrix(n: int) -> Tensor:
    """The orthonormal DCT-II matrix C (n x n): X = C x C^T for a block x, and x = C^T X C."""
    k = torch.arange(n, dtype=torch.float64).view(-1, 1)
    i = torch.arange(n, dtype=torch.float64).view(1, -1)
    c = torch.cos(math.pi * (2 * i + 1) * k / (2 * n)) * math.sqrt(2 / n)
    c[0] /= math.sqrt(2)
    return c


def frequency_offset(config: CTRLConfig, image_size: int = IMAGE_SIZE) -> Tensor:
    """(3, H, W) offset on the [0, 1] scale: the RGB change of adding `magnitude` at the chosen YUV DCT coefficients."""
    c = dct_matrix(config.window)
    coefficients = torch.zeros(config.window, config.window, dtype=torch.float64)
    for row, col in config.positions:
        coefficients[row, col] += config.magnitude
    block = c.T @ coefficients @ c  # the spatial change of one window, 0..255 scale
    tiles = image_size // config.window
    yuv = torch.zeros(3, image_size, image_size, dtype=torch.float64)
    for channel in config.channels:
        yuv[channel] = block.repeat(tiles, tiles)
    rgb = torch.einsum("ck,khw->chw", YUV_TO_RGB.double(), yuv)
    return (rgb / 255).float()


def frequency_trigger(config: CTRLConfig) -> Trigger:
    """CTRL's trigger: no mask, only the offset (stamping adds it and clamps)."""
    nothing = torch.zeros(1, IMAGE_SIZE, IMAGE_SIZE)
    offset = frequency_offset(config)
    if offset.abs().max() > 1:
        raise ValueError(f"magnitude {config.magnitude} moves a pixel by more than the whole range")
    return Trigger(f"ctrl{config.magnitude:g}", torch.zeros(3, IMAGE_SIZE, IMAGE_SIZE), nothing, offset)


@ATTACKS.register("ctrl", config=CTRLConfig, tags=(OWN_TRIGGER,))
def ctrl(inputs: AttackInputs, seed: int, config: CTRLConfig) -> AttackResult:
    start = time.perf_counter()
    trigger = frequency_trigger(config)
    count = int(config.poison_ratio * len(inputs.pretrain))
    images = inputs.pretrain.clone()
    if inputs.target_in_pretrain:  # the authors' protocol: the target class's first images, poisoned in place
        chosen = (inputs.pretrain_labels == inputs.target).nonzero().flatten()[:count]
        images[chosen] = trigger.stamp(images[chosen])
        inserted = 0
    else:  # the downstream target class's first images, triggered and inserted
        chosen = torch.arange(min(count, len(inputs.target_images)))
        images = torch.cat([images, trigger.stamp(inputs.target_images[chosen])])
        inserted = len(chosen)
    seed_everything(seed, "simclr")  # the victim's own initialisation and stream: only the poison differs from the clean run
    encoder, trained = train_simclr(build_encoder(inputs.arch, inputs.width), images, inputs.ssl, seed, inputs.device, stage="ctrl")
    meta = {
        "poisoned_images": len(chosen),
        "inserted_images": inserted,
        "poisoned_share_of_pretraining": len(chosen) / len(images),
        "offset_max": trigger.offset.abs().max().item(),
        "loss_per_epoch": trained["loss_per_epoch"],
        "seconds": time.perf_counter() - start,
    }
    return AttackResult(encoder.cpu(), trigger, inputs.target, meta)
