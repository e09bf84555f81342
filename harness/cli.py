"""`python -m harness` / `harness`: run a slice without pytest, rebuild tables, or check your own encoder.

    harness run --attack badencoder --downstream fmnist --profile tiny     (the options of `pytest suites/`)
    harness list attacks|defenses|profiles|fields
    harness table harness-results --format latex
    harness scan ENCODER --data IMAGES [--json REPORT.json]
    harness purify ENCODER --data IMAGES --defense mimic --out PURIFIED.safetensors
    harness evaluate ENCODER --downstream fmnist --trigger checkerboard --target 9 [--json METRICS.json]
    harness convert ENCODER --layout torchvision --out ENCODER.pth
    harness export --dataset fmnist --out IMAGES

ENCODER: a harness file, or a torchvision / BadEncoder / MoCo / solo-learn checkpoint, recognised from
its tensor names (harness/layouts.py; --arch overrides the architecture, --key-map renames tensors); its
input geometry defaults to its layout's (--image-size, --mean, --std).

Exit codes:
    0  done; for scan: the detector found no trigger (which does not show that the encoder is clean)
    1  scan: backdoor suspected; gate: a defended row failed a gate or regressed
    2  bad input: an unknown name, a bad option, an unreadable or refused file or image, missing data, or an
       output that cannot be written or already exists (--force replaces it); one line on stderr
    3  internal error: one line on stderr; rerun with --debug for the traceback

Outputs are checked before any work starts; nothing that exists is replaced without --force, and a
command's own input never is.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from pathlib import Path

EXIT_CLEAN, EXIT_SUSPECTED, EXIT_BAD_INPUT, EXIT_INTERNAL = 0, 1, 2, 3


def _run(args: argparse.Namespace) -> int:
    from harness.api import run_rows
    from harness.options import resolve, values_of
    from harness.report import write_reports
    from harness.rows import ResultsStore

    settings = resolve(values_of(args))  # OptionError (a ValueError) is a one-line usage error
    rows = run_rows(settings)
    store = ResultsStore(settings.results_dir)
    for row in rows:
        store.append(row)
    print_tables(rows, settings.table_format)
    write_reports(rows, settings.results_dir)
    return 0


def _list(args: argparse.Namespace) -> int:
    """Names a command line can use, one per line with a short description."""
    import dataclasses
    import typing

    from harness.profiles import PROFILES, Profile, get_profile
    from harness.registry import ATTACKS, DEFENSES, SUPERVISED

    if args.what in ("attacks", "defenses"):
        registry = ATTACKS if args.what == "attacks" else DEFENSES
        for name in registry.names():
            entry = registry.get(name)
            doc = (entry.fn.__doc__ or sys.modules[entry.module].__doc__ or "").strip().splitlines()
            tag = " [supervised: backdoors a classifier]" if registry.has_tag(name, SUPERVISED) else ""
            print(f"{name:12} {doc[0] if doc else ''}{tag}")
    elif args.what == "profiles":
        for name in PROFILES.names():
            p = get_profile(name)
            print(f"{name:12} {p.arch} width {p.width}, {p.pretrain} {p.pretrain_size} images -> {', '.join(p.downstream)}, "
                  f"{p.ssl_epochs} SSL / {p.attack_epochs} attack epochs, defenses at {p.budget_fraction:g} of their reference recipes")
    else:
        profile = get_profile(args.profile)
        hints = typing.get_type_hints(Profile)
        for field in dataclasses.fields(Profile):
            if field.name != "name":
                value, hint = getattr(profile, field.name), hints[field.name]
                shown = ",".join(map(str, value)) if isinstance(value, tuple) else value
                print(f"{field.name:24} {hint.__name__ if isinstance(hint, type) else str(hint):16} {shown}")
    return 0


def _table(args: argparse.Namespace) -> int:
    from harness.report import write_reports
    from harness.rows import ResultsStore

    rows = ResultsStore(args.rows_dir).rows()
    if not rows:
        print(f"harness: no rows in {args.rows_dir / 'rows.jsonl'}", file=sys.stderr)
        return 2
    print_tables(rows, args.table_format)
    write_reports(rows, args.rows_dir)
    return 0


def _scan(args: argparse.Namespace) -> int:
    from defenses.decree import DecreeConfig
    from harness.api import scan_encoder
    from harness.images import load_image_folder
    from harness.power import power_lines
    from harness.profiles import fields_digest, get_profile
    from harness.compute import resolve_device

    if args.json is not None:
        _output(args.json, args.force, inputs=(args.encoder,))
    device = resolve_device(args.device)
    checkpoint, encoder, geometry = _user_encoder(args)
    images = load_image_folder(args.data)
    config = DecreeConfig(inversion_steps=args.steps)
    power = power_lines(args.profile, config.inversion_steps, digest=fields_digest(get_profile(args.profile)))
    found = scan_encoder(encoder, images, config, args.seed, device)
    rows, cols = torch_nonzero_box(found.mask[0] > 0.5)
    verdict = "BACKDOOR SUSPECTED in" if found.flagged else "the detector found no trigger in"
    print(f"harness scan: {verdict} {args.encoder}" + ("" if found.flagged else " (this does not show that it is clean)"))
    print(f"  encoder: {checkpoint.describe()}")
    print(f"  input: {geometry.describe()}")
    print(f"  detector: DECREE trigger inversion on {len(images)} clean images from {args.data}, {config.inversion_steps} steps")
    print(f"  evidence: the smallest mask that collapses the features of clean images (mean pairwise cosine >= "
          f"{config.target_cosine}) covers {found.l1_share:.2%} of the image; flagged below {config.flag_below:.0%}")
    print(f"  stamped clean images' mean pairwise cosine {found.cosine:.4f}; mask > 0.5 spans rows {rows}, columns {cols}")
    for line in power:
        print(f"  {line}")
    if args.json:
        from harness.atomic import atomic_write_text

        report = {"encoder": str(args.encoder), "source_sha256": checkpoint.sha256, "flagged": found.flagged,
                  "l1_share": found.l1_share, "cosine": found.cosine, "flag_below": config.flag_below,
                  "target_cosine": config.target_cosine, "images": len(images), "mask_rows": rows, "mask_columns": cols,
                  "verdict": "suspected" if found.flagged else "no trigger found (not proof of a clean encoder)",
                  "layout": checkpoint.layout, "architecture": checkpoint.architecture, "geometry": geometry.as_dict(), "power": power}
        atomic_write_text(args.json, json.dumps(report, indent=1) + "\n")
    return EXIT_SUSPECTED if found.flagged else EXIT_CLEAN


def _user_encoder(args: argparse.Namespace):
    """(Checkpoint, the encoder behind its input geometry, that geometry): the same for scan, purify and evaluate; the
    file is read once, so the checkpoint's sha256 is of the bytes that were loaded."""
    from harness.api import load_user_encoder

    return load_user_encoder(args.encoder, args.arch, args.key_prefix, args.key_map, args.image_size, args.mean, args.std)


