import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.losses import attention_distance, attention_map


def test_shape_and_unit_norm():
    a = attention_map(torch.randn(3, 8, 4, 5))
    assert a.shape == (3, 20)
    assert torch.allclose(a.norm(dim=1), torch.ones(3), atol=1e-6)


def test_known_answer_p2():
    f = torch.zeros(1, 2, 1, 2)
    f[0, 0, 0, 0], f[0, 1, 0, 1] = 3.0, 4.0  # sums of squares: 9 and 16
    assert torch.allclose(attention_map(f), torch.tensor([[9.0, 16.0]]) / (9.0**2 + 16.0**2) ** 0.5)


@given(st.integers(0, 10_000), st.floats(0.1, 100.0))
@settings(max_examples=25, deadline=None)
def test_invariant_to_channel_order_sign_and_scale(seed, scale):
    f = torch.randn(2, 6, 4, 4, generator=torch.Generator().manual_seed(seed))
    perm = torch.randperm(6, generator=torch.Generator().manual_seed(seed + 1))
    assert torch.allclose(attention_map(f), attention_map(-scale * f[:, perm]), atol=1e-5)


def test_distance_zero_for_same_maps_and_positive_otherwise():
    f = torch.randn(2, 4, 3, 3)
    assert attention_distance(f, 2 * f).item() < 1e-10
    assert attention_distance(f, torch.randn(2, 4, 3, 3)).item() > 0
