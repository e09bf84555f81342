"""What a result row is: one frozen, hashable specification shared by the memo, the store, gates and baselines.

A test asks for a row by its `RowSpec`; `Workbench.row(spec)` builds it. The
built `Row` carries the spec's identity fields and the resolved profile's id,
so two rows are the same row exactly when `Row.identity` is equal: tables,
baselines and de-duplication all read that one tuple.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

CLEAN = "clean"  # the attack column of the clean-encoder control
RANDOM = "random"  # the attack column of the randomly initialised encoder (what pre-training gained is read against it)
CONTROLS = (CLEAN, RANDOM)
UNDEFENDED = "none"  # the defense column of an undefended encoder


def refitted_head(variant: str) -> str:
    """The variant of a supervised attack's undefended classifier with a head refitted on the defender's labelled
    data: what its defended rows' ACC is read against (a defense leaves a backbone, and its head is refitted so)."""
    return f"{variant} (refitted head)"


def frozen_items(mapping: Mapping[str, Any] | None) -> tuple[tuple[str, Any], ...]:
    """A mapping as sorted (key, value) pairs: hashable, order-independent."""
    return tuple(sorted((mapping or {}).items()))


@dataclass(frozen=True)
class RowSpec:
    suite: str
    attack: str  # a registered attack, or `clean` / `random` for the controls
    defense: str  # a registered defense, or `none`
    downstream: str
    seed: int
    variant: str = ""  # an ablation or sweep point, e.g. "no_l2" or "clean_ratio=0.01"
    scenario: str = ""  # the trigger the attack uses, by registered name; "" is the profile's `trigger`
    trigger_of: str | None = None  # a control row evaluated with that attack's own trigger (BASSL brings one)
    attack_overrides: tuple[tuple[str, Any], ...] = ()
    defense_overrides: tuple[tuple[str, Any], ...] = ()
    profile_changes: tuple[tuple[str, Any], ...] = ()  # a sweep point's profile fields (name it in `variant`)
    clean_ratio: float | None = None  # the defender's share of the pre-training set (None: the profile's)
    clean_poison: float = 0.0  # share of the defender's clean subset that carries the trigger
    refit_head: bool = False  # a supervised attack's undefended classifier with a refitted head (a control)

    def __post_init__(self) -> None:
        for name in ("attack_overrides", "defense_overrides", "profile_changes"):
            value = getattr(self, name)
            if isinstance(value, Mapping):
                object.__setattr__(self, name, frozen_items(value))
        if not 0 <= self.clean_poison <= 1:
            raise ValueError(f"clean_poison must be in [0, 1], got {self.clean_poison}")
        if self.clean_ratio is not None and not 0 < self.clean_ratio <= 1:
            raise ValueError(f"clean_ratio must be in (0, 1], got {self.clean_ratio}")
