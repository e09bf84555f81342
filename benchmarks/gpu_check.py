"""Check the CUDA path on the first GPU anyone lends: the same slice on cuda and on cpu, compared row by row.

    .venv/bin/python benchmarks/gpu_check.py [--defense mimic] [--json REPORT.json]

Builds one slice of Table I through the library (`harness.run`) with the tiny
profile, where the clean encoder is clearly above the random one: BadEncoder on
Fashion-MNIST, both trigger scenarios, the chosen defenses beside the clean and
random controls, seed 0. It runs four times, each in a fresh cache: on CUDA in
fp32 (the default precision), on CUDA in fp32 again (is the same seed the same
table on the same GPU?), on CUDA with bf16 autocast, and on the CPU in fp32. Rows are merged on their full identity (attack, scenario, task,
defense, variant, seed) and compared.

What is expected, and why. Floating-point reductions run in another order on
another device, and training amplifies that: on this project's CPUs a change of
thread count alone moved the clean encoder's ACC by under a point and MIMIC's
ASR(all) with the exposed trigger by up to 16 points (an earlier round). So the check
asks for the same findings, not the same digits:
- every row's ACC within ACC_TOLERANCE (3) points of the CPU's;
- the controls' ASR(all) within CONTROL_ASR_TOLERANCE (5) points; the clean
  encoder usable (USABLE_MARGIN above random) on every device;
- the undefended suspect implanted on every device;
- defended rows' ASR is printed and its difference shown, not gated: with the
  exposed trigger it is the number docs/DESIGN.md ("Determinism") calls machine-sensitive.
Beside the comparison: seconds per stage and throughput on CUDA (SimCLR,
BadEncoder and MIMIC's distillation in source images per second, each image
seen as two views; MINE steps per second; the probe's seconds).

The CPU run goes on in a second process while the GPU runs, on all but two of
the machine's cores (the GPU runs keep two), so the CUDA timings are taken
beside a busy CPU.

Exit codes: 0 the checks passed; 1 one failed (the lines say which); 77 no
CUDA device, nothing run (the "skipped" code of automake and meson test
harnesses). Meant to finish within 5 minutes on one H200.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # a checkout runs as it is, installed or not

NO_CUDA = 77
IDENTITY = ["attack", "scenario", "downstream", "defense", "variant", "seed"]  # a row's identity, less profile and precision
METRICS = ["acc", "asr_all", "asr_nontarget"]
ACC_TOLERANCE = 3.0  # points: every row's ACC on CUDA against the CPU's
CONTROL_ASR_TOLERANCE = 5.0  # points: the clean and random encoders' ASR(all)
CONTROLS = ("clean", "random")
SLICE = {"attack": "badencoder", "downstream": "fmnist", "profile": "tiny", "seed": 0}
CUDA_RUNS = (("cuda", "fp32"), ("cuda", "fp32"), ("cuda", "bf16"))  # the second: same seed, same GPU, same table?
CPU_RUN = ("cpu", "fp32")


def build(device: str, precision: str, defense: str, cache: Path, threads: int | None = None) -> tuple[list, float]:
    """The slice's rows, built in `cache` on `device` (with `threads` CPU threads), and the wall seconds it took."""
    import torch

    from harness.api import run_rows, settings_from

    if threads is not None:
        torch.set_num_threads(threads)
    start = time.perf_counter()
    rows = run_rows(settings_from(defense=defense, device=device, precision=precision, cache_dir=cache, **SLICE))
    return rows, time.perf_counter() - start


def frame_of(rows: list) -> "Any":
    import pandas as pd

    return pd.DataFrame([{**{k: getattr(r, k) for k in IDENTITY + METRICS}, "implanted": r.implanted} for r in rows])


def merge(runs: dict[str, Any], reference: str) -> "Any":
    """One line per row identity: each run's metrics side by side (`acc@cuda-bf16`...) and each run's difference from
    `reference` (`acc-diff@cuda-bf16`); a row missing from a run shows as NaN there."""
    merged = None
    for name, frame in runs.items():
        renamed = frame.rename(columns={c: f"{c}@{name}" for c in METRICS + ["implanted"]})
        merged = renamed if merged is None else merged.merge(renamed, on=IDENTITY, how="outer")
    for name in runs:
        if name != reference:
            for m in METRICS:
                merged[f"{m}-diff@{name}"] = merged[f"{m}@{name}"] - merged[f"{m}@{reference}"]
    return merged.sort_values(IDENTITY).reset_index(drop=True)


def problems(merged: "Any", runs: list[str], reference: str) -> list[str]:
    """Every check of the module docstring that fails, one line each."""
    from harness.profiles import USABLE_MARGIN

    found = []
    for _, row in merged.iterrows():
        name = "-".join(str(row[k]) for k in IDENTITY if str(row[k]))
        for run in runs:
            if any(row[f"{m}@{run}"] != row[f"{m}@{run}"] for m in METRICS):  # NaN: the run lacks the row
                found.append(f"{name}: missing on {run}")
                continue
            if run != reference and abs(row[f"acc-diff@{run}"]) > ACC_TOLERANCE:
                found.append(f"{name}: ACC {row[f'acc@{run}']:.2f} on {run} vs {row[f'acc@{reference}']:.2f} (tolerance {ACC_TOLERANCE:g})")
            if run != reference and row["attack"] in CONTROLS and abs(row[f"asr_all-diff@{run}"]) > CONTROL_ASR_TOLERANCE:
                found.append(f"{name}: control ASR(all) {row[f'asr_all@{run}']:.2f} on {run} vs {row[f'asr_all@{reference}']:.2f} "
                             f"(tolerance {CONTROL_ASR_TOLERANCE:g})")
            if row["attack"] not in CONTROLS and row["defense"] == "none" and not _true(row[f"implanted@{run}"]):
                found.append(f"{name}: the attack did not implant on {run} (ASR(all) {row[f'asr_all@{run}']:.2f})")
    for run in runs:
        for (scenario, task), group in merged.groupby(["scenario", "downstream"]):
            acc = dict(zip(group["attack"], group[f"acc@{run}"]))
            if "clean" in acc and "random" in acc and not acc["clean"] >= acc["random"] + USABLE_MARGIN:
                found.append(f"{scenario}-{task}: clean encoder not usable on {run} (ACC {acc['clean']:.2f}, random {acc['random']:.2f})")
    return sorted(set(found))


