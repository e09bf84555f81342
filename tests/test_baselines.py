"""The baseline defenses: each runs end to end and keeps a property of its method."""

import copy
import inspect

import pytest
import torch
import torch.nn.functional as F

from defenses.anp import ANPConfig, anp, batchnorm_layers, learn_masks
from defenses.fp import FinePruningConfig, channels_to_prune, fp, last_conv_activity
from defenses.medic import MedicConfig, active_stages, medic, stage_std, teacher_importance
from defenses.moth import MothConfig, fit_head, invert, pseudo_labels
from defenses.nad import NADConfig, nad, nad_loss
from harness.augment import simclr_view
from harness.contract import Budget, CleanSubset
from harness.losses import mean_pairwise_cosine
from harness.models import STAGES, build_encoder
from harness.registry import DEFENSES, INPUT_DETECTION
from harness.training import batched_features, to_float
from tests.conftest import TRIGGER

CPU = torch.device("cpu")
BUDGET = Budget(fraction=0.001, batch_size=12, lr=1e-3, device=CPU)  # every loop at the budget rule's floor
BASELINES = DEFENSES.names()  # a newly registered defense gets these tests with no edit here
ONLY_WHEN_FOUND = {"anp"}  # prunes only what its stopping rule allows; a random encoder may give it nothing


def suspect_and_clean(seed: int = 0):
    torch.manual_seed(seed)
    suspect = build_encoder("resnet18", 4).eval()
    clean = CleanSubset(torch.randint(0, 256, (24, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed)))
    return suspect, clean


PURIFIERS = [n for n in BASELINES if not DEFENSES.has_tag(n, INPUT_DETECTION)]
DETECTORS = [n for n in BASELINES if DEFENSES.has_tag(n, INPUT_DETECTION)]


@pytest.mark.parametrize("name", PURIFIERS)
def test_runs_end_to_end_keeps_the_interface_and_the_same_seed_gives_the_same_encoder(name):
    suspect, clean = suspect_and_clean()
    reference = build_encoder("resnet18", 4)
    reference.load_state_dict(suspect.state_dict())
    result = DEFENSES.create(name)(suspect, clean, BUDGET, seed=3)
    encoder = result.encoder
    assert type(encoder) is type(reference) and encoder.config == reference.config
    assert encoder.state_dict().keys() == reference.state_dict().keys()
    assert encoder(torch.rand(3, 3, 32, 32)).shape == (3, reference.feature_dim)
    if name not in ONLY_WHEN_FOUND:
        changed = any(not torch.equal(a, b) for a, b in zip(encoder.state_dict().values(), reference.state_dict().values()))
        assert changed, f"{name} returned the suspect's weights untouched"
    assert any(k.endswith("_seconds") for k in result.meta)
    assert result.meta["steps"] == DEFENSES.get(name).default_config().steps(BUDGET).as_dict()  # the loops the budget rule gave it
    again = DEFENSES.create(name)(*suspect_and_clean(), BUDGET, seed=3).encoder
    assert all(torch.equal(x, y) for x, y in zip(encoder.state_dict().values(), again.state_dict().values()))


@pytest.mark.parametrize("name", DETECTORS)
def test_an_input_detector_runs_end_to_end_leaves_the_suspect_alone_and_the_same_seed_gives_the_same_verdicts(name):
    suspect, clean = suspect_and_clean()
    weights = copy.deepcopy(suspect.state_dict())
    result = DEFENSES.create(name)(suspect, clean, BUDGET, seed=3)
    assert all(torch.equal(a, b) for a, b in zip(weights.values(), suspect.state_dict().values()))  # nothing purified
    images = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(9))
    flags = result.detector.flags(images, CPU)
    assert flags.dtype == torch.bool and flags.shape == (16,) and torch.isfinite(torch.tensor(result.detector.threshold))
    assert any(k.endswith("_seconds") for k in result.meta)
    assert result.meta["steps"] == DEFENSES.get(name).default_config().steps(BUDGET).as_dict()
    again = DEFENSES.create(name)(*suspect_and_clean(), BUDGET, seed=3)
    assert torch.equal(again.detector.flags(images, CPU), flags) and again.detector.threshold == result.detector.threshold


@pytest.mark.parametrize("name", BASELINES)
def test_signature_carries_no_attack_knowledge(name):
    assert list(inspect.signature(DEFENSES.get(name).fn).parameters) == ["suspect", "clean", "budget", "seed", "config"]