def torch_nonzero_box(mask) -> tuple[list[int], list[int]]:
    """[first, last] row and column of a boolean (H, W) mask's True pixels; empty lists when none."""
    import torch

    rows, cols = torch.nonzero(mask, as_tuple=True)
    if not rows.numel():
        return [], []
    return [int(rows.min()), int(rows.max())], [int(cols.min()), int(cols.max())]


def _purify(args: argparse.Namespace) -> int:
    import dataclasses
    import time

    from harness.api import purify_encoder
    from harness.atomic import atomic_write_text
    from harness.compute import resolve_device, resolve_precision
    from harness.contract import Budget
    from harness.encoder_files import save_encoder
    from harness.geometry import unwrap
    from harness.images import load_image_folder
    from harness.layouts import layout_path, write_in_layout
    from harness.profiles import get_profile, with_overrides
    from harness.registry import DEFENSES

    method = DEFENSES.create(args.purify_defense)
    profile = with_overrides(get_profile(args.profile), args.overrides)
    if args.out.suffix != ".safetensors":
        raise ValueError(f"{args.out}: --out must name a .safetensors file (the purified encoder; its settings go beside it as "
                         f"{args.out.with_suffix('.json').name})")
    sidecar = args.out.with_suffix(".json")
    for path in (args.out, sidecar):
        _output(path, args.force, inputs=(args.encoder,))
    device = resolve_device(args.device)
    checkpoint, encoder, geometry = _user_encoder(args)
    in_layout = layout_path(checkpoint, args.out)  # the purified weights under the input's names: known once it is read
    if in_layout is not None:
        _output(in_layout, args.force, inputs=(args.encoder,))
    images = load_image_folder(args.data)
    budget = Budget.of(profile, device, resolve_precision(args.precision, device))
    print(f"harness purify: {args.purify_defense} on {args.encoder} with {len(images)} images from {args.data}, "
          f"{budget.fraction:g} of its reference recipe (profile {profile.name}), device {device}", file=sys.stderr)
    print(f"  encoder: {checkpoint.describe()}\n  input: {geometry.describe()}", file=sys.stderr)
    start = time.perf_counter()
    result = purify_encoder(method, encoder, images, budget, args.seed)
    seconds = time.perf_counter() - start
    purified = unwrap(result.encoder).cpu()
    save_encoder(args.out, purified, meta={"defense": args.purify_defense, "geometry": geometry.as_dict()})
    if in_layout is not None:
        write_in_layout(checkpoint, purified, in_layout)
    report = {
        "defense": args.purify_defense,
        "settings": dataclasses.asdict(method.config) if method.config is not None else {},
        "budget": {"fraction": budget.fraction, "batch_size": budget.batch_size, "lr": budget.lr, "profile": profile.name},
        "steps": result.meta.get("steps", {}),
        "seed": args.seed,
        "seconds": seconds,
        "source": str(args.encoder),
        "source_sha256": checkpoint.sha256,  # of the bytes that were loaded, not of whatever the path holds now
        "images": len(images),
        "layout": checkpoint.layout,
        "architecture": checkpoint.architecture,
        "geometry": geometry.as_dict(),
        "in_layout": str(in_layout or args.out),  # the purified weights under the input's names
        "kept_unchanged": len(checkpoint.kept),  # tensors of the input that are not the encoder's, written back as they were
        "meta": result.meta,  # per defense: MI and beta per stage (MIMIC), pruned channels, verdicts...
    }
    atomic_write_text(sidecar, json.dumps(report, indent=1, default=str) + "\n")
    also = f", {in_layout} (the input's {checkpoint.layout} layout)" if in_layout else ""
    print(f"written: {args.out}{also} and {sidecar} ({seconds:.1f} s)")
    return EXIT_CLEAN


