"""The harness as a pytest plugin: its options, hooks and fixture, and the helpers suites parametrise and skip with.

Loaded through the `pytest11` entry point when the package is installed, and by
the repository's root conftest otherwise, so it sits in every pytest run of the
environment. It therefore costs nothing until a harness session begins: its
options are registered as plain text (harness/options.py says why), and only
then parsed and checked, torch imported, progress logged and the header shown.
A session begins in pytest_configure when a harness option was given or an
initial conftest asks (suites/conftest.py), or else when a suite first asks for
it while being collected.

The session's state is harness/session.py's; its progress, harness/pytest_progress.py's.
"""

from __future__ import annotations

import logging
import os
import shlex
from typing import TYPE_CHECKING, Iterable

import pytest

from harness.options import SESSION_OPTIONS, OptionError, argparse_kwargs, given, gpu_workers_fit, resolve, values_of
from harness.pytest_progress import EtaReporter, WorkerStderr, live_logging, log_level, pytest_session_key
from harness.session import HarnessSession

if TYPE_CHECKING:
    from harness.planner import Case
    from harness.rows import Row

LOG = logging.getLogger("harness")


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("harness", "backdoor test harness (suites/); read only when a harness session begins")
    for opt in SESSION_OPTIONS:
        group.addoption(opt.flag, **argparse_kwargs(opt))


# -- beginning a session --------------------------------------------------------------------

harness_key = pytest.StashKey[HarnessSession]()
grouped_key = pytest.StashKey[bool]()  # the controller chose --dist loadgroup for the user


def session_of(config: pytest.Config) -> HarnessSession:
    """The harness session, begun on first use: options parsed and checked (a bad one is a usage error), progress on."""
    session = config.stash.get(harness_key, None)
    if session is None:
        try:
            settings = resolve(values_of(config.option))
        except OptionError as e:
            raise pytest.UsageError(str(e)) from None
        session = HarnessSession(config, settings)
        config.stash[harness_key] = session
        _begin(config)
    return session


def _begin(config: pytest.Config) -> None:
    level = LOG.level
    LOG.setLevel(logging.INFO)  # captured with each test, shown live at --log-cli-level=INFO
    handler: logging.Handler | None = None
    if hasattr(config, "workerinput"):  # a pytest-xdist worker
        import torch

        workers = int(config.workerinput.get("workercount", 1))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))  # share the cores instead of oversubscribing
        if live_logging(config):
            handler = WorkerStderr(config, config.workerinput["workerid"])
            handler.setLevel(log_level(config))
            LOG.addHandler(handler)
    else:
        config.pluginmanager.register(EtaReporter(config), "harness-eta")
        workers = getattr(config.option, "numprocesses", None)
        if isinstance(workers, int) and workers > 1 and session_of(config).settings.device in ("auto", "cuda"):
            import torch

            try:
                gpu_workers_fit(session_of(config).settings.device, workers, torch.cuda.device_count())
            except OptionError as e:
                raise pytest.UsageError(str(e)) from None
        if getattr(config.option, "numprocesses", None) and config.option.dist == "load" and not _dist_chosen(config):
            config.option.dist = "loadgroup"  # xdist chose `load` for -n; keep each suspect's tests on one worker
            config.stash[grouped_key] = True

    def restore() -> None:
        """A nested session (pytester) must leave the logger as it found it."""
        LOG.setLevel(level)
        if handler is not None:
            LOG.removeHandler(handler)
        if config.pluginmanager.has_plugin("harness-eta"):
            config.pluginmanager.unregister(name="harness-eta")

    config.add_cleanup(restore)


def _dist_chosen(config: pytest.Config) -> bool:
    """Whether the user chose a pytest-xdist distribution mode (on the command line, in PYTEST_ADDOPTS or addopts)."""
    args = [*config.invocation_params.args, *shlex.split(os.environ.get("PYTEST_ADDOPTS", "")), *config.getini("addopts")]
    return any(a in ("--dist", "-d") or a.startswith("--dist=") for a in args)


# -- hooks ----------------------------------------------------------------------------------

