"""BASSL's and BadNets' poisoning, the adaptive attack's regulariser, and the attack contract at micro size."""

import dataclasses

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from attacks.adaptive import AdaptiveConfig, adaptive_loss, attention_gap
from attacks.badencoder import TamperBatch, badencoder_loss
from attacks.badnets import BadNetsConfig, badnets, poison_labelled
from attacks.bassl import BASSLConfig, bassl, insert, poison
from harness.contract import AttackInputs, AttackNotApplicable
from harness.models import STAGES, build_encoder
from harness.ssl import SimCLRConfig
from harness.triggers import Trigger, make_trigger

LABELS = torch.arange(10).repeat_interleave(7)  # 10 categories, 7 images each


def images(seed: int = 0, n: int = len(LABELS)) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


@given(category=st.integers(0, 9), rate=st.floats(0.01, 1.0), size=st.sampled_from([3, 5, 10]),
       family=st.sampled_from(["patch", "checkerboard"]), seed=st.integers(0, 1000))
@settings(max_examples=40, deadline=None)
def test_bassl_poisons_exactly_the_share_of_the_category_in_bounds(category, rate, size, family, seed):
    x, trigger = images(), make_trigger(family, size)
    poisoned, plan = poison(x, LABELS, category, trigger, rate, torch.Generator().manual_seed(seed))
    expected = round(rate * 7)
    assert len(plan.indices) == expected and (LABELS[plan.indices] == category).all()
    assert len(set(plan.indices.tolist())) == expected
    changed = (poisoned != x).flatten(1).any(1).nonzero().flatten()
    assert set(changed.tolist()) <= set(plan.indices.tolist())  # nothing outside the plan is touched
    assert ((plan.tops >= 0) & (plan.tops <= 32 - size) & (plan.lefts >= 0) & (plan.lefts <= 32 - size)).all()
    for i, top, left in zip(plan.indices.tolist(), plan.tops.tolist(), plan.lefts.tolist()):
        placed = trigger.placed(top, left)
        assert torch.equal(poisoned[i], placed.stamp(x[i : i + 1])[0])
    again, plan2 = poison(x, LABELS, category, trigger, rate, torch.Generator().manual_seed(seed))
    assert torch.equal(again, poisoned) and torch.equal(plan2.tops, plan.tops)


def test_poison_settings_are_checked():
    with pytest.raises(ValueError, match="inserted_share or poison_rate"):
        BASSLConfig(inserted_share=0.0, poison_rate=0.0)
    with pytest.raises(ValueError, match="poison_rate"):
        BASSLConfig(poison_rate=1.5)


@given(share=st.floats(0.0, 1.0), n_pretrain=st.integers(1, 30), n_target=st.integers(1, 20), size=st.sampled_from([3, 5, 10]),
       seed=st.integers(0, 1000))
@settings(max_examples=60, deadline=None)
def test_bassl_inserts_exactly_the_stated_number_of_triggered_target_images(share, n_pretrain, n_target, size, seed):
    pretrain, targets = images(seed, n_pretrain), images(seed + 1, n_target)
    trigger = make_trigger("patch", size)
    poisoned, plan = insert(pretrain, targets, trigger, share, torch.Generator().manual_seed(seed))
    expected = round(share * n_target)
    assert len(poisoned) == n_pretrain + expected and len(plan.indices) == expected
    assert torch.equal(poisoned[:n_pretrain], pretrain)  # nothing else is touched
    assert torch.equal(plan.indices, torch.arange(n_pretrain, n_pretrain + expected))
    inserted = poisoned[n_pretrain:]
    for image, top, left in zip(inserted, plan.tops.tolist(), plan.lefts.tolist()):
        placed = trigger.placed(top, left)
        # Each inserted image is one of the target class's images, stamped at its position.
        assert any(torch.equal(image, placed.stamp(t[None])[0]) for t in targets)
    assert len({tuple(i.flatten().tolist()) for i in inserted}) <= n_target


def attack_inputs(target_in_pretrain: bool, epochs: int = 1) -> AttackInputs:
    torch.manual_seed(0)
    clean = build_encoder("resnet18", 4).eval()
    return AttackInputs(
        clean_encoder=lambda: clean, pretrain=images(), pretrain_labels=LABELS, shadow=images(1, 16), references=images(2, 2),
        target_images=images(3, 10), target=3, target_in_pretrain=target_in_pretrain, trigger=make_trigger("checkerboard", 5),
        arch="resnet18", width=4, ssl=SimCLRConfig(epochs=epochs, batch_size=16), epochs=epochs, batch_size=8, lr=1e-3,
        optimizer="adam", device=torch.device("cpu"),
    )


