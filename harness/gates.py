"""Gates: assertions on result rows that CI can enforce.

A gate is `metric op bound`, e.g. `asr_nontarget<=10` or `acc_drop<=5`, where
`acc_drop` is the undefended encoder's ACC minus the row's. A failing gate reads
like a good assertion: which row, which metric, its value and the bound.
"""

from __future__ import annotations

import operator
import re
from dataclasses import dataclass

from harness.results import Row

_OPS = {"<=": operator.le, ">=": operator.ge, "<": operator.lt, ">": operator.gt}
METRICS = ("acc", "asr_all", "asr_nontarget", "acc_drop")
_GATE = re.compile(r"^\s*([a-z_]+)\s*(<=|>=|<|>)\s*(-?[0-9.]+)\s*$")


@dataclass(frozen=True)
class Gate:
    metric: str
    op: str
    bound: float

    def __str__(self) -> str:
        return f"{self.metric} {self.op} {self.bound:g}"


def parse_gates(text: str) -> tuple[Gate, ...]:
    """`asr_nontarget<=10,acc_drop<=5` -> gates; a malformed item raises ValueError naming the accepted form."""
    gates = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        m = _GATE.match(item)
        if not m or m.group(1) not in METRICS:
            raise ValueError(f"gate {item!r} is not METRIC(<=|>=|<|>)NUMBER with METRIC one of {', '.join(METRICS)}")
        gates.append(Gate(m.group(1), m.group(2), float(m.group(3))))
    return tuple(gates)


def row_id(row: Row) -> str:
    parts = [row.attack, row.downstream, row.defense, row.variant, f"seed{row.seed}"]
    return "-".join(p for p in parts if p)


def value_of(row: Row, metric: str, undefended: Row | None = None) -> float:
    if metric == "acc_drop":
        if undefended is None:
            raise ValueError("acc_drop needs the undefended row")
        return undefended.acc - row.acc
    return getattr(row, metric)


def check(row: Row, gate: Gate, undefended: Row | None = None) -> None:
    """Fail the calling test when the row breaks the gate."""
    __tracebackhide__ = True
    value = value_of(row, gate.metric, undefended)
    if not _OPS[gate.op](value, gate.bound):
        reference = f" (undefended ACC {undefended.acc:.2f})" if gate.metric == "acc_drop" and undefended else ""
        raise AssertionError(f"gate failed for {row_id(row)}: {gate.metric} = {value:.2f}, required {gate}{reference}")
