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
    1  scan: backdoor suspected
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
    from harness.rows import ResultsStore
    from harness.tables import write_reports

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
    from harness.rows import ResultsStore
    from harness.tables import write_reports

    rows = ResultsStore(args.results_dir).rows()
    if not rows:
        print(f"harness: no rows in {args.results_dir / 'rows.jsonl'}", file=sys.stderr)
        return 2
    print_tables(rows, args.format)
    write_reports(rows, args.results_dir)
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
    from harness.contract import Budget
    from harness.atomic import atomic_write_text
    from harness.encoder_files import save_encoder
    from harness.images import load_image_folder
    from harness.geometry import unwrap
    from harness.layouts import layout_path, write_in_layout
    from harness.profiles import get_profile, with_overrides
    from harness.registry import DEFENSES
    from harness.compute import resolve_device

    method = DEFENSES.create(args.defense)
    profile = with_overrides(get_profile(args.profile), args.set)
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
    if args.defense == "fp" and "bottleneck" in checkpoint.architecture:  # defenses/fp.py prunes a basic block's conv2
        raise ValueError(f"fine-pruning (fp) handles basic blocks only; {checkpoint.architecture} has bottlenecks: choose another --defense")
    images = load_image_folder(args.data)
    budget = Budget.of(profile, device)
    print(f"harness purify: {args.defense} on {args.encoder} with {len(images)} images from {args.data}, "
          f"{budget.fraction:g} of its reference recipe (profile {profile.name}), device {device}", file=sys.stderr)
    print(f"  encoder: {checkpoint.describe()}\n  input: {geometry.describe()}", file=sys.stderr)
    start = time.perf_counter()
    result = purify_encoder(method, encoder, images, budget, args.seed)
    seconds = time.perf_counter() - start
    purified = unwrap(result.encoder).cpu()
    save_encoder(args.out, purified, meta={"defense": args.defense, "geometry": geometry.as_dict()})
    if in_layout is not None:
        write_in_layout(checkpoint, purified, in_layout)
    report = {
        "defense": args.defense,
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

    profile = with_overrides(get_profile(args.profile), args.set)
    if args.json is not None:
        trigger_files = [p for p in (Path(args.trigger), args.trigger_mask) if p is not None and p.is_file()]
        _output(args.json, args.force, inputs=(args.encoder, *trigger_files))
    device = resolve_device(args.device)
    checkpoint, encoder, geometry = _user_encoder(args)
    trigger = load_trigger(args.trigger, profile.trigger_size, args.trigger_mask)
    bench = evaluation_bench(profile, device, args.data_root, args.download)
    train, test = bench.downstream(args.downstream)
    probe = bench.probe_config()
    metrics = evaluate_on(bench, encoder, args.downstream, trigger, args.target, args.seed)
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
        from harness.atomic import atomic_write_text

        report = {"encoder": str(args.encoder), "source_sha256": checkpoint.sha256, "downstream": args.downstream,
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


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 1")
    return value


def _three_floats(text: str) -> tuple[float, float, float]:
    """An argparse type: 'R,G,B' as three finite floats (the suites' parser)."""
    from harness.options import three_numbers

    try:
        return three_numbers(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _non_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 0")
    return value


def print_tables(rows: list, fmt: str) -> None:
    """The session's titled tables (harness/tables.py `report_sections`)."""
    from harness.tables import render, report_sections

    for title, table in report_sections(rows):
        print(f"== {title}\n{render(table, fmt)}\n")


class _Parser(argparse.ArgumentParser):
    """A usage error is bad input like any other: one line, exit code 2."""

    def error(self, message: str):
        self.exit(EXIT_BAD_INPUT, f"harness: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from harness.options import RUN_OPTIONS, TABLE_FORMATS, add_to_argparse

    parser = _Parser(prog="harness", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true", help="print the traceback of an internal error")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="build and evaluate a slice of the effectiveness grid, print the table",
                         description="The options of `pytest suites/`, by the same names (the short forms without "
                                     "--harness- too), choosing the same grid: encoder attacks, every defense, the controls.")
    add_to_argparse(run, RUN_OPTIONS)
    run.add_argument("--format", dest="harness_table_format", choices=TABLE_FORMATS, help="the same as --table-format")
    run.set_defaults(func=_run)
    listing = sub.add_parser("list", help="list the registered attacks, defenses, profiles, or a profile's fields")
    listing.add_argument("what", choices=("attacks", "defenses", "profiles", "fields"))
    listing.add_argument("--profile", "--harness-profile", default="tiny", help="whose field values `fields` shows (default: tiny)")
    listing.set_defaults(func=_list)
    table = sub.add_parser("table", help="rebuild the tables from a results directory's stored rows")
    table.add_argument("results_dir", type=Path)
    table.add_argument("--format", choices=("terminal", "markdown", "latex", "csv", "json"), default="terminal")
    table.set_defaults(func=_table)
    export = sub.add_parser("export", help="write images of a dataset as PNG files (a folder for scan and purify)")
    export.add_argument("--dataset", default="fmnist")
    export.add_argument("--split", default="test", choices=("train", "test"))
    export.add_argument("--count", type=_positive, default=200)
    export.add_argument("--offset", type=_non_negative, default=0)
    export.add_argument("--data-root", type=Path, default=None)
    export.add_argument("--out", type=Path, required=True)
    export.add_argument("--force", action="store_true", help="replace images of the same names in --out")
    export.set_defaults(func=_export)
    convert = sub.add_parser("convert", help="write an encoder file in a layout's tensor names (torchvision, badencoder, ...)")
    convert.add_argument("encoder", type=Path)
    convert.add_argument("--layout", required=True, choices=("harness", "torchvision", "badencoder", "moco", "solo-learn"))
    convert.add_argument("--out", type=Path, required=True, help=".pt/.pth (a torch state dict) or .safetensors")
    convert.add_argument("--arch", default=None, help="as for scan")
    convert.add_argument("--key-prefix", default="", help="as for scan")
    convert.add_argument("--key-map", action="append", default=[], metavar="REGEX=REPLACEMENT", help="as for scan")
    convert.add_argument("--force", action="store_true", help="replace --out if it exists (never the input)")
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
        cmd.add_argument("--image-size", type=_positive, default=None,
                         help="side of the encoder's input (default: its layout's, e.g. 224 for ImageNet stems)")
        cmd.add_argument("--mean", type=_three_floats, default=None, metavar="R,G,B", help="input normalisation mean (default: the layout's)")
        cmd.add_argument("--std", type=_three_floats, default=None, metavar="R,G,B", help="input normalisation std (default: the layout's)")
        if name != "evaluate":
            cmd.add_argument("--data", type=Path, required=True, help="folder of unlabeled clean images (flat, or one sub-folder per class)")
        cmd.add_argument("--device", default="auto")
        cmd.add_argument("--seed", type=int, default=0)
        cmd.add_argument("--force", action="store_true", help="replace output files that exist (never the input)")
        if name == "scan":
            cmd.add_argument("--steps", type=_positive, default=400, help="trigger-inversion steps (default: 400)")
            cmd.add_argument("--profile", default="tiny", help="whose measured detection rates to print (default: tiny)")
            cmd.add_argument("--json", type=Path, default=None, help="also write the verdict and its evidence as JSON")
            cmd.set_defaults(func=_scan)
        elif name == "evaluate":
            cmd.add_argument("--downstream", required=True, help="registered downstream dataset, e.g. fmnist, digits, gtsrb")
            cmd.add_argument("--trigger", required=True, metavar="NAME|FILE", help="registered trigger, image (RGBA, or with --trigger-mask) or .safetensors")
            cmd.add_argument("--trigger-mask", type=Path, default=None, help="grayscale mask image for an opaque trigger image")
            cmd.add_argument("--target", type=_non_negative, required=True, help="the backdoor's target class")
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
    for cmd in sub.choices.values():  # `--debug` after the command too; SUPPRESS keeps the main parser's value otherwise
        cmd.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="print the traceback of an internal error")
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
