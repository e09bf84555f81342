"""Past one machine: shards that keep a suspect's rows together, merged into one table and gated; workers per GPU;
the CI and SLURM recipes in examples/."""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.cli import main
from harness.options import OptionError, device_for_worker, gpu_workers_fit, resolve
from harness.planner import plan, shard_of
from harness.rows import ResultsStore, RowSettings
from tests.test_tables import row

ROOT = Path(__file__).resolve().parents[1]
MICRO = ["width=4", "pretrain_size=256", "ssl_epochs=1", "attack_epochs=1", "shadow_size=128", "downstream_train_size=256",
         "downstream_test_size=128", "probe_epochs=30", "ssl_batch=64", "attack_batch=64", "budget_fraction=0.01"]
SLICE = ["--attack", "badencoder", "--defense", "mimic,ft", "--downstream", "fmnist", *[a for f in MICRO for a in ("--set", f)]]


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 7), seeds=st.integers(1, 3))
def test_every_case_is_in_exactly_one_shard_a_suspects_cases_share_it_and_shares_are_even(n, seeds):
    cases = plan(resolve({"seeds": str(seeds)}), "effectiveness")
    shards = {i: shard_of(cases, (i, n)) for i in range(1, n + 1)}
    homes = {c: [i for i, mine in shards.items() if c in mine] for c in cases}
    assert all(len(h) == 1 for h in homes.values())
    by_group: dict[str, set[int]] = {}
    for case, (home,) in homes.items():
        if case.group:
            by_group.setdefault(case.group, set()).add(home)
    assert all(len(h) == 1 for h in by_group.values())
    suspects = [len({c.group for c in mine if c.group}) for mine in shards.values()]
    assert max(suspects) - min(suspects) <= 1  # dealt round-robin


def _rows(folder: Path) -> dict:
    return {r.identity: (r.acc, r.asr_all, r.asr_nontarget, r.exposure, r.implanted) for r in ResultsStore(folder).rows()}


def test_two_shards_merged_give_the_unsharded_table(tmp_path, capsys):
    for name, shard in (("whole", []), ("one", ["--shard", "1/2"]), ("two", ["--shard", "2/2"])):
        cache = tmp_path / f"cache-{name}"  # each shard builds on its own, as on its own machine
        assert main(["run", *SLICE, *shard, "--cache-dir", str(cache), "--results-dir", str(tmp_path / name), "--format", "brief"]) == 0
    one, two = _rows(tmp_path / "one"), _rows(tmp_path / "two")
    assert one and two and set(one) != set(two)  # both shards did work
    assert main(["merge", str(tmp_path / "one"), str(tmp_path / "two"), "--out", str(tmp_path / "merged")]) == 0
    assert _rows(tmp_path / "merged") == _rows(tmp_path / "whole")
    merged = (tmp_path / "merged" / "comparison.md").read_text()
    assert merged == (tmp_path / "whole" / "comparison.md").read_text()
    assert (tmp_path / "merged" / "report.html").exists()
    assert main(["merge", str(tmp_path / "one"), "--out", str(tmp_path / "merged")]) == 2  # nothing replaced without --force
    assert "exists; pass --force" in capsys.readouterr().err


@pytest.mark.parametrize("change, what", [
    ({"profile": "tiny+0badc0de"}, "profile"),
    ({"precision": "bf16"}, "precision"),
    ({"settings": RowSettings(code="another")}, "code"),
])
def test_shards_of_different_grids_are_refused_in_one_line(tmp_path, capsys, change, what):
    ResultsStore(tmp_path / "a").append(dataclasses.replace(row(0), settings=RowSettings(code="mine")))
    ResultsStore(tmp_path / "b").append(dataclasses.replace(row(1), **{"settings": RowSettings(code="mine"), **change}))
    assert main(["merge", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"harness: error: the shards are not one grid: {what} ") and err.count("\n") == 1
    assert not (tmp_path / "m").exists()


def test_a_row_two_shards_made_differently_is_kept_once_with_a_warning(tmp_path, capsys):
    ResultsStore(tmp_path / "a").append(row(0, asr=10.0))
    ResultsStore(tmp_path / "b").append(row(0, asr=12.0))
    assert main(["merge", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "m")]) == 0
    assert "with different numbers; kept" in capsys.readouterr().err
    assert [r.asr_all for r in ResultsStore(tmp_path / "m").rows()] == [10.0]


