"""The grid, planned once: which rows each test of each suite reads, from the settings.

`plan(settings, suite)` lists a suite's cases. A `Case` is one test of the suite
with its parameters (its pytest id and its pytest-xdist group come from them) and
the rows it reads, in order, the row it makes its claim about last. The suites
parametrise their tests from the plan (`harness.plugin.parametrize_cases`) and
state only their claims; `harness run` and `harness.run` build the effectiveness
plan's rows. So the suites and the API choose the same grid by construction.

What each suite varies (the paper's research questions):
- effectiveness (Table I): attack x trigger scenario x downstream task x defense,
  with the clean and random controls of each scenario;
- ablation: MIMIC without each of its parts, and its two weights swept;
- robustness: trigger size, the defender's clean-data ratio, poisoned clean data;
- generalisation: supervised backdoors per trigger family, defenses on a clean encoder;
- cost: every defense on one suspect.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable, Mapping

from harness.rowspec import CLEAN, RANDOM, UNDEFENDED, RowSpec, refitted_head

if TYPE_CHECKING:
    from harness.options import Settings

# The defender's axes: cases that differ only in these share a suspect, and so an xdist group.
DEFENDER_AXES = ("defense", "variant", "clean_ratio", "clean_poison")

# ablation: MIMIC's parts, and its weights (the paper: low ASR needs lambda1 > 0.4 and lambda2 > 1000; 3500 is the default)
ABLATED = ("mimic",)
COMPONENTS: dict[str, dict] = {
    "full": {},
    "no_clone": {"clone": False},
    "no_contrastive": {"contrastive": False},
    "no_attention": {"attention": False},
    "no_mi_guidance": {"mi_guidance": False},
    "clone_only": {"contrastive": False, "attention": False},
}
LAMBDA1 = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
LAMBDA2 = (0.0, 1000.0, 3500.0, 7000.0, 10000.0)
VARIANTS: dict[str, dict] = {
    **COMPONENTS,
    **{f"lambda1={v:g}": {"lambda1": v} for v in LAMBDA1},
    **{f"lambda2={v:g}": {"lambda2": v} for v in LAMBDA2},
}

# robustness: the sweeps, for the defenses the paper asks them of (each point costs a defense run)
TRIGGER_SIZES = (3, 5, 10)
CLEAN_RATIOS = (0.01, 0.02, 0.03, 0.04, 0.05)
CLEAN_POISON = (0.0, 0.05, 0.10, 0.25)
ROBUSTNESS_OF = ("mimic",)

# generalisation: RQ4.1's trigger families, as settings of a supervised attack
TRIGGER_FAMILIES: dict[str, dict] = {
    "grid": {"trigger": "checkerboard", "trigger_size": 3},
    "four_corners": {"trigger": "four_corners", "trigger_size": 3},
    "blend": {"trigger": "blend", "trigger_size": 32},
}

SUITES = ("effectiveness", "ablation", "robustness", "generalisation", "cost")


@dataclass(frozen=True)
class Case:
    test: str  # the suite's test function it parametrises, e.g. "test_defended"
    params: tuple[tuple[str, Any], ...]  # its axes in order, e.g. (("attack", "badencoder"), ("scenario", "patch"), ...)
    rows: tuple[RowSpec, ...] = ()  # the rows it reads, in order; its claim is about the last

    @property
    def id(self) -> str:
        """`badencoder-patch-fmnist-mimic-seed0`: each parameter's value, empty ones left out."""
        return "-".join(f"seed{v}" if a == "seed" else str(v) for a, v in self.params if v != "")

    @property
    def group(self) -> str | None:
        """The pytest-xdist group: the values that make the case's suspect, so one worker builds it and its defended
        rows. A case without an attack (a clean-encoder row) shares only the clean encoder: no group."""
        if "attack" not in dict(self.params):
            return None
        return "-".join(f"seed{v}" if a == "seed" else str(v) for a, v in self.params if a not in DEFENDER_AXES and v != "")


def grid(test: str, axes: Mapping[str, Iterable], rows) -> list[Case]:
    """A case per point of the product of `axes` (an axis named "a,b" takes (a, b) pairs); `rows(**point)` lists its rows."""
    names = list(axes)
    cases = []
    for combo in itertools.product(*(list(v) for v in axes.values())):
        params: list[tuple[str, Any]] = []
        for name, value in zip(names, combo):
            params += list(zip(name.split(","), value)) if "," in name else [(name, value)]
        cases.append(Case(test, tuple(params), tuple(rows(**dict(params)))))
    return cases


