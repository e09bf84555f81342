"""The findings and the HTML page, on rows whose answer is known: a defense that worked, one that did not, a failed
control, an attack that did not implant."""

from __future__ import annotations

import dataclasses
import json
import html.parser
import re

import pytest

from harness.report import findings, html_report, summary_lines
from harness.rows import Row, RowSettings
from tests.conftest import load_script


def _row(attack, defense, acc, asr, scenario="patch10", downstream="fmnist", seed=0, implanted=None, nontarget=None) -> Row:
    return Row(suite="effectiveness", profile="tiny", attack=attack, defense=defense, pretrain="fmnist", downstream=downstream, seed=seed,
               acc=acc, asr_all=asr, asr_nontarget=asr if nontarget is None else nontarget, n_test=100, n_nontarget=90,
               scenario=scenario, implanted=implanted, exposure=None if attack in ("clean", "random") else 20.0,
               settings=RowSettings(code="abc123", compute={"device": "cpu, fp32", "precision": "fp32", "torch": "2.14.1"},
                                    profile={"name": "tiny", "width": 16}))


def known_rows() -> list[Row]:
    rows = []
    for seed in (0, 1):
        # patch10 / fmnist: implanted; ft brings ASR(all) to the clean control's level, mimic leaves the backdoor
        rows += [_row("clean", "none", 78, 12 + seed, seed=seed), _row("random", "none", 68, 15, seed=seed),
                 _row("badencoder", "none", 77, 100, seed=seed, implanted=True), _row("badencoder", "ft", 75, 11 + seed, seed=seed, implanted=True),
                 _row("badencoder", "mimic", 76, 90, seed=seed, implanted=True)]
        # checkerboard10 / fmnist: the attack did not implant; mimic's low ASR is no success
        rows += [_row("clean", "none", 78, 12, "checkerboard10", seed=seed), _row("random", "none", 68, 15, "checkerboard10", seed=seed),
                 _row("badencoder", "none", 77, 30, "checkerboard10", seed=seed, implanted=False),
                 _row("badencoder", "mimic", 76, 10, "checkerboard10", seed=seed, implanted=False)]
        # patch10 / digits: the clean encoder is not usable (no better than random), a failed control
        rows += [_row("clean", "none", 70, 5, downstream="digits", seed=seed), _row("random", "none", 69, 4, downstream="digits", seed=seed),
                 _row("badencoder", "none", 70, 100, downstream="digits", seed=seed, implanted=True),
                 _row("badencoder", "mimic", 70, 3, downstream="digits", seed=seed, implanted=True)]
    return rows


def test_each_configuration_is_read_against_its_own_clean_control():
    found = {(f.scenario, f.downstream): f for f in findings(known_rows())}
    patch = found[("patch10", "fmnist")]
    assert patch.implanted == "yes" and patch.clean_asr == pytest.approx(12.5) and patch.seeds == 2
    assert [d for d, _ in patch.reached] == ["ft"] and [d for d, _ in patch.missed] == ["mimic"]
    assert "left the backdoor: mimic 90.0; down to it: ft 11.5" in patch.line()
    assert found[("checkerboard10", "fmnist")].line().endswith("the attack did not implant; no defense is read here")
    digits = found[("patch10", "digits")]
    assert digits.failed_controls and "clean encoder not usable" in digits.line() and "no defense is read here" in digits.line()


def test_a_low_asr_bought_with_the_encoders_accuracy_says_what_it_cost():
    one = [r for r in known_rows() if r.seed == 0 and r.downstream == "fmnist" and r.scenario == "patch10"]
    broken = _row("badencoder", "medic", 45, 10, implanted=True)  # 32 ACC points below the undefended 77
    (patch,) = findings([*one, broken])
    assert "down to it: medic 10.0 (ACC -32.0), ft 11.0" in patch.line()  # ft lost 2 points: no note


def test_one_seed_reads_at_the_controls_mean_and_a_control_a_trigger_moves_fails():
    one = [r for r in known_rows() if r.seed == 0 and r.downstream == "fmnist" and r.scenario == "patch10"]
    (patch,) = findings(one)
    assert patch.clean_ci == 0.0 and [d for d, _ in patch.reached] == ["ft"]  # 11 <= 12
    moved = [dataclasses.replace(r, asr_nontarget=40.0) if r.attack == "clean" else r for r in one]
    assert "the trigger alone moves clean predictions" in findings(moved)[0].line()


