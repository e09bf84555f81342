"""The pytest plugin, exercised through pytester in a throw-away project."""

from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

SUITES = Path(__file__).resolve().parents[1] / "suites"
# A micro profile: everything real (Fashion-MNIST, SimCLR, BadEncoder, probes), only tiny in size.
MICRO = ["--set", "width=4", "--set", "pretrain_size=256", "--set", "ssl_epochs=1", "--set", "attack_epochs=1",
         "--set", "shadow_size=128", "--set", "downstream_train_size=256", "--set", "downstream_test_size=128",
         "--set", "probe_epochs=30", "--set", "ssl_batch=64", "--set", "attack_batch=64"]


@pytest.fixture
def project(pytester: pytest.Pytester) -> pytest.Pytester:
    # Another basename than suites/test_effectiveness.py, which the outer session may have imported already.
    pytester.makepyfile(test_effectiveness_copy=(SUITES / "test_effectiveness.py").read_text())
    return pytester


def test_help_shows_the_harness_group(project):
    result = project.runpytest("--help")
    result.stdout.fnmatch_lines(["*backdoor test harness*", "*--attack=NAMES*", "*--profile=NAME*", "*--set=FIELD=VALUE*"])


def test_unknown_attack_fails_at_once_listing_the_registered(project):
    result = project.runpytest("--attack=nope")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*unknown attack 'nope'*Known attacks: *badencoder*"])


@pytest.mark.parametrize("args, message", [
    (["--defense=nad_typo"], "*unknown defense 'nad_typo'*"),
    (["--profile=huge"], "*unknown profile 'huge'*tiny*"),
    (["--downstream=mnist"], "*unknown dataset 'mnist'*"),
    (["--device=tpu"], "*device*"),
    (["--seeds=0"], "*>= 1*"),
    (["--gate=asr<5"], "*METRIC*"),
    (["--baseline=/nonexistent/baseline.json"], "*baseline file*does not exist*"),
    (["--update-baseline"], "*--update-baseline needs --baseline*"),
    (["--set", "clean_ratio=2"], "*--set: clean_ratio must be in (0, 1]*"),
    (["--set", "trigger_size=40"], "*--set: trigger_size must be between 1 and the image size 32*"),
    (["--set", "widht=8"], "*--set: unknown profile field 'widht'*"),
    (["--set", "width=eight"], "*--set: width takes a int*"),
    (["--data-root=/nonexistent/datasets"], "*--data-root /nonexistent/datasets is not a folder*"),
    (["--results-dir=/dev/null"], "*--results-dir /dev/null exists and is not a folder*"),
])
def test_bad_options_are_usage_errors(project, args, message):
    result = project.runpytest(*args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([message])


def test_collection_ids_read_like_table_rows(project):
    result = project.runpytest("--collect-only", "-q", "--attack=badencoder", "--downstream=fmnist,digits", "--seeds=2")
    result.stdout.fnmatch_lines([
        "*test_clean_control[[]fmnist-seed0]", "*test_clean_control[[]digits-seed1]", "*test_undefended[[]badencoder-digits-seed1]",
    ])


def test_header_shows_profile_and_overrides(project):
    result = project.runpytest("--collect-only", "--set", "ssl_epochs=2")
    result.stdout.fnmatch_lines(["harness: profile tiny with ssl_epochs=2*"])


def test_micro_run_prints_the_table_and_same_seed_same_csv(project, tmp_path):
    csvs = []
    for run in ("a", "b"):
        result = project.runpytest_subprocess("--attack=badencoder", "--downstream=fmnist", f"--cache-dir={tmp_path / run / 'cache'}",
                                             f"--results-dir={tmp_path / run / 'results'}", *MICRO)
        result.stdout.fnmatch_lines(["*harness comparison (profile tiny*", "*badencoder*fmnist*", "*harness table (profile tiny*", "*badencoder*fmnist*none*", "*clean*fmnist*none*", "*written:*results.csv*"])
        csvs.append((tmp_path / run / "results" / "results.csv").read_bytes())
    assert csvs[0] == csvs[1]
    assert b"badencoder" in csvs[0]


def test_progress_lines_reach_the_terminal_past_capture(pytester):
    pytester.makepyfile(test_progress="""
        from harness.training import Progress

        def test_emits():
            Progress("demo", 2).epoch(0, 10, loss=1.5)
    """)
    result = pytester.runpytest_subprocess()
    result.stdout.fnmatch_lines(["*[[]demo[]] epoch 1/2 loss 1.5000*img/s*"])


def test_a_nested_session_gives_the_progress_sink_back(pytester):
    from harness.training import progress_sink

    before = progress_sink()
    pytester.makepyfile(test_nothing="def test_ok():\n    pass\n")
    pytester.runpytest()
    assert progress_sink() is before


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
    # Two tests, one per worker, both needing the same pre-trained encoder (the micro backdoor is too weak
    # for test_undefended's bound, which is not what this test is about).
    result = project.runpytest_subprocess("-n", "2", "-k", "not undefended", "--attack=badencoder", "--defense=ft", "--downstream=fmnist",
                                          f"--cache-dir={cache}", f"--results-dir={results}", *MICRO)
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines(["*harness table (profile tiny*", "*badencoder*fmnist*ft*", "*clean*fmnist*none*"])
    assert len(list((cache / "pretrain").glob("*.safetensors"))) == 1  # built once, by one worker
    assert len(list((cache / "attack").glob("*.safetensors"))) == 1
    frame = __import__("pandas").read_csv(results / "results.csv")
    assert sorted(zip(frame["attack"], frame["defense"])) == [("badencoder", "ft"), ("badencoder", "none"), ("clean", "none")]
