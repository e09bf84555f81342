"""The pytest plugin, exercised through pytester in a throw-away project."""

import logging
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.planner import Case
from harness.plugin import _dist_chosen
from harness.pytest_progress import Eta, eta_line
from harness.registry import ATTACKS, DEFENSES

# pytester's in-process runs drop the modules first imported inside them; torch cannot be imported twice in a
# process. Registries read here import the method packages once, and they outlive every inner run.
ATTACKS.names(), DEFENSES.names()

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parents[1]
SUITES = ROOT / "suites"
# A micro profile: everything real (Fashion-MNIST, SimCLR, BadEncoder, probes), only tiny in size.
MICRO_FIELDS = ["width=4", "pretrain_size=256", "ssl_epochs=1", "attack_epochs=1", "shadow_size=128", "downstream_train_size=256",
                "downstream_test_size=128", "probe_epochs=30", "ssl_batch=64", "attack_batch=64", "budget_fraction=0.01"]
MICRO = [arg for field in MICRO_FIELDS for arg in ("--harness-set", field)]


@pytest.fixture
def project(pytester: pytest.Pytester) -> pytest.Pytester:
    # Another basename than suites/test_effectiveness.py, which the outer session may have imported already.
    pytester.makepyfile(test_effectiveness_copy=(SUITES / "test_effectiveness.py").read_text())
    return pytester


def test_help_shows_the_harness_group(project):
    result = project.runpytest("--help")
    result.stdout.fnmatch_lines(["*backdoor test harness*", "*--attack=NAMES*", "*--harness-profile=NAME*",
                                "*--harness-set=FIELD=VALUE*"])


def test_unknown_attack_fails_at_once_listing_the_registered(project):
    result = project.runpytest("--attack=nope")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*unknown attack 'nope'*Known attacks: *badencoder*"])