def _evaluate(args: argparse.Namespace) -> int:
    """ACC and ASR of a user's encoder on a downstream task, with the profile's probe and splits (as the suites)."""
    import dataclasses

    from tabulate import tabulate

    from harness.api import evaluate_on, evaluation_bench
    from harness.profiles import get_profile, with_overrides
    from harness.compute import resolve_device
    from harness.trigger_files import load_trigger

    profile = with_overrides(get_profile(args.profile), args.overrides)
    if args.json is not None:
        trigger_files = [p for p in (Path(args.trigger), args.trigger_mask) if p is not None and p.is_file()]
        _output(args.json, args.force, inputs=(args.encoder, *trigger_files))
    device = resolve_device(args.device)
    checkpoint, encoder, geometry = _user_encoder(args)
    trigger = load_trigger(args.trigger, profile.trigger_size, args.trigger_mask)
    bench = evaluation_bench(profile, device, args.data_root, args.download)
    train, test = bench.downstream(args.task)
    probe = bench.probe_config()
    metrics = evaluate_on(bench, encoder, args.task, trigger, args.target, args.seed)
    described = trigger.describe()
    print(f"harness evaluate: {args.encoder} on {args.task} ({len(train)} train, {len(test)} test images; "
          f"{probe.kind} probe, {probe.epochs} epochs, profile {profile.name})")
    print(f"  encoder: {checkpoint.describe()}")
    print(f"  input: {geometry.describe()}")
    print(f"  trigger: {trigger.name} ({described['pixels']} pixels, box {described['box']}), target class {args.target} "
          f"({test.classes[args.target]})")
    rows = [[f"{metrics.acc:.2f}", f"{metrics.asr_all:.2f}", f"{metrics.asr_nontarget:.2f}", metrics.n_test, metrics.n_nontarget]]
    print(tabulate(rows, headers=["ACC %", "ASR(all) %", "ASR(non-target) %", "test images", "non-target"], tablefmt="simple",
                   disable_numparse=True))
    if args.json:
        from harness.atomic import atomic_write_text

        report = {"encoder": str(args.encoder), "source_sha256": checkpoint.sha256, "downstream": args.task,
                  "target": args.target, "trigger": described, "probe": dataclasses.asdict(probe), "profile": profile.name,
                  "seed": args.seed, "layout": checkpoint.layout, "architecture": checkpoint.architecture,
                  "geometry": geometry.as_dict(), **metrics.as_dict()}
        atomic_write_text(args.json, json.dumps(report, indent=1) + "\n")
    return EXIT_CLEAN


