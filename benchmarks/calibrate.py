"""The two criteria a profile's fields are fixed by, measured for any setting (harness/profiles.py, the rule).

    python benchmarks/calibrate.py usability [--profile gpu] [--set ssl_batch=64] [--seeds 3] [--threads 1]
    python benchmarks/calibrate.py implant bassl [--attack-set inserted_share=1.0] [--downstream fmnist] [--seeds 3]

`usability`: per downstream task and seed, the clean encoder's ACC against a randomly
initialised encoder's under the same probe, and whether it clears the effectiveness
suite's margin; beside it, what a linear probe on the raw pixels reaches (the `gpu`
profile's criterion asks the clean encoder to beat it too). `implant`: per task,
scenario and seed, the undefended suspect's ACC and ASR(all), and whether it reaches
the profile's implant bound. Neither looks at a defense.

Encoders and evaluations come from the artifact cache (built when missing), the ones the
suites use. Rows depend on the thread count (float reductions change order): the
profile's recorded figures were measured at `--threads 1`, as each of two xdist workers
computes them.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
from pathlib import Path

import torch

from harness.store import ArtifactStore
from harness.compute import describe, prepare, resolve_device
from harness.data import DATASETS
from harness.evaluate import RawPixels, evaluate
from harness.pipeline import Workbench, scenarios_of
from harness.profiles import USABLE_MARGIN, get_profile, typed_assignments, with_overrides
from harness.registry import ATTACKS


def usability(bench: Workbench, downstream: list[str], seeds: list[int]) -> list[bool]:
    passed = []
    for seed in seeds:
        clean, random = bench.clean_encoder(seed), bench.random_encoder(seed)
        trigger = bench.trigger()  # ACC does not depend on it
        for task in downstream:
            c = bench.evaluate(clean, task, trigger, 0, seed)["acc"]
            r = bench.evaluate(random, task, trigger, 0, seed)["acc"]
            pixels = raw_pixels_acc(bench, task, seed)
            passed.append(c - r >= USABLE_MARGIN)
            print(f"seed {seed} {task}: clean {c:.2f} random {r:.2f} margin {c - r:.2f} "
                  f"({'usable' if passed[-1] else 'NOT usable'}: margin >= {USABLE_MARGIN:g}); "
                  f"raw pixels, linear probe {pixels:.2f} ({'beaten' if c > pixels else 'NOT beaten'})", flush=True)
    return passed


def raw_pixels_acc(bench: Workbench, task: str, seed: int) -> float:
    """ACC of a linear probe, trained as the profile trains its probe, on the task's flattened pixels."""
    train, test = bench.downstream(task)
    probe = dataclasses.replace(bench.probe_config(), kind="linear")
    return evaluate(RawPixels(), train, test, bench.trigger(), 0, probe, seed, bench.device).acc


def implant(bench: Workbench, attack: str, overrides: dict, downstream: list[str], seeds: list[int]) -> list[bool]:
    passed = []
    bound = bench.profile.implant_asr_all
    for seed, task, scenario in itertools.product(seeds, downstream, scenarios_of(attack, bench.profile.scenarios)):
        suspect = bench.suspect(attack, task, seed, overrides, scenario=scenario)
        m = bench.evaluate(suspect.built, task, suspect.trigger, suspect.target, seed)
        passed.append(m["asr_all"] >= bound)
        print(f"seed {seed} {task} {suspect.trigger.name}: ACC {m['acc']:.2f} ASR(all) {m['asr_all']:.2f} "
              f"({'implanted' if passed[-1] else 'did NOT implant'}: ASR(all) >= {bound:g})", flush=True)
    return passed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("criterion", choices=("usability", "implant"))
    parser.add_argument("attack", nargs="?", help="for implant: a registered attack")
    parser.add_argument("--profile", default="tiny")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="a profile field (repeatable)")
    parser.add_argument("--attack-set", action="append", default=[], metavar="SETTING=VALUE", help="an attack setting (repeatable)")
    parser.add_argument("--downstream", default="all", help="comma list or 'all' for the profile's (default: all)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--cache-dir", type=Path, default=Path(".harness-cache"))
    parser.add_argument("--data-root", type=Path, default=None)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16"), help="of the training stages (default: fp32)")
    args = parser.parse_args(argv)
    if (args.criterion == "implant") != (args.attack is not None):
        parser.error("implant takes one attack; usability takes none")
    if args.attack_set and args.criterion != "implant":
        parser.error("--attack-set is an attack's setting: it goes with implant")
    if args.seeds < 1 or (args.threads is not None and args.threads < 1):
        parser.error("--seeds and --threads take a positive whole number")
    try:
        device = resolve_device(args.device)
        profile = with_overrides(get_profile(args.profile), args.set)
        downstream = list(profile.downstream) if args.downstream == "all" else args.downstream.split(",")
        unknown = sorted(set(downstream) - set(DATASETS.names()))
        if unknown:
            raise ValueError(f"unknown downstream task {unknown}; known: {', '.join(DATASETS.names())}")
        overrides = {}
        if args.attack:
            config = ATTACKS.get(args.attack).default_config()
            if args.attack_set and config is None:
                raise ValueError(f"attack {args.attack!r} takes no settings")
            if args.attack_set:
                overrides = typed_assignments(type(config), args.attack_set, flag="--attack-set")
                ATTACKS.create(args.attack, **overrides)  # the setting's own checks, before anything is built
    except (ValueError, KeyError, TypeError) as e:
        parser.error(str(e))
    if args.threads:
        torch.set_num_threads(args.threads)
    prepare(device)
    bench = Workbench(profile, ArtifactStore(args.cache_dir), device, args.data_root, precision=args.precision)
    print(f"calibrate: profile {profile.name} on {describe(device, bench.precision)}", flush=True)
    seeds = list(range(args.seeds))
    passed = usability(bench, downstream, seeds) if args.criterion == "usability" else implant(bench, args.attack, overrides, downstream, seeds)
    what = "usable" if args.criterion == "usability" else "implanted"
    print(f"{what} on {sum(passed)} of {len(passed)}"
          + (f" ({', '.join(args.set + args.attack_set)})" if args.set or args.attack_set else " (the registered profile and settings)"))
    return 0 if all(passed) else 1


if __name__ == "__main__":
    raise SystemExit(main())