@pytest.mark.parametrize("args, message", [
    (["--defense=nad_typo"], "*unknown defense 'nad_typo'*"),
    (["--harness-profile=huge"], "*--harness-profile: unknown profile 'huge'*tiny*"),
    (["--downstream=mnist"], "*unknown dataset 'mnist'*"),
    (["--harness-device=tpu"], "*--harness-device: *tpu*"),
    (["--harness-seeds=0"], "*--harness-seeds: *>= 1*"),
    (["--harness-seed=-1"], "*--harness-seed: *>= 0*"),
    (["--harness-gate=asr<5"], "*--harness-gate: *METRIC*"),
    (["--harness-table-format=html"], "*--harness-table-format*'html'*terminal*"),
    (["--harness-baseline-tolerance=-1"], "*--harness-baseline-tolerance: *>= 0*"),
    (["--harness-baseline=/nonexistent/baseline.json"], "*baseline file*does not exist*"),
    (["--harness-update-baseline"], "*--harness-update-baseline needs --harness-baseline*"),
    (["--harness-set", "clean_ratio=2"], "*--harness-set: clean_ratio must be in (0, 1]*"),
    (["--harness-set", "trigger_size=40"], "*--harness-set: trigger_size must be between 1 and the image size 32*"),
    (["--harness-set", "widht=8"], "*--harness-set: unknown profile field 'widht'*"),
    (["--harness-set", "width=eight"], "*--harness-set: width takes a int*"),
    (["--harness-data-root=/nonexistent/datasets"], "*--harness-data-root /nonexistent/datasets is not a folder*"),
    (["--harness-results-dir=/dev/null"], "*--harness-results-dir /dev/null exists and is not a folder*"),
])
def test_bad_options_are_usage_errors(project, args, message):
    result = project.runpytest(*args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([message])


def test_collection_ids_read_like_table_rows(project):
    result = project.runpytest("--collect-only", "-q", "--attack=badencoder", "--downstream=fmnist,digits", "--harness-seeds=2")
    result.stdout.fnmatch_lines([
        "*test_controls[[]checkerboard-fmnist-seed0]", "*test_controls[[]patch-digits-seed1]",
        "*test_undefended[[]badencoder-patch-fmnist-seed0]", "*test_undefended[[]badencoder-checkerboard-digits-seed1]",
        "*test_defended[[]badencoder-checkerboard-fmnist-mimic-seed0]",
    ])


def test_header_shows_profile_and_overrides(project):
    result = project.runpytest("--collect-only", "--harness-set", "ssl_epochs=2")
    result.stdout.fnmatch_lines(["harness: profile tiny with ssl_epochs=2*"])


def test_micro_run_prints_the_table_and_same_seed_same_csv(project, tmp_path):
    csvs = []
    for run in ("a", "b"):
        result = project.runpytest_subprocess("--attack=badencoder", "--defense=mimic,decree", "--downstream=fmnist",
                                             f"--harness-cache-dir={tmp_path / run / 'cache'}",
                                             f"--harness-results-dir={tmp_path / run / 'results'}", *MICRO)
        result.stdout.fnmatch_lines(["*harness comparison (cells*", "*badencoder*fmnist*", "*harness table (mean*", "*badencoder*fmnist*none*",
                                     "*clean*fmnist*none*", "*random*fmnist*none*", "*written:*results.csv*"])
        csvs.append((tmp_path / run / "results" / "results.csv").read_bytes())
    assert csvs[0] == csvs[1]
    assert b"badencoder" in csvs[0]


PROGRESS_TESTS = """
    from harness.training import Progress

    def test_a():
        Progress("demo", 2).epoch(0, 10, loss=1.5)

    def test_b():
        Progress("demo", 2).epoch(1, 10, loss=0.5)
        assert False
"""


def test_progress_is_captured_with_its_test_and_the_dot_line_stays_intact(pytester):
    pytester.makepyfile(test_progress=PROGRESS_TESTS)
    result = pytester.runpytest_subprocess("--harness-profile=tiny")  # a harness session
    result.stdout.fnmatch_lines(["test_progress.py .F *", "*Captured log call*", "*[[]demo[]] epoch 2/2 loss 0.5000*img/s*"])
    result.stdout.no_fnmatch_line("*epoch 1/2*")  # the passing test's progress stays captured
    quiet = pytester.runpytest_subprocess("--harness-profile=tiny", "-q")
    quiet.stdout.fnmatch_lines([".F *[[]100%[]]"])
    quiet.stdout.no_fnmatch_line("*harness: profile*")
    quiet.stdout.no_fnmatch_line("*epoch 1/2*")


def test_live_logging_shows_progress_as_it_happens(pytester):
    pytester.makepyfile(test_progress=PROGRESS_TESTS)
    result = pytester.runpytest_subprocess("--log-cli-level=INFO")
    result.stdout.fnmatch_lines(["*live log call*", "*[[]demo[]] epoch 1/2 loss 1.5000*img/s*", "*PASSED*"])


def test_a_nested_session_leaves_the_harness_logger_as_it_found_it(pytester):
    log = logging.getLogger("harness")
    before = (log.level, list(log.handlers))
    pytester.makepyfile(test_nothing="def test_ok():\n    pass\n")
    assert pytester.runpytest("--harness-profile=tiny").ret == pytest.ExitCode.OK
    assert (log.level, list(log.handlers)) == before


def test_a_long_session_logs_how_far_it_is(pytester, monkeypatch):
    monkeypatch.setattr("harness.pytest_progress.ETA_EVERY", 0.0)  # a line after every test, as if each took minutes
    pytester.makepyfile(test_three="def test_a():\n    pass\n\ndef test_b():\n    pass\n\ndef test_c():\n    pass\n")
    result = pytester.runpytest("--harness-profile=tiny", "--log-cli-level=INFO")
    result.stdout.fnmatch_lines(["*harness: 1/3 tests done in 0m0?s, about 0m0?s left*", "*harness: 2/3 tests done in*"])
    result.stdout.no_fnmatch_line("*3/3 tests done*")  # the end needs no estimate


def test_eta_lines_estimate_the_rest_from_the_mean_so_far_at_most_once_a_minute():
    assert eta_line(12, 48, 600.0) == "harness: 12/48 tests done in 10m00s, about 30m00s left"
    assert eta_line(1, 3, 7300.0) == "harness: 1/3 tests done in 2h01m, about 4h03m left"
    eta = Eta(start=0.0)
    assert eta.finished(total=10, now=30.0) is None  # within the first minute
    assert eta.finished(total=10, now=61.0) == eta_line(2, 10, 61.0)
    assert eta.finished(total=10, now=100.0) is None  # within a minute of the last line
    assert eta.finished(total=10, now=125.0) == eta_line(4, 10, 125.0)


def test_the_header_of_a_session_begun_by_its_suites_follows_the_collection(project):
    result = project.runpytest("--collect-only")  # no harness option: the suite begins the session as it is collected
    result.stdout.fnmatch_lines(["collected * items", "harness: profile tiny (resnet18 width 16*"])


def _run_pytest(folder: Path, *args: str) -> tuple[float, subprocess.CompletedProcess]:
    """pytest in `folder` with only the plugins named by -p (none autoloaded): the harness's cost is all there is."""
    env = {**os.environ, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1", "PYTHONPATH": os.pathsep.join([str(ROOT), str(folder)])}
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args], cwd=folder, env=env,
                          capture_output=True, text=True)
    return time.perf_counter() - start, done


