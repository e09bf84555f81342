"""DECREE finds a planted trigger in a small backdoored encoder and calls a clean encoder clean."""

import copy

import pytest
import torch

from attacks.badencoder import BadEncoderConfig, badencoder
from defenses.decree import DecreeConfig, decree, invert, mean_pairwise_cosine
from harness.contract import AttackInputs, Budget, CleanSubset
from harness.data import load_dataset
from harness.ssl import SimCLRConfig, pretrain
from harness.triggers import make_trigger

CPU = torch.device("cpu")
TRIGGER = make_trigger("patch", 6)


@pytest.fixture(scope="module")
def encoders():
    """A small SimCLR encoder on Fashion-MNIST and its BadEncoder copy (6x6 white patch), about 30 s."""
    try:
        data = load_dataset("fmnist", "train", None, False)
    except Exception as missing:  # noqa: BLE001 - the dataset package is a test requirement
        pytest.fail(f"Fashion-MNIST is needed (apt-get install dataset-fashion-mnist): {missing}")
    images, labels = data.images[:1024], data.labels[:1024]
    clean, _ = pretrain("resnet18", 8, images, SimCLRConfig(epochs=4, batch_size=128, lr=3e-3, proj_dim=32), 0, CPU)
    inputs = AttackInputs(
        clean_encoder=lambda: copy.deepcopy(clean), pretrain=images, pretrain_labels=labels, shadow=images[:512],
        references=images[labels == 9][:3], target=9, target_in_pretrain=True, trigger=TRIGGER, arch="resnet18", width=8,
        ssl=SimCLRConfig(epochs=1), epochs=15, batch_size=64, lr=3e-3, optimizer="adam", device=CPU,
    )
    backdoored = badencoder(inputs, 0, BadEncoderConfig()).encoder.eval()
    return clean.eval(), backdoored, CleanSubset(data.images[2000:2200])


def test_pairwise_cosine_known_answers():
    assert mean_pairwise_cosine(torch.ones(5, 3)).item() == pytest.approx(1.0)
    assert mean_pairwise_cosine(torch.tensor([[1.0, 0.0], [-1.0, 0.0]])).item() == pytest.approx(-1.0)
    assert mean_pairwise_cosine(torch.eye(4)).item() == pytest.approx(0.0)


def test_inverted_trigger_overlaps_the_planted_one_and_the_clean_encoder_is_clean(encoders):
    clean, backdoored, subset = encoders
    found = invert(backdoored, subset, DecreeConfig(), torch.Generator().manual_seed(0), CPU)
    control = invert(clean, subset, DecreeConfig(), torch.Generator().manual_seed(0), CPU)
    inverted, planted = found.mask[0] > 0.5, TRIGGER.mask[0] > 0
    iou = (inverted & planted).sum().item() / (inverted | planted).sum().item()
    print(f"DECREE L1 share: backdoored {found.l1_share:.4f}, clean {control.l1_share:.4f}; IoU with the planted trigger {iou:.3f}")
    assert found.flagged and not control.flagged
    assert found.l1_share < control.l1_share
    assert iou > 0.1


def test_defense_unlearns_only_when_it_flags(encoders):
    clean, backdoored, subset = encoders
    budget = Budget(epochs=2, batch_size=50, lr=1e-4, device=CPU)
    kept = decree(copy.deepcopy(clean), subset, budget, seed=0, config=DecreeConfig())
    assert not kept.meta["flagged"] and all(torch.equal(a, b) for a, b in zip(kept.encoder.state_dict().values(), clean.state_dict().values()))
    fixed = decree(copy.deepcopy(backdoored), subset, budget, seed=0, config=DecreeConfig())
    assert fixed.meta["flagged"] and fixed.meta["unlearned"] and "unlearning_seconds" in fixed.meta
    x = TRIGGER.stamp(subset.images[:64]).float() / 255
    with torch.no_grad():
        assert mean_pairwise_cosine(fixed.encoder(x)) < mean_pairwise_cosine(backdoored(x))  # triggered features no longer collapse as much
