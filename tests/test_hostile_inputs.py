"""Crafted inputs of the second hostile-input review (issue 33), each made here and nothing more than it needs.

Outputs that name a device, a FIFO, a link, a folder or one of the command's inputs;
image files of other formats under an image suffix (an EPS one would make Pillow run
Ghostscript: a stand-in `gs` on PATH that only touches a marker file shows whether it
ran); encoders whose forward pass overflows and defenses that diverge; rows files that
are FIFOs, devices or one huge torn line; rows of another shape; two runs racing for one
output; control characters in paths. Each answer is one line and the documented exit
code, and nothing of the user's is replaced.
"""

import contextlib
import io
import json
import math
import os
import re
import signal
import stat
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import harness
from harness.cli import main
from harness.encoder_files import save_encoder
from harness.images import load_image_folder
from harness.models import build_encoder
from harness.rows import ResultsStore
from harness.trigger_files import load_trigger
from tests.test_cli_contract import PURIFY_FAST, _one_error_line
from tests.test_tables import row


@contextlib.contextmanager
def no_hang(seconds: int = 60):
    """Fail instead of hanging when the code under test blocks (on a FIFO): a guard, not a time limit on speed."""
    def stop(*_):
        raise TimeoutError(f"blocked for {seconds} s")

    previous = signal.signal(signal.SIGALRM, stop)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _last_error_line(capsys) -> str:
    """The one error line of a command that printed its progress to stderr first."""
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines and lines[-1].startswith("harness: ") and not any("Traceback" in line for line in lines), lines
    return lines[-1]


def _node(path: Path, kind: str) -> None:
    """Put a `kind` at `path`: a FIFO, a symbolic link to a file of the user's, a folder, or a character device."""
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "symlink":
        (path.parent / "elsewhere.txt").write_text("the user's")
        path.symlink_to(path.parent / "elsewhere.txt")
    elif kind == "folder":
        path.mkdir()
    else:
        try:
            os.mknod(path, stat.S_IFCHR | 0o600, os.makedev(1, 3))  # what /dev/null is
        except PermissionError:
            pytest.skip("making a device node needs root")


def _same_node(path: Path, kind: str) -> bool:
    mode = os.lstat(path).st_mode
    return {"fifo": stat.S_ISFIFO, "symlink": stat.S_ISLNK, "folder": stat.S_ISDIR, "device": stat.S_ISCHR}[kind](mode)


# 1. outputs ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["device", "fifo", "symlink", "folder"])
@pytest.mark.parametrize("command", ["convert", "scan --json"])
def test_an_output_that_is_not_a_regular_file_is_never_replaced_even_with_force(tmp_path, data, suspect, capsys, kind, command):
    out = tmp_path / ("out.pth" if command == "convert" else "out.json")
    _node(out, kind)
    argv = (["convert", str(suspect), "--layout", "torchvision", "--out", str(out)] if command == "convert" else
            ["scan", str(suspect), "--data", str(data), "--steps", "1", "--json", str(out)])
    with no_hang():
        assert main([*argv, "--force"]) == 2
    assert "out." in _one_error_line(capsys)
    assert _same_node(out, kind)
    if kind == "symlink":
        assert (tmp_path / "elsewhere.txt").read_text() == "the user's"


def test_scan_never_writes_its_report_over_one_of_the_images_it_reads(tmp_path, data, suspect, capsys):
    image = sorted(data.glob("*.png"))[0]
    before = image.read_bytes()
    assert main(["scan", str(suspect), "--data", str(data), "--steps", "1", "--json", str(image), "--force"]) == 2
    assert "input" in _one_error_line(capsys)
    assert image.read_bytes() == before


def test_evaluate_never_writes_its_report_over_its_trigger_file(tmp_path, suspect, capsys):
    trigger = tmp_path / "trigger.png"
    Image.new("RGBA", (32, 32)).save(trigger)
    before = trigger.read_bytes()
    argv = ["evaluate", str(suspect), "--downstream", "fmnist", "--trigger", str(trigger), "--target", "0"]
    assert main([*argv, "--json", str(trigger), "--force"]) == 2
    assert "input" in _one_error_line(capsys)
    assert trigger.read_bytes() == before


