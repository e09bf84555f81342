"""Published checkpoint layouts: recognised, built, checked, scanned, purified and written back into their own model class.

Each case builds a small checkpoint with the layout's own model class (torchvision's ResNets with weights=None,
and minimal copies of BadEncoder's, MoCo's and solo-learn's wrappers around them), then runs the command line
on it with a micro budget. torchvision's classes have a fixed width of 64, so their inputs are kept small instead.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
import torch
import torchvision
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import nn

from harness.encoder_files import ArtifactError, load_encoder, save_encoder
from harness.cli import main
from harness.geometry import GeometryEncoder, InputGeometry, with_geometry
from harness.layouts import LAYOUTS, apply_key_map, load_checkpoint, parse_key_map, save_in_layout, state_in_layout
from harness.models import build_encoder, clone_architecture
from harness.resnets import ResNet, ResNetConfig, build_resnet


def _jitter_batchnorm(model: nn.Module) -> nn.Module:
    """Non-trivial BatchNorm statistics, so a wrongly mapped BN tensor shows in the features."""
    gen = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=gen) * 0.2 - 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
    return model.eval()


def _cifar_stem(model: nn.Module, padding: int = 1) -> nn.Module:
    model.conv1 = nn.Conv2d(3, 64, 3, 1, padding, bias=False)
    model.maxpool = nn.Identity()
    return model


class SimCLRBase(nn.Module):
    """BadEncoder's models/simclr_model.py: torchvision's children minus fc and max-pool, a 3x3 stem, as `f`."""

    def __init__(self) -> None:
        super().__init__()
        children = []
        for name, module in torchvision.models.resnet18(weights=None).named_children():
            if name == "conv1":
                module = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
            if not isinstance(module, (nn.Linear, nn.MaxPool2d)):
                children.append(module)
        self.f = nn.Sequential(*children)

    def forward(self, x):
        return torch.flatten(self.f(x), 1)


class SimCLR(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.f = SimCLRBase()
        self.g = nn.Sequential(nn.Linear(512, 512, bias=False), nn.BatchNorm1d(512), nn.ReLU(inplace=True), nn.Linear(512, 128))


class MoCo(nn.Module):
    """MoCo v2's builder (query and key encoders with an MLP fc, a queue) inside DataParallel's `module.`."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder_q, self.encoder_k = (torchvision.models.resnet18(weights=None, num_classes=128) for _ in range(2))
        for encoder in (self.encoder_q, self.encoder_k):
            encoder.fc = nn.Sequential(nn.Linear(512, 512), nn.ReLU(), encoder.fc)
        self.register_buffer("queue", torch.randn(128, 16))
        self.register_buffer("queue_ptr", torch.zeros(1, dtype=torch.long))


class DataParallelNames(nn.Module):
    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module


class SoloLearn(nn.Module):
    """solo-learn's BaseMethod on CIFAR: torchvision backbone with a 3x3 stem padded by 2, no max-pool, no fc."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = _cifar_stem(torchvision.models.resnet18(weights=None), padding=2)
        self.backbone.fc = nn.Identity()
        self.projector = nn.Sequential(nn.Linear(512, 64), nn.BatchNorm1d(64), nn.ReLU(), nn.Linear(64, 32))
        self.classifier = nn.Linear(512, 10)


class CustomNames(nn.Module):
    """A layout nobody registered: a torchvision trunk under `net.trunk.`, a head beside it."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Module()
        self.net.trunk = torchvision.models.resnet18(weights=None)
        self.net.trunk.fc = nn.Identity()
        self.net.head = nn.Linear(512, 10)


@dataclass(frozen=True)
class Case:
    id: str
    build: Callable[[], nn.Module]  # the user's model class, freshly built
    encoder_of: Callable[[nn.Module], nn.Module]  # the part that is the encoder (computes the pooled feature)
    layout: str
    architecture: str  # how the harness describes it
    geometry: InputGeometry  # the layout's default
    nested: bool = False  # released as {"state_dict": ...}
    options: tuple[str, ...] = ()  # extra command-line options (the micro input size, key maps)
    defense: str = "ft"
    suffix: str = ".pth"


def _torchvision(name: str) -> nn.Module:
    return getattr(torchvision.models, name)(weights=None)


def _headless(model: nn.Module) -> nn.Module:
    model.fc = nn.Identity()
    return model


