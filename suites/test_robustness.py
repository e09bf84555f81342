"""RQ3, robustness: does a defense hold when the setting moves?

- trigger size: 3x3, 5x5 and 10x10 triggers (the attack is re-run with each);
- clean-data ratio: the defender holds 1 % ... 5 % of the pre-training set;
- poisoned clean data: 0 ... 25 % of the defender's "clean" subset carry the trigger;
- the adaptive attack (attacks/adaptive.py) is one of the attacks, so `--attack=adaptive` asks RQ3.4.

The sweeps (harness/planner.py) run for MIMIC, as in the paper, when it is among
the chosen defenses, on the profile's trigger. Every point is one row (variant
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
from harness.planner import plan
from harness.plugin import parametrize_cases, require_implanted, session_of

SUITE = "robustness"

pytestmark = [pytest.mark.suite(SUITE), pytest.mark.robustness, pytest.mark.slow]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    parametrize_cases(metafunc, plan(session_of(metafunc.config).settings, SUITE))


def _holds(harness, case) -> None:
    undefended, row = harness.rows(case)
    require_implanted(row)
    for gate in harness.gates:
        check(row, gate, undefended)


def test_trigger_size(harness, case) -> None:
    _holds(harness, case)


def test_clean_ratio(harness, case) -> None:
    _holds(harness, case)


def test_poisoned_clean_data(harness, case) -> None:
    _holds(harness, case)
