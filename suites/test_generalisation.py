"""RQ4, generalisation: supervised backdoors, and what a defense costs when there is no backdoor.

- RQ4.1: a supervised attack (BadNets) backdoors a classifier with each trigger
  family (harness/planner.py); its backbone is the encoder every defense receives
  (attacks/badnets.py). The undefended classifier must carry the backdoor; defended
  rows meet `--gate`. A defended classifier gets a head refitted on the labelled
  clean subset, so its ACC is read against the undefended backbone with a head
  refitted the same way (variant "<family> (refitted head)"), not against the
  attack's own head.
- RQ4.2: every chosen defense runs on the clean encoder; clean accuracy falls by
  at most `CLEAN_ACC_DROP_AT_MOST` points (the paper: at most ~3).
"""

from __future__ import annotations

import pytest

from harness.gates import Gate, check
from harness.planner import plan
from harness.plugin import parametrize_cases, require_implanted, session_of

SUITE = "generalisation"
CLEAN_ACC_DROP_AT_MOST = 5.0
SUPERVISED_ASR_AT_LEAST = 50.0  # ASR(non-target) of an undefended backdoored classifier (the paper: ~100)

pytestmark = [pytest.mark.suite(SUITE), pytest.mark.generalisation]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    parametrize_cases(metafunc, plan(session_of(metafunc.config).settings, SUITE))


def test_supervised_backdoor_is_implanted(harness, case) -> None:
    (row,) = harness.rows(case)
    check(row, Gate("asr_nontarget", ">=", SUPERVISED_ASR_AT_LEAST))


def test_supervised_backdoor_defended(harness, case) -> None:
    undefended, row = harness.rows(case)
    require_implanted(row)
    for gate in harness.gates:
        check(row, gate, undefended)


def test_clean_encoder_keeps_accuracy(harness, case) -> None:
    control, row = harness.rows(case)
    check(row, Gate("acc_drop", "<=", CLEAN_ACC_DROP_AT_MOST), control)
