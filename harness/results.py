"""Tidy result rows -> pandas -> comparison tables.

Rows are appended to `rows.jsonl` in the results directory as they are made (one
complete line per row, flushed and synced, so an interrupted run loses nothing it
finished and a partial last line is never read as a row; see ResultsStore for
what keeps that partial line from costing the row after it). At the end of a session
the rows become `results.csv` (deterministic: metrics and settings only, so the
same seed gives the same bytes), `timings.csv` (seconds per stage and whether it
came from the cache), `results.json` (the same rows), `table.md`, `comparison.md` and
`comparison.tex` (the paper's Table I shape, with the controls, exposure and the
positive control), `paired.md` (each defense against MIMIC, paired over seeds),
`ablation.md` (the ablation's positive control), `cost.md` (seconds per defense and
phase), `verdicts.md` (detectors' verdicts and evidence) and a PNG per sweep
(harness/plots.py). Rows of different resolved profiles or scenarios are never merged.
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
HEADLINE = "asr_all"  # the paper's ASR: every triggered test image classified as the target
BEST_MAX_ACC_DROP = 5.0  # points of ACC a defense may lose against the undefended encoder and still be marked best
# a configuration: a row up to its seed; rows of different precisions (harness/compute.py) are never merged
KEYS = ("suite", "profile", "precision", "attack", "scenario", "downstream", "defense", "variant")
IDENTITY = (*KEYS, "seed")  # a row's identity: two rows with these fields equal are the same row


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
    scenario: str = ""  # the trigger the row's attack used (its name), e.g. "patch10" or "checkerboard10"
    precision: str = "fp32"  # of the training stages behind the row: fp32, or bf16 autocast (harness/compute.py)
    exposure: float | None = None  # points by which the defender's data evokes the backdoor (harness/exposure.py)
    implanted: bool | None = None  # the positive control: the undefended attack reached the profile's implant bound
    seconds: dict = field(default_factory=dict, compare=False)  # stage -> seconds of its original build
    settings: str = "{}"  # JSON: resolved profile, probe, trigger, target, metadata, exposure and control evidence

    @property
    def identity(self) -> tuple:
        return tuple(getattr(self, k) for k in IDENTITY)

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
    frame = frame.drop_duplicates(subset=list(IDENTITY), keep="last")
    return frame.sort_values([*KEYS, "seed"], kind="stable").reset_index(drop=True)


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
    """Mean and 95 % CI of each metric over seeds, one line per configuration (`KEYS`).

    Also the mean exposure and the positive control: "yes" when every seed's attack implanted,
    "no" when none did, "k/n" in between, "" for the controls.
    """
    grouped = frame.groupby(list(KEYS), sort=True, dropna=False)
    out = grouped[list(METRICS)].mean()
    for m in METRICS:
        out[f"{m}_ci"] = grouped[m].apply(ci95)
    out["seeds"] = grouped["seed"].nunique()
    out["exposure"] = grouped["exposure"].apply(lambda v: v.dropna().mean() if v.notna().any() else math.nan)
    out["implanted"] = grouped["implanted"].apply(implant_label)
    return out.reset_index()


def implant_label(values: pd.Series) -> str:
    known = values.dropna().astype(bool)
    if known.empty:
        return ""
    return "yes" if known.all() else "no" if not known.any() else f"{int(known.sum())}/{len(known)}"


def format_cell(mean: float, ci: float, seeds: int) -> str:
    if math.isnan(mean):
        return "n/a"
    return f"{mean:.2f} ± {ci:.2f}" if seeds > 1 else f"{mean:.2f}"


def _without_empty_variant(table: pd.DataFrame) -> pd.DataFrame:
    """Drop the variant column when no line has one: it would say nothing on every line."""
    if len(table) and not table["variant"].astype(bool).any():
        return table.drop(columns="variant")
    return table


def _without_uniform(table: pd.DataFrame, columns: tuple[str, ...]) -> pd.DataFrame:
    """Drop the columns that would say the same thing on every line."""
    return table.drop(columns=[c for c in columns if c in table and table[c].nunique(dropna=False) < 2])


def long_table(frame: pd.DataFrame) -> pd.DataFrame:
    """One line per configuration: ACC, ASR(all) (the headline), ASR(non-target) (mean ± 95 % CI over seeds),
    the backdoor's exposure and whether the attack implanted (its positive control)."""
    s = summarise(frame)
    table = s[[*KEYS, "seeds"]].copy()
    for m in METRICS:
        table[METRIC_TITLES[m] + " %"] = [format_cell(a, c, n) for a, c, n in zip(s[m], s[f"{m}_ci"], s["seeds"])]
    if s["exposure"].notna().any():
        table["exposure"] = ["" if math.isnan(e) else f"{e:.1f}" for e in s["exposure"]]
    if s["implanted"].astype(bool).any():
        table["implanted"] = s["implanted"]
    table = _without_uniform(table, ("suite", "profile", "precision"))
    if not table["scenario"].astype(bool).any():
        table = table.drop(columns="scenario")
    return _without_empty_variant(table)


