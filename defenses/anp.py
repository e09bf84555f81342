"""ANP: Adversarial Neuron Pruning (Wu and Wang, NeurIPS 2021), for a label-free encoder.

Backdoored networks are unusually sensitive to small perturbations of some
neurons: perturbing them changes the output far more than perturbing benign ones.
ANP learns a mask m_c in [0, 1] on every BatchNorm channel under adversarial
perturbation of the channels' affine weights, then prunes the channels whose
mask falls below a threshold:

    min_m  alpha * L(m, 0, 0) + (1 - alpha) * max_{|delta|, |xi| <= eps} L(m, delta, xi)

where channel c of a BatchNorm layer computes (m_c + delta_c) * w_c * x_hat + (1 + xi_c) * b_c.
The inner maximisation is one signed-gradient step of size eps from a random start,
as in the reference (eps = 0.4, alpha = 0.2, mask lr 0.2 with momentum 0.9,
threshold 0.2); a pruned channel's BatchNorm weight becomes zero.

Adaptation to a label-free encoder: the original's L is cross-entropy on labelled
clean data. Here L(m, delta, xi) = mean over clean images of 1 - cos(f_{m,delta,xi}(x), f(x)),
how far the masked, perturbed encoder's feature moves from the suspect's own:
zero at m = 1 without perturbation, large where a perturbation of few channels
can redirect features, as a backdoor's channels can. BatchNorm uses its running
statistics (eval mode), so masks are judged against the statistics the suspect
ships with. Budget: the reference's 2000 iterations become the profile's defense
epochs over the clean subset, each iteration one perturbation and one mask step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from harness.contract import Budget, CleanSubset, DefenseResult
from harness.models import STAGES, Encoder
from harness.registry import DEFENSES
from harness.training import Progress, RunningMeans, freeze, seed_everything, shuffled_batches, to_float


@dataclass(frozen=True)
class ANPConfig:
    eps: float = 0.4  # bound of the multiplicative perturbations delta, xi
    alpha: float = 0.2  # weight of the unperturbed loss
    mask_lr: float = 0.2
    threshold: float = 0.2  # channels whose mask ends below are pruned

    def __post_init__(self) -> None:
        if self.eps < 0 or not 0 <= self.alpha <= 1 or not 0 <= self.threshold <= 1:
            raise ValueError(f"need eps >= 0, alpha and threshold in [0, 1]; got {self.eps}, {self.alpha}, {self.threshold}")


def batchnorm_layers(encoder: Encoder) -> dict[str, nn.BatchNorm2d]:
    return {name: m for name, m in encoder.named_modules() if isinstance(m, nn.BatchNorm2d)}


def masked_parameters(
    layers: dict[str, nn.BatchNorm2d], masks: dict[str, Tensor], delta: dict[str, Tensor] | None, xi: dict[str, Tensor] | None
) -> dict[str, Tensor]:
    """BatchNorm affine weights with masks and (optionally) perturbations applied, for `functional_call`."""
    params = {}
    for name, bn in layers.items():
        scale = masks[name] if delta is None else masks[name] + delta[name]
        shift = 1 if xi is None else 1 + xi[name]
        params[f"{name}.weight"] = bn.weight * scale
        params[f"{name}.bias"] = bn.bias * shift
    return params


def feature_shift(encoder: Encoder, params: dict[str, Tensor], x: Tensor, reference: Tensor) -> Tensor:
    """L: mean 1 - cos between the masked/perturbed encoder's features and the suspect's."""
    return (1 - F.cosine_similarity(functional_call(encoder, params, (x,)), reference, dim=1)).mean()


def anp_objective(natural: Tensor, perturbed: Tensor, cfg: ANPConfig) -> Tensor:
    """alpha * L(m, 0, 0) + (1 - alpha) * L(m, delta, xi)."""
    return cfg.alpha * natural + (1 - cfg.alpha) * perturbed


def _uniform(like: Tensor, eps: float, gen: torch.Generator) -> Tensor:
    return ((torch.rand(like.shape, generator=gen) * 2 - 1) * eps).to(like.device).requires_grad_()


def learn_masks(encoder: Encoder, clean: CleanSubset, budget: Budget, config: ANPConfig, gen: torch.Generator) -> tuple[dict[str, Tensor], float]:
    """The ANP masks of every BatchNorm layer of a frozen `encoder`, each in [0, 1]; and the seconds taken."""
    device = budget.device
    layers = batchnorm_layers(encoder)
    masks = {name: torch.ones_like(bn.weight, requires_grad=True) for name, bn in layers.items()}
    optimizer = torch.optim.SGD(masks.values(), lr=config.mask_lr, momentum=0.9)
    progress = Progress("anp", budget.epochs)
    for epoch in range(budget.epochs):
        running = RunningMeans()
        for idx in shuffled_batches(len(clean), budget.batch_size, gen):
            x = to_float(clean.images[idx], device)
            with torch.no_grad():
                reference = encoder(x)
            # Inner maximisation: one signed-gradient step of size eps from a random start.
            delta = {n: _uniform(m, config.eps, gen) for n, m in masks.items()}
            xi = {n: _uniform(m, config.eps, gen) for n, m in masks.items()}
            noise = [*delta.values(), *xi.values()]
            fixed = {n: m.detach() for n, m in masks.items()}
            worst = feature_shift(encoder, masked_parameters(layers, fixed, delta, xi), x, reference)
            with torch.no_grad():
                for t, g in zip(noise, torch.autograd.grad(worst, noise)):
                    t.add_(config.eps * g.sign()).clamp_(-config.eps, config.eps)
                    t.requires_grad_(False)
            # Outer minimisation over the masks.
            natural = feature_shift(encoder, masked_parameters(layers, masks, None, None), x, reference)
            perturbed = feature_shift(encoder, masked_parameters(layers, masks, delta, xi), x, reference)
            loss = anp_objective(natural, perturbed, config)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                for m in masks.values():
                    m.clamp_(0, 1)
            running.add(len(idx), natural=natural.item(), perturbed=perturbed.item())
        progress.epoch(epoch, running.images, **running.means())
    return {n: m.detach() for n, m in masks.items()}, progress.seconds


@DEFENSES.register("anp", config=ANPConfig)
def anp(suspect: Encoder, clean: CleanSubset, budget: Budget, seed: int, config: ANPConfig) -> DefenseResult:
    gen = seed_everything(seed, "anp")
    encoder = freeze(suspect.to(budget.device))
    masks, seconds = learn_masks(encoder, clean, budget, config, gen)
    pruned: dict[str, list[int]] = {}
    with torch.no_grad():
        for name, bn in batchnorm_layers(encoder).items():
            channels = (masks[name] < config.threshold).nonzero().flatten().tolist()
            bn.weight[channels] = 0
            if channels:
                pruned[name] = channels
    every_mask = torch.cat([m.flatten() for m in masks.values()])
    meta = {
        "pruned_channels": pruned,
        "pruned_per_module": {top: sum(len(c) for n, c in pruned.items() if n.split(".")[0] == top) for top in ("stem", *STAGES)},
        "pruned_total": sum(len(c) for c in pruned.values()),
        "channels_total": every_mask.numel(),
        "mask_mean": every_mask.mean().item(),
        "mask_min": every_mask.min().item(),
        "masks_seconds": seconds,
        "epochs": budget.epochs,
    }
    return DefenseResult(encoder.cpu(), meta)