def _dropping_fc(encoder: Callable[[nn.Module], nn.Module]) -> Callable[[nn.Module], nn.Module]:
    return lambda m: _headless(encoder(m))


IMAGENET = InputGeometry(224, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
CASES = [
    Case("torchvision-resnet18", lambda: _torchvision("resnet18"), _headless, "torchvision",
         "resnet18 (basic blocks 2-2-2-2, width 64, ImageNet stem (7x7, max-pool))", IMAGENET, options=("--image-size", "32"), defense="mimic"),
    Case("torchvision-resnet34", lambda: _torchvision("resnet34"), _headless, "torchvision",
         "resnet34 (basic blocks 3-4-6-3, width 64, ImageNet stem (7x7, max-pool))", IMAGENET, options=("--image-size", "32")),
    Case("torchvision-resnet50", lambda: _torchvision("resnet50"), _headless, "torchvision",
         "resnet50 (bottleneck blocks 3-4-6-3, width 64, ImageNet stem (7x7, max-pool))", IMAGENET, options=("--image-size", "32"),
         suffix=".safetensors"),
    Case("torchvision-resnet18-cifar", lambda: _cifar_stem(_torchvision("resnet18")), _headless, "torchvision",
         "resnet18 (basic blocks 2-2-2-2, width 64, CIFAR stem (3x3, padding 1))",
         InputGeometry(32, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)), options=("--image-size", "16")),
    Case("torchvision-resnet34-cifar", lambda: _cifar_stem(_torchvision("resnet34")), _headless, "torchvision",
         "resnet34 (basic blocks 3-4-6-3, width 64, CIFAR stem (3x3, padding 1))",
         InputGeometry(32, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)), options=("--image-size", "16")),
    Case("torchvision-resnet50-cifar", lambda: _cifar_stem(_torchvision("resnet50")), _headless, "torchvision",
         "resnet50 (bottleneck blocks 3-4-6-3, width 64, CIFAR stem (3x3, padding 1))",
         InputGeometry(32, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)), options=("--image-size", "16")),
    Case("badencoder", SimCLR, lambda m: m.f, "badencoder", "resnet18 (basic blocks 2-2-2-2, width 64, CIFAR stem (3x3, padding 1))",
         InputGeometry(32, (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)), nested=True, options=("--image-size", "16"), defense="mimic"),
    Case("moco", lambda: DataParallelNames(MoCo()), _dropping_fc(lambda m: m.module.encoder_q), "moco",
         "resnet18 (basic blocks 2-2-2-2, width 64, ImageNet stem (7x7, max-pool))", IMAGENET, nested=True, options=("--image-size", "32")),
    Case("solo-learn", SoloLearn, lambda m: m.backbone, "solo-learn", "resnet18 (basic blocks 2-2-2-2, width 64, CIFAR stem (3x3, padding 2))",
         InputGeometry(32, (0.4914, 0.4822, 0.4465), (0.247, 0.243, 0.261)), nested=True, options=("--image-size", "16")),
    Case("key-map", CustomNames, lambda m: m.net.trunk, "torchvision", "resnet18 (basic blocks 2-2-2-2, width 64, ImageNet stem (7x7, max-pool))",
         IMAGENET, options=("--image-size", "32", "--key-map", r"^net\.trunk\.=", "--key-map", r"^net\.head\..*=")),
]


def _save(case: Case, model: nn.Module, path: Path) -> None:
    state = model.state_dict()
    if case.suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save({"epoch": 3, "state_dict": state} if case.nested else state, path)


def _reload(case: Case, path: Path) -> nn.Module:
    """The written-back file loaded into a fresh instance of the user's model class, strictly."""
    if case.suffix == ".safetensors":
        state = load_file(str(path))
    else:
        state = torch.load(path, weights_only=True)
        state = state["state_dict"] if case.nested else state
    model = case.build()
    model.load_state_dict(state, strict=True)
    return model.eval()