def test_two_purify_runs_to_one_out_cannot_both_write_it_without_force(tmp_path, data, suspect, capsys, monkeypatch):
    import harness.api

    out, sidecar = tmp_path / "p.safetensors", tmp_path / "p.json"
    real = harness.api.purify_encoder

    def the_other_run_finishes_first(*args, **kwargs):
        result = real(*args, **kwargs)
        out.write_bytes(b"the other run's encoder")  # it passed the same existence check and published first
        return result

    monkeypatch.setattr(harness.api, "purify_encoder", the_other_run_finishes_first)
    assert main(["purify", str(suspect), "--data", str(data), "--out", str(out), *PURIFY_FAST]) == 2
    assert "--force" in _last_error_line(capsys)
    assert out.read_bytes() == b"the other run's encoder" and not sidecar.exists()


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_every_output_format_takes_the_umask_mode(tmp_path, suspect, suffix):
    previous = os.umask(0o022)
    try:
        assert main(["convert", str(suspect), "--layout", "torchvision", "--out", str(tmp_path / f"c{suffix}")]) == 0
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / f"c{suffix}").stat().st_mode) == 0o644


# 2. images: only the formats named, by signature and suffix --------------------------------------------------------

EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 32 32\n%%EndComments\nshowpage\n"


def _folder_with(tmp_path: Path, name: str, blob: bytes) -> Path:
    folder = tmp_path / "images"
    folder.mkdir()
    Image.new("RGB", (32, 32), (10, 200, 30)).save(folder / "good.png")
    (folder / name).write_bytes(blob)
    return folder


def test_an_eps_file_named_png_is_refused_without_running_ghostscript(tmp_path, stand_in_gs, suspect, capsys):
    folder = _folder_with(tmp_path, "x.png", EPS)
    with pytest.raises(ValueError, match="x.png"):
        load_image_folder(folder)
    assert main(["scan", str(suspect), "--data", str(folder), "--steps", "1"]) == 2
    assert "x.png" in _one_error_line(capsys)
    with pytest.raises(ValueError, match="x.png"):
        load_trigger(str(folder / "x.png"), 6)
    assert not stand_in_gs.exists()


def _encoded(fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (120, 30, 200)).save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


@pytest.mark.parametrize("fmt", ["TIFF", "GIF", "ICO", "PCX", "PPM", "SGI", "TGA", "JPEG2000", "JPEG", "BMP"])
def test_a_file_whose_bytes_are_another_format_than_its_suffix_is_refused(tmp_path, fmt):
    folder = _folder_with(tmp_path, "x.png", _encoded(fmt))
    with pytest.raises(ValueError, match="x.png"):
        load_image_folder(folder)


@pytest.mark.parametrize("name,fmt", [("a.png", "PNG"), ("a.jpg", "JPEG"), ("a.jpeg", "JPEG"), ("a.bmp", "BMP"), ("a.webp", "WEBP")])
def test_the_four_named_formats_load(tmp_path, name, fmt):
    assert load_image_folder(_folder_with(tmp_path, name, _encoded(fmt))).shape == (2, 3, 32, 32)


def _with_jpeg_size(blob: bytes, height: int, width: int) -> bytes:
    at = blob.index(b"\xff\xc0")  # baseline start-of-frame: marker, length (2), precision (1), height (2), width (2)
    return blob[: at + 5] + height.to_bytes(2, "big") + width.to_bytes(2, "big") + blob[at + 9 :]


def test_a_jpeg_whose_header_claims_more_pixels_than_its_bytes_hold_is_refused(tmp_path):
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(buffer, format="JPEG")
    folder = _folder_with(tmp_path, "x.jpg", _with_jpeg_size(buffer.getvalue(), 2000, 30000))
    with pytest.raises(ValueError, match="x.jpg"):
        load_image_folder(folder)


def test_a_large_flat_jpeg_at_the_lowest_quality_still_loads(tmp_path):
    buffer = io.BytesIO()  # the fewest bytes per pixel a real JPEG has: the density check must let it through
    Image.new("RGB", (2048, 2048), (90, 90, 90)).save(buffer, format="JPEG", quality=1)
    assert load_image_folder(_folder_with(tmp_path, "flat.jpg", buffer.getvalue())).shape == (2, 3, 32, 32)


# 3. non-finite values caught where they are made -------------------------------------------------------------------


@pytest.fixture
def overflowing(tmp_path) -> Path:
    """Every weight finite, the forward pass not: a BatchNorm whose scale and shift are 3e38."""
    torch.manual_seed(0)
    encoder = build_encoder("resnet18", 4)
    encoder.stem[1].weight.data.fill_(3e38)
    encoder.stem[1].bias.data.fill_(3e38)
    path = tmp_path / "overflowing.safetensors"
    save_encoder(path, encoder)
    return path


