"""RQ4, generalisation: what a defense costs when there is no backdoor.

Every chosen defense runs on the clean encoder; the claim is that clean accuracy
falls by at most `CLEAN_ACC_DROP_AT_MOST` points (the paper: at most ~3).
"""

from __future__ import annotations

import pytest

from harness.gates import Gate, check
from harness.pipeline import CLEAN, UNDEFENDED
from harness.plugin import parametrize_grid, session_of

SUITE = "generalisation"
CLEAN_ACC_DROP_AT_MOST = 5.0

pytestmark = pytest.mark.suite(SUITE)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    h = session_of(metafunc.config)
    parametrize_grid(metafunc, {"downstream": h.downstream(), "defense": h.defenses(), "seed": h.seeds})


def test_clean_encoder_keeps_accuracy(harness, downstream: str, defense: str, seed: int) -> None:
    control = harness.row(SUITE, CLEAN, UNDEFENDED, downstream, seed)
    row = harness.row(SUITE, CLEAN, defense, downstream, seed)
    check(row, Gate("acc_drop", "<=", CLEAN_ACC_DROP_AT_MOST), control)
