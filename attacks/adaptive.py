"""An adaptive attack on MIMIC (the paper's RQ3.4): BadEncoder that hides from attention.

MIMIC finds benign knowledge by where it sits in the suspect's stages and
distils it, stage by stage, through attention maps. An attacker who knows this
makes the backdoor leave no trace in those maps: triggered inputs must produce
the same attention maps as their clean versions at every stage, so the backdoor
rides on the stages' benign-looking activity:

    L = L_BadEncoder + lambda3 * sum_l mean_x || A(f'_l(x + t)) - A(f'_l(x)) ||^2

with A the unit-normalised attention map sum_c |F_c|^2 (harness/attention.py).

Choice, documented: the paper's adaptive attacker brings the mutual information
of poisoned and clean inputs close; MINE inside an attack's training loop is an
estimator trained against a moving target, while the attention form is exact,
cheap, and aims at the very signal MIMIC's attention loss transfers. The
regulariser is zero when the trigger changes nothing (t = 0).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from attacks.badencoder import BadEncoderConfig, TamperBatch, badencoder_loss, tamper
from harness.losses import attention_map
from harness.contract import AttackInputs, AttackResult
from harness.registry import ATTACKS


@dataclass(frozen=True)
class AdaptiveConfig(BadEncoderConfig):
    lambda3: float = 1.0  # weight of the attention-hiding regulariser
    attention_p: int = 2


def attention_gap(clean: dict[str, Tensor], triggered: dict[str, Tensor], p: int = 2) -> Tensor:
    """sum over stages of mean over images of ||A(F(x + t)) - A(F(x))||^2."""
    return sum((attention_map(triggered[s], p) - attention_map(clean[s], p)).pow(2).sum(dim=1).mean() for s in clean)


def adaptive_loss(b: TamperBatch, config: AdaptiveConfig) -> Tensor:
    backdoor = badencoder_loss(b.triggered, b.refs, b.refs_clean, b.shadow, b.shadow_clean, config)
    return backdoor + config.lambda3 * attention_gap(b.shadow_stages, b.triggered_stages, config.attention_p)


@ATTACKS.register("adaptive", config=AdaptiveConfig)
def adaptive(inputs: AttackInputs, seed: int, config: AdaptiveConfig) -> AttackResult:
    return tamper(inputs, seed, "adaptive", config.weight_decay, lambda batch: adaptive_loss(batch, config))