def test_an_unrelated_project_starts_as_fast_and_shows_nothing_of_the_harness(tmp_path):
    (tmp_path / "test_other.py").write_text("import sys\n\ndef test_one():\n    assert 'torch' not in sys.modules\n")
    runs: dict[bool, list[float]] = {False: [], True: []}
    outputs = {}
    for _ in range(3):
        for with_harness in (False, True):
            seconds, done = _run_pytest(tmp_path, *(["-p", "harness.plugin"] if with_harness else []))
            assert done.returncode == 0, done.stdout + done.stderr
            runs[with_harness].append(seconds)
            outputs[with_harness] = re.sub(r"in [0-9.]+s", "in Ts", done.stdout + done.stderr)
    assert outputs[True] == outputs[False]
    assert min(runs[True]) - min(runs[False]) < 0.3, runs


def test_a_plugin_that_owns_profile_loads_beside_the_harness(tmp_path):
    (tmp_path / "profiling_like.py").write_text(
        "def pytest_addoption(parser):\n    parser.addoption('--profile', action='store_true', help='as pytest-profiling')\n")
    (tmp_path / "test_other.py").write_text("def test_one(request):\n    assert request.config.getoption('profile')\n")
    _, done = _run_pytest(tmp_path, "-p", "profiling_like", "-p", "harness.plugin", "--profile", "--harness-profile=tiny")
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("suite, expected", [
    ("ablation", ["*test_variant[[]badencoder-fmnist-mimic-lambda2=3500-seed0]"]),
    ("robustness", ["*test_trigger_size[[]badencoder-fmnist-mimic-3-seed0]", "*test_clean_ratio[[]bassl-digits-mimic-0.01-seed0]",
                    "*test_poisoned_clean_data[[]adaptive-fmnist-mimic-0.25-seed0]"]),
    ("generalisation", ["*test_supervised_backdoor_is_implanted[[]badnets-four_corners-seed0]",
                        "*test_supervised_backdoor_defended[[]badnets-blend-nad-seed0]", "*test_clean_encoder_keeps_accuracy[[]digits-ft-seed0]"]),
    ("cost", ["*test_defense_reports_its_seconds[[]adaptive-fmnist-anp-seed0]"]),
])
def test_every_suite_collects_readable_ids(pytester, suite, expected):
    pytester.makepyfile(**{f"test_{suite}_copy": (SUITES / f"test_{suite}.py").read_text()})
    result = pytester.runpytest("--collect-only", "-q")
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines(expected, consecutive=False)


def test_markers_select_suites(pytester):
    for suite in ("effectiveness", "cost"):
        pytester.makepyfile(**{f"test_{suite}_copy": (SUITES / f"test_{suite}.py").read_text()})
    result = pytester.runpytest("--collect-only", "-q", "-m", "cost", "--attack=badencoder")
    result.stdout.fnmatch_lines(["*test_cost_copy.py::test_defense_reports_its_seconds*"])
    result.stdout.no_fnmatch_line("*test_effectiveness_copy*")


def test_two_xdist_workers_share_one_cache_and_the_controller_prints_the_table(project, tmp_path):
    pytest.importorskip("xdist")
    cache, results = tmp_path / "cache", tmp_path / "results"
    # Two tests (one per scenario, one per worker), both needing the same pre-trained encoder; the micro profile is
    # too small for the suite's implant and usability bounds, which are not what this test is about.
    result = project.runpytest_subprocess("-n", "2", "-k", "defended and not undefended", "--attack=badencoder", "--defense=ft",
                                          "--downstream=fmnist", f"--harness-cache-dir={cache}", f"--harness-results-dir={results}", *MICRO)
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines(["*harness table (mean*", "*badencoder*checkerboard10*fmnist*ft*", "*badencoder*patch10*fmnist*ft*"])
    assert len(list((cache / "pretrain").glob("*.safetensors"))) == 1  # built once, by one worker
    assert len(list((cache / "attack").glob("*.safetensors"))) == 2  # a suspect per scenario
    frame = __import__("pandas").read_csv(results / "results.csv")
    assert sorted(zip(frame["attack"], frame["scenario"], frame["defense"])) == [
        ("badencoder", "checkerboard10", "ft"), ("badencoder", "checkerboard10", "none"), ("badencoder", "patch10", "ft"), ("badencoder", "patch10", "none")]


