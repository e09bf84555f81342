"""The CLI's exit codes are a contract (0 clean/done, 1 suspected, 2 bad input, 3 internal error), and it writes
nothing of the user's over: outputs are checked before any work, and replaced only with --force."""

import hashlib
import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from harness import cli
from harness.encoder_files import load_encoder, save_encoder
from harness.cli import main
from harness.models import ArchConfig, Encoder, build_encoder
from tests.test_hostile_files import _harness_file, _png_header_only

PURIFY_FAST = ["--defense", "mimic", "--set", "budget_fraction=0.001", "--set", "defense_batch=4"]


def _one_error_line(capsys) -> str:
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("harness: "), captured.err
    return lines[0]


def test_the_exit_code_table_is_documented():
    for line in ("0 ", "1 ", "2 ", "3 ", "--debug"):
        assert line in cli.__doc__


def _sparse_pt(tmp_path: Path) -> Path:
    state = build_encoder("resnet18", 4).state_dict()
    state["layer1.0.conv1.weight"] = state["layer1.0.conv1.weight"].to_sparse()
    torch.save(state, tmp_path / "sparse.pt")
    return tmp_path / "sparse.pt"


def _bomb_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "bombs"
    folder.mkdir()
    Image.new("RGB", (32, 32)).save(folder / "a.png")
    _png_header_only(folder / "bomb.png", 20000, 20000)
    return folder


@pytest.mark.parametrize("case", ["bomb png", "sparse tensor", "negative width", "blocks [2, 2]", "steps 0", "json is a directory"])
def test_bad_input_to_scan_exits_2_with_one_line_and_no_verdict(tmp_path, data, suspect, capsys, case):
    encoder, folder, extra = suspect, data, []
    if case == "bomb png":
        folder = _bomb_folder(tmp_path)
    elif case == "sparse tensor":
        encoder = _sparse_pt(tmp_path)
    elif case == "negative width":
        encoder = _harness_file(tmp_path, "neg.safetensors", arch_config=json.dumps({"width": -4}))
    elif case == "blocks [2, 2]":
        encoder = tmp_path / "short.safetensors"  # a self-consistent file of two stages: every tensor it names fits
        save_encoder(encoder, Encoder(ArchConfig(width=4, blocks=(2, 2))))
    elif case == "steps 0":
        extra = ["--steps", "0"]
    else:
        (tmp_path / "report").mkdir()
        extra = ["--json", str(tmp_path / "report")]
    assert main(["scan", str(encoder), "--data", str(folder), "--steps", "1", *extra]) == 2
    line = _one_error_line(capsys)
    assert "Traceback" not in line
    assert capsys.readouterr().out == ""


def test_an_internal_error_exits_3_with_one_line_and_debug_gives_the_traceback(data, suspect, capsys, monkeypatch):
    import harness.scanning

    def broken(*args, **kwargs):
        raise RuntimeError("a bug in the detector\nwith a second line")

    monkeypatch.setattr(harness.scanning, "invert", broken)
    assert main(["scan", str(suspect), "--data", str(data), "--steps", "1"]) == 3
    line = _one_error_line(capsys)
    assert "internal error" in line and "RuntimeError: a bug in the detector" in line and "--debug" in line
    assert main(["--debug", "scan", str(suspect), "--data", str(data), "--steps", "1"]) == 3
    assert "Traceback (most recent call last)" in capsys.readouterr().err
    assert main(["scan", str(suspect), "--data", str(data), "--steps", "1", "--debug"]) == 3  # after the command too
    assert "Traceback (most recent call last)" in capsys.readouterr().err


def test_scan_exits_0_or_1_with_its_verdict_and_will_not_replace_a_report_without_force(tmp_path, data, suspect, capsys):
    report = tmp_path / "scan.json"
    code = main(["scan", str(suspect), "--data", str(data), "--steps", "2", "--json", str(report)])
    assert code == (1 if json.loads(report.read_text())["flagged"] else 0)
    capsys.readouterr()
    report.write_text("mine")
    assert main(["scan", str(suspect), "--data", str(data), "--steps", "2", "--json", str(report)]) == 2
    assert "--force" in _one_error_line(capsys) and report.read_text() == "mine"
    assert main(["scan", str(suspect), "--data", str(data), "--steps", "2", "--json", str(report), "--force"]) in (0, 1)
    assert json.loads(report.read_text())["images"] == 8


