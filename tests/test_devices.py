"""Device placement and precision, checked without a GPU.

The harness's first run on a GPU failed at its first evaluation: encoders came back
from the store on the CPU and nothing moved them to the run's device. PyTorch's
`meta` device stands in for a GPU here: a CPU tensor meeting a meta module (or the
reverse) fails exactly as a CPU tensor meeting a CUDA module does.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from harness.store import ArtifactStore
from harness.compute import DeviceError, autocast, device_failure, forward_stages, resolve_device, resolve_precision
from harness.contract import DefenseResult
from harness.evaluate import extract_features
from harness.models import build_encoder
from harness.pipeline import UNDEFENDED, Workbench
from harness.profiles import get_profile
from harness.registry import DEFENSES, Entry
from harness.rowspec import RowSpec
from harness.training import batched_features

META = torch.device("meta")
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def micro_profile():
    return dataclasses.replace(
        get_profile("tiny"), width=4, pretrain_size=256, ssl_epochs=1, attack_epochs=1, shadow_size=128, downstream_train_size=256,
        downstream_test_size=128, probe_epochs=30, ssl_batch=64, attack_batch=64, budget_fraction=0.01,
    )


def _devices(module: torch.nn.Module) -> set[str]:
    return {p.device.type for p in module.parameters()} | {b.device.type for b in module.buffers()}


def test_features_of_an_encoder_left_on_the_cpu_are_computed_on_the_runs_device():
    encoder = build_encoder("resnet18", 4)  # on the CPU, as the store returns encoders
    images = torch.zeros(3, 3, 32, 32, dtype=torch.uint8)
    features = batched_features(encoder, images, META)
    assert features.device == META and features.shape == (3, 32)


def test_every_encoder_the_workbench_hands_out_is_on_its_device(micro_profile, tmp_path):
    store = ArtifactStore(tmp_path / "cache")
    on_cpu = Workbench(micro_profile, store, CPU)
    on_cpu.row(RowSpec("t", "badencoder", UNDEFENDED, "fmnist", 0))  # built on the CPU
    on_cpu.random_encoder(0)
    built_on_cpu = store.builds
    on_meta = Workbench(micro_profile, store, META)  # the same cache, read by a run on another device
    for built in (on_meta.clean_encoder(0), on_meta.random_encoder(0), on_meta.suspect("badencoder", "fmnist", 0).built):
        assert _devices(built.encoder) == {"meta"}, built.key
    assert _devices(on_meta._fresh(on_meta.clean_encoder(0))) == {"meta"}
    assert store.builds == built_on_cpu  # every encoder came from the cache


def test_a_defense_receives_the_suspect_on_the_runs_device(micro_profile, tmp_path, monkeypatch):
    seen: list[tuple[set[str], torch.device]] = []

    def device_spy(suspect, clean, budget, seed, config=None):
        seen.append((_devices(suspect), budget.device))
        return DefenseResult(suspect)

    monkeypatch.setitem(DEFENSES._entries, "device_spy", Entry("device_spy", device_spy, None, __name__))
    store = ArtifactStore(tmp_path / "cache")
    Workbench(micro_profile, store, CPU).suspect("badencoder", "fmnist", 0)
    on_meta = Workbench(micro_profile, store, META)
    with pytest.raises(NotImplementedError, match="meta"):  # a meta encoder holds no values to store; the hand-over is what counts
        on_meta.defend("device_spy", on_meta.suspect("badencoder", "fmnist", 0).built, 0)
    assert seen == [({"meta"}, META)]


def test_extract_features_moves_the_encoder_and_gathers_features_on_the_cpu():
    encoder = build_encoder("resnet18", 4)
    images = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8)
    features = extract_features(encoder, images, CPU)
    assert features.device == CPU and torch.allclose(features.norm(dim=1), torch.ones(5))


@pytest.mark.parametrize("name", ["tpu", "cuda:x", "banana"])
def test_a_device_that_is_not_one_is_a_one_line_error(name):
    with pytest.raises(DeviceError) as caught:
        resolve_device(name)
    assert "\n" not in str(caught.value) and name in str(caught.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
@pytest.mark.parametrize("name", ["cuda", "cuda:3"])
def test_cuda_without_cuda_is_a_one_line_error(name):
    with pytest.raises(DeviceError, match="CUDA is not available"):
        resolve_device(name)


def test_precision_names_are_checked():
    assert resolve_precision("fp32", CPU) == "fp32"
    assert resolve_precision("bf16", CPU) == "bf16"
    with pytest.raises(ValueError, match="precision"):
        resolve_precision("fp16", CPU)


def test_bf16_forwards_return_fp32_and_fp32_forwards_are_untouched():
    encoder = build_encoder("resnet18", 4).eval()
    x = torch.rand(2, 3, 32, 32)
    stages, h = forward_stages(encoder, x, "bf16")
    assert h.dtype == torch.float32 and all(m.dtype == torch.float32 for m in stages.values())
    plain_stages, plain = encoder.forward_stages(x)
    same_stages, same = forward_stages(encoder, x, "fp32")
    assert torch.equal(same, plain) and all(torch.equal(same_stages[s], plain_stages[s]) for s in plain_stages)
    assert not torch.equal(h, plain) and torch.allclose(h, plain, atol=0.05, rtol=0.05)  # bf16 did run, and is close
    with autocast(CPU, "fp32"):
        assert not torch.is_autocast_enabled("cpu")


@pytest.mark.parametrize("error", [
    torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB.\nmore detail on a second line"),
    RuntimeError("Input type (torch.cuda.FloatTensor) and weight type (torch.FloatTensor) should be the same\nsee above"),
    RuntimeError("Tensor on device cpu is not on the expected device meta!"),
    RuntimeError("CUDA error: invalid device ordinal\nCUDA kernel errors might be asynchronously reported"),
])
def test_cuda_failures_become_one_line(error):
    line = device_failure(error)
    assert line is not None and "\n" not in line
    assert "--set" in line if isinstance(error, torch.cuda.OutOfMemoryError) else line.startswith("device error")


@pytest.mark.parametrize("error", [ValueError("unrelated"), RuntimeError("mat1 and mat2 shapes cannot be multiplied")])
def test_other_errors_are_not_called_device_errors(error):
    assert device_failure(error) is None


def test_a_bf16_row_runs_on_the_cpu_records_its_precision_and_shares_no_cache_entry(micro_profile, tmp_path):
    store = ArtifactStore(tmp_path / "cache")
    fp32 = Workbench(micro_profile, store, CPU).row(RowSpec("t", "badencoder", "mimic", "fmnist", 0))
    builds = store.builds
    bf16 = Workbench(micro_profile, store, CPU, precision="bf16").row(RowSpec("t", "badencoder", "mimic", "fmnist", 0))
    assert (fp32.precision, bf16.precision) == ("fp32", "bf16") and fp32.identity != bf16.identity
    assert store.builds - builds >= 4  # pre-training, the attack, the defense and their evaluations: nothing reused
    assert bf16.settings.compute["precision"] == "bf16"
