"""Tidy result rows -> pandas -> comparison tables.

Rows are appended to `rows.jsonl` in the results directory as they are made (one
complete line per row, flushed and synced, so an interrupted run loses nothing it
finished and a partial last line is never read as a row; see ResultsStore for
what keeps that partial line from costing the row after it). At the end of a session
the rows become `results.csv` (deterministic: metrics and settings only, so the
same seed gives the same bytes), `timings.csv` (seconds per stage and whether it
came from the cache), `results.json` (the same rows), `table.md`, `comparison.md` and
`comparison.tex` (the paper's Table I shape), `cost.md` (seconds per defense and phase),
`verdicts.md` (detectors' verdicts and evidence)
and a PNG per sweep (harness/plots.py).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import pandas as pd
from tabulate import tabulate

METRICS = ("acc", "asr_all", "asr_nontarget")
METRIC_TITLES = {"acc": "ACC", "asr_all": "ASR(all)", "asr_nontarget": "ASR(non-target)"}
BEST_MAX_ACC_DROP = 5.0  # points of ACC a defense may lose against the undefended encoder and still be marked best
KEYS = ("suite", "profile", "attack", "downstream", "defense", "variant")


@dataclass(frozen=True)
class Row:
    suite: str
    profile: str
    attack: str  # "clean" for the clean-encoder control
    defense: str  # "none" when undefended
    pretrain: str
    downstream: str
    seed: int
    acc: float  # clean test accuracy, %
    asr_all: float  # triggered test images classified as the target, %, over all test images
    asr_nontarget: float  # the same over test images whose class is not the target, %
    n_test: int
    n_nontarget: int
    variant: str = ""  # an ablation or sweep point, e.g. "no_l2" or "clean_ratio=0.01"
    seconds: dict = field(default_factory=dict, compare=False)  # stage -> seconds of its original build
    settings: str = "{}"  # JSON: profile, probe, trigger, target, metadata

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)


class ResultsStore:
    """Append-only rows of one results directory.

    A run killed mid-append leaves part of a line. Appends therefore hold a lock (`.rows.jsonl.lock`, so
    xdist workers take turns) and begin on a new line when the file does not end with one, and the reader
    also finds a complete row glued to such a part (files written before appends began on a new line).
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.path = self.root / "rows.jsonl"

    def append(self, row: Row) -> None:
        from filelock import FileLock

        self.root.mkdir(parents=True, exist_ok=True)
        line = (row.to_json() + "\n").encode("utf-8")
        with FileLock(str(self.root / ".rows.jsonl.lock")), open(self.path, "a+b") as f:
            end = f.seek(0, os.SEEK_END)
            if end:
                f.seek(end - 1)
                if f.read(1) != b"\n":
                    line = b"\n" + line  # after a killed writer's part of a line
            f.write(line)
            f.flush()
            os.fsync(f.fileno())

    def rows(self, since: int = 0) -> list[Row]:
        """Every complete row in the file, or those appended after byte offset `since`."""
        if not self.path.exists():
            return []
        with open(self.path, "rb") as f:
            f.seek(since)
            text = f.read().decode("utf-8", errors="replace")
        return [r for r in map(_parse_row, text.split("\n")) if r is not None]


def _parse_row(line: str) -> Row | None:
    """The row on `line`, or the complete row after a killed run's part of one; None when there is neither."""
    start = 0
    while start != -1:
        try:
            return Row(**json.loads(line[start:]))
        except (ValueError, TypeError, RecursionError):  # not JSON, or not a row's fields
            start = line.find("{", start + 1)
    return None


def to_frame(rows: Iterable[Row]) -> pd.DataFrame:
    records = [{k: v for k, v in dataclasses.asdict(r).items() if k != "seconds"} for r in rows]
    columns = [f.name for f in dataclasses.fields(Row) if f.name != "seconds"]
    frame = pd.DataFrame.from_records(records, columns=columns)
    # A row made again (a re-run, or two xdist workers building the same control) counts once: the latest.
    frame = frame.drop_duplicates(subset=["suite", "profile", "attack", "defense", "downstream", "seed", "variant"], keep="last")
    return frame.sort_values(["suite", "attack", "downstream", "defense", "variant", "seed"], kind="stable").reset_index(drop=True)