def _reference(case: Case, model: nn.Module, x: torch.Tensor, geometry: InputGeometry) -> torch.Tensor:
    """What the user's own code computes: resize, normalise, the encoder part of their model."""
    x = nn.functional.interpolate(x, size=(geometry.size,) * 2, mode="bilinear", align_corners=False, antialias=geometry.size < x.shape[-1])
    x = (x - torch.tensor(geometry.mean).view(1, 3, 1, 1)) / torch.tensor(geometry.std).view(1, 3, 1, 1)
    with torch.no_grad():
        return torch.flatten(case.encoder_of(model)(x), 1)


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.allclose(a, b, rtol=1e-3, atol=1e-4 * float(b.abs().max()))


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("clean")
    gen = torch.Generator().manual_seed(0)
    for i in range(8):
        Image.fromarray((torch.rand(32, 32, 3, generator=gen) * 255).to(torch.uint8).numpy()).save(folder / f"{i}.png")
    return folder


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_a_layout_loads_scans_purifies_and_goes_back_into_its_model_class(case, images, tmp_path, capsys):
    torch.manual_seed(0)
    model = _jitter_batchnorm(case.build())
    source = tmp_path / f"model{case.suffix}"
    _save(case, model, source)
    key_map = tuple(v for flag, v in zip(case.options, case.options[1:]) if flag == "--key-map")

    checkpoint = load_checkpoint(source, key_map=key_map)
    assert (checkpoint.layout, checkpoint.architecture, checkpoint.geometry) == (case.layout, case.architecture, case.geometry)
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    for geometry in (case.geometry, InputGeometry(16 if "cifar" in case.architecture.lower() else 32, case.geometry.mean, case.geometry.std)):
        with torch.no_grad():
            ours = with_geometry(checkpoint.encoder, geometry)(x)
        assert _close(ours, _reference(case, model, x, geometry)), geometry

    report = tmp_path / "scan.json"
    code = main(["scan", str(source), "--data", str(images), "--steps", "2", "--json", str(report), *case.options])
    scanned = json.loads(report.read_text())
    assert code == (1 if scanned["flagged"] else 0)
    assert scanned["layout"] == case.layout and scanned["architecture"] == case.architecture
    assert f"{case.layout} layout" in capsys.readouterr().out

    out = tmp_path / "purified.safetensors"
    assert main(["purify", str(source), "--data", str(images), "--defense", case.defense, "--out", str(out),
                 "--set", "budget_fraction=0.001", "--set", "defense_batch=4", *case.options]) == 0
    sidecar = json.loads(out.with_suffix(".json").read_text())
    written = tmp_path / f"purified.{case.layout}{case.suffix}"
    assert sidecar["in_layout"] == str(written) and sidecar["layout"] == case.layout
    reloaded = _reload(case, written)
    purified, _, meta = load_encoder(out)
    geometry = InputGeometry(**{k: tuple(v) if isinstance(v, list) else v for k, v in meta["geometry"].items()})
    with torch.no_grad():
        assert _close(_reference(case, reloaded, x, geometry), with_geometry(purified, geometry)(x))
    moved = [k for k, v in reloaded.state_dict().items() if not torch.equal(v, model.state_dict()[k])]
    assert moved and all(checkpoint.names.get(k) for k in moved), "only the encoder's tensors may change"
    assert load_checkpoint(written, key_map=key_map).layout == case.layout  # and it is recognised again


def test_the_harness_own_state_dict_and_file_round_trip(images, tmp_path):
    torch.manual_seed(0)
    encoder = _jitter_batchnorm(build_encoder("resnet18", 4))
    torch.save({f"module.{k}": v for k, v in encoder.state_dict().items()}, tmp_path / "own.pt")
    checkpoint = load_checkpoint(tmp_path / "own.pt")
    assert checkpoint.layout == "harness" and checkpoint.prefix == "module." and checkpoint.geometry.is_identity
    out = tmp_path / "p.safetensors"
    assert main(["purify", str(tmp_path / "own.pt"), "--data", str(images), "--defense", "mimic", "--out", str(out),
                 "--set", "budget_fraction=0.001", "--set", "defense_batch=4"]) == 0
    back = torch.load(tmp_path / "p.harness.pt", weights_only=True)
    fresh = build_encoder("resnet18", 4)
    fresh.load_state_dict({k.removeprefix("module."): v for k, v in back.items()}, strict=True)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(fresh.eval()(x), load_encoder(out)[0](x))
    # A harness file's own layout is the harness file: nothing else is written, and it records its geometry.
    save_encoder(tmp_path / "h.safetensors", encoder)
    assert main(["purify", str(tmp_path / "h.safetensors"), "--data", str(images), "--defense", "ft", "--out", str(tmp_path / "q.safetensors"),
                 "--set", "budget_fraction=0.001", "--set", "defense_batch=4", "--image-size", "40"]) == 0
    assert sorted(p.name for p in tmp_path.glob("q.*")) == ["q.json", "q.safetensors"]
    assert load_checkpoint(tmp_path / "q.safetensors").geometry == InputGeometry(40)


