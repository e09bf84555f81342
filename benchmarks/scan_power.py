"""How often does `harness scan` flag a backdoored encoder, and a clean one? The table the scan prints.

    python benchmarks/scan_power.py --detector decree --profile tiny --seeds 3 --cache-dir CACHE [--no-build] [--write]

On the harness's own encoders of one profile, whose truth is known: the suspects of
`--attacks` (default badencoder) aimed at each downstream task with each of the
profile's trigger scenarios, seeds 0..N-1, and the clean SimCLR encoders of those
seeds. The detector (harness/scanning.py: decree or ssl_cleanse) is read from its
defense as the suites run it (its config's defaults, its reference inversion length
scaled by the profile's budget, on the profile's clean subset): the scan runs the
same detection function with the same defaults, so every suite run of that defense
has already measured it and the cache holds the verdicts. The entry records the
length it ran; `harness scan` says so when it runs another. A suspect counts as
backdoored when its attack implanted (undefended ASR(all) >= --implanted-asr, by
default the profile's implant bound); the others are listed, not counted.

Encoders, defense runs and evaluations come from the artifact cache and are built
when missing; `--no-build` only reads the cache and reports what is missing, so a
measured cache gives the table in seconds. `--write` puts the profile's entry into
harness/scan_power.json (or the file given), which `harness scan` prints.
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
from pathlib import Path

from harness.atomic import atomic_write_text
from harness.cli import guarded
from harness.store import ArtifactStore
from harness.pipeline import Workbench, scenarios_of
from harness.power import POWER_TABLE, read_table, summarise
from harness.profiles import fields_digest, get_profile, with_overrides
from harness.compute import resolve_device
from harness.registry import ATTACKS, DATASETS, DEFENSES
from harness.scanning import DETECTORS, Detector, detector


class Missing(Exception):
    """An artifact the cache does not hold, under --no-build."""


class ReadOnlyStore(ArtifactStore):
    """The cache as it is: a missing encoder or record is reported, never built."""

    def encoder(self, key, build):
        if not self._path(key, ".safetensors").exists():
            raise Missing(key)
        return super().encoder(key, build)

    def record(self, key, build):
        if not self._path(key, ".json").exists():
            raise Missing(key)
        return super().record(key, build)


STATISTICS = tuple(dict.fromkeys(d.statistic for d in DETECTORS.values()))  # every detector's, as the defenses record them


def _evidence(meta: dict) -> dict:
    """The verdict and the numbers detectors read verdicts from, as the defense recorded them."""
    return {"flagged": bool(meta["flagged"]), **{k: meta[k] for k in STATISTICS if k in meta}}


def measure(bench: Workbench, found: Detector, attacks: list[str], downstream: list[str], seeds: list[int]) -> tuple[list[dict], list[str]]:
    """Per-encoder records (kind, downstream, seed, verdict, evidence, undefended ASR) and what the cache lacked."""
    records, missing = [], []
    for seed in seeds:
        try:
            clean = bench.clean_encoder(seed)
            meta = bench.defend(found.name, clean, seed).meta
            records.append({"kind": "clean", "downstream": None, "seed": seed, **_evidence(meta)})
        except Missing as e:
            missing.append(f"clean seed {seed} ({e})")
        for attack in attacks:
            for task, scenario in itertools.product(downstream, scenarios_of(attack, bench.profile.scenarios)):
                try:
                    suspect = bench.suspect(attack, task, seed, scenario=scenario)
                    metrics = bench.evaluate(suspect.built, task, suspect.trigger, suspect.target, seed)
                    meta = bench.defend(found.name, suspect.built, seed).meta
                except Missing as e:
                    missing.append(f"{attack} {task} {scenario} seed {seed} ({e})")
                    continue
                records.append({"kind": attack, "downstream": task, "scenario": suspect.trigger.name, "seed": seed,
                                **_evidence(meta), "asr_all": metrics["asr_all"], "asr_nontarget": metrics["asr_nontarget"]})
    return records, missing


def render(profile: str, entry: dict) -> str:
    b, c = entry["backdoored"], entry["clean"]
    lines = [f"scan power, profile {profile} ({entry['detector']}):",
             f"  backdoored ({', '.join(entry['attacks'])}, ASR(all) >= {entry['implanted_asr']:g} %): flagged {b['flagged']} of {b['encoders']}",
             f"  clean: flagged {c['flagged']} of {c['encoders']}",
             f"  suspects whose attack did not implant (not counted): {entry['not_implanted']}",
             "  encoder        downstream  trigger          seed  ASR(all) %  " + "".join(f"{k:>14}" for k in STATISTICS) + "  flagged"]
    for r in entry["encoders"]:
        asr = f"{r['asr_all']:.1f}" if "asr_all" in r else "-"
        evidence = "".join(f"{r[k]:>14.4f}" if k in r else f"{'-':>14}" for k in STATISTICS)
        lines.append(f"  {r['kind']:<14} {r['downstream'] or '-':<11} {r.get('scenario', '-'):<16} {r['seed']:<5} {asr:>10}  "
                     f"{evidence}  {'yes' if r['flagged'] else 'no'}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--detector", default="decree", type=detector, help="decree or ssl_cleanse (default: decree)")
    parser.add_argument("--profile", default="tiny")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE")
    parser.add_argument("--attacks", default="badencoder", help="comma list of encoder attacks (default: badencoder)")
    parser.add_argument("--downstream", default="all", help="comma list or 'all' for the profile's (default: all)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--implanted-asr", type=float, default=None,
                        help="undefended ASR(all) %% that makes a suspect backdoored (default: the profile's implant_asr_all)")
    parser.add_argument("--cache-dir", type=Path, default=Path(".harness-cache"))
    parser.add_argument("--data-root", type=Path, default=None)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--no-build", action="store_true", help="only read the cache; report what is missing")
    parser.add_argument("--write", nargs="?", type=Path, const=POWER_TABLE, default=None, metavar="TABLE",
                        help=f"put the profile's entry into TABLE (default: {POWER_TABLE})")
    parser.add_argument("--debug", action="store_true", help="print the traceback of an internal error")
    args = parser.parse_args(argv)
    if args.write and args.set:
        parser.error("--write records a registered profile's power; drop --set")
    return guarded("scan_power", lambda: run(args), args.debug)


def run(args: argparse.Namespace) -> int:
    profile = with_overrides(get_profile(args.profile), args.set)
    store = (ReadOnlyStore if args.no_build else ArtifactStore)(args.cache_dir)
    bench = Workbench(profile, store, resolve_device(args.device), args.data_root)
    downstream = list(profile.downstream) if args.downstream == "all" else args.downstream.split(",")
    attacks = args.attacks.split(",")
    for name in attacks:  # an unknown name is refused before anything is built
        ATTACKS.get(name)
    for name in downstream:
        DATASETS.get(name)
    records, missing = measure(bench, args.detector, attacks, downstream, list(range(args.seeds)))
    implanted_asr = profile.implant_asr_all if args.implanted_asr is None else args.implanted_asr
    for item in missing:
        print(f"missing from {args.cache_dir}: {item}")
    found = args.detector
    steps = DEFENSES.create(found.name).config.steps(bench.budget()).as_dict()[found.length_field]  # as its defense runs it
    entry = {
        **summarise(records, implanted_asr),
        "detector": f"{found.title} as the {found.name} defense runs it ({steps} {found.unit}, {found.rule}) on the profile's "
                    f"clean subset",
        "encoder": f"{profile.arch} width {profile.width}, SimCLR on {profile.pretrain_size} {profile.pretrain} images, "
                   f"{profile.ssl_epochs} epochs at batch {profile.ssl_batch}",
        "steps": steps,
        "attacks": attacks,
        "downstream": downstream,
        "seeds": list(range(args.seeds)),
        "overrides": args.set,
        "profile_digest": fields_digest(profile),
        "measured": datetime.date.today().isoformat(),
    }
    print(render(profile.name, entry))
    if args.write:
        if missing:
            print(f"not written: {len(missing)} encoders missing from the cache")
            return 1
        table = read_table(args.write) if args.write.exists() else {"detectors": {}}
        measured = table["detectors"].setdefault(found.name, {"profiles": {}})
        command = (f"python benchmarks/scan_power.py --detector {found.name} --profile {profile.name} --attacks {args.attacks} "
                   f"--downstream {args.downstream} --seeds {args.seeds} --cache-dir CACHE --write")
        measured.update({"detector": entry["detector"], "command": command})
        measured["profiles"][profile.name] = entry
        atomic_write_text(args.write, json.dumps(table, indent=1) + "\n")
        print(f"written: {args.write}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
