"""Rows -> comparison tables, rendered and written.

At the end of a session the rows become `results.csv` (deterministic: metrics and
settings only, so the same seed gives the same bytes), `timings.csv` (seconds per
stage and whether it came from the cache), `results.json` (the same rows),
`table.md`, `comparison.md` and `comparison.tex` (the paper's Table I shape, with
the controls, exposure and the positive control), `paired.md` (each defense
against MIMIC, paired over seeds), `ablation.md` (the ablation's positive
control), `cost.md` (seconds per defense and phase), `verdicts.md` (detectors'
verdicts and evidence), `detection.md` (test-time input detectors' rates) and a
PNG per sweep (harness/plots.py).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Iterable

import pandas as pd
from tabulate import tabulate

from harness import strict_json
from harness.options import TABLE_FORMATS
from harness.rows import CONFIGURATION, HEADLINE, KEYS, METRIC_TITLES, METRICS, Row, latest, to_frame
from harness.statistics import ci95, implant_label, paired_difference, summarise

BEST_MAX_ACC_DROP = 5.0  # points of ACC a defense may lose against the undefended encoder and still be marked best


def timings_frame(rows: Iterable[Row]) -> pd.DataFrame:
    records = [{**{k: getattr(r, k) for k in (*KEYS, "seed")}, **{f"{s}_s": round(v, 2) for s, v in r.seconds.items()}} for r in rows]
    return pd.DataFrame.from_records(records)


NOT_A_NUMBER = "n/a"
NOT_A_NUMBER_NOTE = ("n/a: not a finite number (an ASR over no non-target images, or a NaN the run produced; the rows "
                     "store it as null and name it in their non_finite field)")


def number(x: float) -> str:
    """`x` to two decimals, or NOT_A_NUMBER for NaN and infinity (never "nan" or "inf")."""
    return f"{x:.2f}" if math.isfinite(x) else NOT_A_NUMBER


def format_cell(mean: float, ci: float, seeds: int) -> str:
    if not math.isfinite(mean):
        return NOT_A_NUMBER
    return f"{mean:.2f} ± {number(ci)}" if seeds > 1 else f"{mean:.2f}"


def with_note(text: str) -> str:
    """A rendered table, with NOT_A_NUMBER_NOTE below it when one of its cells is NOT_A_NUMBER."""
    return f"{text}\n\n{NOT_A_NUMBER_NOTE}" if NOT_A_NUMBER in text else text


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


def one_row_per_encoder(frame: pd.DataFrame) -> pd.DataFrame:
    """Plain rows (no variant), one per (profile, precision, attack, scenario, downstream, defense, seed): suites that
    share an encoder (effectiveness and cost) hold the same row twice, which must count once in means and pairs."""
    plain = frame[frame["variant"].fillna("") == ""]
    return plain.drop_duplicates(subset=[*CONFIGURATION, "defense", "seed"], keep="first")


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
    plain = one_row_per_encoder(frame)
    attacked = plain[~plain["attack"].isin(("clean", "random"))]
    if attacked.empty:
        return pd.DataFrame()
    controls = plain[plain["attack"].isin(("clean", "random")) & (plain["defense"] == "none")]
    defenses = sorted(attacked["defense"].unique(), key=lambda d: (d != "none", d))
    lines = []
    for (profile, precision, attack, scenario, downstream), group in attacked.groupby(list(CONFIGURATION), sort=True):
        means = {d: (g["acc"].mean(), g[asr].mean(), g["asr_nontarget"].mean()) for d, g in group.groupby("defense")}
        marks = _marks(group, {d: (a, r) for d, (a, r, _) in means.items()}, asr, max_acc_drop)
        line = {"profile": profile, "precision": precision, "attack": attack, "scenario": scenario, "downstream": downstream}
        line["exposure"] = f"{group['exposure'].mean():.1f}" if group["exposure"].notna().any() else ""
        line["implanted"] = implant_label(group[group["defense"] == "none"]["implanted"])
        for control in ("clean", "random"):
            mine = controls[(controls["attack"] == control) & (controls["downstream"] == downstream) & (controls["profile"] == profile)
                            & (controls["precision"] == precision)]
            mine = mine[mine["scenario"] == scenario] if (mine["scenario"] == scenario).any() else mine[mine["scenario"] == ""]
            line[control] = _cell(mine["acc"].mean(), mine[asr].mean(), mine["asr_nontarget"].mean()) if len(mine) else ""
        for d in defenses:
            line[d] = _cell(*means[d]) + marks.get(d, "") if d in means else ""
        lines.append(line)
    table = pd.DataFrame(lines)
    table = _without_uniform(table, ("profile", "precision"))
    empty = ("exposure", "implanted", "scenario", "clean", "random")
    return table.drop(columns=[c for c in empty if c in table and not table[c].astype(bool).any()])


def _cell(acc: float, asr_all: float, asr_nontarget: float) -> str:
    return " / ".join(map(number, (acc, asr_all, asr_nontarget)))


def paired_table(frame: pd.DataFrame, reference: str = "mimic", metrics: tuple[str, ...] = (HEADLINE, "acc")) -> pd.DataFrame:
    """Each defense against `reference` on the same suspects: paired differences over seeds, mean ± 95 % CI.

    A negative ASR difference means the defense left less backdoor than the reference; "seeds" is the
    number of pairs. Variants and controls are left out.
    """
    plain = one_row_per_encoder(frame)
    plain = plain[~plain["attack"].isin(("clean", "random"))]
    lines = []
    for (profile, precision, attack, scenario, downstream), group in plain.groupby(list(CONFIGURATION), sort=True):
        if reference not in set(group["defense"]):
            continue
        for d in sorted(set(group["defense"]) - {reference, "none"}):
            line = {"profile": profile, "precision": precision, "attack": attack, "scenario": scenario, "downstream": downstream,
                    "defense": d}
            for m in metrics:
                mean, ci, n = paired_difference(group, d, reference, m)
                line[f"{METRIC_TITLES[m]} - {reference}"] = format_cell(mean, ci, n)
                line["seeds"] = n
            lines.append(line)
    return _without_uniform(pd.DataFrame(lines), ("profile", "precision")) if lines else pd.DataFrame()


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
                      "clone_only ASR(all) %": number(clone[HEADLINE].mean()), "clean control ASR(all) %": number(control[HEADLINE].mean()),
                      "seeds": clone["seed"].nunique(), "verdict": verdict})
    return _without_uniform(pd.DataFrame(lines), ("profile",)) if lines else pd.DataFrame()


def verdict_table(rows: Iterable[Row]) -> pd.DataFrame:
    """Detectors' verdicts: one line per encoder a defense that reports `flagged` (DECREE, SSL-Cleanse) judged, with its evidence.

    Suites that share an encoder (effectiveness and cost) record the same verdict; it is listed once. A detector leaves
    empty the evidence columns of another's.
    """
    lines = []
    for r in sorted(latest(rows), key=lambda r: r.identity):
        meta = r.settings.defense_meta
        if "flagged" in meta:
            evidence = {k: meta[k] for k in ("l1_share", "stamped_cosine", "anomaly_index") if k in meta}
            lines.append({"attack": r.attack, "scenario": r.scenario, "downstream": r.downstream, "defense": r.defense, "variant": r.variant, "seed": r.seed,
                          "verdict": "flagged" if meta["flagged"] else "not flagged",  # not flagged is not shown clean
                          **{k: f"{v:.4f}" for k, v in evidence.items()}})
    return _without_empty_variant(pd.DataFrame(lines).fillna("").drop_duplicates(ignore_index=True))


def detection_table(rows: Iterable[Row]) -> pd.DataFrame:
    """Test-time input detectors (a defense tagged `input_detection`, e.g. DeDe): per configuration, the share of
    triggered test images flagged (TPR) and of clean test images flagged (FPR) at the threshold the detector fixed on
    the defender's clean images, and the ACC and ASR(all) left once flagged inputs are rejected (mean ± 95 % CI over seeds)."""
    # one row per configuration and seed: suites that share an encoder (effectiveness and cost) record the same detection
    keys = [*CONFIGURATION, "defense", "variant"]
    one = {(*(getattr(r, k) for k in keys), r.seed): r for r in latest(rows)}
    records = [{**{k: getattr(r, k) for k in keys}, "tpr": r.settings.defense_meta["detection"]["tpr"],
                "fpr": r.settings.defense_meta["detection"]["fpr"], "acc": r.acc, "asr_all": r.asr_all, "implanted": r.implanted}
               for r in one.values() if "detection" in r.settings.defense_meta]
    if not records:
        return pd.DataFrame(columns=["attack", "defense", "seeds", "TPR %", "FPR %"])
    frame = pd.DataFrame.from_records(records)
    lines = []
    for values, group in frame.groupby(keys, sort=True):
        line = dict(zip(keys, values))
        line["seeds"] = len(group)
        for column, title in (("tpr", "TPR %"), ("fpr", "FPR %"), ("acc", "ACC % after rejection"), ("asr_all", "ASR(all) % after rejection")):
            line[title] = format_cell(group[column].mean(), ci95(group[column]), len(group))
        line["implanted"] = implant_label(group["implanted"])
        lines.append(line)
    return _without_empty_variant(_without_uniform(pd.DataFrame(lines), ("profile", "precision")))


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
    sections.append(("detectors' verdicts (DECREE: L1 share of the smallest collapsing mask, flagged below its threshold; SSL-Cleanse: "
                     "L1 share of the smallest cluster trigger's mask and its anomaly index, flagged above its threshold)", verdict_table(rows)))
    sections.append(("test-time input detectors (TPR: triggered test images flagged; FPR: clean ones; at the threshold fixed on "
                     "the defender's clean images; ACC and ASR(all) with flagged inputs rejected)", detection_table(rows)))
    sections.append(("seconds per defense (mean ± 95 % CI over runs; per phase where the defense reports phases)", cost_table(rows)))
    return [(title, table) for title, table in sections if len(table)]


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


