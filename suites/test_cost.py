"""RQ5, cost: seconds each defense takes on the same suspect and the same clean data.

Every chosen defense runs on the first chosen attack's suspect for the first
downstream task; the session's summary and `cost.md` give seconds per defense
(mean ± 95 % CI over seeds) and per phase where a defense reports phases (MIMIC:
localisation and distillation). Seconds are those of each encoder's original
build, so a cached run reports the cost it once paid. A benchmark, not a gate:
the only claim is that every defense reports its time.
"""

from __future__ import annotations

import pytest

from harness.planner import plan
from harness.plugin import parametrize_cases, session_of

SUITE = "cost"

pytestmark = [pytest.mark.suite(SUITE), pytest.mark.cost]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    parametrize_cases(metafunc, plan(session_of(metafunc.config).settings, SUITE))


def test_defense_reports_its_seconds(harness, case) -> None:
    (row,) = harness.rows(case)
    assert row.seconds["defense"] > 0
