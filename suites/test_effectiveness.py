"""RQ1, effectiveness (the paper's Table I): attack x scenario x downstream task x defense.

An encoder-tampering attack runs once per scenario of the profile (its
triggers: on the tiny profile the paper's white square, which the defender's
clean data exercises, and a checkerboard, which it never does; each row's
exposure says which is which). The grid is harness/planner.py's; three claims,
one per test:
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
from harness.planner import plan
from harness.plugin import parametrize_cases, require_implanted, session_of
from harness.profiles import CONTROL_ASR_AT_MOST, USABLE_MARGIN

SUITE = "effectiveness"

pytestmark = [pytest.mark.suite(SUITE), pytest.mark.effectiveness]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    parametrize_cases(metafunc, plan(session_of(metafunc.config).settings, SUITE))


def test_controls(harness, case) -> None:
    clean, random = harness.rows(case)
    check(clean, Gate("asr_nontarget", "<=", CONTROL_ASR_AT_MOST))
    check(clean, Gate("acc", ">=", random.acc + USABLE_MARGIN))


def test_undefended(harness, case) -> None:
    *_controls, row = harness.rows(case)  # the controls with this attack's trigger, then the suspect
    check(row, Gate("asr_all", ">=", harness.profile.implant_asr_all))


def test_defended(harness, case) -> None:
    undefended, row = harness.rows(case)
    require_implanted(row)
    for gate in harness.gates:
        check(row, gate, undefended)
