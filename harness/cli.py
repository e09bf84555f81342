"""`python -m harness` / `harness`: run a slice without pytest, rebuild tables, or check your own encoder.

    harness run --attack badencoder --downstream fmnist --profile tiny     (the options of `pytest suites/`)
    harness list attacks|defenses|detectors|profiles|fields
    harness table harness-results --format latex
    harness scan ENCODER --data IMAGES [--detector decree|ssl_cleanse] [--json REPORT.json]
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
    2  bad input: an unknown name, a bad option, an unreadable or refused file or image, missing data, an
       encoder whose forward pass is not finite, or an output that cannot be written or already exists
       (--force replaces it); one line on stderr
    3  a defense diverged (purify; nothing is written), or an internal error: one line on stderr; rerun with
       --debug for the traceback

Outputs are checked before any work starts (harness/outputs.py): nothing that exists is replaced without
--force, a command's own inputs never are, and neither is anything but a regular file. Paths in
messages are printed with control characters escaped.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from pathlib import Path
from typing import Callable

from harness.outputs import claim, writable_folder

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
    elif args.what == "detectors":
        from harness.scanning import DETECTORS

        for d in DETECTORS.values():
            print(f"{d.name:12} {d.title}, {d.rule}; by default {d.length_at(get_profile(args.profile))} {d.unit} "
                  f"(at profile {args.profile}'s budget)")
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

    rows = _rows_of([args.rows_dir])
    print_tables(rows, args.table_format)
    write_reports(rows, args.rows_dir)
    return 0


def _scan(args: argparse.Namespace) -> int:
    from harness.compute import resolve_device
    from harness.finite import check_input_encoder
    from harness.images import load_image_folder
    from harness.power import power_lines
    from harness.profiles import fields_digest, get_profile
    from harness.scanning import detector, scan_encoder

    chosen = detector(args.detector)
    length = chosen.length_at(get_profile(args.profile)) if args.steps is None else args.steps
    if args.json is not None:
        claim(args.json, args.force, inputs=_inputs(args))
    device = resolve_device(args.device)
    checkpoint, encoder, geometry = _user_encoder(args)
    images = load_image_folder(args.data)
    check_input_encoder(encoder, images, str(args.encoder))
    power = power_lines(chosen.name, args.profile, length, digest=fields_digest(get_profile(args.profile)), unit=chosen.unit)
    found = scan_encoder(encoder, images, chosen.name, length, args.seed, device)
    verdict = "BACKDOOR SUSPECTED in" if found.flagged else "the detector found no trigger in"
    print(f"harness scan: {verdict} {_shown(args.encoder)}" + ("" if found.flagged else " (this does not show that it is clean)"))
    print(f"  encoder: {checkpoint.describe()}")
    print(f"  input: {geometry.describe()}")
    print(f"  detector: {chosen.title} on {len(images)} clean images from {_shown(args.data)}, {length} {chosen.unit}")
    for line in (*found.lines, *power):
        print(f"  {line}")
    if args.json:
        report = {"encoder": str(args.encoder), "source_sha256": checkpoint.sha256, "detector": chosen.name,
                  "flagged": found.flagged, "statistic": found.statistic, "value": found.value, "rule": found.rule,
                  **found.record, "length": length, "length_unit": chosen.unit, "images": len(images),
                  "verdict": "suspected" if found.flagged else "no trigger found (not proof of a clean encoder)",
                  "layout": checkpoint.layout, "architecture": checkpoint.architecture, "geometry": geometry.as_dict(), "power": power}
        _write_json(args.json, report, args.force)
    return EXIT_SUSPECTED if found.flagged else EXIT_CLEAN


def _user_encoder(args: argparse.Namespace):
    """(Checkpoint, the encoder behind its input geometry, that geometry): the same for scan, purify and evaluate; the
    file is read once, so the checkpoint's sha256 is of the bytes that were loaded."""
    from harness.api import load_user_encoder

    return load_user_encoder(args.encoder, args.arch, args.key_prefix, args.key_map, args.image_size, args.mean, args.std)


