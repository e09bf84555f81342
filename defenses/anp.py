"""ANP: Adversarial Neuron Pruning (Wu and Wang, NeurIPS 2021), for a label-free encoder.

Backdoored networks are unusually sensitive to small perturbations of some
neurons: perturbing them changes the output far more than perturbing benign ones.
ANP learns a mask m_c in [0, 1] on every BatchNorm channel under adversarial
perturbation of the channels' affine weights, then prunes the channels with the
lowest masks:

    min_m  alpha * L(m, 0, 0) + (1 - alpha) * max_{|delta|, |xi| <= eps} L(m, delta, xi)

where channel c of a BatchNorm layer computes (m_c + delta_c) * w_c * x_hat + (1 + xi_c) * b_c.
The inner maximisation is one signed-gradient step of size eps from a random start,
as in the reference (eps = 0.4, alpha = 0.2, mask lr 0.2 with momentum 0.9); a
pruned channel's BatchNorm weight becomes zero.

Facts from the reference code (csdongxian/ANP_backdoor): 2000 mask iterations on
batches of 128 clean images drawn with replacement; SGD on the masks, lr 0.2,
momentum 0.9, masks clamped to [0, 1]; eps 0.4, one perturbation step, alpha 0.2;
the network in train mode (BatchNorm on batch statistics) while masks are learnt,
the original weights reloaded for pruning; a pruned neuron's BatchNorm weight
becomes zero (its bias stays). Pruning is offered by threshold on the masks or by
number (the lowest masks first), both swept and chosen by clean accuracy.

Adaptations to a label-free encoder, stated:
- L: the original's cross-entropy on labelled clean data becomes
  L(m, delta, xi) = mean over clean images of 1 - cos(f_{m,delta,xi}(x), f(x)), how far
  the masked, perturbed encoder's feature moves from the unmasked one's (both on batch statistics);
  a perturbation of few channels that can redirect features, as a backdoor's can,
  makes those channels' masks fall.
- The pruning choice needs no labels. The original sweeps thresholds (or numbers
  of the lowest masks) and keeps the pruning clean accuracy allows; without labels
  `prune_by="fraction"` (default) prunes a fixed share, `fraction` = 5 %, of the
  channels with the lowest masks (the original's pruning by number, at a fixed
  number); `"threshold"` prunes masks below 0.2, the paper's typical threshold;
  `"cosine"` as many of the lowest masks as keep the clean subset's features
  within `min_cosine` of the suspect's.
- Budget: the 2000 iterations, scaled by the budget's fraction.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from harness.contract import MIN_STEPS, Budget, CleanSubset, DefenseResult, Steps
from harness.losses import cosine_distance
from harness.models import STAGES, Encoder
from harness.registry import DEFENSES
from harness.training import Progress, RunningMeans, batched_features, descend, freeze, seed_everything, to_float


@dataclass(frozen=True)
class ANPConfig:
    eps: float = 0.4  # bound of the multiplicative perturbations delta, xi
    alpha: float = 0.2  # weight of the unperturbed loss
    mask_lr: float = 0.2
    iterations: int = 2000  # reference mask iterations (scaled by the budget)
    prune_by: str = "fraction"  # "fraction", "threshold" or "cosine" (see the module docstring)
    threshold: float = 0.2  # "threshold": prune channels whose mask ends below
    fraction: float = 0.05  # "fraction": prune this share of the channels, lowest masks first
    min_cosine: float = 0.95  # "cosine": clean features must stay this close to the suspect's
    max_share: float = 0.5  # "cosine": never prune more than this share of the channels

    def steps(self, budget: Budget) -> "ANPSteps":
        return ANPSteps(mask_iterations=budget.steps(self.iterations, MIN_STEPS))

    def __post_init__(self) -> None:
        if self.eps < 0 or not 0 <= self.alpha <= 1 or not 0 <= self.threshold <= 1:
            raise ValueError(f"need eps >= 0, alpha and threshold in [0, 1]; got {self.eps}, {self.alpha}, {self.threshold}")
        if self.prune_by not in ("cosine", "threshold", "fraction"):
            raise ValueError(f"prune_by must be 'cosine', 'threshold' or 'fraction', got {self.prune_by!r}")
        if not 0 <= self.fraction < 1 or not 0 < self.min_cosine <= 1 or not 0 <= self.max_share < 1:
            raise ValueError("need fraction and max_share in [0, 1), min_cosine in (0, 1]")


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
    return cosine_distance(functional_call(encoder, params, (x,)), reference)


def anp_objective(natural: Tensor, perturbed: Tensor, cfg: ANPConfig) -> Tensor:
    """alpha * L(m, 0, 0) + (1 - alpha) * L(m, delta, xi)."""
    return cfg.alpha * natural + (1 - cfg.alpha) * perturbed


@dataclass(frozen=True)
class ANPSteps(Steps):
    mask_iterations: int


def _uniform(like: Tensor, eps: float, gen: torch.Generator) -> Tensor:
    return ((torch.rand(like.shape, generator=gen) * 2 - 1) * eps).to(like.device).requires_grad_()


def learn_masks(suspect: Encoder, clean: CleanSubset, budget: Budget, config: ANPConfig, gen: torch.Generator) -> tuple[dict[str, Tensor], float]:
    """The ANP masks of every BatchNorm layer of `suspect`, each in [0, 1]; and the seconds taken.

    The masks are learnt on a copy in train mode (batch statistics, as the original), so the
    suspect's own running statistics are untouched; L's reference is the unmasked copy in the same
    mode, so L is 0 at m = 1 without perturbation.
    """
    device = budget.device
    encoder = freeze(copy.deepcopy(suspect)).train()
    layers = batchnorm_layers(encoder)
    masks = {name: torch.ones_like(bn.weight, requires_grad=True) for name, bn in layers.items()}
    optimizer = torch.optim.SGD(masks.values(), lr=config.mask_lr, momentum=0.9)
    iterations = config.steps(budget).mask_iterations
    progress = Progress("anp", 1)
    running = RunningMeans()
    for _ in range(iterations):
        idx = torch.randint(len(clean), (min(budget.batch_size, len(clean)),), generator=gen)  # with replacement, as the original
        x = to_float(clean.images[idx], device)
        with torch.no_grad():
            reference = encoder(x)  # unmasked, unperturbed, batch statistics
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
        descend(optimizer, anp_objective(natural, perturbed, config))
        with torch.no_grad():
            for m in masks.values():
                m.clamp_(0, 1)
        running.add(len(idx), natural=natural.detach(), perturbed=perturbed.detach())
    progress.epoch(0, running.images, **running.means(), iterations=iterations)
    return {n: m.detach() for n, m in masks.items()}, progress.seconds


def _prune(encoder: Encoder, order: list[tuple[str, int]]) -> None:
    with torch.no_grad():
        layers = batchnorm_layers(encoder)
        for name, channel in order:
            layers[name].weight[channel] = 0


def choose_pruned(suspect: Encoder, masks: dict[str, Tensor], clean: CleanSubset, config: ANPConfig, device: torch.device) -> list[tuple[str, int]]:
    """The (layer, channel) pairs to prune under the configured rule, lowest masks first."""
    ranked = sorted(((m.item(), name, c) for name, mask in masks.items() for c, m in enumerate(mask)), key=lambda t: (t[0], t[1], t[2]))
    order = [(name, c) for _, name, c in ranked]
    if config.prune_by == "threshold":
        return [(name, c) for value, name, c in ranked if value < config.threshold]
    if config.prune_by == "fraction":
        return order[: int(config.fraction * len(order))]
    reference = batched_features(suspect, clean.images, device)

    def keeps_features(k: int) -> bool:
        trial = copy.deepcopy(suspect)
        _prune(trial, order[:k])
        return F.cosine_similarity(batched_features(trial, clean.images, device), reference, dim=1).mean().item() >= config.min_cosine

    low, high = 0, int(config.max_share * len(order))  # the largest k that keeps features: binary search
    while low < high:
        mid = (low + high + 1) // 2
        low, high = (mid, high) if keeps_features(mid) else (low, mid - 1)
    return order[:low]


@DEFENSES.register("anp", config=ANPConfig)
def anp(suspect: Encoder, clean: CleanSubset, budget: Budget, seed: int, config: ANPConfig) -> DefenseResult:
    gen = seed_everything(seed, "anp")
    encoder = freeze(suspect.to(budget.device))
    masks, seconds = learn_masks(encoder, clean, budget, config, gen)
    start = time.perf_counter()
    chosen = choose_pruned(encoder, masks, clean, config, budget.device)
    _prune(encoder, chosen)
    pruned: dict[str, list[int]] = {}
    for name, c in chosen:
        pruned.setdefault(name, []).append(c)
    every_mask = torch.cat([m.flatten() for m in masks.values()])
    meta = {
        "pruned_channels": {n: sorted(c) for n, c in pruned.items()},
        "pruned_per_module": {top: sum(len(c) for n, c in pruned.items() if n.split(".")[0] == top) for top in ("stem", *STAGES)},
        "pruned_total": len(chosen),
        "channels_total": every_mask.numel(),
        "mask_mean": every_mask.mean().item(),
        "mask_min": every_mask.min().item(),
        "masks_seconds": seconds,
        "pruning_seconds": time.perf_counter() - start,
        "steps": config.steps(budget).as_dict(),
    }
    return DefenseResult(encoder.cpu(), meta)
