"""`harness evaluate`: ACC and ASR of a user's encoder with the profile's probe and splits, as a table and JSON."""

import json

import torch
import torchvision

from harness.encoder_files import save_encoder
from harness.store import ArtifactStore
from harness.cli import main
from harness.evaluate import evaluate
from harness.geometry import InputGeometry, with_geometry
from harness.layouts import load_checkpoint
from harness.models import build_encoder
from harness.pipeline import Workbench
from harness.profiles import get_profile, with_overrides
from harness.triggers import make_trigger

MICRO = ["--set", "downstream_train_size=200", "--set", "downstream_test_size=100", "--set", "probe_epochs=3"]


def _expected(encoder, trigger_size=10, target=1):
    profile = with_overrides(get_profile("tiny"), [m for m in MICRO if m != "--set"])
    bench = Workbench(profile, ArtifactStore("unused"), torch.device("cpu"))
    train, test = bench.downstream("digits")
    return evaluate(encoder, train, test, make_trigger("checkerboard", trigger_size), target, bench.probe_config(), 0, torch.device("cpu"))


def test_evaluate_reports_what_harness_evaluate_computes(tmp_path, capsys):
    torch.manual_seed(0)
    encoder = build_encoder("resnet18", 4).eval()
    save_encoder(tmp_path / "e.safetensors", encoder)
    assert main(["evaluate", str(tmp_path / "e.safetensors"), "--downstream", "digits", "--trigger", "checkerboard", "--target", "1",
                 "--json", str(tmp_path / "m.json"), *MICRO]) == 0
    out = capsys.readouterr().out
    assert "ACC %" in out and "ASR(all) %" in out and "ASR(non-target) %" in out and "target class 1" in out
    report = json.loads((tmp_path / "m.json").read_text())
    expected = _expected(encoder)
    assert {k: report[k] for k in ("acc", "asr_all", "asr_nontarget", "n_test")} == {
        k: getattr(expected, k) for k in ("acc", "asr_all", "asr_nontarget", "n_test")}
    assert report["probe"]["kind"] == "linear" and report["trigger"]["pixels"] == 100


def test_evaluate_applies_the_encoder_geometry_as_scan_and_purify_do(tmp_path):
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), tmp_path / "tv.pth")
    assert main(["evaluate", str(tmp_path / "tv.pth"), "--downstream", "digits", "--trigger", "checkerboard", "--target", "1",
                 "--image-size", "48", "--json", str(tmp_path / "m.json"), *MICRO]) == 0
    report = json.loads((tmp_path / "m.json").read_text())
    geometry = InputGeometry(48, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    assert report["geometry"] == geometry.as_dict() and report["layout"] == "torchvision"
    assert report["acc"] == _expected(with_geometry(load_checkpoint(tmp_path / "tv.pth").encoder, geometry)).acc


def test_evaluate_bad_input_exits_2_with_one_line(tmp_path, capsys):
    save_encoder(tmp_path / "e.safetensors", build_encoder("resnet18", 4))
    assert main(["evaluate", str(tmp_path / "e.safetensors"), "--downstream", "digits", "--trigger", "checkerboard", "--target", "10", *MICRO]) == 2
    assert "target class 10 is not a class of digits" in capsys.readouterr().err
    assert main(["evaluate", str(tmp_path / "e.safetensors"), "--downstream", "digitz", "--trigger", "checkerboard", "--target", "1"]) == 2
    assert "did you mean 'digits'" in capsys.readouterr().err
