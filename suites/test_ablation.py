"""RQ2, ablation: MIMIC without each of its parts, and its two weights swept, against every chosen attack.

The paper reports that the clone loss alone leaves most of the backdoor
(ASR ~69 %), that each of L1, L2 and the MI guidance lowers ASR, and that ASR is
low only for lambda1 > 0.4 and lambda2 > 1000. Each variant (harness/planner.py's
VARIANTS) is one row (the sweeps also as curves, `plot-ablation-lambda1.png`,
`plot-ablation-lambda2.png`), on the profile's trigger (the paper's white square:
on the tiny profile, the scenario the defender's clean data exercises). The claims
checked here are that the variant ran as configured, on an attack that implanted
(else the test is skipped with that reason); the ablation's point is the
comparison the table shows, whatever it shows, and its own positive control,
`ablation.md`: the ablation is informative only where clone loss alone inherits
the backdoor (tables.ablation_verdict).
"""

from __future__ import annotations

import pytest

from defenses.mimic import MimicConfig, loss_weights
from harness.planner import VARIANTS, plan
from harness.plugin import parametrize_cases, require_implanted, session_of

SUITE = "ablation"

pytestmark = [pytest.mark.suite(SUITE), pytest.mark.ablation, pytest.mark.slow]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    parametrize_cases(metafunc, plan(session_of(metafunc.config).settings, SUITE))


def test_variant(harness, case) -> None:
    *_controls, row = harness.rows(case)
    require_implanted(row)
    overrides, meta = VARIANTS[row.variant], row.settings.defense_meta  # what the defense recorded it did
    guided = overrides.get("mi_guidance", True) and overrides.get("attention", True)
    assert len(meta["mi_per_stage"]) == (4 if guided else 0) and (meta["steps"]["mine_steps_per_stage"] > 0) == guided
    betas = list(meta["beta_per_stage"].values())
    assert sum(betas) / len(betas) == pytest.approx(overrides.get("lambda2", MimicConfig().lambda2))  # lambda2 is their mean
    assert meta["loss_weights"] == loss_weights(MimicConfig(**overrides))  # what its loss multiplied L0, L1, L2 by
