"""DeDe (Hou, Li and Yao, CVPR 2025): detect triggered inputs at test time with a decoder.

A defense of the second kind (harness/contract.py, `input_detection`): the
suspect encoder stays as it is, and inputs are flagged before they reach it.
A backdoored encoder maps a triggered input onto the attacker's target
embedding; an image decoded from that embedding looks like the target, not
like the input. DeDe trains a decoder that reconstructs an image from the
frozen suspect's embedding and a few visible patches of the image, on the
defender's clean images:

    L = mean over hidden pixels of (D(f(x), x * m) - x)^2 / mask_ratio

m hides `mask_ratio` of the image's patches. At test time almost every patch
is hidden (`test_mask_ratio`), so the reconstruction rests on the embedding,
and the score of an input is its reconstruction error: a triggered input's
embedding decodes to something else, and its error is large.

Facts from the authors' code (tardisblue9/DeDe, `src/main.py`, README): patch
size 4, `mask_ratio` 0.9 in training and 0.99 at test, 200 epochs, batch 256,
lr 1e-3; the decoder is trained on auxiliary data (in-distribution, possibly
slightly poisoned, or out-of-distribution) and the detector is judged by its
detection rates (AUROC).

Adaptations, documented: the authors' decoder is a vision transformer (a
12-layer patch encoder and a 4-layer decoder); here a small convolutional
decoder takes the embedding and the visible patches (the CPU budget); every
test input is scored under one mask, drawn once per detector, so a verdict
depends on the input alone. A deployed detector needs a threshold: it is the (1 - `false_positive_budget`)
quantile of the scores of a held-out share of the defender's clean images (5 %:
a defender-side choice, fixed before any attack is seen), so the harness
reports true- and false-positive rates at that threshold and the ASR that
remains once flagged inputs are rejected. Training epochs follow the budget
rule (the reference's 200, scaled).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from harness.contract import MIN_EPOCHS, Budget, CleanSubset, DetectionResult, InputDetector, Steps
from harness.models import Encoder
from harness.registry import DEFENSES, INPUT_DETECTION
from harness.training import descend, freeze, run_epochs, seed_everything, to_float


@dataclass(frozen=True)
class DeDeConfig:
    epochs: int = 200  # reference decoder-training epochs (scaled by the budget)
    lr: float = 1e-3  # Adam, the decoder's
    patch: int = 4  # side of a masked patch, pixels
    mask_ratio: float = 0.9  # of patches hidden in training
    test_mask_ratio: float = 0.99  # of patches hidden when scoring
    channels: int = 32  # of the decoder's widest layer
    false_positive_budget: float = 0.05  # clean inputs the threshold may flag (on the held-out clean images)
    calibration_share: float = 0.2  # of the defender's images held out to fix the threshold

    def steps(self, budget: Budget) -> "DeDeSteps":
        return DeDeSteps(decoder_epochs=budget.steps(self.epochs, MIN_EPOCHS))

    def __post_init__(self) -> None:
        if not (0 < self.mask_ratio < 1 and 0 < self.test_mask_ratio < 1 and 0 < self.false_positive_budget < 1
                and 0 < self.calibration_share < 1):
            raise ValueError("mask ratios, false_positive_budget and calibration_share must be in (0, 1)")
        if self.epochs < 1 or self.patch < 1 or 32 % self.patch or self.channels < 1:
            raise ValueError("epochs and channels must be at least 1 and patch must divide the image size 32")


@dataclass(frozen=True)
class DeDeSteps(Steps):
    decoder_epochs: int


def patch_visibility(n: int, size: int, patch: int, hidden_ratio: float, gen: torch.Generator) -> Tensor:
    """(n, 1, size, size) float: 1 where the pixel's patch is visible; round(hidden_ratio * patches) hidden per image."""
    grid = size // patch
    hidden = round(hidden_ratio * grid * grid)
    order = torch.rand(n, grid * grid, generator=gen).argsort(dim=1)
    visible = (order >= hidden).float().view(n, 1, grid, grid)
    return visible.repeat_interleave(patch, dim=2).repeat_interleave(patch, dim=3)


