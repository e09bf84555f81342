"""A run's results as one self-contained HTML page: the finding first, then the evidence, then where it came from.

    harness report RESULTS_DIR [RESULTS_DIR ...] --out report.html

The page holds everything inline (CSS, plots as embedded PNG), runs no script and
fetches nothing, so it opens anywhere and can be attached to an audit. Its order:
- the finding, per attack, trigger scenario and task: which defenses brought ASR(all)
  down to the clean control's level (their mean at most the control's mean plus its
  95 % CI over seeds), and which did not; a configuration whose attack did not implant
  or whose controls failed says so, and is never read as a defense's success;
- Table I, per scenario and task: ACC, ASR(all), ASR(non-target), exposure, implanted;
- the paired comparisons against MIMIC, the detectors' verdicts beside their measured
  power, the ablation's positive control, the sweeps' curves, the cost per defense;
- the provenance: profile and its digest, seeds, device and precision, code and torch
  versions, the folders the rows came from.

`findings` is the same reading in lines, for the terminal summary and the docs.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import pandas as pd

from harness.profiles import CONTROL_ASR_AT_MOST, USABLE_MARGIN
from harness.rows import CONFIGURATION, HEADLINE, Row, to_frame
from harness.rowspec import CONTROLS
from harness.statistics import ci95, implant_label
from harness.tables import (BEST_MAX_ACC_DROP, ablation_verdict, comparison_table, cost_table, detection_table, long_table,
                            one_row_per_encoder, paired_table, verdict_table)



@dataclass(frozen=True)
class Finding:
    """What the rows of one configuration show about its defenses."""

    profile: str
    precision: str
    attack: str
    scenario: str
    downstream: str
    seeds: int  # the seeds read: those on which the attack implanted
    implanted: str  # "yes", "no", "k/n": the positive control over the seeds that ran
    clean_asr: float | None  # the clean control's ASR(all) %, mean over seeds (None: no control row)
    clean_ci: float  # its 95 % CI half-width over seeds (0 with one seed)
    reached: tuple[tuple[str, float], ...]  # (defense, ASR(all) %) at the clean control's level
    missed: tuple[tuple[str, float], ...]  # (defense, ASR(all) %) above it
    failed_controls: tuple[str, ...]  # what went wrong with the controls, each in a few words
    acc_cost: tuple[tuple[str, float], ...] = ()  # (defense, ACC lost against none) where it lost over BEST_MAX_ACC_DROP

    @property
    def where(self) -> str:
        return " / ".join(p for p in (self.attack, self.scenario, self.downstream) if p)

    def line(self) -> str:
        """The finding in one line."""
        if self.failed_controls:
            return f"{self.where}: controls failed ({'; '.join(self.failed_controls)}); no defense is read here"
        if self.implanted == "no":
            return f"{self.where}: the attack did not implant; no defense is read here"
        if self.clean_asr is None:
            return f"{self.where}: no clean control row to read the defenses against"
        level = f"the clean control's ASR(all) {self.clean_asr:.1f}" + (f" ± {self.clean_ci:.1f}" if self.seeds > 1 else "")

        cost = dict(self.acc_cost)

        def named(pairs: tuple[tuple[str, float], ...]) -> str:  # a low ASR bought with the encoder's accuracy says so
            return ", ".join(f"{d} {a:.1f}" + (f" (ACC -{cost[d]:.1f})" if d in cost else "") for d, a in pairs)

        parts = []
        if self.missed:
            parts.append(f"left the backdoor: {named(self.missed)}")
        if self.reached:
            parts.append(f"down to it: {named(self.reached)}")
        seeds = f"{self.seeds} seed{'s' if self.seeds > 1 else ''}" + ("" if self.implanted == "yes" else f", the {self.implanted} it implanted on")
        return f"{self.where} ({seeds}), against {level} %: " + "; ".join(parts or ["no defense ran"])


def findings(rows: Iterable[Row]) -> list[Finding]:
    """One finding per configuration that has an attack: its defenses read against its clean control."""
    frame = one_row_per_encoder(to_frame(rows))  # a row the suites share (effectiveness, cost, ...) counts once
    attacked = frame[~frame["attack"].isin(CONTROLS)]
    out = []
    for key, group in attacked.groupby(list(CONFIGURATION), sort=True):
        profile, precision, attack, scenario, downstream = key
        undefended = group[group["defense"] == "none"]
        implanted = implant_label(undefended["implanted"]) or "no"
        seeds = set(undefended[undefended["implanted"].fillna(False).astype(bool)]["seed"])  # the seeds a defense can be read on
        group = group[group["seed"].isin(seeds)]
        same = (frame["profile"] == profile) & (frame["precision"] == precision) & (frame["downstream"] == downstream) & (frame["defense"] == "none")
        controls = frame[same & frame["attack"].isin(CONTROLS) & (frame["scenario"] == scenario) & frame["seed"].isin(seeds)]
        clean, random = controls[controls["attack"] == "clean"], controls[controls["attack"] == "random"]
        failed = []
        if len(clean) and len(random) and clean["acc"].mean() < random["acc"].mean() + USABLE_MARGIN:
            failed.append(f"clean encoder not usable: ACC {clean['acc'].mean():.1f} vs random {random['acc'].mean():.1f}")
        if len(clean) and clean["asr_nontarget"].mean() > CONTROL_ASR_AT_MOST:
            failed.append(f"the trigger alone moves clean predictions: ASR(non-target) {clean['asr_nontarget'].mean():.1f}")
        clean_asr, clean_ci = (clean[HEADLINE].mean(), ci95(clean[HEADLINE])) if len(clean) else (None, 0.0)
        reached, missed, acc_cost = [], [], []
        undefended_acc = undefended[undefended["seed"].isin(seeds)]["acc"].mean()
        for defense, rows_of in group[group["defense"] != "none"].groupby("defense", sort=True):
            asr = rows_of[HEADLINE].mean()
            at_level = clean_asr is not None and asr <= clean_asr + clean_ci
            (reached if at_level else missed).append((defense, float(asr)))
            lost = undefended_acc - rows_of["acc"].mean()
            if lost > BEST_MAX_ACC_DROP:
                acc_cost.append((defense, float(lost)))
        out.append(Finding(profile, precision, attack, scenario, downstream, len(seeds), implanted,
                           None if clean_asr is None else float(clean_asr), float(clean_ci),
                           tuple(sorted(reached, key=lambda p: p[1])), tuple(sorted(missed, key=lambda p: -p[1])), tuple(failed),
                           tuple(acc_cost)))
    return out


# -- the page ---------------------------------------------------------------------------------------

STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 0 auto; max-width: 1400px; padding: 1em 2em; color: #1a1a1a; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; border-bottom: 1px solid #ccc; margin-top: 2em; } h3 { font-size: 1em; }
table { border-collapse: collapse; margin: .5em 0 1.5em; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid #ddd; padding: .25em .6em; text-align: left; white-space: nowrap; }
th { background: #f3f3f3; position: sticky; top: 0; }
ul.findings li { margin: .3em 0; }
.missed { color: #a00; } .reached { color: #060; } .void { color: #7a5b00; }
.note { color: #555; font-size: .9em; }
img { max-width: 100%; border: 1px solid #ddd; margin: .5em 0; }
.wide { overflow-x: auto; }
"""


