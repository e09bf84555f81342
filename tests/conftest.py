"""Shared fixtures: a small backdoored encoder on real images, built once per session."""

import copy

import pytest
import torch

from attacks.badencoder import BadEncoderConfig, badencoder
from harness.contract import AttackInputs, CleanSubset
from harness.data import load_dataset
from harness.ssl import SimCLRConfig, pretrain
from harness.triggers import make_trigger

CPU = torch.device("cpu")
TRIGGER = make_trigger("patch", 6)


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