def _true(value: Any) -> bool:
    """A row's `implanted` as read back from a frame: True, or False for False, None and NaN."""
    return value is not None and value == value and bool(value)


def throughput(rows: list, profile: Any) -> dict[str, float]:
    """Seconds per stage and throughput of one run's rows (source images per second; every image is seen as two views)."""
    out: dict[str, float] = {}
    shadow = profile.shadow_size + (min(profile.shadow_size, profile.downstream_train_size) if profile.shadow_with_downstream else 0)
    for row in rows:
        s = row.seconds
        if "pretrain" in s:
            out["simclr_s"] = s["pretrain"]
            out["simclr_img_per_s"] = profile.ssl_epochs * profile.pretrain_size / s["pretrain"]
        if row.attack == "badencoder" and "attack" in s:
            out["badencoder_s"] = s["attack"]
            out["badencoder_img_per_s"] = profile.attack_epochs * shadow / s["attack"]
        if row.defense == "mimic" and "defense_distillation" in s:
            steps = row.settings.defense_meta["steps"]
            out["mimic_distillation_s"] = s["defense_distillation"]
            out["mimic_distillation_img_per_s"] = steps["distillation_epochs"] * profile.clean_size / s["defense_distillation"]
            out["mine_steps_per_s"] = 4 * steps["mine_steps_per_stage"] / s["defense_localisation"]
        if "evaluate" in s:
            out["probe_s"] = max(out.get("probe_s", 0.0), s["evaluate"])
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--defense", default="mimic", help="defenses of the slice, a comma list or 'all' (default: mimic)")
    parser.add_argument("--json", type=Path, help="also write the merged rows, the problems and the timings here")
    args = parser.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device (torch.cuda.is_available() is False); nothing checked", file=sys.stderr)
        return NO_CUDA
    from harness.compute import describe
    from harness.profiles import get_profile

    cuda = torch.device("cuda")
    print(f"gpu_check: {describe(cuda, 'fp32')}, torch {torch.__version__}, CUDA {torch.version.cuda}, "
          f"{torch.get_num_threads()} CPU threads", flush=True)
    built, seconds, timings = {}, {}, {}

    def record(name: str, rows: list, wall: float) -> None:
        built[name], seconds[name], timings[name] = frame_of(rows), wall, throughput(rows, get_profile("tiny"))
        print(f"{name}: {len(rows)} rows in {wall:.0f} s", flush=True)

    cores = os.cpu_count() or 2
    with tempfile.TemporaryDirectory(prefix="harness-gpu-check-") as tmp, \
            ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        on_cpu = pool.submit(build, *CPU_RUN, args.defense, Path(tmp) / "cpu", max(1, cores - 2))
        torch.set_num_threads(min(2, cores))
        for i, (device, precision) in enumerate(CUDA_RUNS):
            name = f"{device}-{precision}" + ("-again" if (device, precision) in CUDA_RUNS[:i] else "")
            record(name, *build(device, precision, args.defense, Path(tmp) / name))
        record(f"{CPU_RUN[0]}-{CPU_RUN[1]}", *on_cpu.result())
    names = list(built)
    reference = names[-1]  # the CPU
    merged = merge(built, reference)
    shown = merged[IDENTITY[:4] + [f"{m}@{n}" for n in names for m in ("acc", "asr_all")]]
    print(shown.to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    same = {n: bool((merged[[f"{m}@{n}" for m in METRICS]].values == merged[[f"{m}@{names[0]}" for m in METRICS]].values).all())
            for n in names[1:] if n.endswith("-again")}
    for n, identical in same.items():
        print(f"same seed, same GPU, twice ({names[0]} and {n}): {'identical rows' if identical else 'rows differ'}")
    for name, t in timings.items():
        print(f"{name}: " + ", ".join(f"{k} {v:.1f}" for k, v in t.items()))
    found = problems(merged, names, reference)
    for line in found:
        print(f"PROBLEM: {line}")
    print(f"gpu_check: {'passed' if not found else f'{len(found)} problem(s)'}; tolerance ACC {ACC_TOLERANCE:g}, control ASR(all) "
          f"{CONTROL_ASR_TOLERANCE:g} points; defended ASR shown, not gated")
    if args.json:
        args.json.write_text(json.dumps({"rows": json.loads(merged.to_json(orient="records")), "problems": found, "seconds": seconds,
                                         "timings": timings, "same_seed_twice": same}, indent=1) + "\n")
    return 0 if not found else 1


if __name__ == "__main__":
    sys.exit(main())