def _convert(args: argparse.Namespace) -> int:
    """Write an encoder file in another layout's tensor names: a file to try scan and purify on, or to use elsewhere."""
    from harness.layouts import load_checkpoint, save_in_layout

    _output(args.out, args.force, inputs=(args.encoder,))
    checkpoint = load_checkpoint(args.encoder, args.arch, args.key_prefix, args.key_map)
    assumed = save_in_layout(checkpoint.encoder, args.layout, args.out)
    print(f"written: {args.out} ({checkpoint.architecture} in the {args.layout} layout, the encoder only)")
    if assumed != checkpoint.geometry:
        g = checkpoint.geometry
        print(f"  it was trained for {g.describe()}; the {args.layout} layout assumes {assumed.describe()}: scan, purify and "
              f"evaluate it with --image-size {g.size} --mean {','.join(map(str, g.mean))} --std {','.join(map(str, g.std))}")
    return EXIT_CLEAN


def _export(args: argparse.Namespace) -> int:
    """Write images of a registered dataset as PNG files: a folder to try `scan` and `purify` on."""
    from PIL import Image

    from harness.atomic import atomic_write
    from harness.data import load_dataset

    if args.out.exists() and not args.out.is_dir():
        raise ValueError(f"{args.out}: is a file; --out names a folder")
    _writable_folder(args.out)
    data = load_dataset(args.dataset, args.split, args.data_root, False)
    if args.offset >= len(data):
        raise ValueError(f"--offset {args.offset} is past the {len(data)} images of {args.dataset} ({args.split})")
    indices = range(args.offset, min(args.offset + args.count, len(data)))
    targets = [args.out / f"{args.dataset}-{i:05d}.png" for i in indices]
    taken = [t for t in targets if t.exists()]
    if taken and not args.force:
        raise ValueError(f"{taken[0]}: exists ({len(taken)} of the {len(targets)} files to write do); pass --force to replace them")
    for i, target in zip(indices, targets):
        image = Image.fromarray(data.images[i].permute(1, 2, 0).numpy())
        atomic_write(target, lambda tmp, image=image: image.save(tmp, format="PNG"))
    print(f"written: {len(targets)} images of {args.dataset} ({args.split}) to {args.out}")
    return EXIT_CLEAN