def paired_difference(frame: pd.DataFrame, defense: str, reference: str, metric: str) -> tuple[float, float, int]:
    """Mean and 95 % CI half-width of (defense - reference) on `metric` over the seeds both have; and their number.

    Rows pair by seed: the same suspect, the same clean data, two defenses. `frame` holds one configuration
    (see `_one_row_per_encoder`), so each seed appears once per defense.
    """
    a = frame[frame["defense"] == defense].set_index("seed")[metric]
    b = frame[frame["defense"] == reference].set_index("seed")[metric]
    if not (a.index.is_unique and b.index.is_unique):
        raise ValueError(f"paired_difference needs one row per seed; {defense} or {reference} has several")
    diff = (a - b).dropna()
    return (float(diff.mean()), ci95(diff), len(diff)) if len(diff) else (math.nan, math.nan, 0)


def _marks(group: pd.DataFrame, means: dict[str, tuple[float, float]], asr: str, max_acc_drop: float) -> dict[str, str]:
    """"*" on the lowest-ASR defense within `max_acc_drop` ACC points of `none`, when its paired 95 % CI
    against the runner-up excludes 0; otherwise "~" on every leader statistically tied with it."""
    floor = means["none"][0] - max_acc_drop if "none" in means else -math.inf
    eligible = sorted((r, -a, d) for d, (a, r) in means.items() if d != "none" and a >= floor)
    if not eligible:
        return {}
    best = eligible[0][2]
    if len(eligible) == 1:
        return {best: " *"}
    if paired_difference(group, eligible[1][2], best, asr)[2] < 2:
        return {}  # one seed ranks nothing: no CI, no mark
    tied = [best]
    for _, _, d in eligible[1:]:  # from the top down, until the first defense shown worse than the best
        mean, ci, n = paired_difference(group, d, best, asr)
        if n < 2 or mean - ci > 0:
            break
        tied.append(d)
    return {best: " *"} if len(tied) == 1 else {d: " ~" for d in tied}


def _one_row_per_encoder(frame: pd.DataFrame) -> pd.DataFrame:
    """Plain rows (no variant), one per (profile, attack, scenario, downstream, defense, seed): suites that share
    an encoder (effectiveness and cost) hold the same row twice, which must count once in means and pairs."""
    plain = frame[frame["variant"].fillna("") == ""]
    return plain.drop_duplicates(subset=["profile", "attack", "scenario", "downstream", "defense", "seed"], keep="first")


