"""How much of DeDe's verdict is its decoder's budget? Its detection rates against decoder epochs.

    python benchmarks/dede_budget.py --profile tiny --seed 0 --downstream fmnist --epochs 15,50,200 --cache-dir CACHE --json OUT
        [--force: replace an existing OUT, which is otherwise refused before any work]

The suites run DeDe at the profile's budget (tiny: 15 of the reference's 200 decoder
epochs, the one rule of harness/profiles.py for every defense). This measures the
same detector at other decoder lengths on the profile's suspects of `--attack`, one
per trigger scenario, and, as the control, on the clean encoder of the same seed
with the same triggers: a detector that flags triggered inputs to a clean encoder
as often as to a backdoored one is detecting the trigger's pixels, not the
backdoor. Each row is DeDe's detection rates (TPR on triggered test images of the
other classes, FPR on clean test images) and the probe's ASR(all) with flagged
inputs rejected. Nothing here changes the suites' budget.

Encoders come from the artifact cache (built when missing); the detector runs with
the profile's `budget_fraction` at 1 and DeDe's `epochs` set to each length, so a
row at the profile's own length repeats the suites' row.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from harness.atomic import atomic_write_text
from harness.cli import guarded
from harness.compute import resolve_device
from harness.outputs import claim
from harness.pipeline import Workbench, scenarios_of
from harness.profiles import get_profile, with_overrides
from harness.registry import ATTACKS, DATASETS
from harness.store import ArtifactStore


def measure(bench: Workbench, attack: str, downstream: str, seed: int, lengths: list[int]) -> list[dict]:
    """One row per scenario, encoder (the suspect, the clean control) and decoder length."""
    unscaled = bench.with_profile(budget_fraction=1.0)  # DeDe's `epochs` is then the decoder's length itself
    rows = []
    for scenario in scenarios_of(attack, bench.profile.scenarios):
        suspect = bench.suspect(attack, downstream, seed, scenario=scenario)
        for encoder, built in ((attack, suspect.built), ("clean", bench.clean_encoder(seed))):
            for epochs in lengths:
                found = unscaled.detect("dede", built, downstream, suspect.trigger, suspect.target, seed, overrides={"epochs": epochs})
                ran = found["defense_meta"]["steps"]["decoder_epochs"]
                rows.append({"scenario": suspect.trigger.name, "encoder": encoder, "decoder_epochs": ran, "tpr": found["tpr"],
                             "fpr": found["fpr"], "acc": found["acc"], "asr_all": found["asr_all"],
                             "final_loss": found["defense_meta"]["final_loss"]})
                print(f"{rows[-1]['scenario']:<16} {encoder:<12} {epochs:>4} epochs: TPR {found['tpr']:6.2f} %  "
                      f"FPR {found['fpr']:5.2f} %  ASR(all) after rejection {found['asr_all']:6.2f} %  "
                      f"decoder loss {rows[-1]['final_loss']:.4f}", flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="tiny")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="a profile field (repeatable)")
    parser.add_argument("--attack", default="badencoder")
    parser.add_argument("--downstream", default="fmnist")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", default="15,50,200", help="comma list of decoder epochs (default: 15,50,200)")
    parser.add_argument("--cache-dir", type=Path, default=Path(".harness-cache"))
    parser.add_argument("--data-root", type=Path, default=None)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows as JSON")
    parser.add_argument("--force", action="store_true", help="replace an existing --json file")
    parser.add_argument("--debug", action="store_true", help="print the traceback of an internal error")
    args = parser.parse_args(argv)
    try:
        lengths = [int(e) for e in args.epochs.split(",")]
    except ValueError:
        parser.error(f"--epochs takes whole numbers separated by commas, got {args.epochs!r}")
    if min(lengths) < 1:
        parser.error("--epochs must be at least 1")
    return guarded("dede_budget", lambda: run(args, lengths), args.debug)


def run(args: argparse.Namespace, lengths: list[int]) -> int:
    if args.json:
        claim(args.json, args.force)
    ATTACKS.get(args.attack)  # an unknown name is refused before anything is built
    DATASETS.get(args.downstream)
    profile = with_overrides(get_profile(args.profile), args.set)
    bench = Workbench(profile, ArtifactStore(args.cache_dir), resolve_device(args.device), args.data_root)
    rows = measure(bench, args.attack, args.downstream, args.seed, lengths)
    if args.json:
        report = {"profile": profile.name, "overrides": args.set, "attack": args.attack, "downstream": args.downstream, "seed": args.seed, "rows": rows}
        atomic_write_text(args.json, json.dumps(report, indent=1) + "\n", exclusive=not args.force)
    return 0

if __name__ == "__main__":
    raise SystemExit(main())