def test_the_summary_leads_with_the_findings_in_120_columns_and_brief_stops_there():
    lines = summary_lines(known_rows(), "terminal")
    first_table = next(i for i, line in enumerate(lines) if line.startswith("== "))
    head = lines[:first_table]
    assert head[0].startswith("finding: ") and all(line.startswith(("finding: ", "  ")) and len(line) <= 120 for line in head)
    assert summary_lines(known_rows(), "brief") == head  # brief: the findings alone, the tables in the files


class _Page(html.parser.HTMLParser):
    """The headings, list items and table cells of a page, in order; and any element that would fetch or run something."""

    def __init__(self) -> None:
        super().__init__()
        self.headings: list[str] = []
        self.items: list[str] = []
        self.cells: list[str] = []
        self.outside: list[str] = []
        self._in: str | None = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "script" or (tag in ("link", "iframe")) or (attrs.get("src", "data:").split(":")[0] not in ("data",)):
            self.outside.append(tag)
        self._in = tag if tag in ("h1", "h2", "h3", "li", "td") else self._in

    def handle_endtag(self, tag):
        self._in = None if tag == self._in else self._in

    def handle_data(self, data):
        {"h1": self.headings, "h2": self.headings, "h3": self.headings, "li": self.items, "td": self.cells}.get(self._in, []).append(data)


def test_the_page_puts_the_finding_first_shows_failures_as_such_and_is_self_contained():
    page = html_report(known_rows(), [], ["power: measured on 3 encoders"])
    parsed = _Page()
    parsed.feed(page)
    assert parsed.headings[:3] == ["Backdoor harness report", "The finding", "Table I"]
    assert parsed.headings.index("Provenance") == len(parsed.headings) - 1
    assert parsed.outside == [] and "http" not in page.replace("http-equiv", "")  # no script, nothing fetched
    items = " | ".join(parsed.items)
    assert "left the backdoor: mimic 90.0" in items and "the attack did not implant" in items and "controls failed" in items
    assert re.search(r'class="void">badencoder / checkerboard10 / fmnist', page)  # not shown as a success
    assert "abc123" in parsed.cells and "2.14.1" in parsed.cells  # provenance: code and torch versions


def test_cells_are_escaped():
    evil = [dataclasses.replace(r, defense="<script>x</script>") if r.defense == "ft" else r for r in known_rows()]
    page = html_report(evil, [], [])
    assert "<script>x" not in page and "&lt;script&gt;x&lt;/script&gt;" in page


def test_a_defense_is_read_only_on_the_seeds_its_attack_implanted_on():
    rows = [r for r in known_rows() if r.downstream == "fmnist" and r.scenario == "patch10"]
    rows = [dataclasses.replace(r, implanted=False, asr_all=20.0) if r.seed == 1 and r.attack == "badencoder" else r for r in rows]
    (patch,) = findings(rows)
    assert patch.implanted == "1/2" and patch.seeds == 1 and patch.clean_asr == 12.0  # seed 0's control only
    assert "1 seed, the 1/2 it implanted on" in patch.line() and [d for d, _ in patch.missed] == ["mimic"]


def _browser():
    return load_script("benchmarks/report_in_browser.py")


def test_chromium_lays_the_page_out_as_its_html_says(tmp_path):
    browser = _browser()
    if browser.chromium() is None:
        pytest.skip("no Chromium on PATH (Debian: apt-get install chromium)")
    page = tmp_path / "report.html"
    page.write_text(html_report(known_rows(), [tmp_path], []), encoding="utf-8")
    assert browser.check(page, tmp_path / "shot.png", 1200, 1600) == []
    blank = tmp_path / "blank.html"
    blank.write_text("<!DOCTYPE html><html><body><h1></h1></body></html>")
    assert any("looks blank" in p for p in browser.check(blank, tmp_path / "blank.png", 400, 300))


