"""The option table shared by the pytest plugin and `harness run`: names, parsers, checks, the grid, `harness list`."""

import dataclasses
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.cli import build_parser, main
from harness.options import (
    BY_NAME, OPTIONS, RUN_OPTIONS, SESSION_OPTIONS, OptionError, Settings,
    device_for_worker, resolve, values_of,
)
from harness.planner import chosen_attacks, chosen_defenses, chosen_downstream, plan, planned_rows
from harness.profiles import Profile, get_profile
from harness.registry import ATTACKS, DEFENSES

ATTACKS.names(), DEFENSES.names()  # the method packages imported before pytester's in-process runs, which drop what they import
pytest_plugins = ["pytester"]
SUITES = Path(__file__).resolve().parents[1] / "suites"
VALUE_OPTIONS = [o.name for o in SESSION_OPTIONS if o.kind == "value"]


def test_every_option_is_a_setting_and_every_setting_an_option():
    derived = ["resolved_profile"]  # what resolve computes from the options
    assert [o.name for o in SESSION_OPTIONS] + derived == [f.name for f in dataclasses.fields(Settings)]


def test_nothing_given_means_the_tables_defaults():
    settings_ = resolve({})
    assert all(getattr(settings_, o.name) == o.default for o in SESSION_OPTIONS)


def test_only_the_grid_axes_go_without_the_prefix():
    assert sorted(o.flag for o in SESSION_OPTIONS if not o.flag.startswith("--harness-")) == ["--attack", "--defense", "--downstream"]
    assert len({o.dest for o in SESSION_OPTIONS}) == len(SESSION_OPTIONS) and all(o.dest.startswith("harness_") for o in SESSION_OPTIONS)


@given(name=st.sampled_from(VALUE_OPTIONS), text=st.text(max_size=16))
@settings(max_examples=400, deadline=None)
def test_any_text_for_any_option_is_settings_or_an_error_naming_the_option(name, text):
    try:
        parsed = resolve({name: text})
    except OptionError as e:
        assert str(e).startswith(BY_NAME[name].flag)
    else:
        assert isinstance(parsed, Settings)


@given(assignment=st.text(max_size=20))
@settings(max_examples=200, deadline=None)
def test_any_profile_override_is_settings_or_an_error_naming_the_option(assignment):
    try:
        parsed = resolve({"overrides": [assignment]})
    except OptionError as e:
        assert str(e).startswith("--harness-set: ")
    else:
        assert isinstance(parsed.resolved_profile, Profile)


@pytest.mark.parametrize("values, message", [
    ({"seeds": "0"}, "--harness-seeds: expected a number >= 1, got 0"),
    ({"seed": "one"}, "--harness-seed: expected a whole number, got 'one'"),
    ({"attack": "badencoder,nope"}, "--attack: unknown attack 'nope'"),
    ({"defense": ","}, "--defense: empty defense list"),
    ({"baseline_tolerance": "nan"}, "--harness-baseline-tolerance: expected a finite number >= 0"),
    ({"update_baseline": True}, "--harness-update-baseline needs --harness-baseline FILE"),
    ({"table_format": "html"}, "--harness-table-format: 'html' is not one of terminal"),
])
def test_bad_values_name_their_option(values, message):
    with pytest.raises(OptionError, match="^" + message.replace("(", r"\(").replace(")", r"\)")):
        resolve(values)


def test_names_parse_to_tuples_and_all_to_every_registered_one():
    parsed = resolve({"attack": "bassl, badencoder", "defense": "none,mimic", "downstream": "all"})
    assert parsed.attack == ("bassl", "badencoder") and parsed.downstream is None
    assert chosen_attacks(parsed) == ["bassl", "badencoder"] and chosen_defenses(parsed) == ["mimic"]
    assert chosen_downstream(parsed) == ["fmnist", "digits"]


def test_the_default_grid_takes_encoder_attacks_and_the_supervised_ones_only_when_asked_for_them():
    every = resolve({})
    supervised = [a for a in ATTACKS.names() if ATTACKS.has_tag(a, "supervised")]
    assert supervised and chosen_attacks(every) == [a for a in ATTACKS.names() if a not in supervised]
    assert chosen_attacks(every, supervised=True) == supervised
    assert chosen_defenses(every) == DEFENSES.names()


def test_harness_run_and_pytest_suites_choose_the_same_grid(pytester):
    pytester.makepyfile(test_effectiveness_copy=(SUITES / "test_effectiveness.py").read_text())
    items, _ = pytester.inline_genitems()
    collected = {spec for item in items for spec in item.callspec.params["case"].rows}
    every = resolve({})
    assert collected == set(planned_rows(plan(every, "effectiveness")))
    defended = {(s.attack, s.downstream, s.defense) for s in collected if s.defense != "none"}
    assert defended == {(a, t, d) for a in chosen_attacks(every) for t in chosen_downstream(every) for d in chosen_defenses(every)}


@pytest.mark.parametrize("requested, worker, gpus, device", [
    ("auto", None, 4, "auto"),  # no xdist: the usual choice
    ("auto", 0, 0, "auto"),  # no GPU: resolves to the CPU
    ("auto", 5, 4, "cuda:1"),
    ("cuda", 2, 2, "cuda:0"),
    ("cuda:3", 1, 4, "cuda:3"),  # an explicit device is kept
    ("cpu", 1, 4, "cpu"),
])
def test_each_xdist_worker_takes_its_own_gpu(requested, worker, gpus, device):
    assert device_for_worker(requested, worker, gpus) == device


