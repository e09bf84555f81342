"""benchmarks/gpu_check.py on a machine without CUDA: one line, the documented exit code, nothing run."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import load_script

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: run benchmarks/gpu_check.py itself")
def test_without_cuda_it_says_so_in_one_line_and_exits_77(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py")], cwd=tmp_path, env=env,
                          capture_output=True, text=True)
    assert done.returncode == 77
    assert done.stdout == "" and done.stderr.count("\n") == 1 and "no CUDA device" in done.stderr
    assert list(tmp_path.iterdir()) == []


def _gpu_check():
    return load_script("benchmarks/gpu_check.py")


def _row(attack, defense, acc, asr, scenario="patch10", implanted=None, seconds=None, settings=None):
    from harness.rows import Row, RowSettings

    return Row(suite="run", profile="tiny", attack=attack, defense=defense, pretrain="fmnist", downstream="fmnist", seed=0, acc=acc,
               asr_all=asr, asr_nontarget=asr, n_test=100, n_nontarget=90, scenario=scenario, implanted=implanted,
               seconds=seconds or {}, settings=settings or RowSettings())


def _slice(clean_acc=78.0, undefended_asr=100.0, mimic_asr=60.0, implanted=True):
    rows = []
    for scenario in ("patch10", "checkerboard10"):  # the same attack and defense under two triggers: never merged
        rows += [_row("clean", "none", clean_acc, 12.0, scenario), _row("random", "none", 68.0, 15.0, scenario),
                 _row("badencoder", "none", 77.0, undefended_asr, scenario, implanted), _row("badencoder", "mimic", 75.0, mimic_asr, scenario, implanted)]
    return rows


def test_runs_merge_on_the_full_identity_scenario_included():
    check = _gpu_check()
    merged = check.merge({"cuda-bf16": check.frame_of(_slice()), "cpu-fp32": check.frame_of(_slice(mimic_asr=20.0))}, "cpu-fp32")
    assert len(merged) == 8 and merged.groupby(check.IDENTITY).size().max() == 1
    mimic = merged[(merged["defense"] == "mimic") & (merged["scenario"] == "patch10")].iloc[0]
    assert mimic["asr_all-diff@cuda-bf16"] == 40.0  # shown, and not a problem: defended ASR is not gated
    assert check.problems(merged, ["cuda-bf16", "cpu-fp32"], "cpu-fp32") == []


def test_an_acc_gap_a_lost_implant_an_unusable_encoder_and_a_missing_row_are_each_named():
    check = _gpu_check()
    cuda = check.frame_of(_slice(clean_acc=70.0, implanted=False)[:-1])  # the last row (checkerboard MIMIC) is missing
    merged = check.merge({"cuda-bf16": cuda, "cpu-fp32": check.frame_of(_slice())}, "cpu-fp32")
    found = check.problems(merged, ["cuda-bf16", "cpu-fp32"], "cpu-fp32")
    assert any("clean-patch10-fmnist-none-0: ACC 70.00 on cuda-bf16" in p for p in found)
    assert any("did not implant on cuda-bf16" in p for p in found)
    assert any("clean encoder not usable on cuda-bf16" in p for p in found)
    assert any("badencoder-checkerboard10-fmnist-mimic-0: missing on cuda-bf16" in p for p in found)


def test_throughput_reads_each_stage_from_the_rows():
    from harness.profiles import get_profile
    from harness.rows import RowSettings

    check = _gpu_check()
    steps = {"distillation_epochs": 75, "mine_steps_per_stage": 240}
    rows = [_row("clean", "none", 78, 12, seconds={"pretrain": 40.0, "evaluate": 2.0}),
            _row("badencoder", "none", 77, 100, seconds={"pretrain": 40.0, "attack": 8.0, "evaluate": 1.5}),
            _row("badencoder", "mimic", 75, 60, seconds={"defense_distillation": 5.0, "defense_localisation": 4.0, "evaluate": 1.0},
                 settings=RowSettings(defense_meta={"steps": steps}))]
    tiny = get_profile("tiny")
    t = check.throughput(rows, tiny)
    assert t["simclr_img_per_s"] == tiny.ssl_epochs * tiny.pretrain_size / 40.0
    assert t["badencoder_img_per_s"] == tiny.attack_epochs * 3000 / 8.0  # 1,500 shadow + 1,500 downstream images
    assert t["mimic_distillation_img_per_s"] == 75 * tiny.clean_size / 5.0 and t["mine_steps_per_s"] == 4 * 240 / 4.0
    assert t["probe_s"] == 2.0
