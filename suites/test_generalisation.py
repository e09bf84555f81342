"""RQ4, generalisation: supervised backdoors, and what a defense costs when there is no backdoor.

- RQ4.1: a supervised attack (BadNets) backdoors a classifier with each trigger
  family; its backbone is the encoder every defense receives (attacks/badnets.py).
  The undefended classifier must carry the backdoor; defended rows meet `--gate`.
  A defended classifier gets a head refitted on the labelled clean subset, so its
  ACC is read against the undefended backbone with a head refitted the same way
  (variant "<family> (refitted head)"), not against the attack's own head.
- RQ4.2: every chosen defense runs on the clean encoder; clean accuracy falls by
  at most `CLEAN_ACC_DROP_AT_MOST` points (the paper: at most ~3).
"""

from __future__ import annotations

import pytest

from harness.gates import Gate, check
from harness.pipeline import CLEAN, UNDEFENDED
from harness.plugin import parametrize_grid, session_of

SUITE = "generalisation"
CLEAN_ACC_DROP_AT_MOST = 5.0
SUPERVISED_ASR_AT_LEAST = 50.0  # ASR(non-target) of an undefended backdoored classifier (the paper: ~100)
TRIGGER_FAMILIES: dict[str, dict] = {  # RQ4.1's triggers, as attack settings
    "grid": {"trigger": "checkerboard", "trigger_size": 3},
    "four_corners": {"trigger": "four_corners", "trigger_size": 3},
    "blend": {"trigger": "blend", "trigger_size": 32},
}

pytestmark = [pytest.mark.suite(SUITE), pytest.mark.generalisation]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    h = session_of(metafunc.config)
    if "family" in metafunc.fixturenames:
        axes = {"attack": h.attacks(supervised=True), "family": list(TRIGGER_FAMILIES), "defense": h.defenses(), "seed": h.seeds}
    else:
        axes = {"downstream": h.downstream(), "defense": h.defenses(), "seed": h.seeds}
    parametrize_grid(metafunc, axes)


def test_supervised_backdoor_is_implanted(harness, attack: str, family: str, seed: int) -> None:
    pretrain = harness.profile.pretrain  # a classifier is evaluated on its own dataset
    row = harness.row(SUITE, attack, UNDEFENDED, pretrain, seed, variant=family, attack_overrides=TRIGGER_FAMILIES[family])
    check(row, Gate("asr_nontarget", ">=", SUPERVISED_ASR_AT_LEAST))


def test_supervised_backdoor_defended(harness, attack: str, family: str, defense: str, seed: int) -> None:
    pretrain, overrides = harness.profile.pretrain, TRIGGER_FAMILIES[family]
    undefended = harness.row(SUITE, attack, UNDEFENDED, pretrain, seed, variant=f"{family} (refitted head)",
                             attack_overrides=overrides, refit_head=True)
    row = harness.row(SUITE, attack, defense, pretrain, seed, variant=family, attack_overrides=overrides)
    for gate in harness.gates:
        check(row, gate, undefended)


def test_clean_encoder_keeps_accuracy(harness, downstream: str, defense: str, seed: int) -> None:
    control = harness.row(SUITE, CLEAN, UNDEFENDED, downstream, seed)
    row = harness.row(SUITE, CLEAN, defense, downstream, seed)
    check(row, Gate("acc_drop", "<=", CLEAN_ACC_DROP_AT_MOST), control)