def test_an_encoder_that_overflows_in_its_forward_pass_is_bad_input(tmp_path, data, overflowing, capsys):
    report = tmp_path / "scan.json"
    assert main(["scan", str(overflowing), "--data", str(data), "--steps", "1", "--json", str(report)]) == 2
    line = _one_error_line(capsys)
    assert "non-finite" in line and "layer1" in line and not report.exists()
    assert main(["evaluate", str(overflowing), "--downstream", "fmnist", "--trigger", "patch", "--target", "0"]) == 2
    assert "non-finite" in _one_error_line(capsys)
    with pytest.raises(ValueError, match="non-finite"):
        harness.scan(overflowing, data, steps=1)


def test_a_diverging_defense_writes_nothing_and_exits_3(tmp_path, data, suspect, capsys):
    out = tmp_path / "p.safetensors"
    assert main(["purify", str(suspect), "--data", str(data), "--out", str(out), *PURIFY_FAST, "--set", "defense_lr=1e30"]) == 3
    assert "diverged" in _last_error_line(capsys)
    assert not out.exists() and not out.with_suffix(".json").exists()


def _strict(text: str):
    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=refuse)


def test_rows_and_reports_are_strict_json_and_tables_say_n_a(tmp_path, data, suspect, capsys):
    report = tmp_path / "scan.json"
    main(["scan", str(suspect), "--data", str(data), "--steps", "1", "--json", str(report)])
    _strict(report.read_text())
    store = ResultsStore(tmp_path / "results")
    store.append(row(seed=0, acc=80.0, asr=math.nan))
    store.append(row(seed=1, acc=math.inf, asr=3.0))  # one seed's NaN makes the mean over seeds n/a, not the other seed's
    for line in store.path.read_text().splitlines():
        _strict(line)
    read = store.rows()
    assert math.isnan(read[0].asr_all) and read[1].acc == math.inf  # each comes back as what it was
    capsys.readouterr()
    assert main(["table", str(tmp_path / "results"), "--format", "markdown"]) == 0
    out = capsys.readouterr().out
    cells = "\n".join(line for line in out.splitlines() if not line.startswith("n/a:"))  # the tables, not their note
    assert "n/a" in cells and not re.search(r"\b(nan|inf)\b", cells, re.IGNORECASE)
    assert "n/a: not a finite number" in out
    _strict((tmp_path / "results" / "results.json").read_text())


# 4. reads: regular files, bounded, in linear time ------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["fifo", "dev-zero"])
def test_a_rows_file_that_is_a_fifo_or_a_device_is_refused_without_blocking(tmp_path, capsys, kind):
    (tmp_path / "results").mkdir()
    rows = tmp_path / "results" / "rows.jsonl"
    if kind == "fifo":
        os.mkfifo(rows)
    else:
        rows.symlink_to("/dev/zero")
    with no_hang():
        assert main(["table", str(tmp_path / "results")]) == 2
    assert "rows.jsonl" in _one_error_line(capsys)


def test_a_huge_torn_line_is_read_in_linear_time(tmp_path, monkeypatch):
    store = ResultsStore(tmp_path)
    store.append(row(seed=0))
    with open(store.path, "a") as f:
        f.write("{" * 1_600_000 + row(seed=1).to_json() + "\n")
    calls = 0
    real = json.loads

    def counted(text, *args, **kwargs):
        nonlocal calls
        calls += 1
        if calls > 1000:
            raise AssertionError("json.loads was called at every '{' of the line: quadratic in its length")
        return real(text, *args, **kwargs)

    monkeypatch.setattr(json, "loads", counted)
    assert [r.seed for r in store.rows()] == [0, 1]


@pytest.mark.parametrize("kind", ["fifo", "dev-zero"])
def test_a_cache_digest_that_is_a_fifo_or_a_device_is_a_logged_miss_not_a_hang(tmp_path, kind):
    from harness.store import ArtifactStore

    store = ArtifactStore(tmp_path)
    store.record("eval-x", lambda: {"acc": 1.0})
    digest = next(tmp_path.rglob("*.json.sha256"))
    digest.unlink()
    if kind == "fifo":
        os.mkfifo(digest)
    else:
        digest.symlink_to("/dev/zero")
    with no_hang():
        assert store.record("eval-x", lambda: {"acc": 2.0})["acc"] == 2.0  # rebuilt: the digest could not be read


# 5. rows that are not of this version: reported and kept, never dropped silently ----------------------------------