def _table(frame: pd.DataFrame, caption: str = "") -> str:
    """A frame as an HTML table, every cell escaped, scrolling sideways when it is wider than the page."""
    if frame.empty:
        return ""
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape('' if v is None else str(v))}</td>" for v in row) + "</tr>"
                   for row in frame.itertuples(index=False))
    title = f"<caption>{html.escape(caption)}</caption>" if caption else ""
    return f'<div class="wide"><table>{title}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>\n'


def _finding_item(f: Finding) -> str:
    kind = "void" if f.failed_controls or f.implanted == "no" or f.clean_asr is None else "missed" if f.missed else "reached"
    return f'<li class="{kind}">{html.escape(f.line())}</li>'


def _provenance(rows: list[Row], sources: list[Path]) -> pd.DataFrame:
    lines = {}
    for r in rows:
        profile = r.settings.profile
        digest = hashlib.sha256(json.dumps(profile, sort_keys=True, default=str).encode()).hexdigest()[:12] if profile else ""
        key = (r.profile, digest, r.precision, r.settings.compute.get("device", ""), r.settings.compute.get("torch", ""), r.settings.code)
        lines.setdefault(key, set()).add(r.seed)
    records = [{"profile": p, "profile digest": d, "precision": pr, "device": dev, "torch": t, "code": c, "seeds": ", ".join(map(str, sorted(s)))}
               for (p, d, pr, dev, t, c), s in sorted(lines.items())]
    table = pd.DataFrame(records)
    table["rows from"] = ", ".join(str(s) for s in sources)
    return table


