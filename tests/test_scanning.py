"""`harness scan --detector`: each detector's verdict is read from its statistic by its defense's rule, and says so."""

import json

import pytest

from defenses.decree import DecreeConfig
from defenses.ssl_cleanse import SSLCleanseConfig
from harness.cli import main
from harness.scanning import DETECTORS, detector
from harness.strict_json import restore_non_finite


def test_the_detectors_run_their_defenses_defaults_a_tenth_as_long_by_default():
    assert set(DETECTORS) == {"decree", "ssl_cleanse"}
    assert DETECTORS["decree"].default_length == DecreeConfig().inversion_steps // 10 == 400
    assert DETECTORS["ssl_cleanse"].default_length == SSLCleanseConfig().inversion_epochs // 10 == 100
    with pytest.raises(ValueError, match="unknown detector 'ssl-cleanse'; did you mean 'ssl_cleanse'"):
        detector("ssl-cleanse")


@pytest.mark.parametrize("name, statistic, rule", [
    ("decree", "l1_share", lambda r: r["l1_share"] < r["flag_below"]),
    ("ssl_cleanse", "anomaly_index", lambda r: r["anomaly_index"] > r["flag_above"]),
])
def test_a_scan_reports_its_detector_its_statistic_and_a_verdict_that_follows_the_rule(tmp_path, data, suspect, capsys, name,
                                                                                       statistic, rule):
    report = tmp_path / "report.json"
    code = main(["scan", str(suspect), "--data", str(data), "--detector", name, "--steps", "2", "--json", str(report)])
    out = capsys.readouterr().out
    found = restore_non_finite(json.loads(report.read_text()))  # an anomaly index is inf when the shares' MAD is 0
    assert found["detector"] == name and found["length"] == 2 and found["length_unit"] == DETECTORS[name].unit
    assert statistic in found and found["flagged"] == rule(found) and code == (1 if found["flagged"] else 0)
    assert f"detector: {DETECTORS[name].title} on 8 clean images" in out and f"2 {DETECTORS[name].unit}" in out
    assert ("BACKDOOR SUSPECTED" in out) == found["flagged"] and "power:" in out and found["power"][0].startswith("power:")
    if name == "ssl_cleanse":
        assert len(found["mask_l1_shares"]) == len(found["hit_rates"]) == len(found["cluster_sizes"]) == 8
        assert f"anomaly index among the 8 clusters' masks is {found['anomaly_index']:.2f}" in out


def test_an_unknown_detector_is_one_line_and_exit_2(data, suspect, capsys):
    assert main(["scan", str(suspect), "--data", str(data), "--detector", "neural_cleanse"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown detector 'neural_cleanse'" in err[0] and "decree, ssl_cleanse" in err[0]
