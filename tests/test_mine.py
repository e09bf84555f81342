"""MINE against the closed form for correlated Gaussians: I = -d/2 log(1 - rho^2) nats."""

import math

import pytest
import torch

from harness.mine import MineConfig, dv_bound, estimate_mi, log_mean_exp, mine_surrogate


def gaussians(n: int, d: int, rho: float, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randn(n, d, generator=gen)
    return x, rho * x + math.sqrt(1 - rho**2) * torch.randn(n, d, generator=gen)


@pytest.mark.parametrize("d, rho", [(2, 0.8), (5, 0.5)])
def test_estimate_within_ten_percent_of_the_closed_form(d, rho):
    gen = torch.Generator().manual_seed(0)
    (xt, zt), (xe, ze) = gaussians(8000, d, rho, gen), gaussians(8000, d, rho, gen)
    truth = -d / 2 * math.log(1 - rho**2)
    estimate = estimate_mi(xt, zt, xe, ze, MineConfig(steps=1500), gen).mi
    assert estimate == pytest.approx(truth, rel=0.10)


def test_independent_inputs_give_about_zero():
    gen = torch.Generator().manual_seed(1)
    (xt, zt), (xe, ze) = gaussians(8000, 3, 0.0, gen), gaussians(8000, 3, 0.0, gen)
    assert abs(estimate_mi(xt, zt, xe, ze, MineConfig(steps=600), gen).mi) < 0.05


def test_log_mean_exp_is_stable_for_large_values():
    t = torch.tensor([1000.0, 1000.0])
    assert log_mean_exp(t).item() == pytest.approx(1000.0)


def test_dv_bound_known_answer():
    # E_joint[T] = 2, log E_marg[e^T] = log((e^0 + e^0) / 2) = 0.
    assert dv_bound(torch.tensor([1.0, 3.0]), torch.tensor([0.0, 0.0])).item() == pytest.approx(2.0)


def test_surrogate_gradient_is_dv_gradient_when_average_equals_batch():
    """With the moving average equal to the batch's E[e^T], the corrected gradient is the DV gradient."""
    t_j = torch.tensor([0.5, 1.0], requires_grad=True)
    t_m = torch.tensor([0.2, -0.3], requires_grad=True)
    dv_bound(t_j, t_m).backward()
    expected = (t_j.grad.clone(), t_m.grad.clone())
    t_j.grad = t_m.grad = None
    mine_surrogate(t_j, t_m, log_mean_exp(t_m).detach()).backward()
    assert torch.allclose(t_j.grad, expected[0]) and torch.allclose(t_m.grad, expected[1])