def test_harness_run_takes_every_run_option_by_both_names():
    parser = build_parser()
    for opt in RUN_OPTIONS:
        text = opt.choices[0] if opt.choices else "1"
        for flag in opt.cli_flags:
            values = values_of(parser.parse_args(["run", flag] if opt.kind == "flag" else ["run", flag, text]))
            assert values[opt.name] == (True if opt.kind == "flag" else [text] if opt.kind == "list" else text), flag
    assert values_of(parser.parse_args(["run", "--format", "latex"]))["table_format"] == "latex"


@pytest.mark.parametrize("args, message", [
    (["--seeds", "0"], "harness: error: --harness-seeds: expected a number >= 1, got 0"),
    (["--attack", "badnets"], "harness: error: badnets: backdoors a classifier, not an encoder"),
    (["--harness-set", "widht=3"], "harness: error: --harness-set: unknown profile field 'widht'"),
])
def test_harness_run_refuses_what_pytest_refuses_with_one_line(args, message, capsys, tmp_path):
    assert main(["run", *args, "--results-dir", str(tmp_path / "r"), "--cache-dir", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1
    assert not (tmp_path / "c").exists()


def test_harness_run_plans_the_suites_rows(monkeypatch):
    """Per task and seed: the clean and random controls of every scenario, then per attack and scenario the suspect and
    each defense; an attack that brings its own trigger (BASSL) runs once, with controls of its trigger."""
    from harness import api
    from harness.pipeline import Workbench
    from harness.rows import Row

    asked = []

    def row(self, spec):
        asked.append((spec.attack, spec.defense, spec.scenario, spec.seed, spec.trigger_of))
        variant = f"{spec.trigger_of}'s trigger" if spec.trigger_of else spec.variant
        return Row(suite=spec.suite, profile="tiny", attack=spec.attack, defense=spec.defense, pretrain="fmnist",
                   downstream=spec.downstream, seed=spec.seed, acc=0.0, asr_all=0.0, asr_nontarget=0.0, n_test=1, n_nontarget=1,
                   variant=variant, scenario=spec.scenario)

    monkeypatch.setattr(Workbench, "row", row)
    rows = api.run_rows(resolve({"attack": "badencoder,bassl", "defense": "mimic", "downstream": "fmnist", "seeds": "2"}))
    scenarios = get_profile("tiny").scenarios
    assert len(scenarios) >= 2  # so that the per-scenario plan is tested
    expected = [*((c, "none", sc, 0, None) for sc in scenarios for c in ("clean", "random")),
                *(("badencoder", d, sc, 0, None) for sc in scenarios for d in ("none", "mimic")),
                ("clean", "none", "", 0, "bassl"), ("random", "none", "", 0, "bassl"), ("bassl", "none", "", 0, None),
                ("bassl", "mimic", "", 0, None)]
    assert sorted(asked, key=str) == sorted([*expected, *((a, d, sc, 1, t) for a, d, sc, _, t in expected)], key=str)  # each once
    assert sorted((r.attack, r.defense, r.scenario, r.variant) for r in rows if r.seed == 1) == sorted(
        (a, d, sc, f"{t}'s trigger" if t else "") for a, d, sc, _, t in expected)


def test_harness_list_names_what_a_command_line_can_use(capsys):
    for what, names in (("attacks", ATTACKS.names()), ("defenses", DEFENSES.names()), ("detectors", ["decree", "ssl_cleanse"]),
                        ("profiles", ["gpu", "paper", "small", "tiny"]),
                        ("fields", [f.name for f in dataclasses.fields(Profile) if f.name != "name"])):
        assert main(["list", what]) == 0
        lines = capsys.readouterr().out.splitlines()
        assert [line.split()[0] for line in lines] == names, what
    main(["list", "attacks"])
    assert "[supervised" in next(line for line in capsys.readouterr().out.splitlines() if line.startswith("badnets"))
    assert main(["list", "fields", "--profile", "small"]) == 0
    assert "width                    int              32" in capsys.readouterr().out


def test_every_command_takes_its_options_from_the_one_table():
    """Each `harness` command's parser has exactly the table's options for it (and --help, --debug), by their flags."""
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices  # argparse keeps its subparsers there
    for name, command in commands.items():
        flags = {f for action in command._actions for f in action.option_strings} - {"-h", "--help", "--debug"}
        positional = {action.dest for action in command._actions if not action.option_strings}
        expected = [o for o in OPTIONS if name in o.fronts]
        assert flags == {f for o in expected if not o.positional for f in o.cli_flags}, name
        assert positional == {o.name for o in expected if o.positional}, name


@pytest.mark.parametrize("argv, message", [
    (["scan", "enc.pt", "--data", "d", "--seed", "-1"], "argument --seed/--harness-seed: expected a number >= 0, got -1"),
    (["purify", "enc.pt", "--data", "d", "--out", "o.safetensors", "--defense", "nope"], "unknown defense 'nope'"),
    (["evaluate", "enc.pt", "--downstream", "mnist", "--trigger", "patch", "--target", "1"], "unknown dataset 'mnist'"),
    (["evaluate", "enc.pt", "--downstream", "fmnist", "--trigger", "patch"], "the following arguments are required: --target"),
    (["scan", "enc.pt", "--data", "d", "--mean", "1,2"], "argument --mean/--harness-mean: takes three comma-separated numbers"),
])
def test_a_commands_bad_option_is_one_line_naming_it(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_a_trigger_size_sweep_leaves_out_attacks_whose_trigger_has_no_size():
    from harness.planner import plan

    cases = plan(resolve({"attack": "badencoder,bassl,ctrl", "defense": "mimic", "downstream": "fmnist"}), "robustness")
    swept = {dict(c.params)["attack"] for c in cases if c.test == "test_trigger_size"}
    assert swept == {"badencoder", "bassl"}  # CTRL's frequency trigger is the same at every size: three equal pre-trainings
    assert "ctrl" in {dict(c.params)["attack"] for c in cases if c.test == "test_clean_ratio"}