def html_report(rows: list[Row], sources: list[Path], power: list[str] | None = None) -> str:
    """The page (the module docstring), from the rows of `sources`; `power` lines say what the detectors' verdicts are worth."""
    from harness.plots import sweep_figures

    frame = to_frame(rows)
    found = findings(rows)
    parts = [f"<h1>Backdoor harness report</h1><p class='note'>{len(frame)} rows from {html.escape(', '.join(map(str, sources)))}</p>"]
    parts.append("<h2>The finding</h2>")
    if found:
        parts.append("<p class='note'>Per attack, trigger and task: the defenses that left ASR(all) above the clean control's level "
                     "(its mean over seeds plus its 95 % CI), and those that brought it down to it. The clean control is the clean "
                     "encoder under the same probe and trigger; an attack that did not implant, or failed controls, make a "
                     "configuration unreadable, never a success.</p>")
        parts.append("<ul class='findings'>" + "".join(_finding_item(f) for f in found) + "</ul>")
    else:
        parts.append("<p>No attacked rows: nothing to read a defense against.</p>")
    parts.append("<h2>Table I</h2><p class='note'>Mean ± 95 % CI over seeds. ASR(all) is the paper's ASR; ASR(non-target) leaves out "
                 "the target class's own images; exposure: points by which the defender's clean data evokes the backdoor; "
                 "implanted: the positive control.</p>")
    for (scenario, downstream), group in frame.groupby(["scenario", "downstream"], sort=True):
        parts.append(f"<h3>{html.escape(scenario or 'own trigger')} on {html.escape(downstream)}</h3>" + _table(long_table(group)))
    comparison = comparison_table(frame)
    if len(comparison):
        parts.append("<h2>Every defense side by side</h2><p class='note'>Cells: ACC / ASR(all) / ASR(non-target) %, means over seeds.</p>"
                     + _table(comparison))
    for title, table, note in (
        ("Paired against MIMIC", paired_table(frame), "Differences on the same suspects, mean ± 95 % CI over seeds."),
        ("Detectors' verdicts", verdict_table(rows), " ".join(power or [])),
        ("Test-time input detectors", detection_table(rows),
         "TPR: triggered test images flagged; FPR: clean test images flagged, at the threshold the detector fixed on the "
         "defender's clean images; ACC and ASR(all) count flagged inputs as rejected."),
        ("The ablation's positive control", ablation_verdict(frame), "Informative only where clone loss alone inherits the backdoor."),
    ):
        if len(table):
            parts.append(f"<h2>{title}</h2><p class='note'>{html.escape(note)}</p>" + _table(table))
    figures = sweep_figures(frame)
    if figures:
        parts.append("<h2>Sweeps</h2>")
        parts += [f'<img alt="{html.escape(name)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">' for name, png in figures]
    cost = cost_table(rows)
    if len(cost):
        parts.append("<h2>Cost</h2><p class='note'>Seconds of each defense's original build (a cached row keeps them).</p>" + _table(cost))
    parts.append("<h2>Provenance</h2>" + _table(_provenance(rows, sources)))
    return ("<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'><title>Backdoor harness report</title>"
            f"<style>{STYLE}</style></head><body>\n" + "\n".join(parts) + "\n</body></html>\n")


def power_notes(rows: Iterable[Row]) -> list[str]:
    """What the detectors' verdicts in the rows are worth: harness/power.py's measured rates of each scan detector
    (harness/scanning.py) for each profile its defense ran on. A row of a profile with changed fields (`tiny+...`) is
    not of the profile the rates were measured on, and the lines say that they may not hold for it."""
    from harness.power import power_lines
    from harness.profiles import fields_digest, get_profile
    from harness.scanning import DETECTORS

    def digest(profile_id: str) -> str:
        """The digest of the registered profile the rows ran, as defined now, or a mark that they ran a changed one."""
        if "+" in profile_id:
            return f"changed fields ({profile_id})"
        try:
            return fields_digest(get_profile(profile_id))
        except KeyError:  # a profile this installation does not register (a plugin's)
            return f"unregistered ({profile_id})"

    runs = {(r.defense, r.profile, r.settings.defense_meta["steps"].get(DETECTORS[r.defense].length_field))
            for r in rows if r.defense in DETECTORS and "flagged" in r.settings.defense_meta and "steps" in r.settings.defense_meta}
    return [f"{name}: {line}" if i == 0 else line for name, profile, n in sorted(runs, key=str)
            for i, line in enumerate(power_lines(name, profile.split("+")[0], n or 0, digest=digest(profile), unit=DETECTORS[name].unit,
                                                 ran="these rows ran"))]


def summary_lines(rows: list[Row], fmt: str, width: int = 120) -> list[str]:
    """What a session or `harness table` prints: the findings first, each wrapped to `width` columns; then, unless `fmt`
    is "brief", every titled table in `fmt` (the wide ones go to files either way: `write_reports`)."""
    import textwrap

    from harness.tables import render, report_sections, with_note

    lines = []
    for f in findings(rows):
        lines += textwrap.wrap(f.line(), width, initial_indent="finding: ", subsequent_indent="  ")
    if fmt != "brief":
        for title, table in report_sections(rows):
            lines += [f"== {title}", *with_note(render(table, fmt)).splitlines(), ""]
    return lines


def write_reports(rows: list[Row], root: Path, sources: list[Path] | None = None) -> dict[str, Path]:
    """Every table, plot and the HTML page of the rows in `root` (tables.write_tables, then report.html)."""
    from harness.atomic import atomic_write_text
    from harness.tables import write_tables

    paths = write_tables(rows, root)
    paths["report.html"] = Path(root) / "report.html"
    atomic_write_text(paths["report.html"], html_report(rows, sources or [Path(root)], power_notes(rows)))
    return paths
