"""docs/RESULTS.md, docs/METHODS.md and the README's measured excerpts are what docs/build.py renders from the
committed rows and configs: nothing in them is typed by hand."""

from __future__ import annotations

import re
from pathlib import Path

from tests.conftest import load_script

ROOT = Path(__file__).resolve().parents[1]


def _builder():
    return load_script("docs/build.py")


def test_the_generated_docs_match_what_the_committed_results_render(capsys):
    assert _builder().main(["--check"]) == 0, capsys.readouterr().err


def test_the_check_names_a_doc_that_differs(tmp_path, monkeypatch, capsys):
    build = _builder()
    real = build.outputs()
    stale = {tmp_path / path.name: text + "a hand-typed 99.9 %\n" for path, text in real.items()}
    for path, text in stale.items():
        path.write_text(text, encoding="utf-8")
    monkeypatch.setattr(build, "ROOT", tmp_path)
    monkeypatch.setattr(build, "outputs", lambda: {path: text.removesuffix("a hand-typed 99.9 %\n") for path, text in stale.items()})
    assert build.main(["--check"]) == 1
    assert "RESULTS.md differs" in capsys.readouterr().err


def test_every_results_folder_names_its_command_machine_and_code():
    build = _builder()
    for folder in sorted(p for p in (ROOT / "docs" / "results").iterdir() if p.is_dir()):
        provenance = build.provenance(folder.name)
        assert {"machine", "code", "date"} <= provenance.keys(), folder
        assert "command" in provenance or "runs" in provenance, folder


def test_the_readme_stays_short_and_holds_no_commit_hash():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 165  # the issue: "at most about 160"
    assert not re.search(r"\b[0-9a-f]{7,40}\b", text)


def test_a_section_waits_for_every_folder_it_reads(tmp_path, monkeypatch):
    build = _builder()
    results = tmp_path / "results"
    for section in build.SECTIONS:  # every folder but one the claims section reads
        for folder in (section.folder, *section.needs):
            if folder and folder != "dede-budget":
                (results / folder).mkdir(parents=True, exist_ok=True)
    claims = next(s for s in build.SECTIONS if s.body is build.claims)
    assert "dede-budget" in claims.needs
    monkeypatch.setattr(build, "RESULTS", results)
    monkeypatch.setattr(build, "SECTIONS", (claims,))
    text = build.results_md()
    assert f"- {claims.title}: waits for `docs/results/dede-budget`" in text and f"## {claims.title}" not in text
