"""DECREE finds a planted trigger in a small backdoored encoder and calls a clean encoder clean."""

import copy

import pytest
import torch

from defenses.decree import DecreeConfig, decree, invert
from harness.contract import Budget
from harness.losses import mean_pairwise_cosine
from tests.conftest import TRIGGER

CPU = torch.device("cpu")


def test_pairwise_cosine_known_answers():
    assert mean_pairwise_cosine(torch.ones(5, 3)).item() == pytest.approx(1.0)
    assert mean_pairwise_cosine(torch.tensor([[1.0, 0.0], [-1.0, 0.0]])).item() == pytest.approx(-1.0)
    assert mean_pairwise_cosine(torch.eye(4)).item() == pytest.approx(0.0)


def test_inverted_trigger_overlaps_the_planted_one_and_the_clean_encoder_is_clean(encoders):
    clean, backdoored, subset = encoders
    found = invert(backdoored, subset, DecreeConfig(), torch.Generator().manual_seed(0), CPU, steps=400)
    control = invert(clean, subset, DecreeConfig(), torch.Generator().manual_seed(0), CPU, steps=400)
    inverted, planted = found.mask[0] > 0.5, TRIGGER.mask[0] > 0
    iou = (inverted & planted).sum().item() / (inverted | planted).sum().item()
    print(f"DECREE L1 share: backdoored {found.l1_share:.4f}, clean {control.l1_share:.4f}; IoU with the planted trigger {iou:.3f}")
    assert found.flagged and not control.flagged
    assert found.l1_share < control.l1_share
    assert iou > 0.1


def test_mitigation_runs_whatever_the_verdict_and_lowers_the_collapse(encoders):
    clean, backdoored, subset = encoders
    budget = Budget(fraction=0.001, batch_size=50, lr=1e-4, device=CPU)  # the floors: 10 inversion steps, too few to flag
    kept = decree(copy.deepcopy(clean), subset, budget, seed=0, config=DecreeConfig())
    assert not kept.meta["flagged"]  # the verdict is reported; the clean encoder is mitigated all the same
    assert not all(torch.equal(a, b) for a, b in zip(kept.encoder.state_dict().values(), clean.state_dict().values()))
    fixed = decree(copy.deepcopy(backdoored), subset, budget, seed=0, config=DecreeConfig())
    assert not fixed.meta["flagged"] and "unlearning_seconds" in fixed.meta  # unflagged, and unlearnt all the same
    assert fixed.meta["steps"] == {"inversion_steps": 10, "unlearning_epochs": 5}
    x = TRIGGER.stamp(subset.images[:64]).float() / 255
    with torch.no_grad():
        assert mean_pairwise_cosine(fixed.encoder(x)) < mean_pairwise_cosine(backdoored(x))  # triggered features no longer collapse as much


def test_the_inversion_never_forwards_more_than_a_batch(encoders):
    """A scan inverts on the user's whole image folder: the stamped cosine of the end must not forward it at once."""
    _, backdoored, subset = encoders
    sizes = []
    hook = backdoored.register_forward_pre_hook(lambda module, inputs: sizes.append(len(inputs[0])))
    try:
        found = invert(backdoored, subset, DecreeConfig(batch_size=16), torch.Generator().manual_seed(0), CPU, steps=2)
    finally:
        hook.remove()
    assert len(subset) > 16 and max(sizes) <= 16
    x = (1 - found.mask) * subset.images.float() / 255 + found.mask * found.pattern
    with torch.no_grad():
        assert found.cosine == pytest.approx(mean_pairwise_cosine(backdoored(x)).item(), abs=1e-5)
