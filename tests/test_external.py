"""Untrusted encoder files and users' image folders: loaded without running code, checked, refused clearly."""

import json
import pickle

import pytest
import torch
import torchvision
from PIL import Image
from safetensors.torch import save_file

from harness.encoder_files import ArtifactError, load_encoder, save_encoder
from harness.cli import main
from harness.images import load_image_folder
from harness.layouts import load_external_encoder
from harness.models import build_encoder


class _Payload:
    """Unpickling this object creates a marker file: what a malicious checkpoint would do, harmlessly."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture
def malicious(tmp_path):
    marker = tmp_path / "pwned"
    state = {"stem.0.weight": torch.zeros(4, 3, 3, 3), "payload": _Payload(str(marker))}
    files = {"pt": tmp_path / "model.pt", "pickle": tmp_path / "model.pkl", "safetensors": tmp_path / "model.safetensors"}
    torch.save(state, files["pt"])
    files["pickle"].write_bytes(pickle.dumps(state))
    files["safetensors"].write_bytes(files["pt"].read_bytes())  # a pickle under a trusted name
    return marker, files


def test_a_malicious_checkpoint_never_runs_through_any_loading_path(malicious, tmp_path):
    marker, files = malicious
    for path in files.values():
        with pytest.raises(ArtifactError, match=str(path.name)):
            load_external_encoder(path, "resnet18")
        with pytest.raises(ArtifactError):
            load_encoder(path)
        assert main(["scan", str(path), "--data", str(tmp_path), "--steps", "1"]) == 2
        assert main(["purify", str(path), "--data", str(tmp_path), "--out", str(tmp_path / "o.safetensors")]) == 2
    assert not marker.exists()
    pickle.loads(files["pickle"].read_bytes())  # the control: unpickling the same bytes does run the payload
    assert marker.exists()


def test_torchvision_resnet18_weights_load_and_compute_the_same_features(tmp_path):
    torch.manual_seed(0)
    reference = torchvision.models.resnet18(weights=None).eval()
    torch.save(reference.state_dict(), tmp_path / "tv.pth")
    encoder = load_external_encoder(tmp_path / "tv.pth", "resnet18_imagenet")
    reference.fc = torch.nn.Identity()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(encoder(x), reference(x), atol=1e-5)
    with pytest.raises(ArtifactError, match="conv1|stem.0.weight"):  # a 7x7 stem is not the CIFAR layout
        load_external_encoder(tmp_path / "tv.pth", "resnet18")


def test_state_dicts_with_prefixes_and_the_harness_format_load(tmp_path):
    torch.manual_seed(0)
    encoder = build_encoder("resnet18", 4).eval()
    x = torch.rand(2, 3, 32, 32)
    torch.save({"state_dict": {f"module.backbone.{k}": v for k, v in encoder.state_dict().items()}}, tmp_path / "ssl.pt")
    save_encoder(tmp_path / "own.safetensors", encoder)
    save_file({k: v.contiguous() for k, v in encoder.state_dict().items()}, str(tmp_path / "plain.safetensors"))
    with torch.no_grad():
        for path, prefix in ((tmp_path / "ssl.pt", "backbone."), (tmp_path / "own.safetensors", ""), (tmp_path / "plain.safetensors", "")):
            assert torch.allclose(load_external_encoder(path, "resnet18", prefix)(x), encoder(x)), path


@pytest.mark.parametrize("damage, message", [
    (lambda s: s.pop("layer2.0.bn1.running_var"), "missing tensor layer2.0.bn1.running_var"),
    (lambda s: s.__setitem__("layer9.weight", torch.zeros(1)), "unexpected tensor layer9.weight"),
    (lambda s: s.__setitem__("layer1.0.conv1.weight", torch.zeros(4, 4, 5, 5)), "tensor layer1.0.conv1.weight has shape"),
    (lambda s: s["layer3.1.bn2.weight"].__setitem__(0, float("nan")), "tensor layer3.1.bn2.weight holds NaN"),
])
def test_damaged_weights_are_one_line_errors_naming_the_tensor(tmp_path, damage, message):
    state = {k: v.clone() for k, v in build_encoder("resnet18", 4).state_dict().items()}
    damage(state)
    torch.save(state, tmp_path / "damaged.pt")
    with pytest.raises(ArtifactError, match=message) as info:
        load_external_encoder(tmp_path / "damaged.pt", "resnet18")
    assert "damaged.pt" in str(info.value) and "\n" not in str(info.value)


def _png(path, size, colour):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB" if colour else "L", size, colour or 128).save(path)


def test_image_folders_flat_or_by_class_become_32x32_uint8(tmp_path):
    _png(tmp_path / "a" / "cat" / "1.png", (40, 30), (255, 0, 0))
    _png(tmp_path / "a" / "dog" / "2.jpg", (96, 96), None)
    (tmp_path / "a" / "notes.txt").write_text("not an image")
    images = load_image_folder(tmp_path / "a")
    assert images.shape == (2, 3, 32, 32) and images.dtype == torch.uint8
    assert images[0, :, 16, 16].tolist() == [255, 0, 0] and images[1, :, 0, 0].tolist() == [128, 128, 128]
    with pytest.raises(ValueError, match="at least 2"):
        load_image_folder(tmp_path / "a" / "cat")
    (tmp_path / "a" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="broken.png: named as PNG but its bytes are no image format read here"):
        load_image_folder(tmp_path / "a")


def test_scan_and_purify_on_a_harness_encoder(tmp_path, capsys):
    torch.manual_seed(0)
    save_encoder(tmp_path / "suspect.safetensors", build_encoder("resnet18", 4))
    for i in range(8):
        _png(tmp_path / "data" / f"{i}.png", (32, 32), (30 * i, 255 - 30 * i, 100))
    code = main(["scan", str(tmp_path / "suspect.safetensors"), "--data", str(tmp_path / "data"), "--steps", "5",
                 "--json", str(tmp_path / "scan.json")])
    report = json.loads((tmp_path / "scan.json").read_text())
    assert code == (1 if report["flagged"] else 0) and report["images"] == 8
    assert "evidence: the smallest mask" in capsys.readouterr().out
    out = tmp_path / "purified.safetensors"
    assert main(["purify", str(tmp_path / "suspect.safetensors"), "--data", str(tmp_path / "data"), "--defense", "mimic",
                 "--out", str(out), "--set", "budget_fraction=0.001", "--set", "defense_batch=4"]) == 0
    purified = load_external_encoder(out, "resnet18")
    assert purified(torch.rand(1, 3, 32, 32)).shape == (1, 32)
    sidecar = json.loads(out.with_suffix(".json").read_text())
    assert sidecar["defense"] == "mimic" and set(sidecar["meta"]["mi_per_stage"]) == {"layer1", "layer2", "layer3", "layer4"}
    assert sidecar["budget"]["fraction"] == 0.001 and sidecar["steps"] and sidecar["seconds"] > 0 and len(sidecar["source_sha256"]) == 64


def test_bad_input_exits_2_with_one_line(tmp_path, capsys):
    assert main(["scan", str(tmp_path / "missing.pt"), "--data", str(tmp_path)]) == 2
    assert "missing.pt: no such file" in capsys.readouterr().err
    assert main(["purify", str(tmp_path / "x.pt"), "--data", str(tmp_path), "--defense", "mimick", "--out", "o"]) == 2
    assert "did you mean 'mimic'" in capsys.readouterr().err


def test_export_writes_a_folder_that_loads_back(tmp_path):
    assert main(["export", "--dataset", "digits", "--count", "3", "--out", str(tmp_path / "png")]) == 0
    from harness.data import load_dataset

    assert torch.equal(load_image_folder(tmp_path / "png"), load_dataset("digits", "test", None, False).images[:3])
