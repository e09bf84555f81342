"""A harness session's progress under pytest: an ETA line now and then, and xdist workers' progress on stderr.

Progress goes to the standard logger "harness" at INFO: pytest captures it with
each test's output and shows it live with `--log-cli-level=INFO`; pytest-xdist
workers, which have no terminal, write it to stderr prefixed with their id.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time

import pytest

LOG = logging.getLogger("harness")
ETA_EVERY = 60.0  # seconds between the session's ETA lines (none in a shorter session)
pytest_session_key = pytest.StashKey[pytest.Session]()  # what the ETA counts the collected tests of


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


def live_logging(config: pytest.Config) -> bool:
    return config.getoption("log_cli_level", None) is not None or bool(config.getini("log_cli"))


class WorkerStderr(logging.Handler):
    """A pytest-xdist worker's progress, written to stderr past capture (a worker has no terminal, so no live log)."""

    def __init__(self, config: pytest.Config, worker: str) -> None:
        super().__init__()
        self.config, self.worker = config, worker

    def emit(self, record: logging.LogRecord) -> None:
        capture = self.config.pluginmanager.get_plugin("capturemanager")
        with capture.global_and_fixture_disabled() if capture is not None else contextlib.nullcontext():
            sys.stderr.write(f"[{self.worker}] {self.format(record)}\n")
            sys.stderr.flush()


def log_level(config: pytest.Config) -> int:
    """The live-log level the user asked for (pytest's --log-cli-level, or its ini settings)."""
    text = config.getoption("log_cli_level", None) or config.getini("log_cli_level") or config.getini("log_level") or "WARNING"
    return int(text) if str(text).isdigit() else logging.getLevelName(str(text).upper())