def test_rows_with_an_extra_or_a_missing_field_are_reported_and_kept(tmp_path, capsys):
    results = tmp_path / "results"
    store = ResultsStore(results)
    for seed in range(3):
        store.append(row(seed=seed))
    extra = {**json.loads(row(seed=3).to_json()), "surprise": 1}
    missing = json.loads(row(seed=4).to_json())
    del missing["n_test"]
    misfits = [json.dumps(extra, sort_keys=True), json.dumps(missing, sort_keys=True)]
    with open(store.path, "a") as f:
        f.write("\n".join(misfits) + "\n")
    assert main(["table", str(results), "--format", "brief"]) == 0
    err = capsys.readouterr().err
    assert "2 line(s)" in err and "rows.jsonl" in err and "misfits.jsonl" in err
    assert (results / "misfits.jsonl").read_text().splitlines() == misfits
    assert len(store.rows()) == 3


# 6. exit codes: bad input is 2, on every command -------------------------------------------------------------------


def _rows_folder(tmp_path: Path, line: str | None = None) -> Path:
    folder = tmp_path / "results"
    ResultsStore(folder).append(row(seed=0))
    if line is not None:
        (folder / "rows.jsonl").write_text(line + "\n")
    return folder


def _malformed(tmp_path: Path, field: str, value) -> list[str]:
    record = json.loads(row(seed=0).to_json())
    record[field] = value
    return ["table", str(_rows_folder(tmp_path, json.dumps(record)))]


def _table_with_a_folder_at(tmp_path: Path, name: str) -> list[str]:
    folder = _rows_folder(tmp_path)
    (folder / name).mkdir()
    return ["table", str(folder)]


def _report_under_a_file(tmp_path: Path) -> list[str]:
    folder = _rows_folder(tmp_path)
    (tmp_path / "a-file").write_text("")
    return ["report", str(folder), "--out", str(tmp_path / "a-file" / "report.html")]


BAD_INPUT = {
    "run: unknown profile": lambda t, s, d: ["run", "--profile", "nope"],
    "list: unknown kind": lambda t, s, d: ["list", "nothing"],
    "table: acc is a string": lambda t, s, d: _malformed(t, "acc", "high"),
    "table: settings is a list": lambda t, s, d: _malformed(t, "settings", []),
    "table: results.csv is a folder": lambda t, s, d: _table_with_a_folder_at(t, "results.csv"),
    "table: report.html is a folder": lambda t, s, d: _table_with_a_folder_at(t, "report.html"),
    "export: offset past the end": lambda t, s, d: ["export", "--dataset", "fmnist", "--offset", "99999999", "--out", str(t / "x")],
    "convert: unknown layout": lambda t, s, d: ["convert", str(s), "--layout", "nope", "--out", str(t / "c.pth")],
    "scan: unknown device": lambda t, s, d: ["scan", str(s), "--data", str(d), "--device", "foo"],
    "purify: unknown device": lambda t, s, d: ["purify", str(s), "--data", str(d), "--out", str(t / "p.safetensors"), "--device", "foo"],
    "evaluate: unknown device": lambda t, s, d: ["evaluate", str(s), "--downstream", "fmnist", "--device", "foo"],
    "report: its folder is a file": lambda t, s, d: _report_under_a_file(t),
    "merge: a shard without rows": lambda t, s, d: ["merge", str(t / "none"), "--out", str(t / "merged")],
    "gate: neither gate nor baseline": lambda t, s, d: ["gate", str(_rows_folder(t))],
}


@pytest.mark.parametrize("case", sorted(BAD_INPUT))
def test_bad_input_exits_2_with_one_line_on_every_command(tmp_path, data, suspect, capsys, case):
    argv = BAD_INPUT[case](tmp_path, suspect, data)
    capsys.readouterr()
    assert main(argv) == 2
    assert _one_error_line(capsys).startswith("harness: error")


def test_the_api_refuses_zero_steps_with_a_value_error(data, suspect):
    with pytest.raises(ValueError, match="at least 1"):
        harness.scan(suspect, data, steps=0)


# 7. output hygiene -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["\x1b[31mred\x1b[0m.png", "two\nlines.png"])
def test_control_characters_in_a_file_name_are_escaped_in_the_error_line(tmp_path, suspect, capsys, name):
    folder = _folder_with(tmp_path, name, b"not an image")
    assert main(["scan", str(suspect), "--data", str(folder), "--steps", "1"]) == 2
    line = _one_error_line(capsys)
    assert "\x1b" not in line and repr(name)[1:-1].split(".")[0] in line
