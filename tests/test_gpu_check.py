"""benchmarks/gpu_check.py on a machine without CUDA: one line, the documented exit code, nothing run."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: run benchmarks/gpu_check.py itself")
def test_without_cuda_it_says_so_in_one_line_and_exits_77(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py")], cwd=tmp_path, env=env,
                          capture_output=True, text=True)
    assert done.returncode == 77
    assert done.stdout == "" and done.stderr.count("\n") == 1 and "no CUDA device" in done.stderr
    assert list(tmp_path.iterdir()) == []
