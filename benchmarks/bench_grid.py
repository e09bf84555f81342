"""Wall time and peak memory of the tiny effectiveness grid, cold and warm.

    python benchmarks/bench_grid.py                      # every attack x both downstream tasks x every defense, 1 seed
    python benchmarks/bench_grid.py --pytest-args "--attack=badencoder --defense=mimic"
    python benchmarks/bench_grid.py --workdir /tmp/grid   # keep the cache and results afterwards

Runs `pytest suites/test_effectiveness.py` twice in a subprocess against a fresh
cache directory: first cold (everything built), then warm (everything cached).
Prints the seconds of each run and the peak resident memory of the child
processes (ru_maxrss), the figures issues ask for (targets: <= 15 min cold,
<= 1 min warm, <= 2 GiB).
"""

from __future__ import annotations

import argparse
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(cache: Path, results: Path, extra: list[str]) -> tuple[float, int]:
    start = time.perf_counter()
    cmd = [sys.executable, "-m", "pytest", "suites/test_effectiveness.py", "-q", "-p", "no:cacheprovider",
           f"--harness-cache-dir={cache}", f"--harness-results-dir={results}", *extra]
    done = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seconds = time.perf_counter() - start
    if done.returncode not in (0, 1):  # 1: a gate failed, the timing still counts
        sys.exit(f"pytest exited with {done.returncode}:\n{done.stdout[-3000:]}")
    print(done.stdout.strip().splitlines()[-1])
    return seconds, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # KiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pytest-args", default="", help="extra pytest options, e.g. '--attack=badencoder'")
    parser.add_argument("--workdir", type=Path, help="where the cache and results go and stay (must not exist yet); default: a temporary directory")
    args = parser.parse_args()
    extra = shlex.split(args.pytest_args)
    if args.workdir is not None and args.workdir.exists():
        parser.error(f"--workdir {args.workdir} exists; a cold run needs a new directory")
    with tempfile.TemporaryDirectory(prefix="harness-bench-") as tmp:
        work = args.workdir or Path(tmp)
        cache, results = work / "cache", work / "results"
        cold, peak = run(cache, results, extra)
        warm, _ = run(cache, results, extra)
    print(f"grid {' '.join(extra) or '(all attacks, both downstream tasks, all defenses, 1 seed)'}")
    print(f"cold {cold:.0f} s ({cold / 60:.1f} min), warm {warm:.1f} s, peak resident memory {peak / 2**20:.2f} GiB")


if __name__ == "__main__":
    main()
