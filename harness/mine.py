"""MINE (Belghazi et al., ICML 2018): a neural lower bound on mutual information.

A statistics network T(x, z) is trained to maximise the Donsker-Varadhan bound

    I(X; Z) >= E_P(x,z)[T] - log E_P(x)P(z)[e^T],

samples of the product of marginals being the joint samples with z shuffled
within the batch. The log-mean-exp is computed with log-sum-exp. Its gradient is
biased on mini-batches (the expectation sits inside a log); MINE's correction
replaces the batch denominator E[e^T] by a moving average, which the surrogate
`mine_surrogate` implements in the log domain.

The reported estimate is the bound evaluated on held-out pairs with the trained
network, averaged over several shuffles, so that a network that memorised its
training pairs does not inflate it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class MineConfig:
    steps: int = 1500
    batch_size: int = 256
    lr: float = 1e-3  # Adam
    hidden: int = 128
    ema_rate: float = 0.01  # MINE's moving average of E[e^T] for the bias-corrected gradient
    eval_shuffles: int = 8


class StatisticsNetwork(nn.Module):
    """T(x, z): an MLP on the concatenated pair -> (N,)."""

    def __init__(self, x_dim: int, z_dim: int, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(x_dim + z_dim, hidden), nn.ELU(), nn.Linear(hidden, hidden), nn.ELU(), nn.Linear(hidden, 1)
        )

    def forward(self, x: Tensor, z: Tensor) -> Tensor:
        return self.net(torch.cat([x, z], dim=1)).squeeze(1)


def log_mean_exp(t: Tensor) -> Tensor:
    return torch.logsumexp(t, dim=0) - math.log(t.shape[0])


def dv_bound(t_joint: Tensor, t_marginal: Tensor) -> Tensor:
    """Donsker-Varadhan bound E_joint[T] - log E_marginal[e^T] from the two batches of T values."""
    return t_joint.mean() - log_mean_exp(t_marginal)


def mine_surrogate(t_joint: Tensor, t_marginal: Tensor, log_ema: Tensor) -> Tensor:
    """A scalar whose gradient is MINE's bias-corrected gradient of the DV bound.

    d/dθ [E[T] - E[e^T] / ema] = E[∇T] - E[e^T ∇T] / ema, with ema the moving
    average of E[e^T] (held constant): the DV gradient with a smoothed denominator.
    """
    return t_joint.mean() - torch.exp(log_mean_exp(t_marginal) - log_ema)


@dataclass(frozen=True)
class MineEstimate:
    mi: float  # nats, held-out DV bound
    train_bound: float  # the bound on the last training batches, for diagnosis


def _shuffled(z: Tensor, gen: torch.Generator) -> Tensor:
    return z[torch.randperm(len(z), generator=gen).to(z.device)]


def estimate_mi(
    x_train: Tensor, z_train: Tensor, x_eval: Tensor, z_eval: Tensor, cfg: MineConfig, gen: torch.Generator
) -> MineEstimate:
    """MI between paired rows of x (N, dx) and z (N, dz), trained on one split and evaluated on the other."""
    device = x_train.device
    net = StatisticsNetwork(x_train.shape[1], z_train.shape[1], cfg.hidden).to(device)
    optimizer = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    log_ema: Tensor | None = None
    recent: list[float] = []
    n = len(x_train)
    batch = min(cfg.batch_size, n)
    for _ in range(cfg.steps):
        idx = torch.randint(n, (batch,), generator=gen).to(device)
        x, z = x_train[idx], z_train[idx]
        t_joint, t_marginal = net(x, z), net(x, _shuffled(z, gen))
        log_batch = log_mean_exp(t_marginal).detach()
        log_ema = log_batch if log_ema is None else torch.logaddexp(
            math.log(1 - cfg.ema_rate) + log_ema, math.log(cfg.ema_rate) + log_batch
        )
        loss = -mine_surrogate(t_joint, t_marginal, log_ema)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        recent = (recent + [dv_bound(t_joint, t_marginal).item()])[-50:]
    with torch.no_grad():
        t_joint = net(x_eval, z_eval)
        bounds = [dv_bound(t_joint, net(x_eval, _shuffled(z_eval, gen))).item() for _ in range(cfg.eval_shuffles)]
    return MineEstimate(mi=sum(bounds) / len(bounds), train_bound=sum(recent) / len(recent))
