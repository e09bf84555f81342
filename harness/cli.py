"""`python -m harness` / `harness`: run a slice without pytest, rebuild tables, or check your own encoder.

    harness run --attack badencoder --downstream fmnist --profile tiny
    harness table harness-results --format latex
    harness scan ENCODER --arch resnet18 --data IMAGES            exit 0: no backdoor found, 1: suspected
    harness purify ENCODER --arch resnet18 --data IMAGES --defense mimic --out PURIFIED.safetensors

Bad input (unknown names, unreadable or refused files, missing data) exits with 2 and one line on stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _run(args: argparse.Namespace) -> int:
    from harness.artifacts import ArtifactStore
    from harness.contract import AttackNotApplicable
    from harness.pipeline import CLEAN, RANDOM, UNDEFENDED, Workbench
    from harness.plugin import load_methods
    from harness.profiles import get_profile, with_overrides
    from harness.registry import ATTACKS, DEFENSES
    from harness.results import ResultsStore, write_reports
    from harness.rowspec import RowSpec
    from harness.training import resolve_device

    load_methods()
    profile = with_overrides(get_profile(args.profile), args.set)
    attacks = ATTACKS.names() if args.attack == "all" else args.attack.split(",")
    defenses = DEFENSES.names() if args.defense == "all" else [d for d in args.defense.split(",") if d != UNDEFENDED]
    downstream = list(profile.downstream) if args.downstream == "all" else args.downstream.split(",")
    for name in attacks:
        ATTACKS.get(name)
    for name in defenses:
        DEFENSES.get(name)
    bench = Workbench(profile, ArtifactStore(args.cache_dir), resolve_device(args.device), args.data_root, args.download)
    store = ResultsStore(args.results_dir)
    rows = []
    for seed in range(args.seed, args.seed + args.seeds):
        for task in downstream:
            plan = [(CLEAN, UNDEFENDED), (RANDOM, UNDEFENDED)] + [(a, d) for a in attacks for d in (UNDEFENDED, *defenses)]
            for attack, defense in plan:
                try:
                    row = bench.row(RowSpec("run", attack, defense, task, seed))
                except AttackNotApplicable as why:
                    print(f"harness: skipped {attack} on {task}: {why}", file=sys.stderr)
                    continue
                store.append(row)
                rows.append(row)
    print_tables(rows, args.format)
    write_reports(rows, args.results_dir)
    return 0


def _table(args: argparse.Namespace) -> int:
    from harness.results import ResultsStore, write_reports

    rows = ResultsStore(args.results_dir).rows()
    if not rows:
        print(f"harness: no rows in {args.results_dir / 'rows.jsonl'}", file=sys.stderr)
        return 2
    print_tables(rows, args.format)
    write_reports(rows, args.results_dir)
    return 0


def _scan(args: argparse.Namespace) -> int:
    from defenses.decree import DecreeConfig, invert
    from harness.contract import CleanSubset
    from harness.external import load_external_encoder, load_image_folder
    from harness.training import resolve_device, seed_everything

    device = resolve_device(args.device)
    encoder = load_external_encoder(args.encoder, args.arch, args.key_prefix).to(device)
    images = load_image_folder(args.data)
    config = DecreeConfig(inversion_steps=args.steps)
    found = invert(encoder, CleanSubset(images), config, seed_everything(args.seed, "scan"), device)
    rows, cols = torch_nonzero_box(found.mask[0] > 0.5)
    print(f"harness scan: {'BACKDOOR SUSPECTED' if found.flagged else 'no backdoor found'} in {args.encoder}")
    print(f"  detector: DECREE trigger inversion on {len(images)} clean images from {args.data}, {config.inversion_steps} steps")
    print(f"  evidence: the smallest mask that collapses the features of clean images (mean pairwise cosine >= "
          f"{config.target_cosine}) covers {found.l1_share:.2%} of the image; flagged below {config.flag_below:.0%}")
    print(f"  stamped clean images' mean pairwise cosine {found.cosine:.4f}; mask > 0.5 spans rows {rows}, columns {cols}")
    if args.json:
        from harness.artifacts import atomic_write_text

        report = {"encoder": str(args.encoder), "flagged": found.flagged, "l1_share": found.l1_share, "cosine": found.cosine,
                  "flag_below": config.flag_below, "target_cosine": config.target_cosine, "images": len(images), "mask_rows": rows,
                  "mask_columns": cols}
        atomic_write_text(args.json, json.dumps(report, indent=1) + "\n")
    return 1 if found.flagged else 0


def torch_nonzero_box(mask) -> tuple[list[int], list[int]]:
    """[first, last] row and column of a boolean (H, W) mask's True pixels; empty lists when none."""
    import torch

    rows, cols = torch.nonzero(mask, as_tuple=True)
    if not rows.numel():
        return [], []
    return [int(rows.min()), int(rows.max())], [int(cols.min()), int(cols.max())]