def _purify(args: argparse.Namespace) -> int:
    import dataclasses
    import time

    from harness.api import purifier, purify_encoder
    from harness.compute import resolve_device, resolve_precision
    from harness.contract import Budget
    from harness.encoder_files import save_encoder
    from harness.finite import check_input_encoder
    from harness.geometry import unwrap
    from harness.images import load_image_folder
    from harness.layouts import layout_path, write_in_layout
    from harness.profiles import get_profile, with_overrides

    method = purifier(args.purify_defense)
    profile = with_overrides(get_profile(args.profile), args.overrides)
    if args.out.suffix != ".safetensors":
        raise ValueError(f"{args.out}: --out must name a .safetensors file (the purified encoder; its settings go beside it as "
                         f"{args.out.with_suffix('.json').name})")
    sidecar = args.out.with_suffix(".json")
    inputs = _inputs(args)
    for path in (args.out, sidecar):
        claim(path, args.force, inputs)
    device = resolve_device(args.device)
    checkpoint, encoder, geometry = _user_encoder(args)
    in_layout = layout_path(checkpoint, args.out)  # the purified weights under the input's names: known once it is read
    if in_layout is not None:
        claim(in_layout, args.force, inputs)
    images = load_image_folder(args.data)
    check_input_encoder(encoder, images, str(args.encoder))
    budget = Budget.of(profile, device, resolve_precision(args.precision, device))
    print(f"harness purify: {args.purify_defense} on {_shown(args.encoder)} with {len(images)} images from {_shown(args.data)}, "
          f"{budget.fraction:g} of its reference recipe (profile {profile.name}), device {device}", file=sys.stderr)
    print(f"  encoder: {checkpoint.describe()}\n  input: {geometry.describe()}", file=sys.stderr)
    start = time.perf_counter()
    result = purify_encoder(method, encoder, images, budget, args.seed)  # NonFiniteDefense when it diverged: nothing written
    seconds = time.perf_counter() - start
    purified = unwrap(result.encoder).cpu()
    # --out first: of two runs to one --out without --force, the second stops here, having written nothing
    save_encoder(args.out, purified, meta={"defense": args.purify_defense, "geometry": geometry.as_dict()}, exclusive=not args.force)
    if in_layout is not None:
        write_in_layout(checkpoint, purified, in_layout, exclusive=not args.force)
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
    _write_json(sidecar, report, args.force)
    also = f", {_shown(in_layout)} (the input's {checkpoint.layout} layout)" if in_layout else ""
    print(f"written: {_shown(args.out)}{also} and {_shown(sidecar)} ({seconds:.1f} s)")
    return EXIT_CLEAN


def _evaluate(args: argparse.Namespace) -> int:
    """ACC and ASR of a user's encoder on a downstream task, with the profile's probe and splits (as the suites)."""
    import dataclasses

    from tabulate import tabulate

    from harness.api import evaluate_on, evaluation_bench
    from harness.compute import resolve_device
    from harness.finite import check_input_encoder
    from harness.profiles import get_profile, with_overrides
    from harness.trigger_files import load_trigger

    profile = with_overrides(get_profile(args.profile), args.overrides)
    if args.json is not None:
        claim(args.json, args.force, inputs=_inputs(args))
    device = resolve_device(args.device)
    checkpoint, encoder, geometry = _user_encoder(args)
    trigger = load_trigger(args.trigger, profile.trigger_size, args.trigger_mask)
    bench = evaluation_bench(profile, device, args.data_root, args.download)
    train, test = bench.downstream(args.task)
    check_input_encoder(encoder, test.images, str(args.encoder))
    probe = bench.probe_config()
    metrics = evaluate_on(bench, encoder, args.task, trigger, args.target, args.seed)
    described = trigger.describe()
    print(f"harness evaluate: {_shown(args.encoder)} on {args.task} ({len(train)} train, {len(test)} test images; "
          f"{probe.kind} probe, {probe.epochs} epochs, profile {profile.name})")
    print(f"  encoder: {checkpoint.describe()}")
    print(f"  input: {geometry.describe()}")
    print(f"  trigger: {trigger.name} ({described['pixels']} pixels, box {described['box']}), target class {args.target} "
          f"({test.classes[args.target]})")
    rows = [[f"{metrics.acc:.2f}", f"{metrics.asr_all:.2f}", f"{metrics.asr_nontarget:.2f}", metrics.n_test, metrics.n_nontarget]]
    print(tabulate(rows, headers=["ACC %", "ASR(all) %", "ASR(non-target) %", "test images", "non-target"], tablefmt="simple",
                   disable_numparse=True))
    if args.json:
        report = {"encoder": str(args.encoder), "source_sha256": checkpoint.sha256, "downstream": args.task,
                  "target": args.target, "trigger": described, "probe": dataclasses.asdict(probe), "profile": profile.name,
                  "seed": args.seed, "layout": checkpoint.layout, "architecture": checkpoint.architecture,
                  "geometry": geometry.as_dict(), **metrics.as_dict()}
        _write_json(args.json, report, args.force)
    return EXIT_CLEAN