def test_grid_tests_sharing_a_suspect_share_an_xdist_group():
    def group(**params):
        return Case("test", tuple(params.items())).group

    assert group(attack="bassl", downstream="fmnist", defense="mimic", seed=1) == "bassl-fmnist-seed1"
    assert group(attack="bassl", downstream="fmnist", trigger_size=3, clean_ratio=0.01, seed=0) \
        == "bassl-fmnist-3-seed0"  # a trigger size makes another suspect; the defender's data does not
    assert group(downstream="digits", defense="ft", seed=0) is None  # clean-encoder rows spread freely


def test_the_suites_collect_with_their_suspects_groups(project):
    items, _ = project.inline_genitems("--attack=badencoder", "--downstream=fmnist")
    groups = {item.name: item.get_closest_marker("xdist_group").args[0] for item in items if item.get_closest_marker("xdist_group")}
    assert groups["test_defended[badencoder-patch-fmnist-mimic-seed0]"] == groups["test_undefended[badencoder-patch-fmnist-seed0]"] \
        == "badencoder-patch-fmnist-seed0"
    assert groups["test_defended[badencoder-checkerboard-fmnist-mimic-seed0]"] == "badencoder-checkerboard-fmnist-seed0"
    assert "test_controls[patch-fmnist-seed0]" not in groups


def test_only_a_distribution_mode_the_user_chose_is_kept(pytester):
    pytest.importorskip("xdist")
    assert not _dist_chosen(pytester.parseconfig("-n", "2"))
    assert _dist_chosen(pytester.parseconfig("-n", "2", "--dist=load"))
    assert _dist_chosen(pytester.parseconfig("-n", "2", "--dist", "loadscope"))


def test_xdist_keeps_each_suspects_tests_on_one_worker_and_workers_show_progress(pytester, tmp_path):
    pytest.importorskip("xdist")
    out = tmp_path / "ran"
    out.mkdir()
    pytester.makepyfile(test_grid=f"""
        from pathlib import Path

        from harness.planner import Case
        from harness.plugin import parametrize_cases
        from harness.training import Progress

        def pytest_generate_tests(metafunc):
            parametrize_cases(metafunc, [Case("test_row", (("attack", a), ("defense", d), ("seed", 0))) for a in "abcd" for d in "xyz"])

        def test_row(case, worker_id, request):
            attack, defense = dict(case.params)["attack"], dict(case.params)["defense"]
            Progress(attack, 1).epoch(0, 10, loss=0.25)
            (Path({str(out)!r}) / f"{{attack}}-{{defense}}").write_text(f"{{worker_id}} {{request.config.option.loadgroup}}")
    """)
    result = pytester.runpytest_subprocess("-n", "2", "--harness-profile=tiny", "--log-cli-level=INFO")
    assert result.ret == pytest.ExitCode.OK
    ran = {p.name: p.read_text().split() for p in out.iterdir()}
    assert len(ran) == 12 and all(loadgroup == "True" for _, loadgroup in ran.values())  # -n alone: grouped by suspect
    for attack in "abcd":
        assert len({ran[f"{attack}-{d}"][0] for d in "xyz"}) == 1, ran
    for attack in "abcd":
        result.stderr.fnmatch_lines([f"[[]gw?[]] [[]{attack}[]] epoch 1/1 loss 0.2500*img/s*"], consecutive=False)


NOOP_ATTACK = """
    from harness.contract import AttackResult
    from harness.registry import ATTACKS

    @ATTACKS.register("noop")
    def noop(inputs, seed):
        \"\"\"An attack that implants nothing: the clean encoder, with the profile's trigger.\"\"\"
        return AttackResult(inputs.clean_encoder(), inputs.trigger, inputs.target, {"seconds": 0.0})
"""


def test_a_sweep_point_whose_attack_did_not_implant_is_reported_as_such(pytester, tmp_path):
    pytester.makeconftest(NOOP_ATTACK)
    pytester.makepyfile(test_robustness_copy=(SUITES / "test_robustness.py").read_text())
    result = pytester.runpytest_subprocess("--attack=noop", "--defense=mimic", "--downstream=fmnist", "-k", "clean_ratio and 0.01", "-rs",
                                           f"--harness-cache-dir={tmp_path / 'cache'}", f"--harness-results-dir={tmp_path / 'results'}", *MICRO)
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["*attack did not implant: undefended ASR(all) * % < the profile's bound 90 %*"])
    lines = (tmp_path / "results" / "table.md").read_text().splitlines()
    header = [c.strip() for c in lines[0].split("|")]
    mimic = next([c.strip() for c in line.split("|")] for line in lines[2:] if "mimic" in line)
    assert mimic[header.index("implanted")] == "no"  # the row is kept, and says its attack did not implant
