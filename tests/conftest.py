"""Shared fixtures: a small backdoored encoder on real images, built once per session; a folder of 8 images and a small
encoder file for the CLI; a stand-in Ghostscript; the repository's scripts as modules."""

import copy
import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch
from PIL import Image

from attacks.badencoder import BadEncoderConfig, badencoder
from harness.contract import AttackInputs, CleanSubset
from harness.data import load_dataset
from harness.encoder_files import save_encoder
from harness.models import build_encoder
from harness.ssl import SimCLRConfig, pretrain
from harness.triggers import make_trigger

CPU = torch.device("cpu")
TRIGGER = make_trigger("patch", 6)
ROOT = Path(__file__).resolve().parents[1]


def load_script(relative: str) -> ModuleType:
    """A script of the repository (benchmarks/*.py, docs/build.py) imported afresh as a module, since scripts are in no
    package; registered in sys.modules, where a script's dataclasses look their module up."""
    name = "_".join(Path(relative).with_suffix("").parts)  # e.g. benchmarks_scan_power
    spec = importlib.util.spec_from_file_location(name, ROOT / relative)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


TEST_THREADS = 2  # CI's


@pytest.fixture(scope="session", autouse=True)
def ci_thread_count():
    """Every test computes at CI's intra-op thread count, whatever the machine or OMP_NUM_THREADS says: training's float
    reductions round differently at another count (docs/DESIGN.md, "Determinism"), so the encoders the tests train, and
    what the tests assert of them, would be other encoders than the ones CI checks."""
    before = torch.get_num_threads()
    torch.set_num_threads(TEST_THREADS)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def encoders():
    """A small SimCLR encoder on Fashion-MNIST, its BadEncoder copy (6x6 white patch) and 200 clean images, about 30 s."""
    try:
        data = load_dataset("fmnist", "train", None, False)
    except Exception as missing:  # noqa: BLE001 - the dataset package is a test requirement
        pytest.fail(f"Fashion-MNIST is needed (apt-get install dataset-fashion-mnist): {missing}")
    images, labels = data.images[:1024], data.labels[:1024]
    clean, _ = pretrain("resnet18", 8, images, SimCLRConfig(epochs=4, batch_size=128, lr=3e-3, proj_dim=32), 0, CPU)
    inputs = AttackInputs(
        clean_encoder=lambda: copy.deepcopy(clean), pretrain=images, pretrain_labels=labels, shadow=images[:512],
        references=images[labels == 9][:3], target_images=images[labels == 9], target=9, target_in_pretrain=True,
        trigger=TRIGGER, arch="resnet18", width=8, ssl=SimCLRConfig(epochs=1), epochs=15, batch_size=64, lr=3e-3,
        optimizer="adam", device=CPU,
    )
    backdoored = badencoder(inputs, 0, BadEncoderConfig()).encoder.eval()
    return clean.eval(), backdoored, CleanSubset(data.images[2000:2200])


@pytest.fixture
def stand_in_gs(tmp_path, monkeypatch) -> Path:
    """A `gs` first on PATH that only touches a marker file: whether Pillow ran Ghostscript, and nothing more."""
    from PIL import EpsImagePlugin

    folder, marker = tmp_path / "bin", tmp_path / "gs-ran"
    folder.mkdir()
    (folder / "gs").write_text(f"#!/bin/sh\ntouch '{marker}'\nexit 1\n")
    (folder / "gs").chmod(0o755)
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(EpsImagePlugin, "gs_binary", None)  # Pillow looks for gs anew, on this PATH
    return marker


@pytest.fixture
def data(tmp_path) -> Path:
    folder = tmp_path / "data"
    folder.mkdir()
    for i in range(8):
        Image.new("RGB", (32, 32), (30 * i, 255 - 30 * i, 100)).save(folder / f"{i}.png")
    return folder


@pytest.fixture
def suspect(tmp_path) -> Path:
    torch.manual_seed(0)
    path = tmp_path / "suspect.safetensors"
    save_encoder(path, build_encoder("resnet18", 4))
    return path