def _convert(args: argparse.Namespace) -> int:
    """Write an encoder file in another layout's tensor names: a file to try scan and purify on, or to use elsewhere."""
    from harness.layouts import load_checkpoint, save_in_layout

    claim(args.out, args.force, inputs=_inputs(args))
    checkpoint = load_checkpoint(args.encoder, args.arch, args.key_prefix, args.key_map)
    assumed = save_in_layout(checkpoint.encoder, args.layout, args.out, exclusive=not args.force)
    print(f"written: {_shown(args.out)} ({checkpoint.architecture} in the {args.layout} layout, the encoder only)")
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
    writable_folder(args.out)
    data = load_dataset(args.dataset, args.split, args.data_root, False)
    if args.offset >= len(data):
        raise ValueError(f"--offset {args.offset} is past the {len(data)} images of {args.dataset} ({args.split})")
    indices = range(args.offset, min(args.offset + args.count, len(data)))
    targets = [args.out / f"{args.dataset}-{i:05d}.png" for i in indices]
    taken = [t for t in targets if os.path.lexists(t)]
    if taken and not args.force:
        raise ValueError(f"{taken[0]}: exists ({len(taken)} of the {len(targets)} files to write do); pass --force to replace them")
    for target in taken:
        claim(target, args.force)  # a device, FIFO, folder or link among them is refused before anything is written
    for i, target in zip(indices, targets):
        image = Image.fromarray(data.images[i].permute(1, 2, 0).numpy())
        atomic_write(target, lambda tmp, image=image: image.save(tmp, format="PNG"), exclusive=not args.force)
    print(f"written: {len(targets)} images of {args.dataset} ({args.split}) to {_shown(args.out)}")
    return EXIT_CLEAN


def _inputs(args: argparse.Namespace) -> list[Path]:
    """What a command reads from the user's disk: its encoder, the images of its data folder, its trigger files."""
    from harness.images import image_files

    paths = [Path(args.encoder)]
    data = getattr(args, "data", None)
    if data is not None and Path(data).is_dir():
        paths += image_files(data)
    for name in ("trigger", "trigger_mask"):
        value = getattr(args, name, None)
        if value is not None and Path(value).suffix:  # a file, not a registered trigger's name
            paths.append(Path(value))
    return paths


