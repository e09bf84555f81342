"""BASSL's, BadNets' and CTRL's poisoning, the adaptive attack's regulariser, DRUPE's loss and schedule, and the attack
contract at micro size."""

import copy
import dataclasses

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from attacks.adaptive import AdaptiveConfig, adaptive_loss, attention_gap
from attacks.badencoder import TamperBatch, badencoder_loss
from attacks.badnets import BadNetsConfig, badnets, poison_labelled
from attacks.bassl import BASSLConfig, bassl, insert, poison
from attacks.ctrl import YUV_TO_RGB, CTRLConfig, ctrl, dct_matrix, frequency_trigger
from attacks.drupe import DRUPEConfig, DRUPESchedule, distribution_shift, sliced_wasserstein
from harness.contract import AttackInputs, AttackNotApplicable
from harness.models import STAGES, build_encoder
from harness.registry import ATTACKS, SUPERVISED
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


# -- CTRL -------------------------------------------------------------------------------


def yuv_dct(images: torch.Tensor, window: int) -> torch.Tensor:
    """Per window, the orthonormal 2-D DCT of the images' YUV channels on the 0..255 scale (the inverse of CTRL's path)."""
    yuv = torch.einsum("ck,nkhw->nchw", torch.linalg.inv(YUV_TO_RGB.double()), images.double() * 255)
    c = dct_matrix(window)
    n, ch, h, w = yuv.shape
    blocks = yuv.view(n, ch, h // window, window, w // window, window).permute(0, 1, 2, 4, 3, 5)
    return c @ blocks @ c.T  # (N, C, rows of windows, columns of windows, window, window)


@given(magnitude=st.floats(10, 150), channels=st.sampled_from([(1,), (2,), (1, 2), (0, 1, 2)]),
       window=st.sampled_from([8, 16, 32]), seed=st.integers(0, 1000))
@settings(max_examples=30, deadline=None)
def test_ctrl_trigger_changes_only_the_chosen_frequencies_by_its_magnitude(magnitude, channels, window, seed):
    positions = ((window // 2 - 1, window // 2 - 1), (window - 1, window - 1))
    config = CTRLConfig(magnitude=magnitude, channels=channels, positions=positions, window=window)
    trigger = frequency_trigger(config)
    # Mid-grey images with little texture, where the clamp to [0, 1] does not bite: the change is exactly the trigger's.
    x = 0.5 + 0.1 * torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(seed))
    assume(bool(((x + trigger.offset >= 0) & (x + trigger.offset <= 1)).all()))
    change = yuv_dct(trigger.stamp(x), window) - yuv_dct(x, window)
    expected = torch.zeros_like(change)
    for channel in channels:
        for row, col in positions:
            expected[:, channel, :, :, row, col] = magnitude
    assert torch.allclose(change, expected, atol=1e-3)
    assert trigger.mask.sum() == 0 and trigger.offset.abs().max() <= 1  # no pixel replaced, every pixel nudged


def test_ctrl_stamps_uint8_and_float_images_alike_and_clamps():
    trigger = frequency_trigger(CTRLConfig())
    x = images()
    as_float = trigger.stamp(x.float() / 255)
    assert (as_float >= 0).all() and (as_float <= 1).all()
    assert (trigger.stamp(x).float() - as_float * 255).abs().max() <= 0.5 + 1e-3  # uint8: the same, rounded


def test_ctrl_poisons_the_target_class_in_place_or_inserts_its_downstream_images():
    config = CTRLConfig(poison_ratio=0.05)  # int(0.05 * 70) = 3
    inside = ctrl(attack_inputs(target_in_pretrain=True), 0, config)
    assert inside.meta["poisoned_images"] == 3 and inside.meta["inserted_images"] == 0 and inside.target == 3
    outside = ctrl(attack_inputs(target_in_pretrain=False), 0, config)
    assert outside.meta["inserted_images"] == 3 and outside.meta["poisoned_share_of_pretraining"] == pytest.approx(3 / 73)
    assert outside.trigger.name == "ctrl100" and outside.encoder(torch.rand(2, 3, 32, 32)).shape == (2, 32)


def test_ctrl_settings_are_checked():
    for bad in ({"window": 5}, {"channels": (3,)}, {"positions": ((32, 0),)}, {"poison_ratio": 0.0}, {"magnitude": 0.0}):
        with pytest.raises(ValueError):
            CTRLConfig(**bad)


# -- DRUPE ------------------------------------------------------------------------------


def test_sliced_wasserstein_is_zero_between_a_sample_and_its_shuffle_and_grows_with_a_shift():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(64, 8, generator=g)
    assert sliced_wasserstein(a, a[torch.randperm(64, generator=g)], 50, g).item() == pytest.approx(0.0, abs=1e-6)
    near, far = (sliced_wasserstein(a, a + shift, 50, torch.Generator().manual_seed(1)).item() for shift in (0.1, 1.0))
    assert 0 < near < far


def test_drupe_schedule_follows_the_reference_landmarks_scaled_to_the_run():
    schedule = DRUPESchedule(DRUPEConfig(), epochs=200)
    assert [schedule.landmark(e) for e in (1, 5, 20)] == [1, 5, 20]
    short = DRUPESchedule(DRUPEConfig(), epochs=8)
    assert [short.landmark(e) for e in (1, 5, 20)] == [1, 1, 1]  # warm-up one epoch, then the full loss and the schedule


def test_drupe_weights_grow_while_the_backdoor_holds_and_shrink_otherwise():
    schedule = DRUPESchedule(DRUPEConfig(), epochs=8)
    good = dict(l0=-0.99, l1=-0.95, l2=-0.95, sim_triggered=0.3, shift=1.0)
    bad = dict(good, l0=-0.5)
    for epoch, means, cost, cost_dist in ((0, good, 0.1, 0.001), (1, good, 0.125, 0.00125), (2, bad, 0.125 / 1.25**1.25, 0.00125 / 1.25**1.25)):
        schedule._sums, schedule._count = dict(means), 1
        recorded = schedule.end_epoch(epoch)  # epoch 0 is the warm-up: nothing adapts before the landmark
        assert recorded["cost"] == pytest.approx(cost) and recorded["cost_dist"] == pytest.approx(cost_dist)


def test_drupe_keeps_triggered_embeddings_closer_to_clean_ones_than_badencoder_at_a_comparable_backdoor():
    base = attack_inputs(target_in_pretrain=True, epochs=20)
    clean = base.clean_encoder()
    inputs = dataclasses.replace(base, shadow=images(1, 48), clean_encoder=lambda: copy.deepcopy(clean))
    held_out = images(4, 64).float() / 255
    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731 - the same directions for both
    results = {name: ATTACKS.create(name)(inputs, 0) for name in ("badencoder", "drupe")}
    with torch.no_grad():
        shift = {n: distribution_shift(r.encoder(r.trigger.stamp(held_out)), r.encoder(held_out), 50, gen()).item() for n, r in results.items()}
        pull = {n: r.meta["shadow_trigger_cosine"] for n, r in results.items()}
    assert shift["drupe"] < shift["badencoder"], (shift, pull)
    assert pull["drupe"] > 0.9, (shift, pull)


# -- every attack -----------------------------------------------------------------------

ENCODER_ATTACKS = [a for a in ATTACKS.names() if not ATTACKS.has_tag(a, SUPERVISED)]  # a new attack gets these tests with no edit


@pytest.mark.parametrize("name", ENCODER_ATTACKS)
def test_every_encoder_attack_returns_a_suspect_of_the_clean_architecture_its_trigger_and_target_and_is_seeded(name):
    def run():
        base = attack_inputs(target_in_pretrain=True)
        clean = base.clean_encoder()
        return ATTACKS.create(name)(dataclasses.replace(base, clean_encoder=lambda: copy.deepcopy(clean)), 0)

    result, again = run(), run()
    reference = build_encoder("resnet18", 4)
    assert type(result.encoder) is type(reference) and result.encoder.state_dict().keys() == reference.state_dict().keys()
    assert result.target == 3 and not torch.equal(result.trigger.stamp(images()), images())  # the trigger changes images
    assert all(torch.equal(a, b) for a, b in zip(result.encoder.state_dict().values(), again.encoder.state_dict().values()))
    assert result.trigger.fingerprint() == again.trigger.fingerprint()