def write_tables(rows: list[Row], root: Path) -> dict[str, Path]:
    """Every table and plot of the rows in `root`, each written atomically (see the module docstring)."""
    from harness.atomic import atomic_write_text

    frame = to_frame(rows)
    outputs = {
        "results.csv": frame.to_csv(index=False),
        "timings.csv": timings_frame(rows).to_csv(index=False),
        "table.md": with_note(render(long_table(frame), "markdown")) + "\n",
        "comparison.md": with_note(render(comparison_table(frame), "markdown")) + "\n",
        "comparison.tex": render(comparison_table(frame), "latex") + "\n",
        "paired.md": with_note(render(paired_table(frame), "markdown")) + "\n",
        "ablation.md": with_note(render(ablation_verdict(frame), "markdown")) + "\n",
        "results.json": "[\n" + ",\n".join(strict_json.dumps(r) for r in frame.to_dict(orient="records")) + "\n]\n",
        "cost.md": render(cost_table(rows), "markdown") + "\n",
        "verdicts.md": with_note(render(verdict_table(rows), "markdown")) + "\n",
        "detection.md": with_note(render(detection_table(rows), "markdown")) + "\n",
    }
    paths = {}
    for name, text in outputs.items():
        paths[name] = root / name
        atomic_write_text(paths[name], text)
    from harness.plots import sweep_plots

    paths.update({p.name: p for p in sweep_plots(frame, root)})
    return paths