class Decoder(nn.Module):
    """An image (3, 32, 32) in [0, 1] from an embedding and the visible patches (with their visibility map)."""

    def __init__(self, feature_dim: int, channels: int) -> None:
        super().__init__()
        self.channels = channels
        self.lift = nn.Linear(feature_dim, channels * 8 * 8)
        self.up = nn.Sequential(
            nn.ConvTranspose2d(channels, channels // 2, 4, stride=2, padding=1), nn.ReLU(),  # 16 x 16
            nn.ConvTranspose2d(channels // 2, channels // 4, 4, stride=2, padding=1), nn.ReLU(),  # 32 x 32
        )
        self.out = nn.Sequential(nn.Conv2d(channels // 4 + 4, channels // 4, 3, padding=1), nn.ReLU(),
                                 nn.Conv2d(channels // 4, 3, 3, padding=1), nn.Sigmoid())

    def forward(self, features: Tensor, x: Tensor, visible: Tensor) -> Tensor:
        h = self.up(F.relu(self.lift(F.normalize(features, dim=1))).view(-1, self.channels, 8, 8))
        return self.out(torch.cat([h, x * visible, visible], dim=1))


def reconstruction_error(decoder: Decoder, features: Tensor, x: Tensor, visible: Tensor, hidden_ratio: float) -> Tensor:
    """(N,) mean squared error over each image's hidden pixels, divided by the hidden share (DeDe's loss, per image)."""
    error = (decoder(features, x, visible) - x).pow(2) * (1 - visible)
    return error.flatten(1).mean(dim=1) / hidden_ratio


@dataclass(frozen=True, eq=False)
class DecoderScore:
    """DeDe's score of an input: its reconstruction error with almost every patch hidden.

    Every input is scored under the one mask `visible` (1, 1, H, W), drawn once: a score depends on the input alone,
    not on where it sits in a batch."""

    encoder: Encoder
    decoder: Decoder
    visible: Tensor
    hidden_ratio: float

    @torch.no_grad()
    def __call__(self, images: Tensor) -> Tensor:
        visible = self.visible.to(images.device).expand(len(images), -1, -1, -1)
        return reconstruction_error(self.decoder, self.encoder(images), images, visible, self.hidden_ratio)


@DEFENSES.register("dede", config=DeDeConfig, tags=(INPUT_DETECTION,))
def dede(suspect: Encoder, clean: CleanSubset, budget: Budget, seed: int, config: DeDeConfig) -> DetectionResult:
    gen = seed_everything(seed, "dede")
    device = budget.device
    encoder = freeze(suspect.to(device).eval())
    order = torch.randperm(len(clean), generator=gen)
    held_out = max(1, round(config.calibration_share * len(clean)))
    calibration, training = clean.images[order[:held_out]], clean.images[order[held_out:]]
    if len(training) < 1:
        raise ValueError(f"DeDe needs clean images to train its decoder besides the {held_out} it holds out")
    decoder = Decoder(encoder.feature_dim, config.channels).to(device)
    optimizer = torch.optim.Adam(decoder.parameters(), lr=config.lr)
    images = training.to(device)
    steps = config.steps(budget)

    def step(idx: Tensor, epoch: int) -> dict[str, Tensor]:
        x = to_float(images[idx], device)
        visible = patch_visibility(len(idx), x.shape[-1], config.patch, config.mask_ratio, gen).to(device)
        with torch.no_grad():
            features = encoder(x)
        loss = reconstruction_error(decoder, features, x, visible, config.mask_ratio).mean()
        descend(optimizer, loss)
        return {"loss": loss.detach()}

    start = time.perf_counter()
    progress = run_epochs("dede decoder", steps.decoder_epochs, len(training), min(budget.batch_size, len(training)), gen, step,
                          device=device)
    scoring_mask = patch_visibility(1, training.shape[-1], config.patch, config.test_mask_ratio, gen)
    score = DecoderScore(encoder, decoder.eval(), scoring_mask, config.test_mask_ratio)
    with torch.no_grad():
        clean_scores = score(to_float(calibration.to(device), device)).cpu()
    threshold = torch.quantile(clean_scores, 1 - config.false_positive_budget).item()
    meta = {
        "threshold": threshold,
        "calibration_images": held_out,
        "calibration_score_median": clean_scores.median().item(),
        "final_loss": progress.history["loss"][-1] if progress.history.get("loss") else float("nan"),
        "decoder_seconds": time.perf_counter() - start,
        "steps": steps.as_dict(),
    }
    return DetectionResult(InputDetector(score, threshold), meta)
