"""RQ1, effectiveness (the paper's Table I): attack x scenario x downstream task x defense.

An encoder-tampering attack runs once per scenario of the profile (its
triggers: on the tiny profile the paper's white square, which the defender's
clean data exercises, and a checkerboard, which it never does; each row's
exposure says which is which). Four claims, one per test:
- the controls: the clean encoder with the scenario's trigger stamped does not
  predict the target, and it is usable: its ACC is well above a randomly
  initialised encoder's under the same probe (an attack with a trigger of its
  own, such as BASSL, gets control rows with its trigger);
- the undefended suspect implants: ASR(all) at least the profile's bound, the
  positive control every defended row is read against;
- every registered defense's row meets the `--gate` bounds (skipped, with the
  reason, where the attack did not implant).
"""

from __future__ import annotations

import pytest

from harness.gates import Gate, check
from harness.pipeline import CLEAN, RANDOM, UNDEFENDED
from harness.plugin import attack_scenarios, parametrize_grid, require_implanted, session_of
from harness.profiles import USABLE_MARGIN

SUITE = "effectiveness"
CONTROL_ASR_AT_MOST = 15.0  # ASR(non-target): a trigger alone moves few clean-encoder predictions to the target

pytestmark = [pytest.mark.suite(SUITE), pytest.mark.effectiveness]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    h = session_of(metafunc.config)
    controls = sorted({s for _, s in attack_scenarios(h, h.attacks()) if s} or set(h.profile.scenarios))
    parametrize_grid(metafunc, {"attack,scenario": attack_scenarios(h, h.attacks()), "control_scenario": controls,
                                "downstream": h.downstream(), "defense": h.defenses(), "seed": h.seeds})


def _controls(harness, scenario: str, downstream: str, seed: int, trigger_of: str | None = None):
    clean = harness.row(SUITE, CLEAN, UNDEFENDED, downstream, seed, scenario=scenario, trigger_of=trigger_of)
    random = harness.row(SUITE, RANDOM, UNDEFENDED, downstream, seed, scenario=scenario, trigger_of=trigger_of)
    return clean, random


def test_controls(harness, control_scenario: str, downstream: str, seed: int) -> None:
    clean, random = _controls(harness, control_scenario, downstream, seed)
    check(clean, Gate("asr_nontarget", "<=", CONTROL_ASR_AT_MOST))
    check(clean, Gate("acc", ">=", random.acc + USABLE_MARGIN))


def test_undefended(harness, attack: str, scenario: str, downstream: str, seed: int) -> None:
    _controls(harness, scenario, downstream, seed, trigger_of=None if scenario else attack)  # the controls with this attack's trigger
    row = harness.row(SUITE, attack, UNDEFENDED, downstream, seed, scenario=scenario)
    check(row, Gate("asr_all", ">=", harness.profile.implant_asr_all))


def test_defended(harness, attack: str, scenario: str, downstream: str, defense: str, seed: int) -> None:
    undefended = harness.row(SUITE, attack, UNDEFENDED, downstream, seed, scenario=scenario)
    row = harness.row(SUITE, attack, defense, downstream, seed, scenario=scenario)
    require_implanted(row)
    for gate in harness.gates:
        check(row, gate, undefended)
