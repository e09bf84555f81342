"""`python -m harness` / `harness`: run a slice without pytest, rebuild tables, or check your own encoder.

    harness run --attack badencoder --downstream fmnist --profile tiny
    harness table harness-results --format latex
    harness scan ENCODER --data IMAGES                 exit 0: the detector found no trigger (not proof of a clean encoder), 1: suspected
    harness purify ENCODER --data IMAGES --defense mimic --out PURIFIED.safetensors
    harness evaluate ENCODER --downstream fmnist --trigger checkerboard --target 9

ENCODER: a harness file, or a torchvision / BadEncoder / MoCo / solo-learn checkpoint, recognised from
its tensor names (harness/layouts.py); its input geometry defaults to its layout's (--image-size, --mean, --std).

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
    from harness.pipeline import CLEAN, UNDEFENDED, Workbench
    from harness.plugin import load_methods
    from harness.profiles import get_profile, with_overrides
    from harness.registry import ATTACKS, DEFENSES
    from harness.results import ResultsStore, write_reports
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
            plan = [(CLEAN, UNDEFENDED)] + [(a, d) for a in attacks for d in (UNDEFENDED, *defenses)]
            for attack, defense in plan:
                try:
                    row = bench.row("run", attack, defense, task, seed)
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
    from harness.external import load_image_folder
    from harness.power import power_lines
    from harness.training import resolve_device, seed_everything

    device = resolve_device(args.device)
    checkpoint, encoder, geometry = _user_encoder(args)
    encoder = encoder.to(device)
    images = load_image_folder(args.data)
    config = DecreeConfig(steps=args.steps)
    power = power_lines(args.profile, config.steps)
    found = invert(encoder, CleanSubset(images), config, seed_everything(args.seed, "scan"), device)
    rows, cols = torch_nonzero_box(found.mask[0] > 0.5)
    verdict = "BACKDOOR SUSPECTED in" if found.flagged else "the detector found no trigger in"
    print(f"harness scan: {verdict} {args.encoder}" + ("" if found.flagged else " (this does not show that it is clean)"))
    print(f"  encoder: {checkpoint.describe()}")
    print(f"  input: {geometry.describe()}")
    print(f"  detector: DECREE trigger inversion on {len(images)} clean images from {args.data}, {config.steps} steps")
    print(f"  evidence: the smallest mask that collapses the features of clean images (mean pairwise cosine >= "
          f"{config.target_cosine}) covers {found.l1_share:.2%} of the image; flagged below {config.flag_below:.0%}")
    print(f"  stamped clean images' mean pairwise cosine {found.cosine:.4f}; mask > 0.5 spans rows {rows}, columns {cols}")
    for line in power:
        print(f"  {line}")
    if args.json:
        from harness.artifacts import atomic_write_text

        report = {"encoder": str(args.encoder), "flagged": found.flagged, "l1_share": found.l1_share, "cosine": found.cosine,
                  "flag_below": config.flag_below, "target_cosine": config.target_cosine, "images": len(images), "mask_rows": rows,
                  "mask_columns": cols, "verdict": "suspected" if found.flagged else "no trigger found (not proof of a clean encoder)",
                  "layout": checkpoint.layout, "architecture": checkpoint.architecture, "geometry": geometry.as_dict(), "power": power}
        atomic_write_text(args.json, json.dumps(report, indent=1) + "\n")
    return 1 if found.flagged else 0


def _user_encoder(args: argparse.Namespace):
    """(Checkpoint, the encoder behind its input geometry, that geometry): the same for scan, purify and evaluate."""
    import dataclasses

    from harness.geometry import with_geometry
    from harness.layouts import load_checkpoint

    checkpoint = load_checkpoint(args.encoder, args.arch, args.key_prefix, args.key_map)
    given = {"size": args.image_size, "mean": args.mean, "std": args.std}
    geometry = dataclasses.replace(checkpoint.geometry, **{k: v for k, v in given.items() if v is not None})
    return checkpoint, with_geometry(checkpoint.encoder, geometry), geometry


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

    from harness.artifacts import ArtifactError, atomic_write_text, save_encoder
    from harness.contract import Budget, CleanSubset
    from harness.external import load_image_folder
    from harness.geometry import unwrap
    from harness.layouts import layout_path, write_in_layout
    from harness.plugin import load_methods
    from harness.profiles import get_profile, with_overrides
    from harness.registry import DEFENSES
    from harness.training import resolve_device

    load_methods()
    method = DEFENSES.create(args.defense)
    profile = with_overrides(get_profile(args.profile), args.set)
    device = resolve_device(args.device)
    checkpoint, encoder, geometry = _user_encoder(args)
    if args.defense == "fp" and "bottleneck" in checkpoint.architecture:  # defenses/fp.py prunes a basic block's conv2
        raise ValueError(f"fine-pruning (fp) handles basic blocks only; {checkpoint.architecture} has bottlenecks: choose another --defense")
    in_layout = layout_path(checkpoint, args.out)
    for out in (args.out, in_layout):
        if out is not None and out.resolve() == args.encoder.resolve():
            raise ArtifactError(f"{out}: refusing to overwrite the input encoder; choose another --out")
    images = load_image_folder(args.data)
    budget = Budget(epochs=profile.defense_epochs, batch_size=profile.defense_batch, lr=profile.defense_lr, device=device)
    print(f"harness purify: {args.defense} on {args.encoder} with {len(images)} images from {args.data}, "
          f"{budget.epochs} epochs (profile {profile.name}), device {device}", file=sys.stderr)
    print(f"  encoder: {checkpoint.describe()}\n  input: {geometry.describe()}", file=sys.stderr)
    start = time.perf_counter()
    result = method(encoder, CleanSubset(images), budget, args.seed)
    seconds = time.perf_counter() - start
    purified = unwrap(result.encoder).cpu()
    save_encoder(args.out, purified, meta={"defense": args.defense, "geometry": geometry.as_dict()})
    if in_layout is not None:
        write_in_layout(checkpoint, purified, in_layout)
    sidecar = {
        "defense": args.defense,
        "settings": dataclasses.asdict(method.config) if method.config is not None else {},
        "budget": {"epochs": budget.epochs, "batch_size": budget.batch_size, "lr": budget.lr, "profile": profile.name},
        "seed": args.seed,
        "seconds": seconds,
        "source": str(args.encoder),
        "source_sha256": hashlib.sha256(Path(args.encoder).read_bytes()).hexdigest(),
        "images": len(images),
        "layout": checkpoint.layout,
        "architecture": checkpoint.architecture,
        "geometry": geometry.as_dict(),
        "in_layout": str(in_layout) if in_layout else str(args.out),  # the purified weights under the input's names
        "kept_unchanged": len(checkpoint.kept),  # tensors of the input that are not the encoder's, written back as they were
        "meta": result.meta,  # per defense: MI and beta per stage (MIMIC), pruned channels, verdicts...
    }
    atomic_write_text(args.out.with_suffix(".json"), json.dumps(sidecar, indent=1, default=str) + "\n")
    also = f", {in_layout} (the input's {checkpoint.layout} layout)" if in_layout else ""
    print(f"written: {args.out}{also} and {args.out.with_suffix('.json')} ({seconds:.1f} s)")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    """ACC and ASR of a user's encoder on a downstream task, with the profile's probe and splits (as the suites)."""
    import dataclasses

    from tabulate import tabulate

    from harness.artifacts import ArtifactStore, atomic_write_text
    from harness.evaluate import evaluate
    from harness.pipeline import Workbench
    from harness.profiles import get_profile, with_overrides
    from harness.training import resolve_device
    from harness.trigger_files import load_trigger

    profile = with_overrides(get_profile(args.profile), args.set)
    device = resolve_device(args.device)
    checkpoint, encoder, geometry = _user_encoder(args)
    trigger = load_trigger(args.trigger, profile.trigger_size, args.trigger_mask)
    bench = Workbench(profile, ArtifactStore(Path(".harness-cache")), device, args.data_root, args.download)  # its splits and probe only: nothing is stored
    train, test = bench.downstream(args.downstream)
    probe = bench.probe_config()
    metrics = evaluate(encoder.to(device), train, test, trigger, args.target, probe, args.seed, device)
    described = trigger.describe()
    print(f"harness evaluate: {args.encoder} on {args.downstream} ({len(train)} train, {len(test)} test images; "
          f"{probe.kind} probe, {probe.epochs} epochs, profile {profile.name})")
    print(f"  encoder: {checkpoint.describe()}")
    print(f"  input: {geometry.describe()}")
    print(f"  trigger: {trigger.name} ({described['pixels']} pixels, box {described['box']}), target class {args.target} "
          f"({test.classes[args.target]})")
    rows = [[f"{metrics.acc:.2f}", f"{metrics.asr_all:.2f}", f"{metrics.asr_nontarget:.2f}", metrics.n_test, metrics.n_nontarget]]
    print(tabulate(rows, headers=["ACC %", "ASR(all) %", "ASR(non-target) %", "test images", "non-target"], tablefmt="simple",
                   disable_numparse=True))
    if args.json:
        report = {"encoder": str(args.encoder), "downstream": args.downstream, "target": args.target, "trigger": described,
                  "probe": dataclasses.asdict(probe), "profile": profile.name, "seed": args.seed, "layout": checkpoint.layout,
                  "architecture": checkpoint.architecture, "geometry": geometry.as_dict(), **metrics.as_dict()}
        atomic_write_text(args.json, json.dumps(report, indent=1) + "\n")
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


def _convert(args: argparse.Namespace) -> int:
    """Write an encoder file in another layout's tensor names: a file to try scan and purify on, or to use elsewhere."""
    from harness.layouts import load_checkpoint, save_in_layout

    checkpoint = load_checkpoint(args.encoder, args.arch, args.key_prefix, args.key_map)
    if args.out.resolve() == args.encoder.resolve():
        raise ValueError(f"{args.out}: refusing to overwrite the input encoder; choose another --out")
    assumed = save_in_layout(checkpoint.encoder, args.layout, args.out)
    print(f"written: {args.out} ({checkpoint.architecture} in the {args.layout} layout, the encoder only)")
    if assumed != checkpoint.geometry:
        g = checkpoint.geometry
        print(f"  it was trained for {g.describe()}; the {args.layout} layout assumes {assumed.describe()}: scan, purify and "
              f"evaluate it with --image-size {g.size} --mean {','.join(map(str, g.mean))} --std {','.join(map(str, g.std))}")
    return 0


