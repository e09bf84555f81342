"""Shared caches and results: artifacts tied to their keys, nothing lost to a torn line, files anyone may read.

The cache may be restored from elsewhere (CI) or shared between users, so what it
serves is checked against the key it was stored under; a result row cut short by a
killed run must not swallow the next one; and what the harness writes takes the
user's umask, not a private mode.
"""

import dataclasses
import json
import logging
import os
import stat
import subprocess
import sys
import textwrap
import time

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.atomic import atomic_write_text
from harness.encoder_files import ArtifactError, save_encoder
from harness.store import STALE_TEMP_SECONDS, ArtifactStore
from harness.models import build_encoder
from harness.plots import sweep_plots
from harness.rows import ResultsStore, to_frame
from tests.test_tables import row


def _encoder_build(calls: list, width: int = 4):
    def build():
        calls.append(1)
        torch.manual_seed(len(calls))
        return build_encoder("resnet18", width), {}, {"n": len(calls)}

    return build


# 8. artifacts checked against their keys ------------------------------------------------------------------------------


def test_an_edited_record_is_a_logged_miss_and_rebuilt(tmp_path, caplog):
    store = ArtifactStore(tmp_path)
    store.record("eval-1", lambda: {"acc": 61.5, "asr_nontarget": 97.0})
    (path,) = (tmp_path / "eval").glob("eval-1.json")
    path.write_text(json.dumps({"acc": 99.9, "asr_nontarget": 0, "seconds": 1.0}))
    with caplog.at_level(logging.WARNING, logger="harness.store"):
        again = ArtifactStore(tmp_path).record("eval-1", lambda: {"acc": 61.5, "asr_nontarget": 97.0})
    assert again["acc"] == 61.5 and again["cached"] is False
    assert "eval-1" in caplog.text and "rebuil" in caplog.text


def test_a_swapped_encoder_of_the_same_architecture_is_not_served(tmp_path, caplog):
    store = ArtifactStore(tmp_path)
    calls = []
    a, _, _ = store.encoder("defense-a", _encoder_build(calls))
    b, _, _ = store.encoder("defense-b", _encoder_build(calls))
    folder = tmp_path / "defense"
    (folder / "defense-a.safetensors").write_bytes((folder / "defense-b.safetensors").read_bytes())
    with caplog.at_level(logging.WARNING, logger="harness.store"):
        served, _, meta = ArtifactStore(tmp_path).encoder("defense-a", _encoder_build(calls))
    assert meta["cached"] is False and len(calls) == 3
    assert not torch.equal(served.stem[0].weight, b.stem[0].weight)
    assert "defense-a" in caplog.text


def test_a_build_with_nan_weights_is_refused_before_it_is_stored(tmp_path):
    def nan_build():
        encoder = build_encoder("resnet18", 4)
        with torch.no_grad():
            encoder.layer2[0].bn1.weight[0] = float("nan")
        return encoder, {}, {}

    store = ArtifactStore(tmp_path)
    with pytest.raises(ArtifactError, match=r"defense-nan.*layer2\.0\.bn1\.weight"):
        store.encoder("defense-nan", nan_build)
    assert not list(tmp_path.rglob("*.safetensors"))
    _, _, meta = store.encoder("defense-nan", _encoder_build([]))  # the next run builds it, nothing to delete by hand
    assert meta["cached"] is False


@pytest.mark.parametrize("damage", ["truncated", "nan weights", "no digest", "digest edited"])
def test_an_unusable_stored_encoder_is_a_logged_miss_and_rebuilt(tmp_path, caplog, damage):
    store = ArtifactStore(tmp_path)
    store.encoder("pretrain-x", _encoder_build([]))
    path = tmp_path / "pretrain" / "pretrain-x.safetensors"
    (digest,) = [p for p in path.parent.iterdir() if p.name.startswith(path.name) and p != path and not p.name.endswith(".lock")]
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[:300])
    elif damage == "nan weights":
        encoder = build_encoder("resnet18", 4)
        with torch.no_grad():
            encoder.stem[1].weight[0] = float("nan")
        save_encoder(path, encoder)
    elif damage == "no digest":
        digest.unlink()
    else:
        digest.write_text("0" * 64)
    calls = []
    with caplog.at_level(logging.WARNING, logger="harness.store"):
        _, _, meta = ArtifactStore(tmp_path).encoder("pretrain-x", _encoder_build(calls))
    assert calls == [1] and meta["cached"] is False and "pretrain-x" in caplog.text
    _, _, meta = ArtifactStore(tmp_path).encoder("pretrain-x", _encoder_build(calls))
    assert calls == [1] and meta["cached"] is True  # rebuilt once, then served


# 9. stale temporary files -------------------------------------------------------------------------------------------------

HOLDER = textwrap.dedent("""
    import sys, time
    from filelock import FileLock
    with FileLock(sys.argv[1] + "/defense/defense-live.lock"):  # as a writer of key defense-live holds it
        print("holding", flush=True)
        time.sleep(600)
""")


