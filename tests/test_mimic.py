import inspect

import pytest
import torch

from defenses.mimic import MimicConfig, attention_loss, clone_loss, loss_weights, mimic, mimic_loss, stage_weights
from harness.contract import Budget, CleanSubset
from harness.mine import MineConfig
from harness.models import STAGES, build_encoder
from harness.registry import DEFENSES

CPU = torch.device("cpu")
TINY = MimicConfig(mine=MineConfig(steps=20, batch_size=32), mine_views=2)


def test_reference_betas_by_default():
    mi = {"layer1": 1.0, "layer2": 2.0, "layer3": 3.0, "layer4": 4.0}
    betas = stage_weights(mi, MimicConfig())
    assert betas == pytest.approx({"layer1": 2000.0, "layer2": 3000.0, "layer3": 4000.0, "layer4": 5000.0})


def test_uniform_betas_without_mi_guidance_keep_the_total():
    betas = stage_weights({}, MimicConfig(mi_guidance=False, lambda2=100.0))
    assert betas == {s: 100.0 for s in STAGES}


def test_negative_mi_counts_as_zero_and_all_zero_is_uniform():
    cfg = MimicConfig(lambda2=4.0, alpha0=1.0, alpha1=4.0)  # mean of alpha0 + alpha1 * share = 2
    assert stage_weights({"layer1": -1.0, "layer2": 0.0, "layer3": 0.0, "layer4": 2.0}, cfg)["layer1"] == pytest.approx(2.0)
    assert list(stage_weights({s: -0.5 for s in STAGES}, cfg).values()) == pytest.approx([4.0] * 4)


def test_clone_loss_zero_at_identity_and_two_at_opposite():
    f = torch.randn(5, 8)
    assert clone_loss(f, f).item() == pytest.approx(0.0, abs=1e-6)
    assert clone_loss(f, -f).item() == pytest.approx(2.0, abs=1e-6)


def test_loss_terms_switch_off():
    g = torch.Generator().manual_seed(0)
    stages = {s: torch.randn(4, 2, 4, 4, generator=g) for s in STAGES}
    other = {s: torch.randn(4, 2, 4, 4, generator=g) for s in STAGES}
    feat, z = torch.randn(4, 8, generator=g), torch.randn(2, 6, generator=g)
    betas = {s: 1.0 for s in STAGES}
    full, terms = mimic_loss(stages, feat, other, -feat, z[:1], z[1:], betas, MimicConfig())
    only_clone, _ = mimic_loss(stages, feat, other, -feat, z[:1], z[1:], betas, MimicConfig(contrastive=False, attention=False))
    assert only_clone.item() == pytest.approx(terms["l0"].item())
    assert full.item() == pytest.approx((terms["l0"] + terms["l1"]).item() + attention_loss(stages, other, betas, 2).item(), rel=1e-5)
    weighted, _ = mimic_loss(stages, feat, other, -feat, z[:1], z[1:], betas, MimicConfig(lambda1=0.4, clone=False))
    assert weighted.item() == pytest.approx(0.4 * terms["l1"].item() + terms["l2"].item(), rel=1e-5)
    assert loss_weights(MimicConfig(lambda1=0.4, clone=False)) == {"l0": 0.0, "l1": 0.4, "l2": 1.0}


def test_loss_falls_under_gradient_steps():
    torch.manual_seed(0)
    teacher, student = build_encoder("resnet18", 4).eval(), build_encoder("resnet18", 4).train()
    x = torch.rand(16, 3, 32, 32)
    with torch.no_grad():
        t_stages, t_feat = teacher.forward_stages(x)
    opt = torch.optim.Adam(student.parameters(), lr=1e-2)
    cfg = MimicConfig(contrastive=False)
    losses = []
    for _ in range(15):
        s_stages, s_feat = student.forward_stages(x)
        loss, _ = mimic_loss(s_stages, s_feat, t_stages, t_feat, s_feat[:8], s_feat[8:], stage_weights({}, MimicConfig(mi_guidance=False, lambda2=10.0)), cfg)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_signature_carries_no_attack_knowledge():
    assert list(inspect.signature(mimic).parameters) == ["suspect", "clean", "budget", "seed", "config"]
    assert DEFENSES.get("mimic").fn is mimic


@pytest.mark.parametrize("config", [
    TINY, MimicConfig(mi_guidance=False), MimicConfig(localise_on="student", mine=TINY.mine, mine_views=2),
    MimicConfig(attention=False), MimicConfig(contrastive=False, attention=False),  # the ablation's no_attention, clone_only
])
def test_student_starts_random_and_keeps_the_interface(config):
    torch.manual_seed(0)
    suspect = build_encoder("resnet18", 4).eval()
    before = {k: v.clone() for k, v in suspect.state_dict().items()}
    clean = CleanSubset(torch.randint(0, 256, (24, 3, 32, 32), dtype=torch.uint8))
    budget = Budget(fraction=0.001, batch_size=12, lr=1e-3, device=CPU)  # the budget rule's floors: 5 epochs, 100 MINE steps
    result = mimic(suspect, clean, budget, seed=0, config=config)
    student = result.encoder
    assert type(student) is type(suspect) and student.config == suspect.config
    assert all(torch.equal(before[k], v) for k, v in suspect.state_dict().items())  # the suspect is not modified
    # Ten steps cannot turn random weights into the suspect's.
    assert not torch.allclose(student.stem[0].weight, suspect.stem[0].weight, atol=1e-2)
    assert student(torch.rand(2, 3, 32, 32)).shape == (2, suspect.feature_dim)
    assert set(result.meta["beta_per_stage"]) == set(STAGES)
    localised = config.mi_guidance and config.attention
    assert bool(result.meta["mi_per_stage"]) == localised
    assert set(result.meta["localisation_seconds_per_stage"]) == ({"samples", *STAGES} if localised else set())
    assert result.meta["steps"] == {"distillation_epochs": 5, "mine_steps_per_stage": 100 if localised else 0}


def test_config_is_checked():
    with pytest.raises(ValueError, match="localise_on"):
        MimicConfig(localise_on="both")
    with pytest.raises(ValueError, match="at least one"):
        MimicConfig(clone=False, contrastive=False, attention=False)