def test_bassl_applies_to_any_task_and_its_own_protocol_needs_the_pre_training_classes():
    result = bassl(attack_inputs(target_in_pretrain=False), 0, BASSLConfig())
    assert result.meta["inserted_images"] == 6 and result.meta["poisoned_pretraining_images"] == 0  # round(0.6 * 10)
    with pytest.raises(AttackNotApplicable, match="pre-training category"):
        bassl(attack_inputs(target_in_pretrain=False), 0, BASSLConfig(poison_rate=0.5))


def test_bassl_pre_trains_on_the_poisoned_set():
    result = bassl(attack_inputs(target_in_pretrain=True), 0, BASSLConfig(poison_rate=0.5, color=(0.0, 1.0, 0.0)))
    assert result.meta["poisoned_pretraining_images"] == 4 and result.target == 3  # round(0.5 * 7)
    assert result.meta["inserted_images"] == 6
    # Its own trigger: an opaque patch of the given colour, the size of the profile's (5x5 here).
    assert result.trigger.describe()["box"] == [26, 26, 30, 30]
    assert result.trigger.pattern[:, 28, 28].tolist() == [0.0, 1.0, 0.0] and result.trigger.mask.sum() == 25
    assert result.encoder(torch.rand(2, 3, 32, 32)).shape == (2, 32)


# -- the adaptive attack ------------------------------------------------------------------


def stages_of(x: torch.Tensor) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return build_encoder("resnet18", 4).eval().forward_stages(x)[0]


def test_attention_gap_is_zero_when_the_trigger_does_nothing():
    x = torch.rand(4, 3, 32, 32)
    nothing = Trigger("nothing", torch.rand(3, 32, 32), torch.zeros(1, 32, 32))
    assert attention_gap(stages_of(x), stages_of(nothing.stamp(x))).item() == pytest.approx(0.0, abs=1e-12)
    assert attention_gap(stages_of(x), stages_of(make_trigger("checkerboard", 10).stamp(x))).item() > 1e-4


def test_adaptive_loss_is_badencoder_loss_plus_the_weighted_gap():
    g = torch.Generator().manual_seed(0)
    feats = [torch.randn(4, 8, generator=g) for _ in range(5)]
    clean = {s: torch.rand(4, 2, 4, 4, generator=g) for s in STAGES}
    trig = {s: torch.rand(4, 2, 4, 4, generator=g) for s in STAGES}
    b = TamperBatch(feats[0], feats[1], feats[2], feats[3], feats[4], clean, trig)
    cfg = AdaptiveConfig(lambda3=2.5)
    base = badencoder_loss(b.triggered, b.refs, b.refs_clean, b.shadow, b.shadow_clean, cfg)
    assert adaptive_loss(b, cfg).item() == pytest.approx(base.item() + 2.5 * attention_gap(clean, trig).item(), rel=1e-6)
    assert adaptive_loss(b, dataclasses.replace(cfg, lambda3=0.0)).item() == pytest.approx(base.item())


# -- BadNets ----------------------------------------------------------------------------


@given(target=st.integers(0, 9), rate=st.floats(0.01, 0.85), family=st.sampled_from(["checkerboard", "four_corners", "blend"]),
       seed=st.integers(0, 1000))
@settings(max_examples=40, deadline=None)
def test_badnets_relabels_exactly_the_poisoned_share(target, rate, family, seed):
    x, trigger = images(), make_trigger(family, 3)
    poisoned, labels, chosen = poison_labelled(x, LABELS, target, trigger, rate, torch.Generator().manual_seed(seed))
    assert len(chosen) == round(rate * len(LABELS)) and (LABELS[chosen] != target).all()
    changed = (labels != LABELS).nonzero().flatten()
    assert torch.equal(changed, chosen) and (labels[chosen] == target).all()  # exactly the poisoned images are relabelled
    assert torch.equal(poisoned[chosen], trigger.stamp(x[chosen]))
    untouched = torch.ones(len(x), dtype=torch.bool)
    untouched[chosen] = False
    assert torch.equal(poisoned[untouched], x[untouched])


def test_badnets_trains_a_classifier_and_needs_the_pre_training_classes():
    with pytest.raises(AttackNotApplicable):
        badnets(attack_inputs(target_in_pretrain=False), 0, BadNetsConfig(epochs=1))
    result = badnets(attack_inputs(target_in_pretrain=True), 0, BadNetsConfig(epochs=1, batch_size=16))
    assert result.meta["head.weight"].shape == (10, 32) and result.meta["head.bias"].shape == (10,)
    assert result.meta["poisoned_images"] == 7 and result.trigger.name == "checkerboard3"
    with pytest.raises(ValueError, match="poison_rate"):
        BadNetsConfig(poison_rate=1.0)
