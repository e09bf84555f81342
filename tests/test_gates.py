import pytest
from hypothesis import given
from hypothesis import strategies as st

from harness.gates import Gate, check, check_baseline, load_baseline, parse_gates, save_baseline
from tests.test_tables import row


def test_parse_gates():
    assert parse_gates("asr_nontarget<=10, acc_drop<5") == (Gate("asr_nontarget", "<=", 10.0), Gate("acc_drop", "<", 5.0))


@pytest.mark.parametrize("text", ["asr<=10", "acc_drop=5", "asr_all<=ten", "<=3"])
def test_malformed_gates_name_the_form(text):
    with pytest.raises(ValueError, match="METRIC"):
        parse_gates(text)


def test_failing_gate_names_row_metric_value_and_bound():
    with pytest.raises(AssertionError, match=r"badencoder-fmnist-mimic-seed0: asr_nontarget = 30.00, required asr_nontarget <= 10"):
        check(row(asr=30, defense="mimic"), Gate("asr_nontarget", "<=", 10))


def test_acc_drop_is_relative_to_the_undefended_row():
    check(row(acc=78, defense="mimic"), Gate("acc_drop", "<=", 5), undefended=row(acc=80))
    with pytest.raises(AssertionError, match="undefended ACC 90.00"):
        check(row(acc=78, defense="mimic"), Gate("acc_drop", "<=", 5), undefended=row(acc=90))


@given(st.floats(0, 100), st.floats(0, 100))
def test_gate_agrees_with_the_comparison(value, bound):
    r = row(asr=value)
    if value <= bound:
        check(r, Gate("asr_all", "<=", bound))
    else:
        with pytest.raises(AssertionError):
            check(r, Gate("asr_all", "<=", bound))


def test_baseline_round_trip_and_regressions_read_like_assertions(tmp_path):
    path = tmp_path / "baseline.json"
    saved = row(0, acc=80.0, asr=5.0, defense="mimic")
    save_baseline([saved], path)
    baseline = load_baseline(path)
    check_baseline(saved, baseline, tolerance=2.0)  # itself passes
    check_baseline(row(0, acc=78.5, asr=6.9, defense="mimic"), baseline, tolerance=2.0)  # within tolerance
    with pytest.raises(AssertionError, match=r"regression for badencoder-fmnist-mimic-seed0: asr_all = 7.50, baseline 5.00"):
        check_baseline(row(0, acc=80.0, asr=7.5, defense="mimic"), baseline, tolerance=2.0)
    with pytest.raises(AssertionError, match=r"acc = 77.00, baseline 80.00"):
        check_baseline(row(0, acc=77.0, asr=5.0, defense="mimic"), baseline, tolerance=2.0)
    check_baseline(row(1, acc=0.0, asr=100.0, defense="mimic"), baseline, tolerance=2.0)  # unknown rows are not judged


def test_saving_merges_rows_and_bad_files_are_clear_errors(tmp_path):
    path = tmp_path / "baseline.json"
    save_baseline([row(0, defense="mimic")], path)
    save_baseline([row(0, defense="ft")], path)
    assert len(load_baseline(path)) == 2
    with pytest.raises(ValueError, match="does not exist"):
        load_baseline(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="is not JSON"):
        load_baseline(tmp_path / "bad.json")
    (tmp_path / "odd.json").write_text('{"a": 1}')
    with pytest.raises(ValueError, match="map of row keys"):
        load_baseline(tmp_path / "odd.json")


@given(text=st.text(alphabet="asr_nontargetc<=>0123456789.,- ", max_size=30))
def test_any_gate_text_parses_or_is_a_value_error(text):
    try:
        gates = parse_gates(text)
    except ValueError as e:
        assert "METRIC" in str(e)
        return
    assert all(g.metric in ("acc", "asr_all", "asr_nontarget", "acc_drop") for g in gates)


def test_the_gate_reads_each_row_as_it_is_now_and_only_defended_rows(tmp_path):
    from harness.gates import failures, gated

    before, now = row(0, asr=50.0, defense="mimic"), row(0, asr=5.0, defense="mimic")
    assert failures([before, now], (Gate("asr_all", "<=", 10),)) == []  # a re-run appended the fixed row after the old one
    assert len(failures([now, before], (Gate("asr_all", "<=", 10),))) == 1
    assert gated([row(0, asr=100.0), row(0, attack="clean"), before, now]) == [now]
    path = tmp_path / "baseline.json"
    save_baseline([row(0, asr=10.0)], path)  # an undefended suspect whose attack got stronger is no regression to gate
    assert failures([row(0, asr=100.0), now], (), load_baseline(path)) == []


def test_a_supervised_defended_row_is_read_against_the_classifier_with_its_head_refitted():
    import dataclasses

    from harness.gates import failures

    def supervised(variant, acc, defense="none"):
        return dataclasses.replace(row(0, acc=acc, attack="badnets", defense=defense), variant=variant)

    rows = [supervised("grid", 90.0), supervised("grid (refitted head)", 70.0), supervised("grid", 68.0, defense="ft")]
    assert failures(rows, (Gate("acc_drop", "<=", 5),)) == []  # 2 points below the refitted head, as the suite reads it
    assert len(failures(rows[::2], (Gate("acc_drop", "<=", 5),))) == 1  # without that row: the attack's own head
