"""The baseline defenses: each runs end to end and keeps a property of its method."""

import inspect

import pytest
import torch

from defenses.anp import ANPConfig, anp, batchnorm_layers, learn_masks
from defenses.fp import FinePruningConfig, channels_to_prune, fp, last_conv_activity
from defenses.medic import MedicConfig, active_stages, importance, medic
from defenses.moth import pseudo_labels
from defenses.nad import NADConfig, nad, nad_loss
from harness.contract import Budget, CleanSubset
from harness.models import STAGES, build_encoder
from harness.registry import DEFENSES

CPU = torch.device("cpu")
BUDGET = Budget(epochs=2, batch_size=8, lr=1e-3, device=CPU)
BASELINES = ["ft", "fp", "nad", "anp", "moth", "decree", "medic"]
ONLY_WHEN_FOUND = {"anp", "decree"}  # prune or unlearn only what they find; a random encoder may give them nothing


def suspect_and_clean(seed: int = 0):
    torch.manual_seed(seed)
    suspect = build_encoder("resnet18", 4).eval()
    clean = CleanSubset(torch.randint(0, 256, (24, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed)))
    return suspect, clean


@pytest.mark.parametrize("name", BASELINES)
def test_runs_end_to_end_and_keeps_the_interface(name):
    suspect, clean = suspect_and_clean()
    reference = build_encoder("resnet18", 4)
    reference.load_state_dict(suspect.state_dict())
    result = DEFENSES.create(name)(suspect, clean, BUDGET, seed=0)
    encoder = result.encoder
    assert type(encoder) is type(reference) and encoder.config == reference.config
    assert encoder.state_dict().keys() == reference.state_dict().keys()
    assert encoder(torch.rand(3, 3, 32, 32)).shape == (3, reference.feature_dim)
    if name not in ONLY_WHEN_FOUND:
        changed = any(not torch.equal(a, b) for a, b in zip(encoder.state_dict().values(), reference.state_dict().values()))
        assert changed, f"{name} returned the suspect's weights untouched"
    assert any(k.endswith("_seconds") for k in result.meta)


@pytest.mark.parametrize("name", BASELINES)
def test_signature_carries_no_attack_knowledge(name):
    assert list(inspect.signature(DEFENSES.get(name).fn).parameters) == ["suspect", "clean", "budget", "seed", "config"]


@pytest.mark.parametrize("name", BASELINES)
def test_same_seed_same_encoder(name):
    a = DEFENSES.create(name)(*suspect_and_clean(), BUDGET, seed=3).encoder
    b = DEFENSES.create(name)(*suspect_and_clean(), BUDGET, seed=3).encoder
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


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
    result = nad(*suspect_and_clean(), BUDGET, seed=0, config=NADConfig(teacher_share=0.5))
    assert result.meta["teacher_epochs"] == 1 and result.meta["distillation_epochs"] == 1
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


def test_anp_masks_stay_in_the_unit_interval():
    suspect, clean = suspect_and_clean()
    masks, _ = learn_masks(suspect.eval(), clean, BUDGET, ANPConfig(mask_lr=50.0), torch.Generator().manual_seed(0))
    values = torch.cat([m.flatten() for m in masks.values()])
    assert values.min() >= 0 and values.max() <= 1
    assert (values == 0).any() and (values < 1).any()  # a large step does reach the bounds


def test_anp_prunes_exactly_the_channels_under_the_threshold():
    suspect, clean = suspect_and_clean()
    before = {n: bn.weight.detach().clone() for n, bn in batchnorm_layers(suspect).items()}
    result = anp(suspect, clean, BUDGET, seed=0, config=ANPConfig(mask_lr=5.0, threshold=0.5))
    after = batchnorm_layers(result.encoder)
    zeroed = {n: (after[n].weight == 0).nonzero().flatten().tolist() for n in after}
    assert {n: c for n, c in zeroed.items() if c} == result.meta["pruned_channels"]
    assert result.meta["pruned_total"] > 0
    for n, bn in after.items():  # unpruned channels keep the suspect's weights
        keep = after[n].weight != 0
        assert torch.equal(bn.weight[keep], before[n][keep])
    assert 0 <= result.meta["mask_min"] <= result.meta["mask_mean"] <= 1


# -- MEDIC ----------------------------------------------------------------------------


def test_medic_importance_is_non_negative_with_mean_one_per_stage():
    suspect, clean = suspect_and_clean()
    weights = importance(suspect.eval(), clean.images, MedicConfig(), 8, torch.Generator().manual_seed(0), CPU)
    assert set(weights) == set(STAGES)
    for w in weights.values():
        assert (w >= 0).all() and w.mean().item() == pytest.approx(1.0, rel=1e-5)
        assert w.std() > 0  # channels differ in importance


def test_medic_student_starts_random_and_stages_join_in_order():
    suspect, clean = suspect_and_clean()
    student = medic(suspect, clean, Budget(epochs=1, batch_size=8, lr=1e-3, device=CPU), seed=0, config=MedicConfig()).encoder
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
