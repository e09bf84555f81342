"""Throughput of a MIMIC distillation step against a plain SimCLR step, and MI localisation time.

    python benchmarks/bench_mimic.py [--width 16] [--batch 128] [--steps 10] [--device auto]

Both steps see the same model size and batch: SimCLR = student forward/backward on
two views; MIMIC = the same plus a teacher forward (no grad) and its three loss
terms. The floor of the ratio is about 1.3-1.5 (a forward is roughly a third of a
forward/backward); the target is <= 1.6.
"""

from __future__ import annotations

import argparse
import time

import torch

from defenses.mimic import MimicConfig, distillation_step, localise, stage_weights
from harness.models import Projector, build_encoder
from harness.ssl import SimCLRConfig, simclr_step
from harness.training import freeze, resolve_device, seed_everything


def timed(step, steps: int) -> float:
    step()  # warm-up
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--clean-images", type=int, default=200)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    device = resolve_device(args.device)
    gen = seed_everything(0, "benchmark")
    x = torch.rand(args.batch, 3, 32, 32, device=device)
    cfg = MimicConfig()

    student = build_encoder("resnet18", args.width).to(device).train()
    projector = Projector(student.feature_dim, cfg.proj_dim).to(device)
    optimizer = torch.optim.Adam(list(student.parameters()) + list(projector.parameters()), lr=1e-3)
    teacher = freeze(build_encoder("resnet18", args.width).to(device))
    betas = stage_weights({}, MimicConfig(mi_guidance=False))
    ssl_cfg = SimCLRConfig(epochs=1, augment=cfg.augment)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    def simclr():
        loss = simclr_step(student, projector, x, ssl_cfg, gen)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        sync()

    def distil():
        loss, _ = distillation_step(teacher, student, projector, x, betas, cfg, gen)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        sync()

    t_simclr, t_mimic = timed(simclr, args.steps), timed(distil, args.steps)
    print(f"device {device}, width {args.width}, batch {args.batch} (two views each), {args.steps} steps, {torch.get_num_threads()} threads")
    print(f"SimCLR step:            {args.batch / t_simclr:8.1f} img/s  ({t_simclr * 1000:.0f} ms)")
    print(f"MIMIC distillation step: {args.batch / t_mimic:8.1f} img/s  ({t_mimic * 1000:.0f} ms)")
    print(f"ratio MIMIC / SimCLR step time: {t_mimic / t_simclr:.2f}  (target <= 1.6)")

    images = torch.randint(0, 256, (args.clean_images, 3, 32, 32), dtype=torch.uint8)
    located = localise(teacher, teacher, images, cfg, device, gen)
    print(f"MI localisation on {args.clean_images} images x {cfg.mine_views} views, {cfg.mine.steps} MINE steps per stage:")
    for stage, seconds in located.seconds.items():
        mi = f", MI {located.mi[stage]:.3f} nats" if stage in located.mi else ""
        print(f"  {stage:8s} {seconds:6.2f} s{mi}")

if __name__ == "__main__":
    main()