def test_harness_report_pages_several_results_folders_and_replaces_nothing_without_force(tmp_path, capsys):
    from harness.cli import main
    from harness.rows import ResultsStore

    rows = known_rows()
    first, second = ResultsStore(tmp_path / "a"), ResultsStore(tmp_path / "b")  # two shards of one grid
    for i, r in enumerate(rows):
        (first if i % 2 else second).append(r)
    out = tmp_path / "page.html"
    assert main(["report", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(out)]) == 0
    assert f"{len(rows)} rows" in capsys.readouterr().out and "left the backdoor: mimic 90.0" in out.read_text()
    assert main(["report", str(tmp_path / "a"), "--out", str(out)]) == 2
    assert "exists; pass --force" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "empty"), "--out", str(tmp_path / "x.html")]) == 2
    assert "no rows in" in capsys.readouterr().err and not (tmp_path / "x.html").exists()


def test_each_detectors_power_lines_speak_for_it_alone(tmp_path, monkeypatch):
    from harness import power
    from harness.report import power_notes

    def judged(defense: str, steps: dict) -> Row:
        row = _row("badencoder", defense, 75.0, 10.0)
        return dataclasses.replace(row, settings=RowSettings(defense_meta={"flagged": True, "steps": steps}))

    from harness.profiles import fields_digest, get_profile

    entry = {"backdoored": {"encoders": 4, "flagged": 1}, "clean": {"encoders": 2, "flagged": 0}, "steps": 300,
             "profile_digest": fields_digest(get_profile("tiny"))}
    table = tmp_path / "power.json"
    table.write_text(json.dumps({"detectors": {"decree": {"profiles": {"tiny": entry}}}}))
    monkeypatch.setattr(power, "POWER_TABLE", table)
    cleanse = power_notes([judged("ssl_cleanse", {"inversion_epochs": 75, "unlearning_epochs": 38})])
    assert len(cleanse) == 1 and cleanse[0].startswith("ssl_cleanse: power: not yet measured for ssl_cleanse")
    decree = power_notes([judged("decree", {"inversion_steps": 300, "unlearning_epochs": 8})])
    assert decree[0].startswith("decree: power:") and "flagged 1 of 4 (25 %) backdoored" in decree[0] and len(decree) == 2
    assert "measured at 300 inversion steps; these rows ran 30" in power_notes([judged("decree", {"inversion_steps": 30})])[-1]
    assert power_notes([judged("mimic", {"epochs": 75})]) == []  # a defense that detects nothing has no power line


def test_power_notes_of_a_changed_profile_say_the_rates_may_not_hold(tmp_path, monkeypatch):
    from harness import power
    from harness.profiles import fields_digest, get_profile, with_overrides
    from harness.report import power_notes

    tiny = get_profile("tiny")
    entry = {"backdoored": {"encoders": 4, "flagged": 1}, "clean": {"encoders": 2, "flagged": 0}, "steps": 300,
             "profile_digest": fields_digest(tiny)}
    table = tmp_path / "power.json"
    table.write_text(json.dumps({"detectors": {"decree": {"profiles": {"tiny": entry}}}}))
    monkeypatch.setattr(power, "POWER_TABLE", table)

    def judged(profile, name: str) -> Row:
        meta = {"flagged": False, "steps": {"inversion_steps": 300}}
        return dataclasses.replace(_row("badencoder", "decree", 75.0, 10.0), profile=name,
                                   settings=RowSettings(profile=dataclasses.asdict(profile), defense_meta=meta))

    assert not any("another definition" in line for line in power_notes([judged(tiny, "tiny")]))
    swept = with_overrides(tiny, ["trigger_size=3"])  # a sweep point of a tiny session: its rows are tiny's
    assert not any("another definition" in line for line in power_notes([judged(swept, "tiny")]))
    wider = with_overrides(tiny, ["width=32"])
    notes = power_notes([judged(wider, "tiny+" + fields_digest(wider)[:6])])
    assert notes[0].startswith("decree: power:") and "another definition of the tiny profile" in notes[-1]


def test_a_row_that_suites_share_counts_once_in_a_finding():
    """Effectiveness and cost (and robustness) read the same encoders: their rows must not narrow the control's CI."""
    rows = [r for r in known_rows() if r.downstream == "fmnist" and r.scenario == "patch10"]
    (alone,) = findings(rows)
    (shared,) = findings(rows + [dataclasses.replace(r, suite=suite) for r in rows for suite in ("cost", "robustness")])
    assert alone.implanted == shared.implanted == "yes"
    assert (shared.clean_asr, shared.clean_ci, shared.reached, shared.missed) == (alone.clean_asr, alone.clean_ci, alone.reached, alone.missed)
