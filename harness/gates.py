"""Gates: assertions on result rows that CI can enforce.

A gate is `metric op bound`, e.g. `asr_nontarget<=10` or `acc_drop<=5`, where
`acc_drop` is the undefended encoder's ACC minus the row's. A baseline file holds
saved rows; against it a row fails when its ASR(non-target) rose or its ACC fell
by more than a tolerance. A failing gate reads like a good assertion: which row,
which metric, its value, the bound and the baseline.
"""

from __future__ import annotations

import dataclasses
import json
import operator
import re
from dataclasses import dataclass
from pathlib import Path

from harness.rows import Row, latest
from harness.rowspec import refitted_head

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
    """The row's identity below its suite and profile, readable: attack-scenario-downstream-defense-variant-seedN."""
    parts = [row.attack, row.scenario, row.downstream, row.defense, row.variant, f"seed{row.seed}"]
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


# -- against a saved baseline -----------------------------------------------------------


def baseline_key(row: Row) -> str:
    """Every field of `Row.identity`: a baseline never compares rows of another resolved profile, precision or scenario.
    (An fp32 row's key names no precision, as baselines written before rows had one.)"""
    profile = row.profile if row.precision == "fp32" else f"{row.profile}@{row.precision}"
    return "/".join([row.suite, profile, row_id(row)])


def load_baseline(path: Path) -> dict[str, dict[str, float]]:
    """{row key: {"acc", "asr_all", "asr_nontarget"}} from a file written by `save_baseline`."""
    from harness.reading import read_text

    if not Path(path).exists():
        raise ValueError(f"baseline file {path} does not exist (write one with --update-baseline)")
    try:
        data = json.loads(read_text(Path(path), "baseline"))
    except (json.JSONDecodeError, RecursionError) as e:
        raise ValueError(f"baseline file {path} is not JSON: {e}") from None
    if not isinstance(data, dict) or not all(isinstance(v, dict) and {"acc", "asr_nontarget"} <= set(v) for v in data.values()):
        raise ValueError(f"baseline file {path} is not a map of row keys to metrics")
    return data


def save_baseline(rows: list[Row], path: Path, merge: bool = True) -> None:
    """Write the rows' metrics as the baseline (keeping other rows already in the file when `merge`)."""
    from harness.atomic import atomic_write_text

    data = load_baseline(path) if merge and Path(path).exists() else {}
    data.update({baseline_key(r): {"acc": r.acc, "asr_all": r.asr_all, "asr_nontarget": r.asr_nontarget} for r in rows})
    atomic_write_text(Path(path), json.dumps(dict(sorted(data.items())), indent=1) + "\n")


def failures(rows: list[Row], gates: tuple[Gate, ...], baseline: dict[str, dict[str, float]] | None = None,
             tolerance: float = 2.0) -> list[str]:
    """What `harness gate` reports: each defended row that breaks a gate or regresses against the baseline, one line each.

    A defended row is read against the undefended row of its suspect (same identity, defense `none`: a supervised
    attack's classifier with its head refitted where there is one, else its own variant, else the plain row), as the
    suites read it. A row whose attack did not implant is not gated, as the suites skip it: it can show no defense
    working (`gated` counts the rows that are). A row made again is read as it is now (`latest`).
    """
    undefended = {r.identity: r for r in latest(rows) if r.defense == "none"}
    found = []
    for row in gated(rows):
        plain = dataclasses.replace(row, defense="none")
        readings = (dataclasses.replace(plain, variant=v).identity for v in (refitted_head(row.variant), row.variant, ""))
        reference = next((undefended[identity] for identity in readings if identity in undefended), None)
        for check_one in [*(lambda g=g: check(row, g, reference) for g in gates),
                          *([lambda: check_baseline(row, baseline, tolerance)] if baseline is not None else [])]:
            try:
                check_one()
            except (AssertionError, ValueError) as e:
                found.append(str(e))
    return found


def gated(rows: list[Row]) -> list[Row]:
    """The defended rows a gate or a baseline reads: not the controls, not the undefended rows, not a suspect that did
    not implant; each once, the latest."""
    return [r for r in latest(rows) if r.defense != "none" and r.attack not in ("clean", "random") and r.implanted is not False]


def check_baseline(row: Row, baseline: dict[str, dict[str, float]], tolerance: float) -> None:
    """Fail when the row's ASR (all, or non-target) rose, or its ACC fell, by more than `tolerance` points."""
    __tracebackhide__ = True
    saved = baseline.get(baseline_key(row))
    if saved is None:
        return  # a row the baseline does not know yet: nothing to regress from
    for metric in ("asr_all", "asr_nontarget"):
        if metric in saved and getattr(row, metric) > saved[metric] + tolerance:
            raise AssertionError(
                f"regression for {row_id(row)}: {metric} = {getattr(row, metric):.2f}, baseline {saved[metric]:.2f} "
                f"(+{tolerance:g} allowed)"
            )
    if row.acc < saved["acc"] - tolerance:
        raise AssertionError(f"regression for {row_id(row)}: acc = {row.acc:.2f}, baseline {saved['acc']:.2f} (-{tolerance:g} allowed)")