# -- Fine-Pruning ---------------------------------------------------------------------


def test_fine_pruning_removes_exactly_the_channels_it_reports():
    suspect, clean = suspect_and_clean()
    result = fp(suspect, clean, BUDGET, seed=0, config=FinePruningConfig(min_cosine=0.5))
    pruned = result.meta["pruned_channels"]
    assert pruned, "a 0.5 cosine bound should allow some pruning"
    _, branch = last_conv_activity(result.encoder, clean.images, CPU)
    silent = (branch.abs().amax(dim=(0, 2, 3)) == 0).nonzero().flatten().tolist()
    assert silent == pruned  # zero after fine-tuning too, and no other channel silenced
    assert result.meta["pruned_share"] == len(pruned) / branch.shape[1]
    assert result.meta["clean_cosine_after_pruning"] >= 0.5


def test_pruning_order_and_stopping_rule():
    g = torch.Generator().manual_seed(0)
    shortcut = torch.rand(16, 6, 2, 2, generator=g)
    branch = torch.rand(16, 6, 2, 2, generator=g) + torch.arange(6.0).view(1, 6, 1, 1)  # channel c has activity ~c
    branch[:, 0] = 0.0  # dormant: removing it changes nothing
    chosen, cosine = channels_to_prune(shortcut, branch, min_cosine=1 - 1e-6, max_share=0.99)
    assert chosen == [0] and cosine == pytest.approx(1.0)
    chosen, _ = channels_to_prune(shortcut, branch, min_cosine=0.0, max_share=0.5)
    assert chosen == [0, 1, 2]  # least active first, capped at half the channels


# -- NAD ------------------------------------------------------------------------------


def test_nad_teacher_is_fine_tuned_away_from_the_suspect():
    result = nad(*suspect_and_clean(), BUDGET, seed=0, config=NADConfig())
    assert result.meta["steps"] == {"teacher_epochs": 5, "distillation_epochs": 5}
    assert result.meta["teacher_drift"] > 1e-4


def test_nad_loss_is_the_ssl_loss_when_attention_maps_agree():
    g = torch.Generator().manual_seed(0)
    stages = {s: torch.randn(4, 3, 4, 4, generator=g) for s in STAGES}
    z1, z2 = torch.randn(4, 8, generator=g), torch.randn(4, 8, generator=g)
    same, terms = nad_loss(stages, {s: 2 * v for s, v in stages.items()}, z1, z2, NADConfig())  # scale-free maps
    assert terms["attention"] == pytest.approx(0.0, abs=1e-9) and same.item() == pytest.approx(terms["ssl"])
    other = {s: torch.randn(4, 3, 4, 4, generator=g) for s in STAGES}
    assert nad_loss(stages, other, z1, z2, NADConfig())[1]["attention"] > 0
    assert nad_loss(stages, other, z1, z2, NADConfig(betas=(0.0, 0.0, 0.0, 0.0)))[1]["attention"] == 0


# -- ANP ------------------------------------------------------------------------------


def test_anp_masks_stay_in_the_unit_interval_and_leave_the_suspect_untouched():
    suspect, clean = suspect_and_clean()
    before = copy.deepcopy(suspect.state_dict())
    masks, _ = learn_masks(suspect.eval(), clean, BUDGET, ANPConfig(mask_lr=50.0), torch.Generator().manual_seed(0))
    values = torch.cat([m.flatten() for m in masks.values()])
    assert values.min() >= 0 and values.max() <= 1
    assert (values == 0).any() and (values < 1).any()  # a large step does reach the bounds
    # Masks are learnt in train mode on a copy: the suspect's running statistics do not move.
    assert all(torch.equal(a, b) for a, b in zip(before.values(), suspect.state_dict().values()))


@pytest.mark.parametrize("rule", ["threshold", "fraction"])
def test_anp_prunes_exactly_the_channels_it_reports(rule):
    suspect, clean = suspect_and_clean()
    before = {n: bn.weight.detach().clone() for n, bn in batchnorm_layers(suspect).items()}
    result = anp(suspect, clean, BUDGET, seed=0, config=ANPConfig(mask_lr=5.0, threshold=0.5, fraction=0.1, prune_by=rule))
    after = batchnorm_layers(result.encoder)
    zeroed = {n: (after[n].weight == 0).nonzero().flatten().tolist() for n in after}
    assert {n: c for n, c in zeroed.items() if c} == result.meta["pruned_channels"]
    assert result.meta["pruned_total"] > 0
    if rule == "fraction":
        assert result.meta["pruned_total"] == int(0.1 * result.meta["channels_total"])
    for n, bn in after.items():  # unpruned channels keep the suspect's weights
        keep = after[n].weight != 0
        assert torch.equal(bn.weight[keep], before[n][keep])
    assert 0 <= result.meta["mask_min"] <= result.meta["mask_mean"] <= 1