@pytest.mark.parametrize("geometry", [
    {"size": 100_000, "mean": [0, 0, 0], "std": [1, 1, 1]}, {"size": 32.0, "mean": [0, 0, 0], "std": [1, 1, 1]},
    {"size": 32, "mean": [0, 0], "std": [1, 1, 1]}, {"size": 32, "mean": [0, 0, 0], "std": [0, 1, 1]},
    {"size": 32, "mean": [float("nan"), 0, 0], "std": [1, 1, 1]}, {"size": 32, "mean": [10**400, 0, 0], "std": [1, 1, 1]},
    {"size": 32, "mean": ["0", 0, 0], "std": [1, 1, 1]}, {"size": 32}, "224", None,
], ids=repr)
def test_a_recorded_geometry_is_checked_like_the_rest_of_the_file(tmp_path, geometry):
    """A harness file's geometry decides what every forward pass resizes to: a crafted one is a one-line refusal."""
    save_encoder(tmp_path / "g.safetensors", build_encoder("resnet18", 4), meta={"geometry": geometry})
    with pytest.raises(ArtifactError, match="g.safetensors: metadata geometry is not an input geometry") as info:
        load_checkpoint(tmp_path / "g.safetensors")
    assert "\n" not in str(info.value)


def test_a_harness_file_takes_no_key_map(tmp_path):
    save_encoder(tmp_path / "h.safetensors", build_encoder("resnet18", 4))
    with pytest.raises(ArtifactError, match="names its own tensors; drop --key-prefix and --key-map"):
        load_checkpoint(tmp_path / "h.safetensors", key_map=(r"^x=y",))


def test_purify_refuses_to_overwrite_the_input(images, tmp_path, capsys):
    save_file({k: v.contiguous() for k, v in build_encoder("resnet18", 4).state_dict().items()}, str(tmp_path / "m.safetensors"))
    before = (tmp_path / "m.safetensors").read_bytes()
    assert main(["purify", str(tmp_path / "m.safetensors"), "--data", str(images), "--out", str(tmp_path / "m.safetensors")]) == 2
    assert "is one of the command's inputs" in capsys.readouterr().err and (tmp_path / "m.safetensors").read_bytes() == before
    # The third output, the weights in the input's layout, is checked too: here it would be the input itself.
    source = tmp_path / "o.torchvision.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), source)
    before = source.read_bytes()
    assert main(["purify", str(source), "--data", str(images), "--out", str(tmp_path / "o.safetensors"), "--force"]) == 2
    assert f"{source}: is one of the command's inputs" in capsys.readouterr().err and source.read_bytes() == before
    assert not (tmp_path / "o.safetensors").exists() and not (tmp_path / "o.json").exists()


def test_an_unknown_layout_is_one_line_naming_the_closest(tmp_path, capsys):
    state = {f"model.{k}": v for k, v in torchvision.models.resnet18(weights=None).state_dict().items()}
    torch.save(state, tmp_path / "odd.pt")
    with pytest.raises(ArtifactError, match=r"odd.pt: not a known encoder layout; closest: torchvision, 100% .* under the prefix 'model.'") as info:
        load_checkpoint(tmp_path / "odd.pt")
    assert "\n" not in str(info.value)
    assert load_checkpoint(tmp_path / "odd.pt", key_prefix="model.").layout == "torchvision"
    torch.save({"weight": torch.zeros(3)}, tmp_path / "tiny.pt")
    assert main(["scan", str(tmp_path / "tiny.pt"), "--data", str(tmp_path)]) == 2
    assert "not a known encoder layout; closest:" in capsys.readouterr().err