def _rows_of(folders: "list[Path]", mixed_code: str = "latest") -> list:
    """The rows of results folders, of one code version: rows of other code never share a table. A folder that outlived
    an update of the harness holds several; with `mixed_code="latest"` its rows of the version it last wrote are kept
    and a warning says how many were left out, with "refuse" (a gate, which must not skip a row) it is bad input.
    Folders whose latest versions differ are not one table. Also a warning per folder with lines that are no row of
    this version (copied to its misfits.jsonl), or, when there is no row at all, one error line that says why."""
    from collections import Counter

    from harness.rows import ResultsStore

    warnings: list[str] = []
    def code_of(row) -> str:
        return row.settings.code or "(none)"

    read = {Path(folder): ResultsStore(folder).rows_kept(warnings.append) for folder in folders}
    rows = [row for kept in read.values() for row in kept]
    if not rows:
        raise ValueError(f"no rows in {', '.join(str(Path(d) / 'rows.jsonl') for d in folders)}" + "".join(f"; {w}" for w in warnings))
    latest = {folder: code_of(kept[-1]) for folder, kept in read.items() if kept}
    if len(set(latest.values())) > 1:
        (a, ca), (b, cb) = list(latest.items())[:2]
        raise ValueError(f"{_shown(a)} was last written by code {ca}, {_shown(b)} by code {cb}: rows of other code are not one table")
    code = next(iter(latest.values()))
    others = Counter(code_of(r) for r in rows if code_of(r) != code)
    if others:
        what = f"{sum(others.values())} rows of other code versions ({', '.join(f'{c}: {n}' for c, n in others.items())})"
        if mixed_code == "refuse":
            raise ValueError(f"{what} beside the {len(rows) - sum(others.values())} of code {code}: gate the rows of one run "
                             "(a fresh --harness-results-dir)")
        warnings.append(f"{what} left out; the table holds the {len(rows) - sum(others.values())} rows of code {code}, the "
                        "latest written")
    for line in warnings:
        _warn(line)
    return [r for r in rows if code_of(r) == code]


def _write_json(path: Path, report: dict, force: bool) -> None:
    """A report as strict JSON (harness/strict_json.py), published exclusively unless --force."""
    from harness import strict_json
    from harness.atomic import atomic_write_text

    atomic_write_text(path, strict_json.dumps(report, indent=1) + "\n", exclusive=not force)


def print_tables(rows: list, fmt: str) -> None:
    """The findings, then the titled tables (harness/report.py `summary_lines`)."""
    from harness.report import summary_lines

    print("\n".join(summary_lines(rows, fmt)))


def _merge(args: argparse.Namespace) -> int:
    """The shards' rows in one results directory, with every table and the report (harness/rows.py merge_folders)."""
    from harness.atomic import atomic_write
    from harness.report import write_reports
    from harness.rows import ResultsStore, merge_folders

    if args.merge_out.exists() and not args.merge_out.is_dir():
        raise ValueError(f"{args.merge_out}: is a file; --out names a results folder")
    if any(Path(os.path.realpath(d)) == Path(os.path.realpath(args.merge_out)) for d in args.merge_dirs):
        raise ValueError(f"{args.merge_out}: is one of the shards; write the merge elsewhere")
    store = ResultsStore(args.merge_out)
    claim(store.path, args.force, inputs=[d / "rows.jsonl" for d in args.merge_dirs])
    rows, warnings = merge_folders(args.merge_dirs)
    for line in warnings:
        _warn(line)
    atomic_write(store.path, lambda tmp: tmp.write_text("".join(row.to_json() + "\n" for row in rows), encoding="utf-8"),
                 exclusive=not args.force)
    print_tables(rows, "brief")
    paths = write_reports(rows, args.merge_out, list(args.merge_dirs))
    print(f"merged {len(rows)} rows from {len(args.merge_dirs)} folders into {_shown(args.merge_out)} ({', '.join(p.name for p in paths.values())})")
    return EXIT_CLEAN


def _gate(args: argparse.Namespace) -> int:
    """Exit 1, one line per failure, when a defended row breaks a gate or regresses against the baseline."""
    from harness.gates import failures, gated, load_baseline

    rows = _rows_of([args.rows_dir], mixed_code="refuse")
    if not args.gate and args.baseline is None:
        raise ValueError("give --gate BOUNDS, --baseline FILE, or both")
    found = failures(rows, args.gate, None if args.baseline is None else load_baseline(args.baseline), args.baseline_tolerance)
    for line in found:
        print(f"harness gate: {line}")
    checked = len(gated(rows))
    skipped = sum(r.defense != "none" and r.implanted is False for r in rows)
    print(f"harness gate: {len(found)} failure(s) in {checked} defended rows of {_shown(args.rows_dir)}"
          + (f"; {skipped} row(s) of suspects that did not implant not gated" if skipped else ""))
    return 1 if found else EXIT_CLEAN