def plan(settings: "Settings", suite: str) -> list[Case]:
    """Every case of `suite` the settings choose."""
    planners = {"effectiveness": _effectiveness, "ablation": _ablation, "robustness": _robustness, "generalisation": _generalisation,
                "cost": _cost}
    if suite not in planners:
        raise ValueError(f"unknown suite {suite!r}; suites: {', '.join(SUITES)}")
    return planners[suite](settings)


def shard_of(cases: Iterable[Case], shard: tuple[int, int] | None) -> list[Case]:
    """The cases of shard i of n. Cases that share a suspect (an xdist group; a case without one counts alone) go to one
    shard, so each suspect is built on one machine; the suspects are dealt out round-robin in the plan's order, so the
    shards get even shares and every machine, given the same options, computes the same split."""
    cases = list(cases)
    if shard is None:
        return cases
    i, n = shard
    order = {key: k % n for k, key in enumerate(dict.fromkeys(c.group or c.id for c in cases))}
    return [c for c in cases if order[c.group or c.id] == i - 1]


def planned_rows(cases: Iterable[Case]) -> list[RowSpec]:
    """The rows the cases read, each once, in the order they are first read."""
    return list(dict.fromkeys(spec for case in cases for spec in case.rows))


# -- the grid's axes, chosen by the settings --------------------------------------------------------


def chosen_attacks(s: "Settings", supervised: bool = False) -> list[str]:
    """Chosen attacks on encoders (a suspect file counts as one), or (`supervised`) chosen attacks that backdoor a classifier."""
    from harness.registry import ATTACKS, SUPERVISED
    from harness.user_encoders import SUSPECT_FILE

    if s.suspect is not None:
        return [] if supervised else [SUSPECT_FILE]
    names = ATTACKS.names() if s.attack is None else list(s.attack)
    return [a for a in names if ATTACKS.has_tag(a, SUPERVISED) == supervised]


def chosen_defenses(s: "Settings") -> list[str]:
    """Chosen registered defenses (the undefended baseline is not one of them)."""
    from harness.registry import DEFENSES

    names = DEFENSES.names() if s.defense is None else list(s.defense)
    return [d for d in names if d != UNDEFENDED]


def chosen_downstream(s: "Settings") -> list[str]:
    return list(s.resolved_profile.downstream) if s.downstream is None else list(s.downstream)


def attack_scenarios(s: "Settings", attacks: list[str]) -> list[tuple[str, str]]:
    """Each attack with the profile's trigger scenarios, or with "" where it brings its own trigger."""
    from harness.pipeline import scenarios_of

    return [(a, sc) for a in attacks for sc in scenarios_of(a, s.resolved_profile.scenarios)]


# -- the suites --------------------------------------------------------------------------------------


def _effectiveness(s: "Settings") -> list[Case]:
    suite = "effectiveness"
    pairs = attack_scenarios(s, chosen_attacks(s))
    scenarios = sorted({sc for _, sc in pairs if sc} or set(s.resolved_profile.scenarios))
    tasks, defenses, seeds = chosen_downstream(s), chosen_defenses(s), s.seed_list

    def controls(downstream: str, seed: int, scenario: str = "", trigger_of: str | None = None) -> list[RowSpec]:
        return [RowSpec(suite, c, UNDEFENDED, downstream, seed, scenario=scenario, trigger_of=trigger_of) for c in (CLEAN, RANDOM)]

    def suspect(attack: str, scenario: str, downstream: str, seed: int, defense: str = UNDEFENDED) -> RowSpec:
        return RowSpec(suite, attack, defense, downstream, seed, scenario=scenario)

    return [
        *grid("test_controls", {"control_scenario": scenarios, "downstream": tasks, "seed": seeds},
              lambda control_scenario, downstream, seed: controls(downstream, seed, control_scenario)),
        *grid("test_undefended", {"attack,scenario": pairs, "downstream": tasks, "seed": seeds},
              lambda attack, scenario, downstream, seed: [*controls(downstream, seed, scenario, None if scenario else attack),
                                                          suspect(attack, scenario, downstream, seed)]),
        *grid("test_defended", {"attack,scenario": pairs, "downstream": tasks, "defense": defenses, "seed": seeds},
              lambda attack, scenario, downstream, defense, seed: [suspect(attack, scenario, downstream, seed),
                                                                   suspect(attack, scenario, downstream, seed, defense)]),
    ]


def _ablation(s: "Settings") -> list[Case]:
    suite = "ablation"
    axes = {"attack": chosen_attacks(s), "downstream": chosen_downstream(s), "defense": [d for d in chosen_defenses(s) if d in ABLATED],
            "variant": list(VARIANTS), "seed": s.seed_list}
    return grid("test_variant", axes, lambda attack, downstream, defense, variant, seed: [
        RowSpec(suite, CLEAN, UNDEFENDED, downstream, seed, trigger_of=attack),  # the control clone_only is read against
        RowSpec(suite, attack, UNDEFENDED, downstream, seed),
        RowSpec(suite, attack, defense, downstream, seed, variant=variant, defense_overrides=VARIANTS[variant]),
    ])


