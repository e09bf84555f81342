import math

import torch

from harness.losses import nt_xent
from harness.ssl import SimCLRConfig, pretrain


def test_nt_xent_known_answer_for_orthogonal_pairs():
    """Each z_i equals its positive and is orthogonal to the 2N-2 others: loss = -log(e^(1/t) / (e^(1/t) + 2N-2))."""
    n, t = 4, 0.5
    z = torch.eye(n)
    expected = -math.log(math.exp(1 / t) / (math.exp(1 / t) + 2 * n - 2))
    assert abs(nt_xent(z, z.clone(), t).item() - expected) < 1e-5


def test_nt_xent_is_lower_for_aligned_views():
    g = torch.Generator().manual_seed(0)
    z1 = torch.randn(32, 16, generator=g)
    assert nt_xent(z1, z1 + 0.01 * torch.randn(32, 16, generator=g)) < nt_xent(z1, torch.randn(32, 16, generator=g))


def test_simclr_loss_falls_and_same_seed_same_weights():
    # Smooth, distinct images (4x4 colour grids upsampled): unlike pixel noise they survive cropping, so views can agree.
    grids = torch.rand(64, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    images = (torch.nn.functional.interpolate(grids, size=32, mode="bilinear") * 255).round().to(torch.uint8)
    cfg = SimCLRConfig(epochs=4, batch_size=32, lr=3e-3, proj_dim=16)
    a, meta = pretrain("resnet18", 4, images, cfg, seed=0, device=torch.device("cpu"))
    b, _ = pretrain("resnet18", 4, images, cfg, seed=0, device=torch.device("cpu"))
    assert meta["loss_per_epoch"][-1] < meta["loss_per_epoch"][0]
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
