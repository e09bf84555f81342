"""benchmarks/dede_budget.py: DeDe at several decoder lengths on a suspect and on the clean control, at micro size."""

import json

from tests.conftest import load_script

MICRO = ["width=4", "pretrain_size=128", "ssl_epochs=1", "attack_epochs=1", "shadow_size=64", "downstream_train_size=128",
         "downstream_test_size=64", "probe_epochs=5", "ssl_batch=64", "attack_batch=32", "defense_batch=16", "clean_ratio=0.25",
         "scenarios=patch"]


def _script():
    return load_script("benchmarks/dede_budget.py")


def test_each_length_runs_on_the_suspect_and_the_clean_control(tmp_path, capsys):
    out = tmp_path / "rows.json"
    assert _script().main(["--cache-dir", str(tmp_path / "cache"), "--epochs", "1,3", "--json", str(out), "--device", "cpu",
                           *[a for f in MICRO for a in ("--set", f)]]) == 0
    report = json.loads(out.read_text())
    rows = report["rows"]
    assert [(r["encoder"], r["decoder_epochs"]) for r in rows] == [("badencoder", 1), ("badencoder", 3), ("clean", 1), ("clean", 3)]
    assert all(r["scenario"] == "patch10" and 0 <= r["tpr"] <= 100 and 0 <= r["fpr"] <= 100 for r in rows)
    assert rows[0]["final_loss"] != rows[1]["final_loss"]  # the lengths ran as asked
    assert rows[0]["final_loss"] != rows[2]["final_loss"]  # the control is another encoder, not the suspect again
    assert len(capsys.readouterr().out.strip().splitlines()) == 4 and report["overrides"] == MICRO


def test_bad_input_is_one_line_before_any_work(tmp_path, capsys):
    taken = tmp_path / "rows.json"
    taken.write_text("the user's own file\n")
    cache = tmp_path / "cache"
    settings = ["--cache-dir", str(cache), "--device", "cpu", *[a for f in MICRO for a in ("--set", f)]]
    assert _script().main([*settings, "--json", str(taken)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("dede_budget: error: ") and "exists; pass --force to replace it" in err and err.count("\n") == 1
    assert taken.read_text() == "the user's own file\n"
    assert _script().main([*settings, "--attack", "typo"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("dede_budget: error: ") and "typo" in err and err.count("\n") == 1
    assert not cache.exists()