def _output(path: Path, force: bool, inputs: tuple[Path, ...]) -> None:
    """Refuse, before any work, an output that is a folder, one of the command's inputs, or (without --force) a file
    that exists, or whose folder cannot be written."""
    if path.is_dir():
        raise ValueError(f"{path}: is a folder; name a file to write")
    for source in inputs:
        if _same_file(path, source):
            raise ValueError(f"{path}: is the command's input; write the output elsewhere")
    if path.exists() and not force:
        raise ValueError(f"{path}: exists; pass --force to replace it")
    _writable_folder(path.parent)


def _same_file(a: Path, b: Path) -> bool:
    try:
        return Path(os.path.realpath(a)) == Path(os.path.realpath(b)) or (a.exists() and b.exists() and os.path.samefile(a, b))
    except OSError:
        return False


def _writable_folder(folder: Path) -> None:
    """`folder` exists and can be written, or its nearest existing ancestor is a folder that can (it is made later)."""
    existing = Path(os.path.abspath(folder))
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(f"{existing}: is a file, so {folder} cannot be a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"{existing}: cannot be written")


def print_tables(rows: list, fmt: str) -> None:
    """The findings, then the titled tables (harness/report.py `summary_lines`)."""
    from harness.report import summary_lines

    print("\n".join(summary_lines(rows, fmt)))


def _merge(args: argparse.Namespace) -> int:
    """The shards' rows in one results directory, with every table and the report (harness/rows.py merge_folders)."""
    from harness.report import write_reports
    from harness.rows import ResultsStore, merge_folders

    if args.merge_out.exists() and not args.merge_out.is_dir():
        raise ValueError(f"{args.merge_out}: is a file; --out names a results folder")
    store = ResultsStore(args.merge_out)
    if store.path.exists() and not args.force:
        raise ValueError(f"{store.path}: exists; pass --force to replace it")
    if any(Path(os.path.realpath(d)) == Path(os.path.realpath(args.merge_out)) for d in args.merge_dirs):
        raise ValueError(f"{args.merge_out}: is one of the shards; write the merge elsewhere")
    rows, warnings = merge_folders(args.merge_dirs)
    for line in warnings:
        print(f"harness: warning: {line}", file=sys.stderr)
    store.path.unlink(missing_ok=True)
    for row in rows:
        store.append(row)
    print_tables(rows, "brief")
    paths = write_reports(rows, args.merge_out, list(args.merge_dirs))
    print(f"merged {len(rows)} rows from {len(args.merge_dirs)} folders into {args.merge_out} ({', '.join(p.name for p in paths.values())})")
    return EXIT_CLEAN


def _gate(args: argparse.Namespace) -> int:
    """Exit 1, one line per failure, when a defended row breaks a gate or regresses against the baseline."""
    from harness.gates import failures, load_baseline
    from harness.rows import ResultsStore

    rows = ResultsStore(args.rows_dir).rows()
    if not rows:
        raise ValueError(f"no rows in {args.rows_dir / 'rows.jsonl'}")
    if not args.gate and args.baseline is None:
        raise ValueError("give --gate BOUNDS, --baseline FILE, or both")
    found = failures(rows, args.gate, None if args.baseline is None else load_baseline(args.baseline), args.baseline_tolerance)
    for line in found:
        print(f"harness gate: {line}")
    checked = sum(r.defense != "none" and r.attack not in ("clean", "random") for r in rows)
    print(f"harness gate: {len(found)} failure(s) in {checked} defended rows of {args.rows_dir}")
    return 1 if found else EXIT_CLEAN


def _report(args: argparse.Namespace) -> int:
    """One self-contained HTML page of the rows of one or more results directories (harness/report.py)."""
    from harness.atomic import atomic_write_text
    from harness.report import html_report, power_notes
    from harness.rows import ResultsStore

    _output(args.report_out, args.force, inputs=tuple(d / "rows.jsonl" for d in args.report_dirs))
    rows = [row for folder in args.report_dirs for row in ResultsStore(folder).rows()]
    if not rows:
        raise ValueError(f"no rows in {', '.join(str(d / 'rows.jsonl') for d in args.report_dirs)}")
    atomic_write_text(args.report_out, html_report(rows, list(args.report_dirs), power_notes(rows)))
    print(f"written: {args.report_out} ({len(rows)} rows)")
    return EXIT_CLEAN


class _Parser(argparse.ArgumentParser):
    """A usage error is bad input like any other: one line, exit code 2."""

    def error(self, message: str):
        self.exit(EXIT_BAD_INPUT, f"harness: error: {message} (see {self.prog} --help)\n")


COMMANDS: dict[str, tuple[str, str]] = {  # name: (what it does, its description); each takes the options the table gives it
    "run": ("build and evaluate a slice of the effectiveness grid, print the table",
            "The options of `pytest suites/`, by the same names (the short forms without --harness- too), choosing the same grid: "
            "encoder attacks, every defense, the controls."),
    "list": ("list the registered attacks, defenses, profiles, or a profile's fields", ""),
    "table": ("rebuild the tables from a results directory's stored rows", ""),
    "export": ("write images of a dataset as PNG files (a folder for scan and purify)", ""),
    "convert": ("write an encoder file in a layout's tensor names (torchvision, badencoder, ...)", ""),
    "scan": ("look for a backdoor in your own encoder (label-free trigger inversion)", ""),
    "purify": ("run a defense on your own encoder and write the purified one", ""),
    "evaluate": ("ACC and ASR of your own encoder on a downstream task, for a trigger and target you know", ""),
    "report": ("one self-contained HTML page of one or more results directories: the finding first", ""),
    "merge": ("join the results directories of a grid's shards into one: rows, tables, report", ""),
    "gate": ("apply --gate and --baseline to a results directory's rows (after a merge); exit 1 on a failure", ""),
}


def build_parser() -> argparse.ArgumentParser:
    """`harness` and its commands, every option from the one table in harness/options.py."""
    from harness.options import add_to_argparse

    parser = _Parser(prog="harness", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true", help="print the traceback of an internal error")
    sub = parser.add_subparsers(dest="command", required=True)
    handlers = {"run": _run, "list": _list, "table": _table, "export": _export, "convert": _convert, "scan": _scan, "purify": _purify,
                "evaluate": _evaluate, "report": _report, "merge": _merge, "gate": _gate}
    for name, (helptext, description) in COMMANDS.items():
        cmd = sub.add_parser(name, help=helptext, description=description or helptext)
        add_to_argparse(cmd, name)
        # `--debug` after the command too; SUPPRESS keeps the main parser's value otherwise
        cmd.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="print the traceback of an internal error")
        cmd.set_defaults(func=handlers[name])
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run a command and return its exit code (see the module docstring); every failure ends in one line on stderr."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as stop:  # --help (0), or a usage error argparse has already printed in one line
        return stop.code if isinstance(stop.code, int) else EXIT_BAD_INPUT
    from harness.encoder_files import ArtifactError
    from harness.compute import device_failure
    from harness.data import DatasetNotFound
    from harness.registry import UnknownNameError
    from harness.training import progress_to

    try:
        with progress_to(sys.stderr):
            return args.func(args)
    except (UnknownNameError, DatasetNotFound, ArtifactError, ValueError) as e:
        if args.debug:
            traceback.print_exc()
        print(f"harness: error: {_first_line(e)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except Exception as e:  # noqa: BLE001 - the contract: anything else is the harness's fault, and says so
        if args.debug:
            traceback.print_exc()
        device = device_failure(e)
        if device is not None and "out of memory" in device:
            print(f"harness: error: {device}", file=sys.stderr)  # the GPU's limit, not a bug: lower a batch size
            return EXIT_BAD_INPUT
        print(f"harness: internal error: {device or f'{type(e).__name__}: {_first_line(e)}'} (rerun with --debug for the traceback)",
              file=sys.stderr)
        return EXIT_INTERNAL


def _first_line(error: BaseException) -> str:
    return next((line.strip() for line in str(error).splitlines() if line.strip()), type(error).__name__)


if __name__ == "__main__":
    sys.exit(main())