def follows_trigger_size(attack: str) -> bool:
    """Whether the attack's trigger takes the profile's trigger size, so that a trigger-size sweep moves it: not for an
    attack whose config says its trigger is its own (CTRL's frequency pattern), nor for a user's suspect file."""
    from harness.registry import ATTACKS
    from harness.user_encoders import SUSPECT_FILE

    return attack != SUSPECT_FILE and getattr(ATTACKS.get(attack).config_type, "follows_trigger_size", True)


def _robustness(s: "Settings") -> list[Case]:
    suite = "robustness"
    common = {"attack": chosen_attacks(s), "downstream": chosen_downstream(s), "defense": [d for d in chosen_defenses(s) if d in ROBUSTNESS_OF]}
    sized = {**common, "attack": [a for a in common["attack"] if follows_trigger_size(a)]}

    def trigger_size(attack: str, downstream: str, defense: str, trigger_size: int, seed: int) -> list[RowSpec]:
        point = {"variant": f"trigger_size={trigger_size}", "profile_changes": {"trigger_size": trigger_size}}
        return [RowSpec(suite, attack, UNDEFENDED, downstream, seed, **point), RowSpec(suite, attack, defense, downstream, seed, **point)]

    def clean_ratio(attack: str, downstream: str, defense: str, clean_ratio: float, seed: int) -> list[RowSpec]:
        return [RowSpec(suite, attack, UNDEFENDED, downstream, seed),
                RowSpec(suite, attack, defense, downstream, seed, variant=f"clean_ratio={clean_ratio}", clean_ratio=clean_ratio)]

    def clean_poison(attack: str, downstream: str, defense: str, clean_poison: float, seed: int) -> list[RowSpec]:
        return [RowSpec(suite, attack, UNDEFENDED, downstream, seed),
                RowSpec(suite, attack, defense, downstream, seed, variant=f"clean_poison={clean_poison}", clean_poison=clean_poison)]

    return [
        *grid("test_trigger_size", {**sized, "trigger_size": TRIGGER_SIZES, "seed": s.seed_list}, trigger_size),
        *grid("test_clean_ratio", {**common, "clean_ratio": CLEAN_RATIOS, "seed": s.seed_list}, clean_ratio),
        *grid("test_poisoned_clean_data", {**common, "clean_poison": CLEAN_POISON, "seed": s.seed_list}, clean_poison),
    ]


def _generalisation(s: "Settings") -> list[Case]:
    suite = "generalisation"
    pretrain = s.resolved_profile.pretrain  # a classifier is evaluated on its own dataset
    supervised, defenses, seeds = chosen_attacks(s, supervised=True), chosen_defenses(s), s.seed_list

    def implanted(attack: str, family: str, seed: int) -> list[RowSpec]:
        return [RowSpec(suite, attack, UNDEFENDED, pretrain, seed, variant=family, attack_overrides=TRIGGER_FAMILIES[family])]

    def defended(attack: str, family: str, defense: str, seed: int) -> list[RowSpec]:
        overrides = TRIGGER_FAMILIES[family]
        return [RowSpec(suite, attack, UNDEFENDED, pretrain, seed, variant=refitted_head(family), attack_overrides=overrides,
                        refit_head=True),
                RowSpec(suite, attack, defense, pretrain, seed, variant=family, attack_overrides=overrides)]

    def clean(downstream: str, defense: str, seed: int) -> list[RowSpec]:
        return [RowSpec(suite, CLEAN, UNDEFENDED, downstream, seed), RowSpec(suite, CLEAN, defense, downstream, seed)]

    return [
        *grid("test_supervised_backdoor_is_implanted", {"attack": supervised, "family": list(TRIGGER_FAMILIES), "seed": seeds}, implanted),
        *grid("test_supervised_backdoor_defended", {"attack": supervised, "family": list(TRIGGER_FAMILIES), "defense": defenses,
                                                    "seed": seeds}, defended),
        *grid("test_clean_encoder_keeps_accuracy", {"downstream": chosen_downstream(s), "defense": defenses, "seed": seeds}, clean),
    ]


def _cost(s: "Settings") -> list[Case]:
    axes = {"attack": chosen_attacks(s)[:1], "downstream": chosen_downstream(s)[:1], "defense": chosen_defenses(s), "seed": s.seed_list}
    return grid("test_defense_reports_its_seconds", axes,
                lambda attack, downstream, defense, seed: [RowSpec("cost", attack, defense, downstream, seed)])
