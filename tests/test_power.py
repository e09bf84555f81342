"""What a scan verdict is worth: the shipped power table, its wording, and the script that measures it."""

import dataclasses
import json

import pytest
import torch
from PIL import Image

from harness import power
from harness.encoder_files import save_encoder
from harness.cli import main
from harness.models import build_encoder
from harness.profiles import fields_digest, get_profile
from tests.conftest import load_script


def _records():
    return [
        {"kind": "clean", "downstream": None, "seed": 0, "flagged": False, "l1_share": 0.07},
        {"kind": "clean", "downstream": None, "seed": 1, "flagged": True, "l1_share": 0.04},
        {"kind": "badencoder", "downstream": "fmnist", "seed": 0, "flagged": True, "l1_share": 0.03, "asr_all": 100.0},
        {"kind": "badencoder", "downstream": "digits", "seed": 0, "flagged": False, "l1_share": 0.08, "asr_all": 99.0},
        {"kind": "badencoder", "downstream": "digits", "seed": 1, "flagged": True, "l1_share": 0.02, "asr_all": 12.0},
    ]


def test_summarise_counts_only_implanted_backdoors():
    entry = power.summarise(_records(), implanted_asr=50)
    assert entry["backdoored"] == {"encoders": 2, "flagged": 1} and entry["clean"] == {"encoders": 2, "flagged": 1}
    assert entry["not_implanted"] == 1


@pytest.mark.parametrize("detector", ["decree", "ssl_cleanse"])
def test_the_shipped_table_holds_each_detectors_measured_tiny_profile_and_its_scope(detector):
    table = power.read_table()
    entry = table["detectors"][detector]["profiles"]["tiny"]
    assert set(table["detectors"][detector]["profiles"]) == {"tiny"}
    backdoored = [r for r in entry["encoders"] if r["kind"] != "clean"]
    assert entry["backdoored"] == {"encoders": len(backdoored), "flagged": sum(r["flagged"] for r in backdoored)}
    assert all(r["asr_all"] >= entry["implanted_asr"] for r in backdoored) and entry["backdoored"]["encoders"] >= 4
    assert entry["clean"]["encoders"] >= 1 and {r["kind"] for r in entry["encoders"]} - {"clean"} == set(entry["attacks"])
    assert entry["profile_digest"] == fields_digest(get_profile("tiny")), "tiny changed since its power was measured: re-measure"
    lines = power.power_lines(detector, "tiny", entry["steps"], table)
    assert len(lines) == 2 and "backdoored" in lines[0] and "not on encoders like yours" in lines[1]


def test_a_measured_row_is_printed_with_its_scope():
    table = {"detectors": {"decree": {"profiles": {"tiny": {**power.summarise(_records(), 50), "steps": 400,
                                                            "encoder": "resnet18 width 16"}}}}}
    lines = power.power_lines("decree", "tiny", 50, table)
    assert "flagged 1 of 2 (50 %) backdoored and 1 of 2 (50 %) clean encoders" in lines[0]
    assert "not on encoders like yours" in lines[1] and "measured at 400 inversion steps; this scan ran 50" in lines[2]
    assert "not yet measured for decree on profile small" in power.power_lines("decree", "small", 400, table)[0]
    unmeasured = power.power_lines("ssl_cleanse", "tiny", 75, table)  # another detector's entry never speaks for it
    assert len(unmeasured) == 1 and "not yet measured for ssl_cleanse on profile tiny" in unmeasured[0]
    assert "--detector ssl_cleanse" in unmeasured[0]


def test_an_entry_measured_on_another_definition_of_the_profile_says_so():
    entry = {**power.summarise(_records(), 50), "steps": 400, "measured": "2026-01-01", "profile_digest": fields_digest(get_profile("tiny"))}
    table = {"detectors": {"decree": {"profiles": {"tiny": entry}}}}
    assert not any("another definition" in line for line in power.power_lines("decree", "tiny", 400, table,
                                                                               digest=entry["profile_digest"]))
    changed = fields_digest(dataclasses.replace(get_profile("tiny"), ssl_epochs=9))
    assert changed != entry["profile_digest"]
    stale = power.power_lines("decree", "tiny", 400, table, digest=changed)
    assert "measured 2026-01-01 on another definition of the tiny profile" in stale[-1]
    legacy = {"detectors": {"decree": {"profiles": {"tiny": {k: v for k, v in entry.items() if k != "profile_digest"}}}}}
    assert "another definition" in power.power_lines("decree", "tiny", 400, legacy, digest=changed)[-1]  # before digests


