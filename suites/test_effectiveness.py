"""RQ1, effectiveness (the paper's Table I): attack x downstream task x defense.

Three claims, one per test:
- the clean encoder, with the profile's trigger stamped, does not predict the
  target (the control that every ASR is read against; an attack with a trigger
  of its own, such as BASSL, gets a control row with its trigger too);
- the undefended suspect does (the attack implanted a backdoor, so defense rows
  are meaningful);
- every registered defense's row meets the `--gate` bounds.
"""

from __future__ import annotations

import pytest

from harness.gates import Gate, check
from harness.pipeline import CLEAN, UNDEFENDED
from harness.plugin import parametrize_grid, session_of

SUITE = "effectiveness"
CONTROL_ASR_AT_MOST = 15.0  # a trigger alone moves few clean-encoder predictions to the target
BACKDOOR_MARGIN = 20.0  # points of ASR(non-target) an implanted backdoor adds over the clean control

pytestmark = [pytest.mark.suite(SUITE), pytest.mark.effectiveness]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    h = session_of(metafunc.config)
    parametrize_grid(metafunc, {"attack": h.attacks(), "downstream": h.downstream(), "defense": h.defenses(), "seed": h.seeds})


def test_clean_control(harness, downstream: str, seed: int) -> None:
    row = harness.row(SUITE, CLEAN, UNDEFENDED, downstream, seed)
    check(row, Gate("asr_nontarget", "<=", CONTROL_ASR_AT_MOST))


def test_undefended(harness, attack: str, downstream: str, seed: int) -> None:
    control = harness.row(SUITE, CLEAN, UNDEFENDED, downstream, seed, trigger_of=attack)  # the clean encoder, this attack's trigger
    row = harness.row(SUITE, attack, UNDEFENDED, downstream, seed)
    check(row, Gate("asr_nontarget", ">=", control.asr_nontarget + BACKDOOR_MARGIN))


def test_defended(harness, attack: str, downstream: str, defense: str, seed: int) -> None:
    undefended = harness.row(SUITE, attack, UNDEFENDED, downstream, seed)
    row = harness.row(SUITE, attack, defense, downstream, seed)
    for gate in harness.gates:
        check(row, gate, undefended)
