"""Is MIMIC's MI ranking of the stages stable across seeds? Estimates MI per stage on a suspect encoder.

    python benchmarks/mi_ranking.py --attack badencoder --downstream fmnist --seeds 3 [--profile tiny] [--cache-dir DIR]

The suspect comes from the artifact cache (built if missing). For each MINE seed the
script prints MI per stage and the ranking; at the end, whether all rankings agree.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from defenses.mimic import MimicConfig, localise
from harness.store import ArtifactStore
from harness.pipeline import Workbench
from harness.profiles import get_profile, with_overrides
from harness.compute import resolve_device
from harness.training import freeze, seed_everything


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--attack", default="badencoder")
    parser.add_argument("--downstream", default="fmnist")
    parser.add_argument("--profile", default="tiny")
    parser.add_argument("--set", action="append", default=[])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--pool-grid", type=int, default=MimicConfig().pool_grid)
    parser.add_argument("--cache-dir", type=Path, default=Path(".harness-cache"))
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    device = resolve_device(args.device)
    bench = Workbench(with_overrides(get_profile(args.profile), args.set), ArtifactStore(args.cache_dir), device)
    teacher = freeze(bench.suspect(args.attack, args.downstream, 0).built.encoder.to(device))
    clean = bench.clean_subset()
    cfg = MimicConfig(pool_grid=args.pool_grid)
    rankings = []
    for seed in range(args.seeds):
        located = localise(teacher, teacher, clean.images, cfg, device, seed_everything(seed, "mi-ranking"))
        ranking = sorted(located.mi, key=located.mi.get, reverse=True)
        rankings.append(ranking)
        shown = ", ".join(f"{s} {located.mi[s]:.3f}" for s in located.mi)
        print(f"seed {seed}: MI (nats) {shown}; ranking {' > '.join(ranking)}; {sum(located.seconds.values()):.1f} s")
    print(f"{len(clean)} clean images, pool grid {args.pool_grid}: rankings {'agree' if all(r == rankings[0] for r in rankings) else 'DIFFER'} across {args.seeds} seeds")


if __name__ == "__main__":
    main()
