"""The headline finding against the authors' own code: MIMIC's official implementation on the harness's suspect.

    python benchmarks/official_crosscheck.py --official PATH [--profile tiny --set width=64 --attack badencoder
        --scenario patch --downstream fmnist --seed 0 --recipe tiny|full|EPOCHS,MI_EPOCHS --device auto --any-commit
        --json OUT --force --debug]

PATH is a checkout of github.com/wssun/MIMIC (the commit below; another is refused
unless --any-commit). The script builds (or reads from the cache) the harness's
suspect and the defender's clean subset, writes them in the official formats in a
temporary folder (the suspect as BadEncoder's `f.f.*` state dict with a projection
head `g.*` of the official shape, randomly initialised: only `f` enters their
losses; the images as `data/cifar10/train.npz`), runs their `MIMIC.py` in a
subprocess through a small launcher that patches their objects in memory (their
files are never edited, copied or vendored), reads their student back, probes it
with the harness's probe, and prints side by side: the clean encoder and the
undefended suspect (the controls), the harness's MIMIC at the same recipe, the
official MIMIC.

What the launcher changes, each said in the output when it fired:
- inputs unnormalised: their transforms normalise with CIFAR-10's statistics, the
  harness's encoders take [0, 1] images;
- one hook per forward: their `get_feas_by_hook` registers a forward hook on every
  call and never removes it, so thousands keep firing through distillation; here
  each hook removes itself after its one forward (it changes no value);
- uniform betas where every MI estimate is 0: their MI is estimated on the random
  student and clipped at 0, and their weight update then divides 0 by 0 (NaN);
- the device: `.cuda(...)` calls and `map_location='cuda:0'` go to the run's device;
- no DataLoader workers (theirs re-spawn five for each of thousands of passes), no
  `setproctitle` (not a dependency here), and their tqdm bars as one line each (its
  last description: an epoch's loss), streamed to stderr as the run goes;
- the last epoch's student is saved (theirs only at multiples of 1,000 epochs).

Recipes: `tiny` is the profile's budget (the reference's 1,000 epochs and 200 MI
epochs scaled by `budget_fraction`, rounded up), `full` the reference itself,
`E,M` E epochs and M MI epochs. The harness's MIMIC runs the same epochs, batch and
learning rate, with MINE steps for M epochs over the clean set.

Exit codes as the CLI's: 0 done, 2 bad input (one line), 3 internal error. An existing
--json file is refused before any work unless --force; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # a checkout runs as it is, installed or not

OFFICIAL_COMMIT = "36ef47c2915f37a797006ba66ba5197be28517b5"  # wssun/MIMIC, MIMIC.py as the paper's authors released it
REFERENCE_EPOCHS, REFERENCE_MI_EPOCHS = 1000, 200  # their README's distillation epochs; their scheduler's MI epochs
OFFICIAL_FILES = ("MIMIC.py", "models/__init__.py", "models/scheduler.py", "models/hook.py", "datasets/cifar10_dataset.py")

# The launcher: run in the official checkout's place, with their modules patched in memory before their main runs.
LAUNCHER = r'''
import importlib.machinery, json, math, runpy, sys, types
import numpy as np
import torch


def stand_in(name, **attributes):
    """A module of `name` holding `attributes`, for a package the official code imports and this run does without."""
    module = types.ModuleType(name)
    module.__spec__ = importlib.machinery.ModuleSpec(name, None)
    module.__dict__.update(attributes)
    return module


settings = json.loads(sys.argv[1])
official, device = settings["official"], torch.device(settings["device"])
sys.path.insert(0, official)
fired = []

sys.modules["setproctitle"] = stand_in("setproctitle", setproctitle=lambda title: None)


class Bar:
    """Their progress bars as one line each, printed when the bar ends: its last description (an epoch's loss)."""
    def __init__(self, iterable, *args, **kwargs):
        self.iterable, self.description = iterable, None
    def __iter__(self):
        yield from self.iterable
        if self.description:
            print(self.description, flush=True)
    def set_description(self, text):
        self.description = text


sys.modules["tqdm"] = stand_in("tqdm", tqdm=Bar)
fired.append("progress bars: one line each, their last description")

if device.type == "cpu":
    torch.nn.Module.cuda = lambda self, device=None: self.to("cpu")
    torch.Tensor.cuda = lambda self, device=None, non_blocking=False, **kw: self.to("cpu")
    fired.append("device: .cuda() on the CPU")
_load = torch.load
torch.load = lambda f, map_location=None, **kw: _load(f, map_location=device, weights_only=True)

import torch.utils.data as data
_DataLoader = data.DataLoader
class DataLoader(_DataLoader):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **{**kwargs, "num_workers": 0, "pin_memory": False})
data.DataLoader = DataLoader