def timings_frame(rows: Iterable[Row]) -> pd.DataFrame:
    records = [{**{k: getattr(r, k) for k in (*KEYS, "seed")}, **{f"{s}_s": round(v, 2) for s, v in r.seconds.items()}} for r in rows]
    return pd.DataFrame.from_records(records)


def ci95(values: pd.Series) -> float:
    """Half-width of the 95 % confidence interval of the mean (Student t); 0 for a single value."""
    n = values.count()
    if n < 2:
        return 0.0
    from scipy.stats import t

    return float(t.ppf(0.975, n - 1) * values.std(ddof=1) / math.sqrt(n))


def summarise(frame: pd.DataFrame) -> pd.DataFrame:
    """Mean and 95 % CI of each metric over seeds, one line per (suite, attack, downstream, defense, variant)."""
    grouped = frame.groupby(list(KEYS), sort=True, dropna=False)
    out = grouped[list(METRICS)].mean()
    for m in METRICS:
        out[f"{m}_ci"] = grouped[m].apply(ci95)
    out["seeds"] = grouped["seed"].nunique()
    return out.reset_index()


def format_cell(mean: float, ci: float, seeds: int) -> str:
    if math.isnan(mean):
        return "n/a"
    return f"{mean:.2f} ± {ci:.2f}" if seeds > 1 else f"{mean:.2f}"


def _without_empty_variant(table: pd.DataFrame) -> pd.DataFrame:
    """Drop the variant column when no line has one: it would say nothing on every line."""
    if len(table) and not table["variant"].astype(bool).any():
        return table.drop(columns="variant")
    return table


def long_table(frame: pd.DataFrame) -> pd.DataFrame:
    """One line per configuration: ACC, both ASRs (mean ± 95 % CI over seeds)."""
    s = summarise(frame)
    table = s[["suite", "attack", "downstream", "defense", "variant", "seeds"]].copy()
    for m in METRICS:
        table[METRIC_TITLES[m] + " %"] = [format_cell(a, c, n) for a, c, n in zip(s[m], s[f"{m}_ci"], s["seeds"])]
    if table["suite"].nunique() < 2:  # columns that would say the same thing on every line
        table = table.drop(columns="suite")
    return _without_empty_variant(table)


def comparison_table(frame: pd.DataFrame, asr: str = "asr_nontarget", max_acc_drop: float = BEST_MAX_ACC_DROP) -> pd.DataFrame:
    """The paper's Table I: one line per (attack, downstream), one column per defense, cells "ACC / ASR".

    Means over seeds; `none` is the undefended encoder. Among the defenses that keep ACC within
    `max_acc_drop` points of the undefended encoder's, the one with the lowest ASR (ties: the higher
    ACC) is marked with a trailing "*": an encoder a defense has broken has no backdoor either, and is
    no answer. Clean-encoder controls and variants are left out: they are the long table's business.
    """
    plain = frame[(frame["attack"] != "clean") & (frame["variant"].fillna("") == "")]
    if plain.empty:
        return pd.DataFrame()
    means = plain.groupby(["attack", "downstream", "defense"], sort=True)[["acc", asr]].mean().reset_index()
    defenses = sorted(means["defense"].unique(), key=lambda d: (d != "none", d))
    lines = []
    for (attack, downstream), group in means.groupby(["attack", "downstream"], sort=True):
        cells = {d: (a, r) for d, a, r in zip(group["defense"], group["acc"], group[asr])}
        floor = cells["none"][0] - max_acc_drop if "none" in cells else -math.inf
        defended = [(r, -a, d) for d, (a, r) in cells.items() if d != "none" and a >= floor]
        best = min(defended)[2] if defended else None
        line = {"attack": attack, "downstream": downstream}
        for d in defenses:
            line[d] = f"{cells[d][0]:.2f} / {cells[d][1]:.2f}{' *' if d == best else ''}" if d in cells else ""
        lines.append(line)
    return pd.DataFrame(lines)


