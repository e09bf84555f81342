import pytest
import torch

from harness.models import STAGES, Projector, build_encoder, clone_architecture


@pytest.mark.parametrize("width", [4, 16])
def test_stage_taps_have_cifar_resnet_shapes(width):
    enc = build_encoder("resnet18", width).eval()
    stages, feature = enc.forward_stages(torch.rand(2, 3, 32, 32))
    assert list(stages) == list(STAGES)
    expected = [(width, 32), (2 * width, 16), (4 * width, 8), (8 * width, 4)]
    assert [(s.shape[1], s.shape[2]) for s in stages.values()] == expected
    assert feature.shape == (2, 8 * width) == (2, enc.feature_dim)
    assert torch.allclose(enc(torch.zeros(1, 3, 32, 32)), enc.forward_stages(torch.zeros(1, 3, 32, 32))[1])


def test_width_16_is_the_calibrated_size():
    assert sum(p.numel() for p in build_encoder("resnet18", 16).parameters()) == pytest.approx(0.70e6, rel=0.05)


def test_clone_architecture_is_random_not_a_copy():
    torch.manual_seed(0)
    enc = build_encoder("resnet18", 4)
    student = clone_architecture(enc)
    assert student.config == enc.config
    assert not torch.equal(student.stem[0].weight, enc.stem[0].weight)


def test_projector_shape():
    assert Projector(32, 8)(torch.rand(4, 32)).shape == (4, 8)


@pytest.mark.parametrize("width", [4, 16])
def test_resnet18_computes_bit_for_bit_what_it_computed_before_the_deeper_resnets(width):
    """tests/data/resnet18_seed0.safetensors was written by the resnet18 of commit 3a90374 (before ResNet-34/50)."""
    import json
    from pathlib import Path

    from safetensors import safe_open

    with safe_open(str(Path(__file__).parent / "data" / "resnet18_seed0.safetensors"), framework="pt") as f:
        names = json.loads(f.metadata()["state_dict_names"])[f"w{width}"]
        expected = {mode: f.get_tensor(f"{mode}_w{width}") for mode in ("eval", "train")}
    torch.manual_seed(0)
    enc = build_encoder("resnet18", width)
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    assert list(enc.state_dict()) == names
    with torch.no_grad():
        assert torch.equal(enc.eval()(x), expected["eval"])
    # Train mode reduces over the batch for BatchNorm, whose summation order follows the thread count: the
    # same architecture and weights agree to float rounding, not bit for bit, across machines.
    torch.testing.assert_close(enc.train()(x).detach(), expected["train"], rtol=1e-5, atol=1e-6)
