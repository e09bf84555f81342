"""The paper's adaptive attack on MIMIC (RQ3.4): BadEncoder that hides from mutual information.

MIMIC locates benign knowledge by the mutual information between each stage's
output and the final feature on clean data, and weights its attention loss by
it. The paper's adaptive attacker "minimises the distance between benign and
poisoned knowledge measured by mutual information": the backdoor's knowledge
must sit in the stages as benign knowledge does, so MI-guided weighting cannot
tell them apart. Here, per stage l,

    L = L_BadEncoder + lambda3 * sum_l ( I_l(x + t) - I_l(x) )^2,
    I_l(x) = DV bound of MI( pool(f'_l(x)), f'(x) ), estimated by MINE in the loop,

with one statistics network T_l per stage (harness/mine.py), trained alongside
the encoder: each step first takes one ascent step on the DV bounds of clean and
triggered pairs for T_l (MINE's bias-corrected gradient), then the encoder
descends on L with T_l fixed. Stage maps are average-pooled to a `pool_grid` x
`pool_grid` grid before T_l, as MIMIC's own estimator does.

The paper's code for this attack is not public (what representations the
attacker aligns and with which estimator is not stated); this is the reading
above, *choice*, documented. The attention form (attacks/adaptive.py) stays
registered beside it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from attacks.badencoder import BadEncoderConfig, TamperBatch, badencoder_loss, tamper
from harness.contract import AttackInputs, AttackResult
from harness.mine import StatisticsNetwork, dv_bound, log_mean_exp, mine_surrogate
from harness.registry import ATTACKS
from harness.training import descend


@dataclass(frozen=True)
class AdaptiveMIConfig(BadEncoderConfig):
    lambda3: float = 1.0  # weight of the MI-matching regulariser
    pool_grid: int = 2  # stage maps average-pooled to grid x grid before the statistics networks
    mine_hidden: int = 128
    mine_lr: float = 1e-3
    ema_rate: float = 0.01


class StageMI:
    """One MINE statistics network per stage, with its optimiser and moving average of E[e^T]."""

    def __init__(self, batch: TamperBatch, cfg: AdaptiveMIConfig, device: torch.device) -> None:
        self.cfg = cfg
        z_dim = batch.shadow.shape[1]
        self.nets = {s: StatisticsNetwork(self.pooled(m).shape[1], z_dim, cfg.mine_hidden).to(device) for s, m in batch.shadow_stages.items()}
        self.optimizers = {s: torch.optim.Adam(n.parameters(), lr=cfg.mine_lr) for s, n in self.nets.items()}
        self.log_ema: dict[str, Tensor] = {}

    def pooled(self, stage: Tensor) -> Tensor:
        return F.adaptive_avg_pool2d(stage, self.cfg.pool_grid).flatten(1)

    def bound(self, stage: str, maps: Tensor, z: Tensor, shuffle: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(DV bound, T on joint pairs, T on shuffled pairs) of one stage's pooled maps and features."""
        x = self.pooled(maps)
        t_joint, t_marginal = self.nets[stage](x, z), self.nets[stage](x, z[shuffle])
        return dv_bound(t_joint, t_marginal), t_joint, t_marginal

    def ascend(self, batch: TamperBatch, shuffle: Tensor) -> None:
        """One MINE step per stage on clean and triggered pairs, encoder outputs detached."""
        for s in self.nets:
            terms = []
            for maps, z in ((batch.shadow_stages[s], batch.shadow), (batch.triggered_stages[s], batch.triggered)):
                _, t_joint, t_marginal = self.bound(s, maps.detach(), z.detach(), shuffle)
                log_batch = log_mean_exp(t_marginal).detach()
                ema = self.log_ema.get(s)
                ema = log_batch if ema is None else torch.logaddexp(math.log(1 - self.cfg.ema_rate) + ema, math.log(self.cfg.ema_rate) + log_batch)
                self.log_ema[s] = ema
                terms.append(-mine_surrogate(t_joint, t_marginal, ema))
            descend(self.optimizers[s], sum(terms))

    def gap(self, batch: TamperBatch, shuffle: Tensor) -> Tensor:
        """sum over stages of (I_l(x + t) - I_l(x))^2 with the statistics networks held fixed."""
        total = batch.shadow.new_zeros(())
        for s in self.nets:
            clean, _, _ = self.bound(s, batch.shadow_stages[s], batch.shadow, shuffle)
            triggered, _, _ = self.bound(s, batch.triggered_stages[s], batch.triggered, shuffle)
            total = total + (triggered - clean).pow(2)
        return total


@ATTACKS.register("adaptive_mi", config=AdaptiveMIConfig)
def adaptive_mi(inputs: AttackInputs, seed: int, config: AdaptiveMIConfig) -> AttackResult:
    state: dict[str, StageMI] = {}
    gen = torch.Generator().manual_seed(seed)

    def objective(b: TamperBatch) -> Tensor:
        if "mi" not in state:
            state["mi"] = StageMI(b, config, b.shadow.device)
        mi = state["mi"]
        shuffle = torch.randperm(len(b.shadow), generator=gen).to(b.shadow.device)
        mi.ascend(b, shuffle)
        for net in mi.nets.values():
            net.requires_grad_(False)
        loss = badencoder_loss(b.triggered, b.refs, b.refs_clean, b.shadow, b.shadow_clean, config) + config.lambda3 * mi.gap(b, shuffle)
        for net in mi.nets.values():
            net.requires_grad_(True)
        return loss

    return tamper(inputs, seed, "adaptive_mi", config.weight_decay, objective)
