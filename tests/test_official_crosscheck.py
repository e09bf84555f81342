"""benchmarks/official_crosscheck.py's plumbing, on a small fake "official" checkout written here.

The fake has the entry points the launcher patches and each of the official code's
habits the cross-check works around (setproctitle, .cuda() calls, map_location
'cuda:0', DataLoader workers, CIFAR-10 normalisation, a forward hook per call that
is never removed, MI estimates of 0 that make its weight update divide 0 by 0,
a student saved only every 1,000 epochs). It trains nothing real: its "MIMIC" copies
the teacher's weights into the student, so the student probed back must score what
the suspect scores.
"""

from __future__ import annotations

import json
import subprocess
import textwrap

import pytest

from tests.conftest import load_script

MICRO = ["width=64", "pretrain_size=128", "ssl_epochs=1", "attack_epochs=1", "shadow_size=64", "downstream_train_size=128",
         "downstream_test_size=64", "probe_epochs=5", "ssl_batch=64", "attack_batch=32", "defense_batch=16", "clean_ratio=0.25"]

FAKE = {
    "MIMIC.py": """
        import argparse, json, os
        import numpy as np
        import torch
        from torch.utils.data import DataLoader
        import setproctitle
        from tqdm import tqdm
        from models import get_encoder_architecture, weight_scheduler
        from datasets import get_pretraining_dataset

        parser = argparse.ArgumentParser()
        for name, default in (("--lr", 1e-3), ("--batch_size", 8), ("--epochs", 1), ("--seed", 0), ("--ratio", 0.04)):
            parser.add_argument(name, type=type(default), default=default)
        for name in ("--pretraining_dataset", "--teacher", "--results_dir", "--gpu"):
            parser.add_argument(name, default="")
        args = parser.parse_args()
        setproctitle.setproctitle("fake")
        args.data_dir = f"data/{args.pretraining_dataset}/"
        os.makedirs(args.results_dir, exist_ok=True)
        args.device = torch.device(f"cuda:{args.gpu}" if torch.cuda.is_available() else "cpu")
        teacher = get_encoder_architecture(args).cuda(args.device)
        teacher.load_state_dict(torch.load(args.teacher, map_location="cuda:0")["state_dict"])
        student = get_encoder_architecture(args).cuda(args.device)
        train_data, memory_data, _ = get_pretraining_dataset(args)
        loader = DataLoader(train_data, batch_size=args.batch_size, num_workers=5, drop_last=True)
        memory = DataLoader(memory_data, batch_size=args.batch_size, num_workers=5)
        scheduler = weight_scheduler(base_opt=[1000] * 4, momentum_opt=10000, EPOCHS=200)
        mi = scheduler.estimate_mi(student, memory, [3, 4, 5, 6], args.device)
        params = scheduler.update_weight(mi)
        assert not np.isnan(params).any(), "NaN betas"
        for epoch in range(1, args.epochs + 1):
            bar = tqdm(loader)
            for im_1, im_2 in bar:
                assert im_1.min() >= 0, "normalised inputs"
                student.load_state_dict(teacher.state_dict())  # the fake "distillation": a copy
                bar.set_description(f"Train Epoch: [{epoch}/{args.epochs}], Loss: 0.0000")
            if epoch % 1000 == 0:
                torch.save({"state_dict": student.state_dict()}, args.results_dir + f"/model{epoch}.pth")
    """,
    "models/__init__.py": """
        import torch
        from torch import nn
        from torchvision.models import resnet18
        from .scheduler import weight_scheduler

        class Base(nn.Module):
            def __init__(self):
                super().__init__()
                parts = [nn.Conv2d(3, 64, 3, 1, 1, bias=False) if n == "conv1" else m for n, m in resnet18().named_children()
                         if not isinstance(m, (nn.Linear, nn.MaxPool2d))]
                self.f = nn.Sequential(*parts)
            def forward(self, x):
                return torch.flatten(self.f(x), 1)

        class SimCLR(nn.Module):
            def __init__(self):
                super().__init__()
                self.f = Base()
                self.g = nn.Sequential(nn.Linear(512, 512, bias=False), nn.BatchNorm1d(512), nn.ReLU(inplace=True), nn.Linear(512, 128))
            def forward(self, x):
                feature = self.f(x)
                return nn.functional.normalize(feature, dim=-1), nn.functional.normalize(self.g(feature), dim=-1)

        def get_encoder_architecture(args):
            return SimCLR()
    """,
    "models/hook.py": """
        from torch import nn

        class HookTool:
            def __init__(self):
                self.fea_out = None
            def hook_fun(self, module, fea_in, fea_out):
                self.fea_out = nn.Flatten(start_dim=1)(fea_out)

        def get_feas_by_hook(model, layer_names=None):
            hooks = {}
            for name, module in model.named_modules():
                if name in layer_names:
                    hooks[name] = HookTool()
                    module.register_forward_hook(hooks[name].hook_fun)  # never removed, as the original's
            return hooks
    """,
    "models/scheduler.py": """
        import numpy as np
        import torch
        from .hook import get_feas_by_hook

        class weight_scheduler:
            def __init__(self, base_opt, momentum_opt, EPOCHS=100):
                self.base_opt, self.momentum_opt, self.EPOCHS = base_opt, momentum_opt, EPOCHS
            def estimate_mi(self, model, loader, layers, device):
                out = {}
                for layer in layers:
                    for _ in range(self.EPOCHS):
                        for x, _ in loader:
                            hooks = get_feas_by_hook(model, [f"f.f.{layer}"])
                            model(x.to(device))
                            assert hooks[f"f.f.{layer}"].fea_out is not None
                    assert not sum(len(m._forward_hooks) for m in model.modules()), "hooks left firing"
                    out[f"layer-{layer}-clean"] = 0.0  # clipped at 0, as the original's on a random student
                return out
            def update_weight(self, mi):
                weight = np.array([v for k, v in mi.items() if k.endswith("clean")])
                weight = weight / weight.sum()
                return self.base_opt + self.momentum_opt * weight
    """,
    "datasets/__init__.py": """
        from .cifar10_dataset import get_pretraining_cifar10
        def get_pretraining_dataset(args):
            return get_pretraining_cifar10(args.data_dir, args.ratio)
    """,
    "datasets/cifar10_dataset.py": """
        import numpy as np
        from PIL import Image
        from torch.utils.data import Dataset
        from torchvision import transforms

        train_transform = transforms.Compose([transforms.RandomHorizontalFlip(), transforms.ToTensor(),
                                              transforms.Normalize([0.4914, 0.4822, 0.4465], [0.2023, 0.1994, 0.2010])])
        test_transform_cifar10 = transforms.Compose([transforms.ToTensor(),
                                                     transforms.Normalize([0.4914, 0.4822, 0.4465], [0.2023, 0.1994, 0.2010])])

        class Pair(Dataset):
            def __init__(self, path, ratio, transform, pair):
                data = np.load(path)
                self.x, self.y = data["x"][: int(len(data["x"]) * ratio)], data["y"]
                self.transform, self.pair = transform, pair
            def __len__(self):
                return len(self.x)
            def __getitem__(self, i):
                image = Image.fromarray(self.x[i])
                if self.pair:
                    return self.transform(image), self.transform(image)
                return self.transform(image), int(self.y[i][0])

        def get_pretraining_cifar10(data_dir, ratio):
            return (Pair(data_dir + "train.npz", ratio, train_transform, True), Pair(data_dir + "train.npz", ratio, test_transform_cifar10, False),
                    Pair(data_dir + "test.npz", 1.0, test_transform_cifar10, False))
    """,
}


