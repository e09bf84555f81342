"""benchmarks/calibrate.py: the profile rule's two criteria, measured for a setting, on a micro profile."""


import pytest

from harness.pipeline import Workbench
from harness.profiles import USABLE_MARGIN
from tests.conftest import load_script

MICRO = ["width=4", "pretrain_size=256", "ssl_epochs=1", "attack_epochs=1", "shadow_size=128", "downstream_train_size=256",
         "downstream_test_size=128", "probe_epochs=30", "ssl_batch=64", "attack_batch=64"]


def _calibrate():
    return load_script("benchmarks/calibrate.py").main


def _micro(tmp_path):
    return [arg for field in MICRO for arg in ("--set", field)] + ["--seeds", "1", "--downstream", "digits", "--cache-dir", str(tmp_path)]


@pytest.mark.parametrize("argv, message", [
    (["implant"], "implant takes one attack"),
    (["usability", "bassl"], "implant takes one attack"),
    (["implant", "bassl", "--attack-set", "inserted_sharee=1"], "unknown setting 'inserted_sharee'"),
    (["implant", "bassl", "--attack-set", "inserted_share=x"], "inserted_share takes a float"),
    (["implant", "bassl", "--attack-set", "inserted_share"], "--attack-set takes field=value"),
    (["usability", "--set", "width=0"], "width must be positive"),
    (["usability", "--attack-set", "inserted_share=1"], "--attack-set is an attack's setting"),
    (["implant", "bassl", "--attack-set", "inserted_share=1.5"], "inserted_share and poison_rate must be in [0, 1]"),
    (["usability", "--downstream", "fminst"], "unknown downstream task ['fminst']"),
    (["usability", "--seeds", "0"], "--seeds and --threads take a positive whole number"),
    (["usability", "--threads", "0"], "--seeds and --threads take a positive whole number"),
])
def test_bad_arguments_are_one_line_usage_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        _calibrate()(argv)
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_usability_prints_every_pair_and_exits_by_the_criterion(tmp_path, capsys):
    code = _calibrate()(["usability", *_micro(tmp_path)])
    out = capsys.readouterr().out.splitlines()
    header, pair, summary = out[0], out[1], out[-1]
    assert header == "calibrate: profile tiny on cpu, fp32"
    assert pair.startswith("seed 0 digits: clean ") and f"margin >= {USABLE_MARGIN:g}" in pair
    pixels = float(pair.split("raw pixels, linear probe ")[1].split()[0])
    assert 50 < pixels <= 100 and ("NOT beaten" in pair) == (float(pair.split("clean ")[1].split()[0]) <= pixels)
    clean, random = (float(pair.split(f"{name} ")[1].split()[0]) for name in ("clean", "random"))
    assert abs(float(pair.split("margin ")[1].split()[0]) - (clean - random)) < 0.02
    assert (code == 0) == ("NOT usable" not in pair)
    assert summary == f"usable on {int(code == 0)} of 1 ({', '.join(MICRO)})"


def test_implant_reads_the_attack_setting_and_the_profile_bound(tmp_path, capsys, monkeypatch):
    seen = []
    suspect = Workbench.suspect

    def recording(self, attack, downstream, seed, overrides=None, scenario=""):
        seen.append((attack, overrides))
        return suspect(self, attack, downstream, seed, overrides, scenario=scenario)

    monkeypatch.setattr(Workbench, "suspect", recording)
    code = _calibrate()(["implant", "bassl", "--attack-set", "inserted_share=1.0", *_micro(tmp_path), "--set", "implant_asr_all=0"])
    out = capsys.readouterr().out.splitlines()
    assert out[1].startswith("seed 0 digits patch10-ff0000: ACC ") and "(implanted: ASR(all) >= 0)" in out[1]
    assert code == 0 and out[-1].startswith("implanted on 1 of 1 (") and seen == [("bassl", {"inserted_share": 1.0})]