def test_purify_never_replaces_its_input(tmp_path, data, suspect, capsys):
    before = suspect.read_bytes()
    for force in ([], ["--force"]):
        assert main(["purify", str(suspect), "--data", str(data), "--out", str(suspect), *PURIFY_FAST, *force]) == 2
        assert "input" in _one_error_line(capsys)
    assert suspect.read_bytes() == before
    victim = tmp_path / "victim.pt"
    torch.save(build_encoder("resnet18", 4).state_dict(), victim)
    before = victim.read_bytes()
    assert main(["purify", str(victim), "--data", str(data), "--out", str(victim), *PURIFY_FAST, "--force"]) == 2
    assert victim.read_bytes() == before


def test_purify_out_must_be_a_safetensors_file_beside_its_own_sidecar(tmp_path, data, suspect, capsys):
    assert main(["purify", str(suspect), "--data", str(data), "--out", str(tmp_path / "purified.json"), *PURIFY_FAST]) == 2
    assert ".safetensors" in _one_error_line(capsys)
    assert not (tmp_path / "purified.json").exists()


def test_purify_refuses_an_input_detector_in_one_line_and_writes_nothing(tmp_path, data, suspect, capsys):
    out = tmp_path / "purified.safetensors"
    assert main(["purify", str(suspect), "--data", str(data), "--out", str(out), *PURIFY_FAST, "--defense", "dede"]) == 2
    assert "purifies nothing" in _one_error_line(capsys)
    assert not out.exists() and not out.with_suffix(".json").exists()


def test_purify_checks_its_outputs_before_any_work(tmp_path, data, suspect, capsys, monkeypatch):
    import harness.images

    def no_work(*args, **kwargs):
        raise AssertionError("work started before the outputs were checked")

    monkeypatch.setattr(harness.images, "load_image_folder", no_work)
    (tmp_path / "afile").write_text("a file, not a folder")
    assert main(["purify", str(suspect), "--data", str(data), "--out", str(tmp_path / "afile" / "p.safetensors"), *PURIFY_FAST]) == 2
    assert "afile" in _one_error_line(capsys)
    (tmp_path / "taken.json").write_text("the user's notes")
    assert main(["purify", str(suspect), "--data", str(data), "--out", str(tmp_path / "taken.safetensors"), *PURIFY_FAST]) == 2
    assert "taken.json" in _one_error_line(capsys) and (tmp_path / "taken.json").read_text() == "the user's notes"


def test_purify_with_force_replaces_and_hashes_the_bytes_it_loaded(tmp_path, data, suspect, capsys, monkeypatch):
    import harness.images

    original = hashlib.sha256(suspect.read_bytes()).hexdigest()
    real = harness.images.load_image_folder

    def meanwhile(*args, **kwargs):  # the encoder file changes on disk after it was read
        save_encoder(suspect, build_encoder("resnet18", 4))
        return real(*args, **kwargs)

    monkeypatch.setattr(harness.images, "load_image_folder", meanwhile)
    out = tmp_path / "p.safetensors"
    out.write_text("old")
    out.with_suffix(".json").write_text("old")
    assert main(["purify", str(suspect), "--data", str(data), "--out", str(out), *PURIFY_FAST, "--force"]) == 0
    sidecar = json.loads(out.with_suffix(".json").read_text())
    assert sidecar["source_sha256"] == original != hashlib.sha256(suspect.read_bytes()).hexdigest()
    load_encoder(out)  # the purified encoder, not the old bytes


def test_export_checks_its_range_and_will_not_replace_images_without_force(tmp_path, capsys):
    out = tmp_path / "png"
    assert main(["export", "--dataset", "digits", "--count", "3", "--offset", "100000", "--out", str(out)]) == 2
    assert "offset" in _one_error_line(capsys)
    assert main(["export", "--dataset", "digits", "--count", "0", "--out", str(out)]) == 2
    _one_error_line(capsys)
    assert main(["export", "--dataset", "digits", "--count", "2", "--out", str(out)]) == 0
    capsys.readouterr()
    first = sorted(out.iterdir())[0]
    first.write_bytes(b"the user's image")
    assert main(["export", "--dataset", "digits", "--count", "2", "--out", str(out)]) == 2
    assert "--force" in _one_error_line(capsys) and first.read_bytes() == b"the user's image"
    assert main(["export", "--dataset", "digits", "--count", "2", "--out", str(out), "--force"]) == 0
    assert first.read_bytes() != b"the user's image"