def verdict_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Detectors' verdicts: one line per encoder a defense that reports `flagged` (DECREE) judged, with its evidence.

    Suites that share an encoder (effectiveness and cost) record the same verdict; it is listed once.
    """
    lines = []
    for r in frame.itertuples():
        meta = json.loads(r.settings).get("defense_meta", {})
        if "flagged" in meta:
            evidence = {k: meta[k] for k in ("l1_share", "stamped_cosine") if k in meta}
            lines.append({"attack": r.attack, "downstream": r.downstream, "defense": r.defense, "variant": r.variant, "seed": r.seed,
                          "verdict": "backdoor" if meta["flagged"] else "clean", **{k: f"{v:.4f}" for k, v in evidence.items()}})
    return _without_empty_variant(pd.DataFrame(lines).drop_duplicates(ignore_index=True))


def cost_table(rows: Iterable[Row]) -> pd.DataFrame:
    """Seconds each defense took (mean ± 95 % CI over its runs), in total and per phase, one line per defense.

    Seconds are those of each encoder's original build (a cached row keeps them), so the table does not
    depend on what the cache held; they are measurements, so unlike the ACC/ASR table they vary between runs.
    """
    records = [
        {"defense": r.defense, "variant": r.variant, "total": r.seconds["defense"],
         **{k.removeprefix("defense_"): v for k, v in r.seconds.items() if k.startswith("defense_")}}
        for r in rows if r.defense != "none" and "defense" in r.seconds
    ]
    if not records:
        return pd.DataFrame(columns=["defense", "runs", "seconds"])
    frame = pd.DataFrame.from_records(records)
    phases = sorted(c for c in frame.columns if c not in ("defense", "variant", "total"))
    lines = []
    for (defense, variant), group in frame.groupby(["defense", "variant"], sort=True):
        line = {"defense": defense, "variant": variant, "runs": len(group)}
        line["seconds"] = format_cell(group["total"].mean(), ci95(group["total"]), len(group))
        for phase in phases:
            values = group[phase].dropna()
            line[phase + " s"] = format_cell(values.mean(), ci95(values), len(values)) if len(values) else ""
        lines.append(line)
    return _without_empty_variant(pd.DataFrame(lines))


TABLE_FORMATS = ("terminal", "markdown", "latex", "csv", "json")


def render(table: pd.DataFrame, fmt: str) -> str:
    """A table as terminal text, markdown, LaTeX (booktabs), CSV or JSON (a list of records)."""
    if fmt == "csv":
        return table.to_csv(index=False)
    if fmt == "json":
        return table.to_json(orient="records", indent=1, force_ascii=False)
    if fmt == "markdown":
        return tabulate(table, headers="keys", tablefmt="github", showindex=False, disable_numparse=True)
    if fmt == "latex":
        return tabulate(table, headers="keys", tablefmt="latex_booktabs", showindex=False, disable_numparse=True)
    if fmt == "terminal":
        return tabulate(table, headers="keys", tablefmt="simple", showindex=False, disable_numparse=True)
    raise ValueError(f"unknown table format {fmt!r}; choose {', '.join(TABLE_FORMATS)}")


def write_reports(rows: list[Row], root: Path) -> dict[str, Path]:
    """Every table and plot of the rows in `root`, each written atomically (see the module docstring)."""
    from harness.artifacts import atomic_write_text

    frame = to_frame(rows)
    outputs = {
        "results.csv": frame.to_csv(index=False),
        "timings.csv": timings_frame(rows).to_csv(index=False),
        "table.md": render(long_table(frame), "markdown") + "\n",
        "comparison.md": render(comparison_table(frame), "markdown") + "\n",
        "comparison.tex": render(comparison_table(frame), "latex") + "\n",
        "results.json": frame.to_json(orient="records", indent=1, force_ascii=False) + "\n",
        "cost.md": render(cost_table(rows), "markdown") + "\n",
        "verdicts.md": render(verdict_table(frame), "markdown") + "\n",
    }
    paths = {}
    for name, text in outputs.items():
        paths[name] = root / name
        atomic_write_text(paths[name], text)
    from harness.plots import sweep_plots

    paths.update({p.name: p for p in sweep_plots(frame, root)})
    return paths