def _crosscheck():
    return load_script("benchmarks/official_crosscheck.py")


@pytest.fixture(scope="module")
def fake_checkout(tmp_path_factory):
    root = tmp_path_factory.mktemp("official")
    for name, text in FAKE.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(textwrap.dedent(text))
    git = ["git", "-C", str(root), "-c", "user.name=test", "-c", "user.email=test@example.invalid"]
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "a fake of the official code"], check=True)
    return root


def test_another_commit_is_refused_unless_asked(fake_checkout, tmp_path, capsys):
    code = _crosscheck().main(["--official", str(fake_checkout), "--cache-dir", str(tmp_path / "cache"), *[a for f in MICRO for a in ("--set", f)]])
    err = capsys.readouterr().err
    assert code == 2 and "not the checked 36ef47c2915f; pass --any-commit" in err and err.count("\n") == 1


def test_not_a_checkout_and_a_narrow_encoder_are_one_line_errors(fake_checkout, tmp_path, capsys):
    check = _crosscheck()
    assert check.main(["--official", str(tmp_path)]) == 2 and "not a checkout of wssun/MIMIC (no MIMIC.py)" in capsys.readouterr().err
    assert check.main(["--official", str(fake_checkout), "--any-commit", "--cache-dir", str(tmp_path / "c")]) == 2
    assert "ResNet-18 at width 64" in capsys.readouterr().err
    few = [a for f in MICRO for a in ("--set", f)] + ["--set", "clean_ratio=0.05"]  # 6 images, batches of 16
    assert check.main(["--official", str(fake_checkout), "--any-commit", "--cache-dir", str(tmp_path / "c"), *few]) == 2
    assert "needs at least one batch of 16 clean images; this profile's defender has 6" in capsys.readouterr().err
    for option in ("--attack", "--downstream"):
        cache = tmp_path / option.strip("-")
        assert check.main(["--official", str(fake_checkout), "--any-commit", "--cache-dir", str(cache), option, "typo",
                           *[a for f in MICRO for a in ("--set", f)]]) == 2
        out, err = capsys.readouterr()
        assert err.startswith("official_crosscheck: error: ") and "typo" in err and err.count("\n") == 1
        assert not out and not cache.exists()  # refused before anything is built or announced