def comparison_table(frame: pd.DataFrame, asr: str = HEADLINE, max_acc_drop: float = BEST_MAX_ACC_DROP) -> pd.DataFrame:
    """The paper's Table I: one line per (profile, attack, scenario, downstream), one column per defense.

    Cells "ACC / ASR(all) / ASR(non-target)", means over seeds; `none` is the undefended encoder, and
    the `clean` and `random` columns are the controls on the same task and trigger (the clean encoder,
    and a randomly initialised one, read by the same probe, undefended). Each line gives the backdoor's
    exposure and whether the attack implanted on every seed. Among the defenses that keep ACC within
    `max_acc_drop` points of the undefended encoder's, the lowest `asr` is marked "*" only when its
    paired 95 % CI over seeds against the runner-up excludes 0; otherwise the leaders statistically
    tied with it are marked "~"; with one seed nothing is marked. Variants are the long table's business.
    """
    plain = _one_row_per_encoder(frame)
    attacked = plain[~plain["attack"].isin(("clean", "random"))]
    if attacked.empty:
        return pd.DataFrame()
    controls = plain[plain["attack"].isin(("clean", "random")) & (plain["defense"] == "none")]
    defenses = sorted(attacked["defense"].unique(), key=lambda d: (d != "none", d))
    lines = []
    for (profile, attack, scenario, downstream), group in attacked.groupby(["profile", "attack", "scenario", "downstream"], sort=True):
        means = {d: (g["acc"].mean(), g[asr].mean(), g["asr_nontarget"].mean()) for d, g in group.groupby("defense")}
        marks = _marks(group, {d: (a, r) for d, (a, r, _) in means.items()}, asr, max_acc_drop)
        line = {"profile": profile, "attack": attack, "scenario": scenario, "downstream": downstream}
        line["exposure"] = f"{group['exposure'].mean():.1f}" if group["exposure"].notna().any() else ""
        line["implanted"] = implant_label(group[group["defense"] == "none"]["implanted"])
        for control in ("clean", "random"):
            mine = controls[(controls["attack"] == control) & (controls["downstream"] == downstream) & (controls["profile"] == profile)]
            mine = mine[mine["scenario"] == scenario] if (mine["scenario"] == scenario).any() else mine[mine["scenario"] == ""]
            line[control] = _cell(mine["acc"].mean(), mine[asr].mean(), mine["asr_nontarget"].mean()) if len(mine) else ""
        for d in defenses:
            line[d] = _cell(*means[d]) + marks.get(d, "") if d in means else ""
        lines.append(line)
    table = pd.DataFrame(lines)
    table = _without_uniform(table, ("profile",))
    empty = ("exposure", "implanted", "scenario", "clean", "random")
    return table.drop(columns=[c for c in empty if c in table and not table[c].astype(bool).any()])


def _cell(acc: float, asr_all: float, asr_nontarget: float) -> str:
    return f"{acc:.2f} / {asr_all:.2f} / {asr_nontarget:.2f}"


def paired_table(frame: pd.DataFrame, reference: str = "mimic", metrics: tuple[str, ...] = (HEADLINE, "acc")) -> pd.DataFrame:
    """Each defense against `reference` on the same suspects: paired differences over seeds, mean ± 95 % CI.

    A negative ASR difference means the defense left less backdoor than the reference; "seeds" is the
    number of pairs. Variants and controls are left out.
    """
    plain = _one_row_per_encoder(frame)
    plain = plain[~plain["attack"].isin(("clean", "random"))]
    lines = []
    for (profile, attack, scenario, downstream), group in plain.groupby(["profile", "attack", "scenario", "downstream"], sort=True):
        if reference not in set(group["defense"]):
            continue
        for d in sorted(set(group["defense"]) - {reference, "none"}):
            line = {"profile": profile, "attack": attack, "scenario": scenario, "downstream": downstream, "defense": d}
            for m in metrics:
                mean, ci, n = paired_difference(group, d, reference, m)
                line[f"{METRIC_TITLES[m]} - {reference}"] = format_cell(mean, ci, n)
                line["seeds"] = n
            lines.append(line)
    return _without_uniform(pd.DataFrame(lines), ("profile",)) if lines else pd.DataFrame()


ABLATION_MARGIN = 20.0  # points of ASR(all) over the clean control by which clone loss alone must inherit the backdoor


