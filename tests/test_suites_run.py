"""Every suite runs to its assertions at micro size.

The micro profile's encoders are too small to be usable or to implant, so the suites' own gates (usability,
implant) fail there as findings would; `implant_asr_all=0` lets every suspect count as implanted so that each
suite's post-control assertions (a variant's settings, a sweep's metadata) run. Any other failure is a bug in
the plumbing between the pipeline's rows and the suites that read them.
"""

from __future__ import annotations

import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest

from tests.test_plugin import MICRO

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parents[1]
GATE_FAILURE = "AssertionError: gate failed for "


@pytest.mark.slow
def test_every_suite_reaches_its_assertions_at_micro_size(pytester: pytest.Pytester, tmp_path):
    report = tmp_path / "junit.xml"
    result = pytester.runpytest_subprocess(
        str(ROOT / "suites"), "-p", "no:cacheprovider", "--attack=badencoder,badnets", "--defense=mimic,ft",
        "--downstream=fmnist", *MICRO, "--harness-set", "implant_asr_all=0",
        f"--harness-cache-dir={tmp_path / 'cache'}", f"--harness-results-dir={tmp_path / 'results'}", f"--junitxml={report}")
    cases = ElementTree.parse(report).getroot().iter("testcase")
    outcomes = {f"{c.get('classname')}::{c.get('name')}": [e for e in c if e.tag in ("failure", "error", "skipped")] for c in cases}
    by_suite = {name.split("::")[0].rsplit(".", 1)[-1] for name in outcomes}
    assert by_suite == {"test_effectiveness", "test_ablation", "test_robustness", "test_generalisation", "test_cost"}, result.stdout.str()
    bugs = {name: (e[0].get("message") or "")[:300] for name, e in outcomes.items()
            if e and (e[0].tag != "failure" or not (e[0].get("message") or "").startswith(GATE_FAILURE))}
    assert not bugs
    ran_through = [name for name, e in outcomes.items() if not e]
    assert any("test_variant" in name for name in ran_through) and any("test_poisoned_clean_data" in name for name in ran_through)


@pytest.mark.slow
def test_every_defended_row_of_an_attack_that_did_not_implant_is_skipped(pytester: pytest.Pytester, tmp_path):
    """The positive control gates every suite's defended rows, the supervised ones too: a suspect below 100 % ASR(all)
    did not implant at a bound of 100 %."""
    report = tmp_path / "junit.xml"
    pytester.runpytest_subprocess(
        str(ROOT / "suites" / "test_generalisation.py"), str(ROOT / "suites" / "test_effectiveness.py"), "-p", "no:cacheprovider",
        "-k", "defended and not undefended", "--attack=badencoder,badnets", "--defense=ft", "--downstream=fmnist", *MICRO,
        "--harness-set", "implant_asr_all=100", "--harness-set", "scenarios=patch", "--harness-gate", "asr_all<=100",
        f"--harness-cache-dir={tmp_path / 'cache'}", f"--harness-results-dir={tmp_path / 'results'}", f"--junitxml={report}")
    from harness.rows import ResultsStore

    cases = list(ElementTree.parse(report).getroot().iter("testcase"))
    skipped = {c.get("name"): [e.get("message") for e in c if e.tag == "skipped"] for c in cases}
    defended = [r for r in ResultsStore(tmp_path / "results").rows_kept(lambda line: None) if r.defense != "none"]
    for attack in ("badencoder", "badnets"):  # each defended row of a suspect below the bound is a skip that says why
        missed = sum(r.implanted is False for r in defended if r.attack == attack)
        said = sum(bool(why) and why[0].startswith("attack did not implant") for name, why in skipped.items() if attack in name)
        assert said == missed, (attack, skipped)


@pytest.mark.slow
def test_a_baseline_judges_defended_rows_only(pytester: pytest.Pytester, tmp_path):
    """An undefended suspect whose ASR rose (a stronger attack) is no regression; a defended row that fell back is."""
    import dataclasses

    from harness.gates import save_baseline
    from harness.rows import ResultsStore

    results, baseline = tmp_path / "results", tmp_path / "baseline.json"
    run = [str(ROOT / "suites" / "test_effectiveness.py"), "-p", "no:cacheprovider", "-k", "defended", "--attack=badencoder",
           "--defense=ft", "--downstream=fmnist", *MICRO, "--harness-set", "implant_asr_all=0", "--harness-set", "scenarios=patch",
           f"--harness-cache-dir={tmp_path / 'cache'}", f"--harness-results-dir={results}", f"--harness-baseline={baseline}"]
    pytester.runpytest_subprocess(*run, "--harness-update-baseline").assert_outcomes(passed=2)
    rows = list(ResultsStore(results).rows_kept(lambda line: None))
    save_baseline([dataclasses.replace(r, acc=r.acc + 50) for r in rows], baseline)  # every row "was" 50 points more accurate
    again = pytester.runpytest_subprocess(*run)
    again.assert_outcomes(passed=1, failed=1)
    again.stdout.fnmatch_lines(["*regression for badencoder-patch10-fmnist-ft-seed0: acc = *"])