def test_an_unreadable_table_is_an_error_not_an_empty_one(tmp_path):
    (tmp_path / "t.json").write_text("{")
    with pytest.raises(ValueError, match="unreadable scan power table"):
        power.read_table(tmp_path / "t.json")
    (tmp_path / "t.json").write_text('{"profiles": {"tiny": {}}}')  # the layout before one table for each detector
    with pytest.raises(ValueError, match="needs a 'detectors' mapping"):
        power.read_table(tmp_path / "t.json")


def test_scan_never_calls_an_unflagged_encoder_backdoor_free(tmp_path, capsys, monkeypatch):
    torch.manual_seed(0)
    save_encoder(tmp_path / "e.safetensors", build_encoder("resnet18", 4))
    for i in range(4):
        Image.new("RGB", (32, 32), (60 * i, 20, 200 - 40 * i)).save(tmp_path / f"{i}.png")
    table = tmp_path / "power.json"
    table.write_text(json.dumps({"detectors": {"decree": {"profiles": {"tiny": {**power.summarise(_records(), 50), "steps": 400}}}}}))
    for shipped in (power.POWER_TABLE, table):
        monkeypatch.setattr(power, "POWER_TABLE", shipped)
        code = main(["scan", str(tmp_path / "e.safetensors"), "--data", str(tmp_path), "--steps", "3", "--json", str(tmp_path / "s.json"),
                     "--force"])  # the second scan replaces the first one's report
        out = capsys.readouterr().out
        assert "no backdoor" not in out.lower() and "power:" in out
        assert ("BACKDOOR SUSPECTED" in out) == (code == 1) != ("this does not show that it is clean" in out)
        assert json.loads((tmp_path / "s.json").read_text())["power"][0].startswith("power:")
    assert "flagged 1 of 2 (50 %) backdoored" in out


def _script():
    return load_script("benchmarks/scan_power.py")


def test_the_power_script_reads_a_cache_without_building_and_writes_only_a_complete_table(tmp_path, capsys):
    script = _script()
    table = tmp_path / "power.json"
    assert script.main(["--no-build", "--cache-dir", str(tmp_path / "cache"), "--seeds", "1", "--downstream", "digits", "--write", str(table)]) == 1
    out = capsys.readouterr().out
    assert "missing from" in out and "clean seed 0" in out and "not written" in out and not table.exists()
    assert not any((tmp_path / "cache").rglob("*.safetensors"))
    with pytest.raises(SystemExit):
        script.main(["--write", "--set", "width=4"])


def test_the_power_script_measures_a_detector_on_built_encoders(tmp_path, capsys):
    micro = ["width=4", "pretrain_size=128", "ssl_epochs=1", "attack_epochs=1", "shadow_size=64", "downstream_train_size=128",
             "downstream_test_size=64", "probe_epochs=5", "ssl_batch=64", "attack_batch=32", "defense_batch=16", "clean_ratio=0.25",
             "scenarios=patch", "budget_fraction=0.01"]
    settings = ["--cache-dir", str(tmp_path / "cache"), "--seeds", "1", "--downstream", "fmnist", "--device", "cpu",
                *[a for f in micro for a in ("--set", f)]]
    assert _script().main(["--detector", "ssl_cleanse", *settings]) == 0
    out = capsys.readouterr().out
    assert "SSL-Cleanse" in out and "clean: flagged" in out and "of 1\n" in out and "missing" not in out
    clean_line = next(line for line in out.splitlines() if line.strip().startswith("clean "))
    assert len(clean_line.split()) == 8  # encoder, -, -, seed, -, its l1_share and anomaly index, flagged: each recorded
    assert _script().main(["--attacks", "typo", *settings]) == 2
    err = capsys.readouterr().err
    assert err.startswith("scan_power: error: ") and "typo" in err and err.count("\n") == 1
