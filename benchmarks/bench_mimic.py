"""Throughput of MIMIC's distillation step against a plain SimCLR step, MINE's steps, the probe, and the paper's recipe.

    .venv/bin/python benchmarks/bench_mimic.py [--width 64] [--batch 128] [--steps 20] [--device auto]
                                              [--precision fp32,bf16] [--recipe-fraction 0.1]

Both steps see the same model and batch: SimCLR = an encoder forward/backward on
two views of each image; MIMIC = the same plus a teacher forward (no gradient)
and its three loss terms. Images per second count source images (each seen as
two views). The floor of the ratio is about 1.3-1.5 (a forward is roughly a
third of a forward/backward). Each precision runs the same steps (bf16: autocast
of the forwards, harness/compute.py).

MINE: steps per second of one stage's statistics network at MIMIC's sizes
(fp32 always). Probe: seconds to train the `gpu` profile's probe (the paper's
MLP, 200 epochs at batch 256) on 10,000 random 512-d features.

`--recipe-fraction F` also runs the registered `mimic` defense end to end on
2,000 images (the paper's defender) at budget fraction F of its reference
recipe (1,000 distillation epochs, 3,200 MINE steps per stage) and prints its
localisation and distillation seconds, and the full recipe's time they imply.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # a checkout runs as it is, installed or not

import torch  # noqa: E402

from defenses.mimic import MimicConfig, distillation_step, mimic, stage_weights  # noqa: E402
from harness.compute import describe, prepare, resolve_device, resolve_precision  # noqa: E402
from harness.contract import Budget, CleanSubset  # noqa: E402
from harness.evaluate import ProbeConfig, train_probe  # noqa: E402
from harness.mine import MineConfig, estimate_mi  # noqa: E402
from harness.models import Projector, build_encoder  # noqa: E402
from harness.ssl import SimCLRConfig, simclr_step  # noqa: E402
from harness.training import descend, freeze, seed_everything  # noqa: E402


def timed(step, steps: int, sync) -> float:
    """Seconds per call of `step`, after two warm-up calls (cuDNN autotuning, allocator)."""
    step(), step()
    sync()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="fp32,bf16", help="comma list of fp32, bf16 (default: both)")
    parser.add_argument("--recipe-fraction", type=float, default=0.0, help="run the mimic defense at this budget fraction (0: skip)")
    parser.add_argument("--recipe-precision", default="fp32", choices=("fp32", "bf16"), help="of that run (default: fp32)")
    args = parser.parse_args()
    device = resolve_device(args.device)
    prepare(device)
    gen = seed_everything(0, "benchmark")
    x = torch.rand(args.batch, 3, 32, 32, device=device)
    cfg = MimicConfig()
    betas = stage_weights({}, MimicConfig(mi_guidance=False))

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    print(f"device {describe(device, 'fp32')}, torch {torch.__version__}, width {args.width}, batch {args.batch} (two views each), "
          f"{args.steps} steps, {torch.get_num_threads()} CPU threads")
    for precision in args.precision.split(","):
        precision = resolve_precision(precision, device)
        student = build_encoder("resnet18", args.width).to(device).train()
        projector = Projector(student.feature_dim, cfg.proj_dim).to(device)
        optimizer = torch.optim.Adam([*student.parameters(), *projector.parameters()], lr=1e-3)
        teacher = freeze(build_encoder("resnet18", args.width).to(device))
        ssl_cfg = SimCLRConfig(epochs=1, augment=cfg.augment, precision=precision)

        def simclr() -> None:
            descend(optimizer, simclr_step(student, projector, x, ssl_cfg, gen))

        def distil() -> None:
            descend(optimizer, distillation_step(teacher, student, projector, x, betas, cfg, gen, precision)[0])

        t_simclr, t_mimic = timed(simclr, args.steps, sync), timed(distil, args.steps, sync)
        print(f"{precision}: SimCLR step {args.batch / t_simclr:8.0f} img/s ({t_simclr * 1000:.1f} ms); "
              f"MIMIC distillation step {args.batch / t_mimic:8.0f} img/s ({t_mimic * 1000:.1f} ms); "
              f"ratio {t_mimic / t_simclr:.2f}", flush=True)

    pooled = cfg.pool_grid**2 * args.width * 8  # layer4's pooled map, MIMIC's largest statistics-network input
    n = 1500 * cfg.mine_views
    xs, zs = torch.randn(n, pooled, device=device), torch.randn(n, args.width * 8, device=device)
    mine_steps = 200
    sync()
    start = time.perf_counter()
    estimate_mi(xs, zs, xs[:500], zs[:500], MineConfig(steps=mine_steps), gen)
    sync()
    print(f"MINE (fp32): {mine_steps / (time.perf_counter() - start):.0f} steps/s at batch {MineConfig().batch_size}", flush=True)

    features, labels = torch.randn(10_000, args.width * 8), torch.randint(0, 10, (10_000,))
    probe = ProbeConfig(kind="mlp", epochs=200, batch_size=256, lr=1e-3)
    sync()
    start = time.perf_counter()
    train_probe(features, labels, 10, probe, 0, device)
    sync()
    print(f"probe (fp32, {probe.kind}, {probe.epochs} epochs at batch {probe.batch_size}, 10,000 features): "
          f"{time.perf_counter() - start:.1f} s", flush=True)

    if args.recipe_fraction > 0:
        precision = resolve_precision(args.recipe_precision, device)
        images = torch.randint(0, 256, (2000, 3, 32, 32), dtype=torch.uint8)
        suspect = build_encoder("resnet18", args.width)
        budget = Budget(fraction=args.recipe_fraction, batch_size=128, lr=1e-3, device=device, precision=precision)
        start = time.perf_counter()
        result = mimic(suspect, CleanSubset(images), budget, 0, cfg)
        sync()
        total = time.perf_counter() - start
        steps, meta = result.meta["steps"], result.meta
        full = meta["localisation_seconds"] * cfg.mine_steps / max(1, steps["mine_steps_per_stage"]) \
            + meta["distillation_seconds"] * cfg.epochs / steps["distillation_epochs"]
        print(f"MIMIC, {args.recipe_fraction:g} of the paper's recipe ({steps['distillation_epochs']} epochs over 2,000 images, "
              f"{steps['mine_steps_per_stage']} MINE steps a stage; {describe(device, precision)}): localisation "
              f"{meta['localisation_seconds']:.1f} s, distillation {meta['distillation_seconds']:.1f} s, {total:.1f} s in all; "
              f"the full recipe at these rates: {full:.0f} s", flush=True)


if __name__ == "__main__":
    main()
