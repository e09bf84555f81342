"""Check the CUDA path on the first GPU anyone lends: the micro grid on cuda and on cpu, and MIMIC's throughput.

    python benchmarks/gpu_check.py [--defense all] [--keep DIR]

Builds the micro grid (BadEncoder on Fashion-MNIST against every defense, with
the tests' micro profile: tiny with width 4, 256 images, one epoch) twice through
the library, on cuda and on cpu, each in a fresh cache; prints every row's ACC and
ASR(non-target) on both devices and their differences; then MIMIC's width-64
distillation throughput on the GPU (benchmarks/bench_mimic.py). Meant to finish
within 5 minutes; the seconds of each part are printed.

GPU kernels round differently from CPU ones, so the two devices' rows can differ
by a few points at this size; a row that differs by tens of points, or a crash,
is what the check is for.

Exit codes: 0 checked (read the differences); 77 no CUDA device, nothing run
(the "skipped" code of automake and meson test harnesses).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NO_CUDA = 77
# The micro profile of tests/test_plugin.py: everything real, only tiny in size.
MICRO_FIELDS = ["width=4", "pretrain_size=256", "ssl_epochs=1", "attack_epochs=1", "shadow_size=128", "downstream_train_size=256",
                "downstream_test_size=128", "probe_epochs=30", "ssl_batch=64", "attack_batch=64"]
KEYS = ["attack", "defense", "downstream", "variant", "seed"]
METRICS = ["acc", "asr_nontarget"]


def micro_grid(device: str, cache: Path, defense: str):
    import harness

    start = time.perf_counter()
    frame = harness.run(attack="badencoder", defense=defense, downstream="fmnist", overrides=MICRO_FIELDS, device=device, cache_dir=cache)
    return frame, time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--defense", default="all", help="defenses of the micro grid (default: all)")
    parser.add_argument("--keep", type=Path, help="keep both caches under this new folder (default: a temporary one)")
    args = parser.parse_args()
    import torch

    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device (torch.cuda.is_available() is False); nothing checked", file=sys.stderr)
        return NO_CUDA
    if args.keep is not None and args.keep.exists():
        parser.error(f"--keep {args.keep} exists; the check needs fresh caches")
    print(f"gpu_check: {torch.cuda.get_device_name(0)}, torch {torch.__version__}, CUDA {torch.version.cuda}")
    with tempfile.TemporaryDirectory(prefix="harness-gpu-check-") as tmp:
        work = args.keep or Path(tmp)
        cuda, cuda_s = micro_grid("cuda", work / "cuda", args.defense)
        cpu, cpu_s = micro_grid("cpu", work / "cpu", args.defense)
    both = cuda[KEYS + METRICS].merge(cpu[KEYS + METRICS], on=KEYS, suffixes=("_cuda", "_cpu"), how="outer")
    for m in METRICS:
        both[f"{m}_diff"] = both[f"{m}_cuda"] - both[f"{m}_cpu"]
    print(f"micro grid: cuda {cuda_s:.0f} s, cpu {cpu_s:.0f} s; ACC and ASR(non-target) in %, diff = cuda - cpu")
    print(both.to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    worst = both[[f"{m}_diff" for m in METRICS]].abs().max().max()
    print(f"largest difference: {worst:.2f} points")

    start = time.perf_counter()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    bench = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_mimic.py"), "--width", "64", "--device", "cuda"],
                           cwd=ROOT, env=env, capture_output=True, text=True)
    if bench.returncode != 0:
        print(f"bench_mimic.py failed:\n{bench.stderr[-2000:]}", file=sys.stderr)
        return 1
    distil = [line for line in bench.stdout.splitlines() if line.startswith(("device", "MIMIC distillation step"))]
    print("\n".join(distil) + f"  ({time.perf_counter() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
