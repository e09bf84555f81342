"""The harness as a pytest plugin: options, the session state, fixtures, the summary table.

Loaded through the `pytest11` entry point when the package is installed, and by
the repository's root conftest otherwise, so it sits in every pytest run of the
environment. It therefore costs nothing until a harness session begins: its
options are registered as plain text (harness/options.py says why), and only
then parsed and checked, torch imported, progress logged and the header shown.
A session begins in pytest_configure when a harness option was given or an
initial conftest asks (suites/conftest.py), or else when a suite first asks for
it while being collected.

Progress goes to the standard logger "harness" at INFO: pytest captures it with
each test's output and shows it live with `--log-cli-level=INFO`; pytest-xdist
workers, which have no terminal, write it to stderr prefixed with their id.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import sys
import time
from typing import TYPE_CHECKING, Callable, Iterable

import pytest

from harness.options import SESSION_OPTIONS, OptionError, Settings, argparse_kwargs, device_for_worker, given, resolve, values_of

if TYPE_CHECKING:
    from harness.pipeline import Workbench
    from harness.planner import Case
    from harness.profiles import Profile
    from harness.rows import Row
    from harness.rowspec import RowSpec

LOG = logging.getLogger("harness")
ETA_EVERY = 60.0  # seconds between the session's ETA lines (none in a shorter session)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("harness", "backdoor test harness (suites/); read only when a harness session begins")
    for opt in SESSION_OPTIONS:
        group.addoption(opt.flag, **argparse_kwargs(opt))


class HarnessSession:
    """Everything the harness keeps for one pytest session; built lazily, rows collected as tests make them."""

    def __init__(self, config: pytest.Config, settings: Settings) -> None:
        self.config = config
        self.settings = settings
        self.profile_name: str = settings.profile
        self.overrides: list[str] = list(settings.overrides)
        self.seeds = settings.seed_list
        self.gates = settings.gate
        self._rows: dict[tuple, Row] = {}  # by `Row.identity`: what the summary shows
        self._requests: dict[RowSpec, Row] = {}  # by what a test asked for
        self._worker_rows: list[Row] = []  # as pytest-xdist's controller: the rows its workers made
        self._workbench: Workbench | None = None
        self.header_shown = False
        self.baseline: dict | None = None
        if settings.baseline is not None and not settings.update_baseline:
            from harness.gates import load_baseline

            try:
                self.baseline = load_baseline(settings.baseline)
            except ValueError as e:
                raise pytest.UsageError(str(e)) from None

    @property
    def profile(self) -> "Profile":
        return self.settings.resolved_profile

    @property
    def device(self) -> str:
        """The device this process builds on: under pytest-xdist with several GPUs, one per worker."""
        import torch

        return device_for_worker(self.settings.device, worker_number(self.config), torch.cuda.device_count())

    @property
    def workbench(self) -> "Workbench":
        if self._workbench is None:
            self._workbench = self.settings.workbench(self.device)
        return self._workbench

    def rows(self, case: "Case") -> list["Row"]:
        """The rows a planned case reads (harness/planner.py), in its order: its claim is about the last."""
        return [self.row(spec) for spec in case.rows]

    def row(self, spec: "RowSpec") -> "Row":
        """The row `spec` names, built once per session. A row whose attack does not apply to the task is a skip with
        the attack's reason; a CUDA failure, one line."""
        from harness.contract import AttackNotApplicable

        attack, defense, downstream, seed = spec.attack, spec.defense, spec.downstream, spec.seed
        if spec not in self._requests:
            from harness.compute import device_failure

            try:
                row = self.workbench.row(spec)
            except AttackNotApplicable as why:
                pytest.skip(f"{attack} on {downstream}: {why}")
            except RuntimeError as e:  # CUDA's failures in one line, not a traceback through the harness
                line = device_failure(e)
                if line is None:
                    raise
                pytest.fail(f"{attack}-{defense}-{downstream}-seed{seed}: {line}", pytrace=False)
            if row.identity not in self._rows:  # two specs can name one row (a control whose trigger is the profile's)
                from harness.rows import ResultsStore

                ResultsStore(self.settings.results_dir).append(row)
                self._rows[row.identity] = row
            self._requests[spec] = self._rows[row.identity]
        row = self._requests[spec]
        if self.baseline is not None:
            from harness.gates import check_baseline

            check_baseline(row, self.baseline, self.settings.baseline_tolerance)
        return row

    def header(self) -> str:
        from harness.compute import describe, resolve_device, resolve_precision

        p, s = self.profile, self.settings
        overrides = f" with {', '.join(self.overrides)}" if self.overrides else ""
        live = "" if _live_logging(self.config) else "; live progress: --log-cli-level=INFO"
        device = resolve_device(self.device)
        compute = describe(device, resolve_precision(s.precision, device)) + (", deterministic" if s.deterministic else "")
        return (
            f"harness: profile {p.name}{overrides} ({p.arch} width {p.width}, {p.pretrain} {p.pretrain_size} images), "
            f"seeds {self.seeds}, {compute} (training; evaluation fp32), cache {s.cache_dir}{live}"
        )

    def add_worker_rows(self, records: Iterable[dict]) -> None:
        from harness.rows import Row

        self._worker_rows.extend(Row.from_record(r) for r in records)

    def session_rows(self) -> list["Row"]:
        """This session's rows: those its tests made and, as pytest-xdist's controller, those its workers sent."""
        return list(self._rows.values()) + self._worker_rows

    def summary(self, write_line: Callable[[str], None], write_sep: Callable[[str, str], None]) -> None:
        from harness.tables import render, report_sections, write_reports

        rows = self.session_rows()
        if not rows:
            return
        s = self.settings
        fmt = s.table_format
        for i, (title, table) in enumerate(report_sections(rows)):
            write_sep("=" if i < 2 else "-", f"harness {title}")
            for line in render(table, fmt).splitlines():
                write_line(line)
        paths = list(write_reports(rows, s.results_dir).values())
        if s.update_baseline:
            from harness.gates import save_baseline

            save_baseline(rows, s.baseline)
            paths.append(s.baseline)
        write_line(f"written: {', '.join(str(p) for p in paths)}")