def _report(args: argparse.Namespace) -> int:
    """One self-contained HTML page of the rows of one or more results directories (harness/report.py)."""
    from harness.atomic import atomic_write_text
    from harness.report import html_report, power_notes

    claim(args.report_out, args.force, inputs=[d / "rows.jsonl" for d in args.report_dirs])
    rows = _rows_of(args.report_dirs)
    atomic_write_text(args.report_out, html_report(rows, list(args.report_dirs), power_notes(rows)), exclusive=not args.force)
    print(f"written: {_shown(args.report_out)} ({len(rows)} rows)")
    return EXIT_CLEAN


class _Parser(argparse.ArgumentParser):
    """A usage error is bad input like any other: one line, exit code 2."""

    def error(self, message: str):
        self.exit(EXIT_BAD_INPUT, f"harness: error: {message} (see {self.prog} --help)\n")


COMMANDS: dict[str, tuple[str, str]] = {  # name: (what it does, its description); each takes the options the table gives it
    "run": ("build and evaluate a slice of the effectiveness grid, print the table",
            "The options of `pytest suites/`, by the same names (the short forms without --harness- too), choosing the same grid: "
            "encoder attacks, every defense, the controls."),
    "list": ("list the registered attacks, defenses, scan detectors, profiles, or a profile's fields", ""),
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
    return guarded("harness", lambda: args.func(args), args.debug)


def guarded(prog: str, work: Callable[[], int], debug: bool = False) -> int:
    """`work()` under the exit-code contract of the module docstring: the harness's progress on stderr, and every
    failure one line `PROG: error: ...` (the traceback first with `debug`). The repository's scripts keep it too."""
    from harness.compute import device_failure
    from harness.data import DatasetNotFound
    from harness.encoder_files import ArtifactError
    from harness.finite import NonFiniteDefense
    from harness.registry import UnknownNameError
    from harness.training import progress_to

    def failed(code: int, line: str) -> int:
        if debug:
            traceback.print_exc()
        print(line, file=sys.stderr)
        return code

    try:
        with progress_to(sys.stderr):
            return work()
    except (UnknownNameError, DatasetNotFound, ArtifactError, ValueError) as e:
        return failed(EXIT_BAD_INPUT, f"{prog}: error: {_one_line(str(e)) or type(e).__name__}")
    except OSError as e:  # the user's disk: a folder where a file goes, no permission, no space, a file taken meanwhile
        where = f"{_shown(e.filename)}: " if e.filename is not None else ""
        return failed(EXIT_BAD_INPUT, f"{prog}: error: {where}{_one_line(e.strerror or str(e))}")
    except NonFiniteDefense as e:  # the defense failed, not the harness: no traceback to ask for
        return failed(EXIT_INTERNAL, f"{prog}: error: {_one_line(str(e))}")
    except Exception as e:  # noqa: BLE001 - the contract: anything else is the harness's fault, and says so
        device = device_failure(e)
        if device is not None and "out of memory" in device:  # the GPU's limit, not a bug: lower a batch size
            return failed(EXIT_BAD_INPUT, f"{prog}: error: {_one_line(device)}")
        first = next((line.strip() for line in str(e).splitlines() if line.strip()), "")
        what = device or f"{type(e).__name__}: {first}"
        return failed(EXIT_INTERNAL, f"{prog}: internal error: {_one_line(what)} (rerun with --debug for the traceback)")


def _one_line(text: str) -> str:
    """`text` on one line: every control character (a path's newline, a file name's terminal escape sequence) written
    as Python writes it in a string literal, so a message is never cut and never drives the terminal."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text.strip())


def _shown(path: "Path | str") -> str:
    return _one_line(str(path))


def _warn(line: str) -> None:
    print(f"harness: warning: {_one_line(line)}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
