"""RQ2, ablation: MIMIC without each of its parts, against every chosen attack.

The paper reports that the clone loss alone leaves most of the backdoor
(ASR ~69 %) and that each of L1, L2 and the MI guidance lowers ASR. Each variant
is one row; the claim checked here is only that the variant ran as configured,
since the ablation's point is the comparison the table shows, whatever it shows.
"""

from __future__ import annotations

import json

import pytest

from harness.plugin import parametrize_grid, session_of

SUITE = "ablation"
VARIANTS: dict[str, dict] = {
    "full": {},
    "no_clone": {"clone": False},
    "no_contrastive": {"contrastive": False},
    "no_attention": {"attention": False},
    "no_mi_guidance": {"mi_guidance": False},
    "clone_only": {"contrastive": False, "attention": False},
}

pytestmark = pytest.mark.suite(SUITE)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    h = session_of(metafunc.config)
    defenses = [d for d in h.defenses() if d == "mimic"]
    parametrize_grid(metafunc, {"attack": h.attacks(), "downstream": h.downstream(), "defense": defenses,
                                "variant": list(VARIANTS), "seed": h.seeds})


def test_variant(harness, attack: str, downstream: str, defense: str, variant: str, seed: int) -> None:
    row = harness.row(SUITE, attack, defense, downstream, seed, variant=variant, **VARIANTS[variant])
    settings = json.loads(row.settings)
    assert settings["defense_overrides"] == VARIANTS[variant]
    guided = VARIANTS[variant].get("mi_guidance", True) and VARIANTS[variant].get("attention", True)
    assert len(settings["defense_meta"]["mi_per_stage"]) == (4 if guided else 0)
