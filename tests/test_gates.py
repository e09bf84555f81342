import pytest
from hypothesis import given
from hypothesis import strategies as st

from harness.gates import Gate, check, parse_gates
from tests.test_results import row


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
