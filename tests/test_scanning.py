"""`harness scan --detector`: each detector's verdict is read from its statistic by its defense's rule, and says so."""

import json

import pytest
import torch

from defenses.decree import DecreeConfig
from defenses.ssl_cleanse import SSLCleanseConfig
from harness.cli import main
from harness.contract import Budget
from harness.power import read_table
from harness.profiles import get_profile
from harness.scanning import DETECTORS, detector
from harness.strict_json import restore_non_finite


def test_a_scan_runs_by_default_as_long_as_its_printed_power_was_measured():
    assert set(DETECTORS) == {"decree", "ssl_cleanse"}
    tiny, table = get_profile("tiny"), read_table()
    for name, found in DETECTORS.items():
        assert found.length_at(tiny) == table["detectors"][name]["profiles"]["tiny"]["steps"]  # no "(measured at ...)" note
    budget = Budget.of(tiny, torch.device("cpu"))
    assert DETECTORS["decree"].length_at(tiny) == DecreeConfig().steps(budget).inversion_steps  # as its defense's rows ran
    assert DETECTORS["ssl_cleanse"].length_at(tiny) == SSLCleanseConfig().steps(budget).inversion_epochs
    assert DETECTORS["decree"].length_at(get_profile("small")) > DETECTORS["decree"].length_at(tiny)
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
    assert (found["statistic"], found["value"], found["rule"]) == (statistic, found[statistic], DETECTORS[name].rule)
    assert f"detector: {DETECTORS[name].title} on 8 clean images" in out and f"2 {DETECTORS[name].unit}" in out
    assert ("BACKDOOR SUSPECTED" in out) == found["flagged"] and "power:" in out and found["power"][0].startswith("power:")
    if name == "ssl_cleanse":
        assert len(found["mask_l1_shares"]) == len(found["hit_rates"]) == len(found["cluster_sizes"]) == 8
        assert f"anomaly index among the 8 clusters' masks is {found['anomaly_index']:.2f}" in out


def test_an_unknown_detector_is_one_line_and_exit_2(data, suspect, capsys):
    assert main(["scan", str(suspect), "--data", str(data), "--detector", "neural_cleanse"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown detector 'neural_cleanse'" in err[0] and "decree, ssl_cleanse" in err[0]