def _collapse(encoder, images) -> float:
    with torch.no_grad():
        return mean_pairwise_cosine(encoder(to_float(TRIGGER.stamp(images), CPU))).item()


def test_anp_prunes_a_backdoored_encoder_and_the_triggered_collapse_shrinks(encoders):
    _, backdoored, clean = encoders
    budget = Budget(fraction=0.05, batch_size=64, lr=1e-3, device=CPU)  # 100 mask iterations
    result = anp(copy.deepcopy(backdoored), clean, budget, seed=0, config=ANPConfig())
    print(f"ANP pruned {result.meta['pruned_total']} of {result.meta['channels_total']} channels")
    assert result.meta["pruned_total"] >= 1
    assert _collapse(result.encoder, clean.images[:64]) < _collapse(backdoored, clean.images[:64])


# -- MEDIC ----------------------------------------------------------------------------


def test_medic_importance_is_recomputed_per_batch_and_element():
    suspect, clean = suspect_and_clean()
    suspect.eval()
    cfg, gen = MedicConfig(), torch.Generator().manual_seed(0)
    std = stage_std(suspect, clean.images, CPU)
    weights = []
    for batch in (clean.images[:8], clean.images[8:16]):
        x = to_float(batch, CPU)
        views = torch.cat([simclr_view(x, cfg.augment, gen), simclr_view(x, cfg.augment, gen)])
        w, _ = teacher_importance(suspect, views, std, cfg)
        weights.append(w)
    for s in STAGES:
        a, b = weights[0][s], weights[1][s]
        assert a.shape == (16, *a.shape[1:]) and (a >= 0).all()
        assert (a.flatten(1).pow(2).sum(1) <= 1 + 1e-5).all()  # sqrt(p q) of two distributions: a weight mass at most 1
        assert not torch.allclose(a.mean(0), b.mean(0))  # another batch, another importance
        assert a[0].std() > 0  # elements of one image differ in importance


def test_medic_student_starts_random_and_stages_join_in_order():
    suspect, clean = suspect_and_clean()
    student = medic(suspect, clean, BUDGET, seed=0, config=MedicConfig()).encoder
    assert not torch.allclose(student.stem[0].weight, suspect.stem[0].weight, atol=1e-2)
    assert [len(active_stages(e, 8, True)) for e in range(8)] == [1, 1, 2, 2, 3, 3, 4, 4]
    assert active_stages(0, 8, False) == STAGES


# -- MOTH -----------------------------------------------------------------------------


def test_moth_pseudo_labels_come_from_features_alone():
    g = torch.Generator().manual_seed(0)
    centres = torch.eye(4) * 5
    truth = torch.arange(4).repeat_interleave(10)
    features = centres[truth] + 0.1 * torch.randn(40, 4, generator=g)
    labels = pseudo_labels(features, 4, seed=0)
    # The same partition as the true clusters, up to the names of the clusters.
    assert all(len(set(labels[truth == c].tolist())) == 1 for c in range(4)) and len(set(labels.tolist())) == 4
    assert torch.equal(labels, pseudo_labels(features, 4, seed=0))


def test_moth_inverted_pair_trigger_moves_features_toward_the_target_class(encoders):
    clean_encoder, _, clean = encoders
    features = batched_features(clean_encoder, clean.images, CPU, normalise=True)
    labels = pseudo_labels(features, 5, seed=0)
    head = fit_head(features, labels, 5, 200)
    source, target = 0, 1
    x = to_float(clean.images[labels == source][:32], CPU)
    found = invert(clean_encoder, head, x, target, 200, 0.9, MothConfig(), torch.Generator().manual_seed(0))

    def target_probability(images):
        with torch.no_grad():
            return F.softmax(head(F.normalize(clean_encoder(images), dim=1)), dim=1)[:, target].mean().item()

    assert target_probability(found.stamp(x)) > target_probability(x) + 0.2
    assert found.steps <= 200 and 0 < found.share < 1
