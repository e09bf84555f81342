"""RQ3, robustness: does a defense hold when the setting moves?

- trigger size: 3x3, 5x5 and 10x10 triggers (the attack is re-run with each);
- clean-data ratio: the defender holds 1 % ... 5 % of the pre-training set;
- poisoned clean data: 0 ... 25 % of the defender's "clean" subset carry the trigger;
- the adaptive attack (attacks/adaptive.py) is one of the attacks, so `--attack=adaptive` asks RQ3.4.

The sweeps run for MIMIC (`ROBUSTNESS_OF`), as in the paper, when it is among the
chosen defenses, on the profile's trigger. Every point is one row (variant
"name=value"); the session writes one curve per sweep (`plot-robustness-<name>.png`).
Every point first checks its positive control: where the attack did not implant at
that point (undefended ASR(all) under the profile's bound), the test is skipped with
that reason and the row's `implanted` column says "no", never a defense success.
The claims are the `--gate` bounds, checked on every defended row against the
undefended row of the same setting.
"""

from __future__ import annotations

import pytest

from harness.gates import check
from harness.pipeline import UNDEFENDED
from harness.plugin import parametrize_grid, require_implanted, session_of

SUITE = "robustness"
TRIGGER_SIZES = (3, 5, 10)
CLEAN_RATIOS = (0.01, 0.02, 0.03, 0.04, 0.05)
CLEAN_POISON = (0.0, 0.05, 0.10, 0.25)
ROBUSTNESS_OF = ("mimic",)  # the paper asks these questions of MIMIC; each point costs a defense run

pytestmark = [pytest.mark.suite(SUITE), pytest.mark.robustness, pytest.mark.slow]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    h = session_of(metafunc.config)
    defenses = [d for d in h.defenses() if d in ROBUSTNESS_OF]
    axes = {"attack": h.attacks(), "downstream": h.downstream(), "defense": defenses,
            "trigger_size": TRIGGER_SIZES, "clean_ratio": CLEAN_RATIOS, "clean_poison": CLEAN_POISON, "seed": h.seeds}
    parametrize_grid(metafunc, axes)


def _gate(harness, row, undefended) -> None:
    require_implanted(row)
    for gate in harness.gates:
        check(row, gate, undefended)


def test_trigger_size(harness, attack: str, downstream: str, defense: str, trigger_size: int, seed: int) -> None:
    point = {"variant": f"trigger_size={trigger_size}", "profile_changes": {"trigger_size": trigger_size}}
    undefended = harness.row(SUITE, attack, UNDEFENDED, downstream, seed, **point)
    _gate(harness, harness.row(SUITE, attack, defense, downstream, seed, **point), undefended)


def test_clean_ratio(harness, attack: str, downstream: str, defense: str, clean_ratio: float, seed: int) -> None:
    undefended = harness.row(SUITE, attack, UNDEFENDED, downstream, seed)
    row = harness.row(SUITE, attack, defense, downstream, seed, variant=f"clean_ratio={clean_ratio}", clean_ratio=clean_ratio)
    _gate(harness, row, undefended)


def test_poisoned_clean_data(harness, attack: str, downstream: str, defense: str, clean_poison: float, seed: int) -> None:
    undefended = harness.row(SUITE, attack, UNDEFENDED, downstream, seed)
    row = harness.row(SUITE, attack, defense, downstream, seed, variant=f"clean_poison={clean_poison}", clean_poison=clean_poison)
    _gate(harness, row, undefended)