import datasets.cifar10_dataset as cifar
from torchvision import transforms
for pipeline in (cifar.train_transform, cifar.test_transform_cifar10):
    kept = [t for t in pipeline.transforms if not isinstance(t, transforms.Normalize)]
    if len(kept) < len(pipeline.transforms):
        pipeline.transforms = kept
        if "inputs unnormalised (their CIFAR-10 statistics removed)" not in fired:
            fired.append("inputs unnormalised (their CIFAR-10 statistics removed)")

import models, models.hook, models.scheduler
Hook = models.hook.HookTool

def one_shot_hooks(model, layer_names=None):
    layer_names = layer_names or ["f.f.3", "f.f.4", "f.f.5", "f.f.6"]
    hooks = {}
    for name, module in model.named_modules():
        if name in layer_names:
            hook = Hook()
            def record(module, inputs, output, hook=hook):
                hook.hook_fun(module, inputs, output)
                hook.handle.remove()
            hook.handle = module.register_forward_hook(record)
            hooks[name] = hook
    return hooks

models.hook.get_feas_by_hook = models.scheduler.get_feas_by_hook = one_shot_hooks
fired.append("hooks removed after their one forward")

report = {}
class Scheduler(models.scheduler.weight_scheduler):
    def __init__(self, base_opt, momentum_opt, EPOCHS=100):
        super().__init__(base_opt, momentum_opt, settings["mi_epochs"])
    def estimate_mi(self, *args, **kwargs):
        report["mi"] = {k: float(v) for k, v in super().estimate_mi(*args, **kwargs).items()}
        return report["mi"]
    def update_weight(self, mi):
        values = np.array(list(mi.values()), dtype=float)
        if not values.sum() > 0:
            fired.append("uniform betas: all MI estimates were 0")
            betas = np.array(self.base_opt, dtype=float) + self.momentum_opt / len(values)
        else:
            betas = super().update_weight(mi)
        report["betas"] = [float(b) for b in betas]
        return betas
models.weight_scheduler = Scheduler

sys.argv = ["MIMIC.py", *settings["argv"]]
run = runpy.run_path(f"{official}/MIMIC.py", run_name="__main__")
torch.save({"state_dict": run["student"].state_dict()}, settings["student"])
fired.append("the last epoch's student saved")
with open(settings["report"], "w") as f:
    json.dump({**report, "patches": fired}, f)