def _purify(args: argparse.Namespace) -> int:
    import dataclasses
    import hashlib
    import time

    from harness.artifacts import atomic_write_text, save_encoder
    from harness.contract import Budget, CleanSubset
    from harness.external import load_external_encoder, load_image_folder
    from harness.plugin import load_methods
    from harness.profiles import get_profile, with_overrides
    from harness.registry import DEFENSES
    from harness.training import resolve_device

    load_methods()
    method = DEFENSES.create(args.defense)
    profile = with_overrides(get_profile(args.profile), args.set)
    device = resolve_device(args.device)
    encoder = load_external_encoder(args.encoder, args.arch, args.key_prefix)
    images = load_image_folder(args.data)
    budget = Budget(fraction=profile.budget_fraction, batch_size=profile.defense_batch, lr=profile.defense_lr, device=device)
    print(f"harness purify: {args.defense} on {args.encoder} with {len(images)} images from {args.data}, "
          f"{budget.fraction:g} of its reference recipe (profile {profile.name}), device {device}", file=sys.stderr)
    start = time.perf_counter()
    result = method(encoder, CleanSubset(images), budget, args.seed)
    seconds = time.perf_counter() - start
    save_encoder(args.out, result.encoder.cpu(), meta={"defense": args.defense})
    sidecar = {
        "defense": args.defense,
        "settings": dataclasses.asdict(method.config) if method.config is not None else {},
        "budget": {"fraction": budget.fraction, "batch_size": budget.batch_size, "lr": budget.lr, "profile": profile.name},
        "steps": result.meta.get("steps", {}),
        "seed": args.seed,
        "seconds": seconds,
        "source": str(args.encoder),
        "source_sha256": hashlib.sha256(Path(args.encoder).read_bytes()).hexdigest(),
        "images": len(images),
        "meta": result.meta,  # per defense: MI and beta per stage (MIMIC), pruned channels, verdicts...
    }
    atomic_write_text(args.out.with_suffix(".json"), json.dumps(sidecar, indent=1, default=str) + "\n")
    print(f"written: {args.out} and {args.out.with_suffix('.json')} ({seconds:.1f} s)")
    return 0


def _export(args: argparse.Namespace) -> int:
    """Write images of a registered dataset as PNG files: a folder to try `scan` and `purify` on."""
    from PIL import Image

    from harness.data import load_dataset

    data = load_dataset(args.dataset, args.split, args.data_root, False)
    args.out.mkdir(parents=True, exist_ok=True)
    count = min(args.count, len(data))
    for i in range(count):
        Image.fromarray(data.images[args.offset + i].permute(1, 2, 0).numpy()).save(args.out / f"{args.dataset}-{args.offset + i:05d}.png")
    print(f"written: {count} images of {args.dataset} ({args.split}) to {args.out}")
    return 0


def print_tables(rows: list, fmt: str) -> None:
    """The session's titled tables (harness/results.py `report_sections`)."""
    from harness.results import render, report_sections

    for title, table in report_sections(rows):
        print(f"== {title}\n{render(table, fmt)}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="harness", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="build and evaluate a slice of the grid, print the table")
    run.add_argument("--attack", default="all", help="comma list or 'all' (default: all)")
    run.add_argument("--defense", default="all", help="comma list or 'all' (default: all)")
    run.add_argument("--downstream", default="all", help="comma list or 'all' for the profile's (default: all)")
    run.add_argument("--profile", default="tiny")
    run.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--seeds", type=int, default=1)
    run.add_argument("--device", default="auto")
    run.add_argument("--data-root", type=Path, default=None)
    run.add_argument("--download", action="store_true")
    run.add_argument("--cache-dir", type=Path, default=Path(".harness-cache"))
    run.add_argument("--results-dir", type=Path, default=Path("harness-results"))
    run.add_argument("--format", choices=("terminal", "markdown", "latex", "csv", "json"), default="terminal")
    run.set_defaults(func=_run)
    table = sub.add_parser("table", help="rebuild the tables from a results directory's stored rows")
    table.add_argument("results_dir", type=Path)
    table.add_argument("--format", choices=("terminal", "markdown", "latex", "csv", "json"), default="terminal")
    table.set_defaults(func=_table)
    export = sub.add_parser("export", help="write images of a dataset as PNG files (a folder for scan and purify)")
    export.add_argument("--dataset", default="fmnist")
    export.add_argument("--split", default="test", choices=("train", "test"))
    export.add_argument("--count", type=int, default=200)
    export.add_argument("--offset", type=int, default=0)
    export.add_argument("--data-root", type=Path, default=None)
    export.add_argument("--out", type=Path, required=True)
    export.set_defaults(func=_export)
    for name, helptext in (("scan", "look for a backdoor in your own encoder (label-free trigger inversion)"),
                           ("purify", "run a defense on your own encoder and write the purified one")):
        cmd = sub.add_parser(name, help=helptext)
        cmd.add_argument("encoder", type=Path, help=".safetensors, or a weights-only PyTorch state dict (.pt/.pth)")
        cmd.add_argument("--arch", default="resnet18", help="registered architecture: resnet18 (CIFAR stem) or resnet18_imagenet (torchvision's)")
        cmd.add_argument("--key-prefix", default="", help="a prefix to strip from tensor names, e.g. 'backbone.'")
        cmd.add_argument("--data", type=Path, required=True, help="folder of unlabeled clean images (flat, or one sub-folder per class)")
        cmd.add_argument("--device", default="auto")
        cmd.add_argument("--seed", type=int, default=0)
        if name == "scan":
            cmd.add_argument("--steps", type=int, default=400, help="trigger-inversion steps (default: 400)")
            cmd.add_argument("--json", type=Path, default=None, help="also write the verdict and its evidence as JSON")
            cmd.set_defaults(func=_scan)
        else:
            cmd.add_argument("--defense", default="mimic")
            cmd.add_argument("--out", type=Path, required=True, help="where to write the purified encoder (.safetensors)")
            cmd.add_argument("--profile", default="tiny", help="whose defense budget to use (default: tiny)")
            cmd.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE")
            cmd.set_defaults(func=_purify)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from harness.artifacts import ArtifactError
    from harness.data import DatasetNotFound
    from harness.registry import UnknownNameError

    try:
        return args.func(args)
    except (UnknownNameError, DatasetNotFound, ArtifactError, ValueError) as e:
        print(f"harness: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