def test_errors_name_the_tensor_as_the_file_does(tmp_path):
    state = torchvision.models.resnet18(weights=None).state_dict()
    state["layer2.0.downsample.0.weight"] = torch.zeros(128, 64, 3, 3)
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(ArtifactError, match=r"bad.pt: tensor layer2.0.downsample.0.weight has shape \(128, 64, 3, 3\)"):
        load_checkpoint(tmp_path / "bad.pt")
    del state["layer2.0.downsample.0.weight"]
    torch.save(state, tmp_path / "missing.pt")
    with pytest.raises(ArtifactError, match=r"missing tensor layer2.0.downsample.0.weight"):
        load_checkpoint(tmp_path / "missing.pt")
    state["layer2.0.downsample.0.weight"] = torch.zeros(128, 64, 1, 1)
    harness_named = {f"encoder.{k}": v for k, v in build_encoder("resnet18", 4).state_dict().items()}
    torch.save({**state, **harness_named}, tmp_path / "two.pt")
    with pytest.raises(ArtifactError, match=r"two.pt: more than one encoder in the file \(harness under 'encoder.', torchvision under ''\)"):
        load_checkpoint(tmp_path / "two.pt")


def test_arch_overrides_the_recognised_architecture(tmp_path):
    torch.save(torchvision.models.resnet34(weights=None).state_dict(), tmp_path / "r34.pth")
    assert load_checkpoint(tmp_path / "r34.pth", arch="resnet34_imagenet").architecture.startswith("resnet34")
    with pytest.raises(ArtifactError, match=r"r34.pth: unexpected tensor layer1.2.bn1.bias for resnet18_imagenet \(96 unexpected\)"):
        load_checkpoint(tmp_path / "r34.pth", arch="resnet18_imagenet")


def test_a_hostile_block_count_is_refused_before_anything_is_built(tmp_path):
    state = {k: v for k, v in build_encoder("resnet18", 4).state_dict().items()}
    state["layer3.100000.conv1.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "deep.pt")
    with pytest.raises(ArtifactError, match="layer3 has 100001 blocks"):
        load_checkpoint(tmp_path / "deep.pt")


def test_the_deeper_resnets_are_encoders_with_stage_taps():
    for config, dim in ((ResNetConfig(width=4, blocks=(3, 4, 6, 3), block="bottleneck"), 128), (ResNetConfig(width=4, stem_padding=2), 32)):
        enc = build_resnet(config).eval()
        assert isinstance(enc, ResNet)
        stages, feature = enc.forward_stages(torch.rand(2, 3, 32, 32))
        assert list(stages) == ["layer1", "layer2", "layer3", "layer4"] and feature.shape == (2, dim) == (2, enc.feature_dim)
        clone = clone_architecture(enc)
        assert clone.config == enc.config and not torch.equal(clone.stem[0].weight, enc.stem[0].weight)
    assert type(build_resnet(ResNetConfig(width=4))) is type(build_encoder("resnet18", 4))  # resnet18 stays resnet18's Encoder
    with pytest.raises(ValueError, match="block must be"):
        ResNetConfig(block="wide")


def test_a_deeper_resnet_survives_the_harness_file_format(tmp_path):
    enc = _jitter_batchnorm(build_resnet(ResNetConfig(width=4, blocks=(3, 4, 6, 3), block="bottleneck", stem="imagenet")))
    save_encoder(tmp_path / "r50.safetensors", enc)
    loaded = load_encoder(tmp_path / "r50.safetensors")[0]
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert isinstance(loaded, ResNet) and torch.equal(loaded(x), enc(x))


def test_the_geometry_wrapper_is_an_encoder_to_every_defense_helper():
    inner = build_encoder("resnet18", 4).eval()
    wrapped = with_geometry(inner, InputGeometry(48, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)))
    assert isinstance(wrapped, GeometryEncoder) and wrapped.feature_dim == 32 and wrapped.layer4 is inner.layer4
    x = torch.rand(2, 3, 32, 32)
    stages, feature = wrapped.forward_stages(x)
    with torch.no_grad():
        expected = inner(nn.functional.interpolate((x - 0.5) / 0.25, size=(48, 48), mode="bilinear", align_corners=False))
        assert torch.allclose(wrapped(x), expected, atol=1e-5) and stages["layer1"].shape[-1] == 48
    student = clone_architecture(wrapped)
    assert isinstance(student, GeometryEncoder) and student.config.geometry.size == 48 and student.inner is not inner
    assert with_geometry(inner, InputGeometry()) is inner  # the harness's own geometry wraps nothing
    with pytest.raises(ValueError, match="std must be positive"):
        InputGeometry(32, (0, 0, 0), (1, 0, 1))