'''


def commit_of(path: Path) -> str | None:
    done = subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True, text=True)
    return done.stdout.strip() if done.returncode == 0 else None


def recipe_of(text: str, fraction: float) -> tuple[int, int]:
    """(distillation epochs, MI epochs) of a recipe name or `E,M`."""
    if text == "tiny":
        return math.ceil(fraction * REFERENCE_EPOCHS - 1e-9), math.ceil(fraction * REFERENCE_MI_EPOCHS - 1e-9)
    if text == "full":
        return REFERENCE_EPOCHS, REFERENCE_MI_EPOCHS
    try:
        epochs, mi_epochs = (int(v) for v in text.split(","))
    except ValueError:
        raise ValueError(f"--recipe takes tiny, full or EPOCHS,MI_EPOCHS, got {text!r}") from None
    if epochs < 1 or mi_epochs < 1:
        raise ValueError(f"--recipe needs at least one epoch of each, got {text!r}")
    return epochs, mi_epochs


def official_teacher(encoder, path: Path, seed: int) -> None:
    """The suspect in BadEncoder's layout (`f.f.*`), with a projection head `g.*` of the official shape, randomly
    initialised: the official SimCLR loads strictly, and only `f` enters their losses."""
    import torch
    from torch import nn

    from harness.layouts import state_in_layout

    tensors, _ = state_in_layout(encoder, "badencoder")
    torch.manual_seed(seed)
    head = nn.Sequential(nn.Linear(512, 512, bias=False), nn.BatchNorm1d(512), nn.ReLU(inplace=True), nn.Linear(512, 128))
    tensors.update({f"g.{k}": v for k, v in head.state_dict().items()})
    torch.save({"state_dict": tensors}, path)


def official_data(images, folder: Path) -> None:
    """The defender's images as their `train.npz` (uint8 N x 32 x 32 x 3, labels N x 1, unused) and a `test.npz`."""
    import numpy as np

    folder.mkdir(parents=True)
    x = images.permute(0, 2, 3, 1).contiguous().numpy()
    y = np.zeros((len(x), 1), dtype=np.int64)
    np.savez(folder / "train.npz", x=x, y=y)
    np.savez(folder / "test.npz", x=x[:10], y=y[:10])


def streamed(command: list[str], cwd: Path, env: dict[str, str]) -> tuple[int, str]:
    """Run `command`, its output passed on to stderr line by line as `[official MIMIC] ...` while it runs; return its
    exit code and its last non-empty line (what a failure says)."""
    last = ""
    with subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as run:
        for line in run.stdout:
            if line.strip():
                last = line.strip()
                print(f"[official MIMIC] {last}", file=sys.stderr, flush=True)
    return run.returncode, last


def metrics_line(name: str, m) -> str:
    return f"{name:18} ACC {m.acc:6.2f}   ASR(all) {m.asr_all:6.2f}   ASR(non-target) {m.asr_nontarget:6.2f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--official", type=Path, required=True, help="a checkout of github.com/wssun/MIMIC")
    parser.add_argument("--profile", default="tiny")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE")
    parser.add_argument("--attack", default="badencoder")
    parser.add_argument("--scenario", default="patch")
    parser.add_argument("--downstream", default="fmnist")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--recipe", default="tiny")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--cache-dir", type=Path, default=Path(".harness-cache"))
    parser.add_argument("--any-commit", action="store_true", help="run a checkout at another commit than the one checked")
    parser.add_argument("--json", type=Path, help="also write the rows and what the launcher did as JSON")
    parser.add_argument("--force", action="store_true", help="replace an existing --json file")
    parser.add_argument("--debug", action="store_true", help="print the traceback of an internal error")
    args = parser.parse_args(argv)
    from harness.cli import guarded

    return guarded("official_crosscheck", lambda: crosscheck(args), args.debug)


def crosscheck(args: argparse.Namespace) -> int:
    from harness.compute import describe, prepare, resolve_device
    from harness.evaluate import evaluate
    from harness.atomic import atomic_write_text
    from harness.layouts import load_checkpoint
    from harness.outputs import claim
    from harness.pipeline import Workbench
    from harness.profiles import get_profile, with_overrides
    from harness.registry import ATTACKS, DATASETS
    from harness.store import ArtifactStore

    ATTACKS.get(args.attack)  # an unknown name is refused before anything else
    DATASETS.get(args.downstream)
    missing = [f for f in OFFICIAL_FILES if not (args.official / f).is_file()]
    if missing:
        raise FileNotFoundError(f"{args.official}: not a checkout of wssun/MIMIC (no {missing[0]})")
    commit = commit_of(args.official)
    if commit != OFFICIAL_COMMIT and not args.any_commit:
        raise ValueError(f"{args.official} is at {commit or 'no git commit'}, not the checked {OFFICIAL_COMMIT[:12]}; "
                         "pass --any-commit to run it anyway")
    profile = with_overrides(get_profile(args.profile), args.set)
    if profile.width != 64 or profile.arch != "resnet18":
        raise ValueError(f"the official SimCLR is ResNet-18 at width 64; this profile's encoder is {profile.arch} width {profile.width} "
                         "(add --set width=64)")
    epochs, mi_epochs = recipe_of(args.recipe, profile.budget_fraction)
    if args.json:
        claim(args.json, args.force)
    device = resolve_device(args.device)
    prepare(device)
    bench = Workbench(profile, ArtifactStore(args.cache_dir), device)
    print(f"official_crosscheck: {args.attack} ({args.scenario}) on {args.downstream}, seed {args.seed}, profile {profile.name} "
          f"(width {profile.width}), {epochs} epochs and {mi_epochs} MI epochs, batch {profile.defense_batch}, lr {profile.defense_lr:g}; "
          f"{describe(device, 'fp32')}; official code at {commit or 'an unknown commit'}", flush=True)
    clean = bench.clean_subset()
    if len(clean) < profile.defense_batch:  # their loader drops the last batch: no batch at all, then a division by zero
        raise ValueError(f"the official MIMIC needs at least one batch of {profile.defense_batch} clean images; this profile's "
                         f"defender has {len(clean)} (raise pretrain_size or clean_ratio, or lower defense_batch)")
    suspect = bench.suspect(args.attack, args.downstream, args.seed, scenario=args.scenario)
    train, test = bench.downstream(args.downstream)
    probe = bench.probe_config()

    def probed(encoder):
        return evaluate(encoder, train, test, suspect.trigger, suspect.target, probe, args.seed, device)

    # the controls: the clean encoder with the same trigger (the level a removed backdoor comes down to), the suspect
    rows = {"clean encoder": probed(bench.clean_encoder(args.seed).encoder), "undefended": probed(suspect.built.encoder)}
    steps_per_epoch = max(1, len(clean) // profile.defense_batch)
    harness_overrides = {"epochs": epochs, "mine_steps": mi_epochs * steps_per_epoch}
    start = time.perf_counter()
    ours = bench.with_profile(budget_fraction=1.0).defend("mimic", suspect.built, args.seed, overrides=harness_overrides)
    rows["harness MIMIC"] = probed(ours.encoder)
    ours_seconds = time.perf_counter() - start

    with tempfile.TemporaryDirectory(prefix="official-mimic-") as tmp:
        work = Path(tmp)
        official_teacher(suspect.built.encoder, work / "teacher.pth", args.seed)
        official_data(clean.images, work / "data" / "cifar10")
        settings = {
            "official": str(args.official.resolve()), "device": str(device), "mi_epochs": mi_epochs,
            "student": str(work / "student.pth"), "report": str(work / "report.json"),
            "argv": ["--lr", str(profile.defense_lr), "--batch_size", str(profile.defense_batch), "--epochs", str(epochs),
                     "--pretraining_dataset", "cifar10", "--teacher", str(work / "teacher.pth"), "--ratio", "1.0",
                     "--results_dir", str(work / "results"), "--seed", str(args.seed), "--gpu", str(device.index or 0)],
        }
        (work / "launch.py").write_text(LAUNCHER)
        start = time.perf_counter()
        returncode, tail = streamed([sys.executable, str(work / "launch.py"), json.dumps(settings)], work,
                                    {**os.environ, "PYTHONPATH": os.pathsep.join([str(args.official.resolve()), os.environ.get("PYTHONPATH", "")])})
        official_seconds = time.perf_counter() - start
        if returncode != 0:
            raise RuntimeError(f"the official MIMIC.py failed (exit {returncode}): {tail or 'no message'}")
        report = json.loads((work / "report.json").read_text())
        student = load_checkpoint(work / "student.pth").encoder  # the student of their SimCLR, read as BadEncoder's layout
    rows["official MIMIC"] = probed(student)

    for name, m in rows.items():
        print(metrics_line(name, m))
    print(f"official MI estimates (nats, on their random student): {', '.join(f'{k} {v:.4f}' for k, v in report.get('mi', {}).items())}")
    print(f"official betas: {', '.join(f'{b:.1f}' for b in report.get('betas', []))}")
    print(f"launcher: {'; '.join(report['patches'])}")
    print(f"seconds: harness MIMIC {ours_seconds:.0f}, official MIMIC {official_seconds:.0f}")
    if args.json:
        record = {"rows": {k: m.as_dict() for k, m in rows.items()}, "official": report, "epochs": epochs, "mi_epochs": mi_epochs,
                  "lr": profile.defense_lr, "batch": profile.defense_batch, "seed": args.seed, "profile": profile.name,
                  "overrides": args.set, "harness_steps": dict(ours.meta["steps"]),
                  "harness_mi": {k: ours.meta[k] for k in ("mi_per_stage", "beta_per_stage") if k in ours.meta}, "commit": commit,
                  "seconds": {"harness": ours_seconds, "official": official_seconds}}
        atomic_write_text(args.json, json.dumps(record, indent=1) + "\n", exclusive=not args.force)
    return 0


if __name__ == "__main__":
    sys.exit(main())