def test_the_fake_official_run_is_patched_read_back_and_probed(fake_checkout, tmp_path, capsys):
    report = tmp_path / "crosscheck.json"
    code = _crosscheck().main(["--official", str(fake_checkout), "--any-commit", "--recipe", "1,1", "--device", "cpu", "--json", str(report),
                               "--cache-dir", str(tmp_path / "cache"), *[a for f in MICRO for a in ("--set", f)]])
    out = capsys.readouterr()
    assert code == 0, out.err
    result = json.loads(report.read_text())
    rows = result["rows"]
    assert set(rows) == {"clean encoder", "undefended", "harness MIMIC", "official MIMIC"}
    assert rows["official MIMIC"] == rows["undefended"]  # the fake copies the teacher: its student is the suspect, read back
    patches = result["official"]["patches"]
    assert {"inputs unnormalised (their CIFAR-10 statistics removed)", "hooks removed after their one forward",
            "uniform betas: all MI estimates were 0", "the last epoch's student saved"} <= set(patches)
    assert (result["epochs"], result["mi_epochs"], result["lr"], result["seed"]) == (1, 1, 1e-3, 0)
    assert set(result["harness_mi"]) == {"mi_per_stage", "beta_per_stage"}  # the harness estimates MI on the suspect
    assert result["harness_steps"] == {"distillation_epochs": 1, "mine_steps_per_stage": 2}  # 1 MI epoch: 32 images, batches of 16
    assert result["official"]["betas"] == [3500.0] * 4  # alpha0 + alpha1 / 4 each (the fake fails on a hook left firing)
    assert "official MIMIC" in out.out and "launcher: " in out.out
    assert "[official MIMIC] Train Epoch: [1/1], Loss: 0.0000" in out.err  # their progress, one line a bar, as it runs
    assert "] epoch 1/" in out.err  # the harness's stages report their epochs too


def test_an_existing_json_is_refused_before_any_work(fake_checkout, tmp_path, capsys):
    report = tmp_path / "crosscheck.json"
    report.write_text("the user's own file\n")
    cache = tmp_path / "cache"
    code = _crosscheck().main(["--official", str(fake_checkout), "--any-commit", "--json", str(report), "--cache-dir", str(cache),
                               *[a for f in MICRO for a in ("--set", f)]])
    err = capsys.readouterr().err
    assert code == 2 and "exists; pass --force to replace it" in err and err.count("\n") == 1
    assert report.read_text() == "the user's own file\n" and not cache.exists()