def test_the_gates_apply_to_merged_rows(tmp_path, capsys):
    store = ResultsStore(tmp_path / "merged")
    for r in (row(0, acc=80, asr=100), row(0, acc=78, asr=5, defense="ft"), row(0, acc=70, asr=60, defense="mimic")):
        store.append(r)
    assert main(["gate", str(tmp_path / "merged"), "--gate", "asr_all<=20,acc_drop<=5"]) == 1
    out = capsys.readouterr().out.splitlines()
    assert [line for line in out if "mimic" in line] == [
        "harness gate: gate failed for badencoder-fmnist-mimic-seed0: asr_all = 60.00, required asr_all <= 20",
        "harness gate: gate failed for badencoder-fmnist-mimic-seed0: acc_drop = 10.00, required acc_drop <= 5 (undefended ACC 80.00)"]
    assert out[-1] == "harness gate: 2 failure(s) in 2 defended rows of " + str(tmp_path / "merged")
    assert main(["gate", str(tmp_path / "merged"), "--gate", "asr_all<=80"]) == 0


def test_the_gate_skips_suspects_that_did_not_implant_as_the_suites_do(tmp_path, capsys):
    store = ResultsStore(tmp_path / "merged")
    for r in (row(0, acc=80, asr=30), row(0, acc=70, asr=25, defense="mimic")):
        store.append(dataclasses.replace(r, implanted=False))
    assert main(["gate", str(tmp_path / "merged"), "--gate", "asr_all<=20"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == (
        f"harness gate: 0 failure(s) in 0 defended rows of {tmp_path / 'merged'}; 1 row(s) of suspects that did not implant not gated")


@pytest.mark.parametrize("workers, gpus, device, fits", [(2, 2, "auto", True), (4, 2, "auto", False), (4, 2, "cuda", True),
                                                         (8, 0, "auto", True)])
def test_workers_never_share_a_gpu_unless_asked(workers, gpus, device, fits):
    if fits:
        gpu_workers_fit(device, workers, gpus)
        used = [device_for_worker(device, i, gpus) for i in range(workers)]
        assert gpus == 0 or device == "cuda" or len(set(used)) == workers
    else:
        with pytest.raises(OptionError, match=f"-n {workers} would put two workers on one"):
            gpu_workers_fit(device, workers, gpus)


def test_the_slurm_array_runs_each_shard_once_and_merges_after(tmp_path):
    script = ROOT / "examples" / "grid.slurm"
    env = {**os.environ, "DRY_RUN": "1", "HARNESS_RESULTS": str(tmp_path)}
    shards = []
    for task in range(3, 8):  # an array 3-7: five tasks
        done = subprocess.run(["bash", str(script)], env={**env, "SLURM_ARRAY_TASK_ID": str(task), "SLURM_ARRAY_TASK_MIN": "3",
                                                          "SLURM_ARRAY_TASK_COUNT": "5"}, capture_output=True, text=True, check=True)
        shards.append(done.stdout.split("--harness-shard ")[1].split()[0])
    assert shards == ["1/5", "2/5", "3/5", "4/5", "5/5"]
    merge = subprocess.run(["bash", str(script), "merge"], env=env, capture_output=True, text=True, check=True).stdout.splitlines()
    assert merge[0] == f"harness merge {tmp_path}/shard-* --out {tmp_path}/merged" and merge[1].startswith(f"harness gate {tmp_path}/merged")


@pytest.mark.parametrize("workflow", ["sharded-grid.yml", "release-gate.yml"])
def test_the_ci_workflows_are_valid_github_actions(workflow):
    checker = shutil.which("check-jsonschema") or (Path(sys.executable).parent / "check-jsonschema")
    if not Path(checker).exists():
        pytest.skip("check-jsonschema is not installed (pip install -e '.[dev]')")
    done = subprocess.run([str(checker), "--builtin-schema", "vendor.github-workflows", str(ROOT / "examples" / workflow)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


pytest_plugins = ["pytester"]


def test_pytest_shards_deselect_the_other_shards_cases_and_keep_suspects_whole(pytester):
    from harness.registry import ATTACKS

    ATTACKS.names()  # the method packages imported before pytester's in-process runs

    def collected(*args: str) -> list[str]:
        result = pytester.runpytest("--collect-only", "-q", "--attack=badencoder", "--downstream=fmnist,digits", *args)
        return [line.split("::")[1] for line in result.outlines if "::" in line]

    pytester.makepyfile(test_effectiveness_copy=(ROOT / "suites" / "test_effectiveness.py").read_text())
    whole = collected()
    shards = [collected(f"--harness-shard={i}/3") for i in (1, 2, 3)]
    assert all(shards) and sorted(n for shard in shards for n in shard) == sorted(whole)  # each test in exactly one shard

    def suspect(test_id: str) -> str | None:  # "test_defended[badencoder-patch-fmnist-mimic-seed0]" -> its suspect
        name, params = test_id.rstrip("]").split("[")
        parts = params.split("-")
        return None if name == "test_controls" else "-".join(parts[:3] + parts[-1:])

    homes = {}
    for i, shard in enumerate(shards):
        for test_id in shard:
            if suspect(test_id):
                homes.setdefault(suspect(test_id), set()).add(i)
    assert homes and all(len(h) == 1 for h in homes.values())