SUITE_MARKERS = ("effectiveness", "ablation", "robustness", "generalisation", "cost")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "suite(question): a research-question suite of the harness (builds encoders)")
    for question in SUITE_MARKERS:
        config.addinivalue_line("markers", f"{question}: the {question} suite (select with -m {question})")
    config.addinivalue_line("markers", "slow: a suite whose full grid takes hours on two CPU cores (deselect with -m 'not slow')")
    config.addinivalue_line("markers", "gpu: needs a CUDA device; skipped without one")
    if not config.pluginmanager.hasplugin("xdist"):  # the suites' grid marks its tests' groups either way
        config.addinivalue_line("markers", "xdist_group(name): tests that share a suspect (used by pytest-xdist's --dist loadgroup)")
    if getattr(config, "workerinput", {}).get("harness_loadgroup"):
        config.option.loadgroup = True  # workers parse the user's arguments again, which did not say loadgroup
    if given(values_of(config.option)):
        session_of(config)


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """--harness-shard I/N: deselect the other shards' cases (`_deselect_other_shards`). Then, in a pytest-xdist worker
    under --dist loadgroup, suffix each grouped test's id with its group where xdist's own suffix did not take: xdist
    writes a field pytest 9.2's structured ids no longer read, and the tests would silently spread
    (pytest-dev/pytest-xdist#1386). A no-op where xdist's suffix works."""
    _deselect_other_shards(config, items)
    if not hasattr(config, "workerinput") or not config.getvalue("loadgroup"):
        return
    for item in items:
        groups = sorted({str(m.args[0] if m.args else m.kwargs.get("name", "default")) for m in item.iter_markers("xdist_group")})
        suffix = "@" + "_".join(groups)
        if groups and not item.nodeid.endswith(suffix) and hasattr(item, "_id"):
            item._id = type(item._id).parse(item.nodeid + suffix)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_auto_num_workers(config: pytest.Config) -> int | None:
    """`-n auto` on a machine with GPUs: one worker per GPU (pytest-xdist's own choice, a worker per CPU, elsewhere)."""
    if config.stash.get(harness_key, None) is None or session_of(config).settings.device not in ("auto", "cuda"):
        return None
    import torch

    return torch.cuda.device_count() or None


def _deselect_other_shards(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Keep this shard's cases (harness/planner.py shard_of: a suspect's cases stay together), report the rest deselected."""
    harness = config.stash.get(harness_key, None)
    if harness is None or harness.settings.shard is None:
        return
    from harness.planner import shard_of

    cases = [item.callspec.params.get("case") if hasattr(item, "callspec") else None for item in items]
    kept = set(map(id, shard_of((c for c in cases if c is not None), harness.settings.shard)))
    mine, others = [], []
    for item, case in zip(items, cases):
        (mine if case is None or id(case) in kept else others).append(item)
    if others:
        config.hook.pytest_deselected(items=others)
        items[:] = mine


def pytest_sessionstart(session: pytest.Session) -> None:
    session.config.stash[pytest_session_key] = session


def pytest_report_header(config: pytest.Config) -> str | None:
    session = config.stash.get(harness_key, None)
    if session is None:
        return None
    session.header_shown = True
    return session.header()


def pytest_report_collectionfinish(config: pytest.Config, items: list[pytest.Item]) -> str | None:
    """The header of a session that began while its suites were collected (too late for pytest_report_header)."""
    session = config.stash.get(harness_key, None)
    if session is None or session.header_shown or config.get_verbosity() < 0 or config.option.no_header:
        return None
    session.header_shown = True
    return session.header()


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("gpu") is not None:
        import torch

        if not torch.cuda.is_available():
            pytest.skip("needs a CUDA device")


def pytest_sessionfinish(session: pytest.Session) -> None:
    """A pytest-xdist worker sends its rows to the controller, which prints the tables."""
    harness = session.config.stash.get(harness_key, None)
    if harness is not None and hasattr(session.config, "workeroutput"):
        session.config.workeroutput["harness_rows"] = [r.record() for r in harness.session_rows()]


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node) -> None:
    """Tell a pytest-xdist worker that its tests go out in groups (it marks their ids with the group)."""
    if node.config.stash.get(grouped_key, False):
        node.workerinput["harness_loadgroup"] = True


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error) -> None:
    records = getattr(node, "workeroutput", {}).get("harness_rows")
    if records:
        session_of(node.config).add_worker_rows(records)


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    session = config.stash.get(harness_key, None)
    if session is not None:
        session.summary(terminalreporter.write_line, terminalreporter.write_sep)


@pytest.fixture(scope="session")
def harness(request: pytest.FixtureRequest) -> HarnessSession:
    """The harness session: chosen attacks, defenses, downstream tasks and seeds; `row(...)` builds and records a row."""
    return session_of(request.config)


def parametrize_cases(metafunc: pytest.Metafunc, cases: Iterable["Case"]) -> None:
    """Parametrise a suite's test with its planned cases (harness/planner.py) as the fixture `case`, ids like
    `badencoder-patch-fmnist-mimic-seed0`, each case marked with its pytest-xdist group."""
    if "case" not in metafunc.fixturenames:
        return
    mine = [c for c in cases if c.test == metafunc.function.__name__]
    metafunc.parametrize("case", [pytest.param(c, id=c.id, marks=[pytest.mark.xdist_group(c.group)] if c.group else []) for c in mine])


def require_implanted(row: "Row") -> None:
    """Skip the calling test, with the reason, when the row's attack did not implant: it can show no defense working."""
    __tracebackhide__ = True
    if row.implanted is False:
        control = row.settings.control
        pytest.skip(f"attack did not implant: undefended ASR(all) {control['undefended_asr_all']:.2f} % "
                    f"< the profile's bound {control['implant_asr_all']:g} %")
