"""`python -m harness` / `harness`: run a slice without pytest, or rebuild tables from stored rows.

    harness run --attack badencoder --downstream fmnist --profile tiny
    harness table harness-results --format latex
"""

from __future__ import annotations

import argparse
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


def print_tables(rows: list, fmt: str) -> None:
    """The Table-I comparison (when there is more than one defense column), then the long table."""
    from harness.results import comparison_table, long_table, render, to_frame

    frame = to_frame(rows)
    comparison = comparison_table(frame)
    if len(comparison.columns) > 3:
        print(render(comparison, fmt) + "\n")
    print(render(long_table(frame), fmt))


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
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from harness.data import DatasetNotFound
    from harness.registry import UnknownNameError

    try:
        return args.func(args)
    except (UnknownNameError, DatasetNotFound) as e:
        print(f"harness: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