def test_convert_writes_a_layout_that_loads_back_to_the_same_encoder(tmp_path, capsys):
    torch.manual_seed(0)
    encoder = _jitter_batchnorm(build_encoder("resnet18", 4))
    save_encoder(tmp_path / "h.safetensors", encoder)
    x = torch.rand(2, 3, 32, 32)
    for layout in ("torchvision", "badencoder", "moco", "harness"):
        out = tmp_path / f"{layout}.pth"
        assert main(["convert", str(tmp_path / "h.safetensors"), "--layout", layout, "--out", str(out)]) == 0
        loaded = load_checkpoint(out)
        assert loaded.layout == layout
        with torch.no_grad():
            assert torch.equal(loaded.encoder(x), encoder(x))
    assert "--mean 0.0,0.0,0.0 --std 1.0,1.0,1.0" in capsys.readouterr().out  # torchvision's CIFAR default normalises
    with pytest.raises(ValueError, match="padded by 2"):
        state_in_layout(encoder, "solo-learn")
    assert {layout.name for layout in LAYOUTS} == {"harness", "torchvision", "badencoder", "moco", "solo-learn"}


names = st.lists(st.from_regex(r"[a-z_]{1,6}(\.[a-z0-9_]{1,6}){0,3}", fullmatch=True), min_size=1, max_size=20, unique=True)


@given(names=names, prefix=st.from_regex(r"[a-z]{1,5}\.", fullmatch=True))
@settings(max_examples=50, deadline=None)
def test_a_key_map_that_strips_a_prefix_is_the_inverse_of_adding_it(names, prefix):
    rules = parse_key_map([f"^{re.escape(prefix)}="])
    assert apply_key_map([prefix + n for n in names], rules, Path("f")) == {prefix + n: n for n in names}


@given(rule=st.text(max_size=30))
@settings(max_examples=200, deadline=None)
def test_a_key_map_rule_parses_or_is_a_one_line_value_error(rule):
    try:
        parse_key_map([rule])
    except ValueError as e:
        assert "\n" not in str(e) and "--key-map" in str(e)


def test_a_key_map_that_merges_two_names_is_refused():
    with pytest.raises(ArtifactError, match="maps both a.x and b.x to x"):
        apply_key_map(["a.x", "b.x"], parse_key_map([r"^[ab]\.="]), Path("f"))


@given(layout=st.sampled_from(["torchvision", "badencoder", "moco", "harness"]), stem=st.sampled_from(["cifar", "imagenet"]),
       block=st.sampled_from(["basic", "bottleneck"]), blocks=st.tuples(*[st.integers(1, 3)] * 4))
@settings(max_examples=25, deadline=None)
def test_any_resnet_in_any_layout_is_recognised_as_itself(layout, stem, block, blocks):
    torch.manual_seed(0)
    config = ResNetConfig(width=2, blocks=blocks, stem=stem, block=block)
    encoder = build_resnet(config)
    tensors, _ = state_in_layout(encoder, layout)
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        save_file(tensors, str(Path(tmp) / "f.safetensors"))
        loaded = load_checkpoint(Path(tmp) / "f.safetensors")
    assert loaded.layout == layout and loaded.encoder.config == build_resnet(config).config
    assert all(torch.equal(v, encoder.state_dict()[k]) for k, v in loaded.encoder.state_dict().items())


def test_save_in_layout_nests_as_the_authors_release(tmp_path):
    save_in_layout(build_encoder("resnet18", 4), "badencoder", tmp_path / "be.pth")
    assert set(torch.load(tmp_path / "be.pth", weights_only=True)) == {"state_dict"}


def test_fine_pruning_on_bottlenecks_is_refused_before_it_runs(images, tmp_path, capsys):
    torch.save(torchvision.models.resnet50(weights=None).state_dict(), tmp_path / "r50.pth")
    assert main(["purify", str(tmp_path / "r50.pth"), "--data", str(images), "--defense", "fp", "--out", str(tmp_path / "o.safetensors")]) == 2
    assert "fine-pruning (fp) handles basic blocks only" in capsys.readouterr().err and not (tmp_path / "o.safetensors").exists()
