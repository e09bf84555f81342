"""The budget rule: every defense runs its reference recipe scaled by the profile's fraction, above a floor."""

import pytest
import torch

from harness.contract import MIN_EPOCHS, MIN_STEPS, Budget, Steps
from harness.profiles import get_profile
from harness.registry import DEFENSES

# Known answers: ceil(fraction * reference), at least the floor (5 epochs, 10 steps, 100 MINE steps), at most the reference.
EXPECTED = {
    "tiny": {  # fraction 0.075
        "anp": {"mask_iterations": 150},
        "decree": {"inversion_steps": 300, "unlearning_epochs": 8},
        "dede": {"decoder_epochs": 15},
        "fp": {"finetune_epochs": 8},
        "ft": {"finetune_epochs": 8},
        "medic": {"cloning_epochs": 5},
        "mimic": {"distillation_epochs": 75, "mine_steps_per_stage": 240},
        "moth": {"hardening_epochs": 2, "warmup_steps": 38, "pair_steps_first": 15, "pair_steps_later": 10},
        "nad": {"teacher_epochs": 5, "distillation_epochs": 5},
        "ssl_cleanse": {"inversion_epochs": 75, "unlearning_epochs": 38},
    },
    "paper": {  # fraction 1: the reference recipes themselves
        "anp": {"mask_iterations": 2000},
        "decree": {"inversion_steps": 4000, "unlearning_epochs": 100},
        "dede": {"decoder_epochs": 200},
        "fp": {"finetune_epochs": 100},
        "ft": {"finetune_epochs": 100},
        "medic": {"cloning_epochs": 60},
        "mimic": {"distillation_epochs": 1000, "mine_steps_per_stage": 3200},
        "moth": {"hardening_epochs": 2, "warmup_steps": 500, "pair_steps_first": 200, "pair_steps_later": 50},
        "nad": {"teacher_epochs": 10, "distillation_epochs": 20},
        "ssl_cleanse": {"inversion_epochs": 1000, "unlearning_epochs": 500},
    },
}


def budget_of(profile_name: str) -> Budget:
    p = get_profile(profile_name)
    return Budget(fraction=p.budget_fraction, batch_size=p.defense_batch, lr=p.defense_lr, device=torch.device("cpu"))


@pytest.mark.parametrize("profile", sorted(EXPECTED))
@pytest.mark.parametrize("name", DEFENSES.names())
def test_each_defense_follows_the_budget_rule(profile, name):
    assert name in EXPECTED[profile], f"defense {name} has no row in the budget table: add its reference loops"
    steps = DEFENSES.get(name).default_config().steps(budget_of(profile))
    assert isinstance(steps, Steps) and steps.as_dict() == EXPECTED[profile][name]  # the contract of harness/contract.py


def test_steps_scale_round_up_and_keep_the_floor():
    b = Budget(fraction=0.075, batch_size=1, lr=1.0, device=torch.device("cpu"))
    assert b.steps(1000) == 75 and b.steps(20, MIN_EPOCHS) == MIN_EPOCHS and b.steps(50, MIN_STEPS) == MIN_STEPS
    assert b.steps(101) == 8  # 7.575 rounds up
    assert b.steps(2, MIN_EPOCHS) == 2  # the floor never lifts a loop above its reference
    with pytest.raises(ValueError):
        Budget(fraction=0.0, batch_size=1, lr=1.0, device=torch.device("cpu"))