def test_stale_temp_files_are_swept_when_the_store_opens_but_not_a_live_writers(tmp_path):
    folder = tmp_path / "defense"
    folder.mkdir()
    stale = folder / ".defense-dead.safetensors.0a1b2c3d.tmp"
    live = folder / ".defense-live.safetensors.4e5f6a7b.tmp"
    young = folder / ".defense-other-host.safetensors.8c9d0e1f.tmp"  # another machine's write, its lock not shared
    for path, age in ((stale, 2 * STALE_TEMP_SECONDS), (live, 2 * STALE_TEMP_SECONDS), (young, 10)):
        path.write_bytes(b"part of an encoder")
        os.utime(path, (time.time() - age, time.time() - age))
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path)], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": root, "OMP_NUM_THREADS": "1"})
    try:
        assert holder.stdout.readline().strip() == "holding"
        ArtifactStore(tmp_path)
        assert not stale.exists() and live.exists() and young.exists()
    finally:
        holder.kill()
        holder.wait()
    ArtifactStore(tmp_path)
    assert not live.exists() and young.exists()


# 10. file modes follow the umask --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_written_files_take_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        store = ArtifactStore(tmp_path / "cache")
        store.encoder("pretrain-m", _encoder_build([]))
        store.record("eval-m", lambda: {"acc": 1.0})
        atomic_write_text(tmp_path / "out" / "table.md", "x\n")
        ResultsStore(tmp_path / "results").append(row())
    finally:
        os.umask(old)
    files = [p for p in tmp_path.rglob("*") if p.is_file() and not p.name.endswith(".lock")]
    assert len(files) >= 4
    assert {p.relative_to(tmp_path).as_posix(): oct(stat.S_IMODE(p.stat().st_mode)) for p in files} == {
        p.relative_to(tmp_path).as_posix(): oct(mode) for p in files}


# 12. the folder is synced after the rename -------------------------------------------------------------------------------


def test_the_folder_is_fsynced_after_the_rename(tmp_path, monkeypatch):
    synced = []
    real = os.fsync

    def spy(fd):
        synced.append(stat.S_ISDIR(os.fstat(fd).st_mode))
        real(fd)

    monkeypatch.setattr(os, "fsync", spy)
    atomic_write_text(tmp_path / "a.txt", "x")
    assert synced == [False, True]  # the file's bytes, then the folder's entry for it


# 5. rows.jsonl: a torn line loses nothing after it ----------------------------------------------------------------------


def test_an_append_after_a_torn_line_starts_on_a_new_line(tmp_path):
    store = ResultsStore(tmp_path)
    store.append(row(0))
    store.append(row(1))
    with open(store.path, "a") as f:
        f.write(row(99).to_json()[:40])  # a killed writer
    store.append(row(2))
    store.append(row(3))
    assert [r.seed for r in store.rows()] == [0, 1, 2, 3]


def test_the_reader_recovers_a_row_glued_to_a_torn_prefix(tmp_path):
    """Files written before appends started on a new line hold the torn prefix and the next row on one line."""
    store = ResultsStore(tmp_path)
    text = "".join(row(i).to_json() + "\n" for i in (0, 1)) + row(99).to_json()[:57] + row(2).to_json() + "\n" + row(3).to_json() + "\n"
    store.path.write_text(text)
    assert [r.seed for r in store.rows()] == [0, 1, 2, 3]


@settings(max_examples=60, deadline=None)
@given(before=st.integers(0, 3), after=st.integers(1, 3), cut=st.integers(1, 400), variant=st.text(max_size=12))
def test_no_complete_row_is_lost_to_a_torn_prefix(tmp_path_factory, before, after, cut, variant):
    store = ResultsStore(tmp_path_factory.mktemp("rows"))
    rows = [dataclasses.replace(row(i), variant=variant) for i in range(before + after + 1)]
    torn = rows[before].to_json()[: min(cut, len(rows[before].to_json()) - 1)]
    lines = [r.to_json() for r in rows[:before]] + [torn + rows[before + 1].to_json()] + [r.to_json() for r in rows[before + 2 :]]
    store.path.write_text("".join(line + "\n" for line in lines))
    assert [r.seed for r in store.rows()] == [r.seed for r in rows if r is not rows[before]]


# 11. plot names come from rows, and stay in the results folder ---------------------------------------------------------


def test_plot_names_from_crafted_rows_stay_in_the_results_folder(tmp_path):
    results = tmp_path / "a" / "b" / "results"
    crafted = [dataclasses.replace(row(s, acc=80.0 + s), suite="x/../../../../escaped", variant="lambda1=0.4") for s in range(2)]
    paths = sweep_plots(to_frame(crafted), results)
    assert paths and all(p.resolve().parent == results.resolve() for p in paths)
    outside = [p for p in tmp_path.rglob("*") if p.is_file() and results not in p.parents]
    assert outside == []


def test_plot_names_of_ordinary_suites_are_unchanged(tmp_path):
    rows = [dataclasses.replace(row(s), suite="sweep_lambda", variant="lambda1=0.4") for s in range(2)]
    assert [p.name for p in sweep_plots(to_frame(rows), tmp_path)] == ["plot-sweep_lambda-lambda1.png"]


def test_sanitised_plot_names_do_not_collide(tmp_path):
    rows = [dataclasses.replace(row(0), suite=suite, variant="lambda1=0.4") for suite in ("a/b", "a_b", "a:b")]
    names = [p.name for p in sweep_plots(to_frame(rows), tmp_path)]
    assert len(set(names)) == 3