def ablation_verdict(frame: pd.DataFrame, margin: float = ABLATION_MARGIN) -> pd.DataFrame:
    """Whether each ablation can show anything: its positive control, from the measured rows.

    The ablation asks which of MIMIC's parts prevent the student from inheriting the backdoor; it is
    informative only where clone loss alone does inherit it (its ASR(all) at least `margin` points over
    the clean encoder's with the same trigger) and the undefended attack implanted.
    """
    ablation = frame[frame["suite"] == "ablation"]
    lines = []
    for (profile, attack, scenario, downstream), group in ablation[ablation["attack"] != "clean"].groupby(["profile", "attack", "scenario", "downstream"]):
        clone = group[group["variant"] == "clone_only"]
        control = ablation[(ablation["attack"] == "clean") & (ablation["downstream"] == downstream) & (ablation["scenario"] == scenario) & (ablation["profile"] == profile)]
        if clone.empty or control.empty:
            continue
        gap = clone[HEADLINE].mean() - control[HEADLINE].mean()
        implanted = implant_label(group["implanted"])
        if implanted != "yes":
            verdict = "uninformative: the attack did not implant"
        elif gap >= margin:
            verdict = "informative"
        else:
            verdict = "uninformative: clone loss alone did not inherit"
        lines.append({"profile": profile, "attack": attack, "scenario": scenario, "downstream": downstream,
                      "clone_only ASR(all) %": f"{clone[HEADLINE].mean():.2f}", "clean control ASR(all) %": f"{control[HEADLINE].mean():.2f}",
                      "seeds": clone["seed"].nunique(), "verdict": verdict})
    return _without_uniform(pd.DataFrame(lines), ("profile",)) if lines else pd.DataFrame()


def verdict_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Detectors' verdicts: one line per encoder a defense that reports `flagged` (DECREE) judged, with its evidence.

    Suites that share an encoder (effectiveness and cost) record the same verdict; it is listed once.
    """
    lines = []
    for r in frame.itertuples():
        meta = json.loads(r.settings).get("defense_meta", {})
        if "flagged" in meta:
            evidence = {k: meta[k] for k in ("l1_share", "stamped_cosine") if k in meta}
            lines.append({"attack": r.attack, "scenario": r.scenario, "downstream": r.downstream, "defense": r.defense, "variant": r.variant, "seed": r.seed,
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


def report_sections(rows: list[Row]) -> list[tuple[str, pd.DataFrame]]:
    """The titled tables a session shows, in order; empty tables are left out (the terminal and `harness table`)."""
    frame = to_frame(rows)
    comparison = comparison_table(frame)
    defense_columns = [c for c in comparison.columns if c not in ("profile", "attack", "scenario", "downstream", "exposure", "implanted", "clean", "random")]
    sections = []
    if len(defense_columns) > 1:  # more than one defense column: the paper's Table I shape
        sections.append((f"comparison (cells: ACC / ASR(all) / ASR(non-target) %, mean over seeds; clean, random: the controls; "
                         f"* lowest ASR(all) within {BEST_MAX_ACC_DROP:g} ACC points of none, its paired 95 % CI against the "
                         f"runner-up excluding 0; ~ leaders statistically tied)", comparison))
    sections.append(("table (mean ± 95 % CI over seeds; ASR(all) is the paper's ASR, ASR(non-target) leaves out target-class "
                     "images; exposure: points by which the defender's data evokes the backdoor; implanted: the positive control)",
                     long_table(frame)))
    sections.append(("paired differences against MIMIC on the same suspects (mean ± 95 % CI over seeds)", paired_table(frame)))
    sections.append(("ablation's positive control (clone loss alone must inherit the backdoor)", ablation_verdict(frame)))
    sections.append(("detectors' verdicts (DECREE: L1 share of the smallest collapsing mask; flagged below its threshold)", verdict_table(frame)))
    sections.append(("seconds per defense (mean ± 95 % CI over runs; per phase where the defense reports phases)", cost_table(rows)))
    return [(title, table) for title, table in sections if len(table)]


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
        "paired.md": render(paired_table(frame), "markdown") + "\n",
        "ablation.md": render(ablation_verdict(frame), "markdown") + "\n",
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