def print_tables(rows: list, fmt: str) -> None:
    """The Table-I comparison (when there is more than one defense column), then the long table."""
    from harness.results import comparison_table, long_table, render, to_frame

    frame = to_frame(rows)
    comparison = comparison_table(frame)
    if len(comparison.columns) > 3:
        print(render(comparison, fmt) + "\n")
    print(render(long_table(frame), fmt))


def _three_floats(text: str) -> tuple[float, float, float]:
    """An argparse type: 'R,G,B' as three floats."""
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3:
        raise argparse.ArgumentTypeError(f"takes three comma-separated numbers R,G,B, got {text!r}")
    return values  # type: ignore[return-value]


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
    convert = sub.add_parser("convert", help="write an encoder file in a layout's tensor names (torchvision, badencoder, ...)")
    convert.add_argument("encoder", type=Path)
    convert.add_argument("--layout", required=True, choices=("harness", "torchvision", "badencoder", "moco", "solo-learn"))
    convert.add_argument("--out", type=Path, required=True, help=".pt/.pth (a torch state dict) or .safetensors")
    convert.add_argument("--arch", default=None, help="as for scan")
    convert.add_argument("--key-prefix", default="", help="as for scan")
    convert.add_argument("--key-map", action="append", default=[], metavar="REGEX=REPLACEMENT", help="as for scan")
    convert.set_defaults(func=_convert)
    for name, helptext in (("scan", "look for a backdoor in your own encoder (label-free trigger inversion)"),
                           ("purify", "run a defense on your own encoder and write the purified one"),
                           ("evaluate", "ACC and ASR of your own encoder on a downstream task, for a trigger and target you know")):
        cmd = sub.add_parser(name, help=helptext)
        cmd.add_argument("encoder", type=Path, help=".safetensors, or a weights-only PyTorch state dict (.pt/.pth)")
        cmd.add_argument("--arch", default=None, help="override the architecture recognised from the tensor shapes "
                         "(resnet18, resnet34, resnet50, each also *_imagenet)")
        cmd.add_argument("--key-prefix", default="", help="where the encoder's tensors are, e.g. 'model.encoder.'")
        cmd.add_argument("--key-map", action="append", default=[], metavar="REGEX=REPLACEMENT",
                         help="rewrite tensor names (re.sub, in order) into a known layout; '' leaves a tensor out of the encoder")
        cmd.add_argument("--image-size", type=int, default=None, help="side of the encoder's input (default: its layout's, e.g. 224 for ImageNet stems)")
        cmd.add_argument("--mean", type=_three_floats, default=None, metavar="R,G,B", help="input normalisation mean (default: the layout's)")
        cmd.add_argument("--std", type=_three_floats, default=None, metavar="R,G,B", help="input normalisation std (default: the layout's)")
        if name != "evaluate":
            cmd.add_argument("--data", type=Path, required=True, help="folder of unlabeled clean images (flat, or one sub-folder per class)")
        cmd.add_argument("--device", default="auto")
        cmd.add_argument("--seed", type=int, default=0)
        if name == "scan":
            cmd.add_argument("--steps", type=int, default=400, help="trigger-inversion steps (default: 400)")
            cmd.add_argument("--profile", default="tiny", help="whose measured detection rates to print (default: tiny)")
            cmd.add_argument("--json", type=Path, default=None, help="also write the verdict and its evidence as JSON")
            cmd.set_defaults(func=_scan)
        elif name == "evaluate":
            cmd.add_argument("--downstream", required=True, help="registered downstream dataset, e.g. fmnist, digits, gtsrb")
            cmd.add_argument("--trigger", required=True, metavar="NAME|FILE", help="registered trigger, image (RGBA, or with --trigger-mask) or .safetensors")
            cmd.add_argument("--trigger-mask", type=Path, default=None, help="grayscale mask image for an opaque trigger image")
            cmd.add_argument("--target", type=int, required=True, help="the backdoor's target class")
            cmd.add_argument("--profile", default="tiny", help="whose probe and downstream sizes to use (default: tiny)")
            cmd.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE")
            cmd.add_argument("--data-root", type=Path, default=None)
            cmd.add_argument("--download", action="store_true")
            cmd.add_argument("--json", type=Path, default=None, help="also write the metrics as JSON")
            cmd.set_defaults(func=_evaluate)
        else:
            cmd.add_argument("--defense", default="mimic")
            cmd.add_argument("--out", type=Path, required=True, help="where to write the purified encoder (.safetensors); "
                             "OUT.<layout><input suffix> holds it in the input's layout")
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