# -- progress -------------------------------------------------------------------------------


def eta_line(done: int, total: int, elapsed: float) -> str:
    """`harness: 12/47 tests done in 8m03s, about 23m28s left` (the mean time per test so far, times the tests left)."""
    left = elapsed / done * (total - done) if done else float("nan")
    return f"harness: {done}/{total} tests done in {_minutes(elapsed)}, about {_minutes(left)} left"


def _minutes(seconds: float) -> str:
    if seconds != seconds:  # NaN: nothing done yet
        return "?"
    whole = round(seconds)
    return f"{whole // 3600}h{whole // 60 % 60:02d}m" if whole >= 3600 else f"{whole // 60}m{whole % 60:02d}s"


class Eta:
    """Counts finished tests; says how far the session is at most once every ETA_EVERY seconds."""

    def __init__(self, start: float) -> None:
        self.start = self.last = start
        self.done = 0

    def finished(self, total: int, now: float) -> str | None:
        self.done += 1
        if now - self.last < ETA_EVERY or self.done >= total:
            return None
        self.last = now
        return eta_line(self.done, total, now - self.start)


class EtaReporter:
    """A plugin registered in a harness session's main process (an xdist worker sees only its share of the tests)."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.eta = Eta(time.monotonic())

    def pytest_runtest_logfinish(self, nodeid: str) -> None:
        session = self.config.stash.get(pytest_session_key, None)
        line = self.eta.finished(session.testscollected if session is not None else 0, time.monotonic())
        if line is not None:
            LOG.info(line)


def _live_logging(config: pytest.Config) -> bool:
    return config.getoption("log_cli_level", None) is not None or bool(config.getini("log_cli"))


class _WorkerStderr(logging.Handler):
    """A pytest-xdist worker's progress, written to stderr past capture (a worker has no terminal, so no live log)."""

    def __init__(self, config: pytest.Config, worker: str) -> None:
        super().__init__()
        self.config, self.worker = config, worker

    def emit(self, record: logging.LogRecord) -> None:
        capture = self.config.pluginmanager.get_plugin("capturemanager")
        with capture.global_and_fixture_disabled() if capture is not None else contextlib.nullcontext():
            sys.stderr.write(f"[{self.worker}] {self.format(record)}\n")
            sys.stderr.flush()


def _log_level(config: pytest.Config) -> int:
    """The live-log level the user asked for (pytest's --log-cli-level, or its ini settings)."""
    text = config.getoption("log_cli_level", None) or config.getini("log_cli_level") or config.getini("log_level") or "WARNING"
    return int(text) if str(text).isdigit() else logging.getLevelName(str(text).upper())


# -- beginning a session --------------------------------------------------------------------

harness_key = pytest.StashKey[HarnessSession]()
grouped_key = pytest.StashKey[bool]()  # the controller chose --dist loadgroup for the user
pytest_session_key = pytest.StashKey[pytest.Session]()


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
        if _live_logging(config):
            handler = _WorkerStderr(config, config.workerinput["workerid"])
            handler.setLevel(_log_level(config))
            LOG.addHandler(handler)
    else:
        config.pluginmanager.register(EtaReporter(config), "harness-eta")
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


def worker_number(config: pytest.Config) -> int | None:
    """N of pytest-xdist's worker `gwN`; None outside a worker."""
    worker = getattr(config, "workerinput", {}).get("workerid")
    return None if worker is None else int(worker.removeprefix("gw"))


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
    """In a pytest-xdist worker under --dist loadgroup, suffix each grouped test's id with its group where xdist's
    own suffix did not take: xdist writes a field pytest 9.2's structured ids no longer read, and the tests would
    silently spread (pytest-dev/pytest-xdist#1386). A no-op where xdist's suffix works."""
    if not hasattr(config, "workerinput") or not config.getvalue("loadgroup"):
        return
    for item in items:
        groups = sorted({str(m.args[0] if m.args else m.kwargs.get("name", "default")) for m in item.iter_markers("xdist_group")})
        suffix = "@" + "_".join(groups)
        if groups and not item.nodeid.endswith(suffix) and hasattr(item, "_id"):
            item._id = type(item._id).parse(item.nodeid + suffix)


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
