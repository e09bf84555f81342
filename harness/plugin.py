"""The harness as a pytest plugin: options, the session state, fixtures, the summary table.

Loaded through the `pytest11` entry point when the package is installed, and by
the repository's root conftest otherwise. torch and the method registries are
imported only when a harness option or fixture is used, so loading the plugin
costs other test runs nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable

import pytest

if TYPE_CHECKING:
    from harness.pipeline import Workbench
    from harness.profiles import Profile
    from harness.results import Row
    from harness.rowspec import RowSpec

ALL = "all"


def load_methods() -> None:
    """Import the attack and defense packages, which fills their registries."""
    import attacks  # noqa: F401
    import defenses  # noqa: F401


def _names(kind: str) -> Callable[[str], tuple[str, ...]]:
    """An argparse type: a comma list of registered names, or `all`."""

    def parse(text: str) -> tuple[str, ...]:
        load_methods()
        from harness import registry

        reg = {"attack": registry.ATTACKS, "defense": registry.DEFENSES, "dataset": registry.DATASETS}[kind]
        names = tuple(n.strip() for n in text.split(",") if n.strip())
        if not names:
            raise argparse.ArgumentTypeError(f"empty {kind} list; give names or '{ALL}'")
        if names == (ALL,):
            return ALL  # type: ignore[return-value]
        for n in names:
            if kind == "defense" and n == "none":
                continue
            try:
                reg.get(n)
            except registry.UnknownNameError as e:
                raise argparse.ArgumentTypeError(str(e)) from None
        return names

    parse.__name__ = f"{kind} names"  # argparse shows this in its error
    return parse


def _profile_name(text: str) -> str:
    from harness.profiles import PROFILES
    from harness.registry import UnknownNameError

    try:
        PROFILES.get(text)
    except UnknownNameError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def _device(text: str) -> str:
    from harness.training import resolve_device

    try:
        resolve_device(text)
    except (ValueError, RuntimeError) as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a number >= 1, got {value}")
    return value


def _gates(text: str):
    from harness.gates import parse_gates

    try:
        return parse_gates(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("harness", "backdoor test harness (suites/)")
    group.addoption("--attack", type=_names("attack"), default=ALL, metavar="NAMES",
                    help="comma list of registered attacks, or 'all' (default: all)")
    group.addoption("--defense", type=_names("defense"), default=ALL, metavar="NAMES",
                    help="comma list of registered defenses, or 'all'; the undefended row 'none' is always kept (default: all)")
    group.addoption("--downstream", type=_names("dataset"), default=ALL, metavar="NAMES",
                    help="comma list of downstream datasets, or 'all' for the profile's (default: all)")
    group.addoption("--profile", type=_profile_name, default="tiny", metavar="NAME",
                    help="sizes and budgets: tiny (CPU, minutes), small (CPU, ~1 h), paper (GPU) (default: tiny)")
    group.addoption("--set", dest="harness_set", action="append", default=[], metavar="FIELD=VALUE",
                    help="override a profile field, e.g. --set ssl_epochs=5 (repeatable)")
    group.addoption("--seed", type=int, default=0, metavar="N", help="first seed (default: 0)")
    group.addoption("--seeds", type=_positive_int, default=1, metavar="N",
                    help="repeat every row over N seeds; tables show mean ± 95%% CI (default: 1)")
    group.addoption("--device", type=_device, default="auto", metavar="DEVICE",
                    help="cpu, cuda, cuda:N or auto (CUDA when present) (default: auto)")
    group.addoption("--data-root", type=Path, default=None, metavar="DIR",
                    help="folder holding the datasets in torchvision's layout (default: none; Fashion-MNIST also from Debian's package)")
    group.addoption("--download", action="store_true", default=False,
                    help="let torchvision download missing datasets into --data-root (needs a network)")
    group.addoption("--cache-dir", type=Path, default=Path(".harness-cache"), metavar="DIR",
                    help="content-addressed store of encoders and results (default: .harness-cache)")
    group.addoption("--results-dir", type=Path, default=Path("harness-results"), metavar="DIR",
                    help="where rows, tables and timings are written (default: harness-results)")
    group.addoption("--gate", type=_gates, default=(), metavar="GATES",
                    help="bounds every defended row must meet, e.g. 'asr_nontarget<=10,acc_drop<=5' (default: none)")
    group.addoption("--table-format", choices=("terminal", "markdown", "latex", "csv", "json"), default="terminal",
                    help="format of the summary table printed at the end (default: terminal)")
    group.addoption("--baseline", type=Path, default=None, metavar="FILE",
                    help="fail a row whose ASR(non-target) rose or ACC fell beyond --baseline-tolerance against this saved file")
    group.addoption("--update-baseline", action="store_true", default=False,
                    help="write this session's rows into the --baseline file instead of checking against it")
    group.addoption("--baseline-tolerance", type=float, default=2.0, metavar="POINTS",
                    help="percentage points a row may move against the baseline (default: 2)")


class HarnessSession:
    """Everything the harness keeps for one pytest session; built lazily, rows collected as tests make them."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        opt = config.option
        self.profile_name: str = opt.profile
        self.overrides: list[str] = opt.harness_set
        self.seeds = [opt.seed + i for i in range(opt.seeds)]
        self.gates = opt.gate
        self._attacks, self._defenses, self._downstream = opt.attack, opt.defense, opt.downstream
        self._check_start_up(opt)
        self._rows: dict[tuple, Row] = {}  # by `Row.identity`: what the summary shows
        self._requests: dict[RowSpec, Row] = {}  # by what a test asked for
        self._workbench: Workbench | None = None
        # Under pytest-xdist the controller makes no rows: it reads what the workers append after this offset.
        self._rows_offset: int | None = None
        if getattr(config.option, "numprocesses", None) and not hasattr(config, "workerinput"):
            rows_file = Path(opt.results_dir) / "rows.jsonl"
            self._rows_offset = rows_file.stat().st_size if rows_file.exists() else 0
        self.baseline: dict | None = None
        if opt.baseline is not None and not opt.update_baseline:
            from harness.gates import load_baseline

            try:
                self.baseline = load_baseline(opt.baseline)
            except ValueError as e:
                raise pytest.UsageError(str(e)) from None
        elif opt.update_baseline and opt.baseline is None:
            raise pytest.UsageError("--update-baseline needs --baseline FILE to write")

    def _check_start_up(self, opt) -> None:
        """Bad settings are usage errors before anything is collected or built, not tracebacks mid-run."""
        if opt.harness_set:
            try:
                self.profile  # noqa: B018 - parsing and validating the overrides is the point
            except (ValueError, TypeError) as e:
                raise pytest.UsageError(f"--set: {e}") from None
        if opt.data_root is not None and not Path(opt.data_root).is_dir():
            raise pytest.UsageError(f"--data-root {opt.data_root} is not a folder")
        for option, folder in (("--results-dir", opt.results_dir), ("--cache-dir", opt.cache_dir)):
            folder = Path(folder)
            if folder.exists() and not folder.is_dir():
                raise pytest.UsageError(f"{option} {folder} exists and is not a folder")
            if folder.is_dir() and not os.access(folder, os.W_OK | os.X_OK):
                raise pytest.UsageError(f"{option} {folder} is not writable")

    @property
    def profile(self) -> "Profile":
        from harness.profiles import get_profile, with_overrides

        return with_overrides(get_profile(self.profile_name), self.overrides)

    def attacks(self, supervised: bool = False) -> list[str]:
        """Chosen attacks on encoders, or (`supervised`) chosen attacks that backdoor a classifier."""
        from harness.pipeline import SUPERVISED
        from harness.registry import ATTACKS

        load_methods()
        chosen = ATTACKS.names() if self._attacks == ALL else list(self._attacks)
        return [a for a in chosen if ATTACKS.has_tag(a, SUPERVISED) == supervised]

    def defenses(self) -> list[str]:
        """Registered defenses chosen on the command line (the undefended baseline is not one of them)."""
        from harness.registry import DEFENSES

        load_methods()
        chosen = DEFENSES.names() if self._defenses == ALL else list(self._defenses)
        return [d for d in chosen if d != "none"]

    def downstream(self) -> list[str]:
        return list(self.profile.downstream) if self._downstream == ALL else list(self._downstream)

    @property
    def workbench(self) -> "Workbench":
        if self._workbench is None:
            from harness.artifacts import ArtifactStore
            from harness.pipeline import Workbench
            from harness.training import resolve_device

            load_methods()
            opt = self.config.option
            self._workbench = Workbench(self.profile, ArtifactStore(opt.cache_dir), resolve_device(opt.device), opt.data_root, opt.download)
        return self._workbench

    def row(self, suite: str, attack: str, defense: str, downstream: str, seed: int, **fields) -> "Row":
        """The row of this `RowSpec` (the arguments, and its other fields by keyword), built once per session.

        `profile_changes` (e.g. {"trigger_size": 3}) build the row with a changed profile; name the change
        in `variant`. A row whose attack does not apply to the task is a skip with the attack's reason.
        """
        from harness.contract import AttackNotApplicable
        from harness.rowspec import RowSpec

        spec = RowSpec(suite, attack, defense, downstream, seed, **fields)
        if spec not in self._requests:
            try:
                row = self.workbench.row(spec)
            except AttackNotApplicable as why:
                pytest.skip(f"{attack} on {downstream}: {why}")
            if row.identity not in self._rows:  # two specs can name one row (a control whose trigger is the profile's)
                from harness.results import ResultsStore

                ResultsStore(self.config.option.results_dir).append(row)
                self._rows[row.identity] = row
            self._requests[spec] = self._rows[row.identity]
        row = self._requests[spec]
        if self.baseline is not None:
            from harness.gates import check_baseline

            check_baseline(row, self.baseline, self.config.option.baseline_tolerance)
        return row

    @property
    def rows(self) -> list["Row"]:
        return list(self._rows.values())

    def header(self) -> str:
        p = self.profile
        overrides = f" with {', '.join(self.overrides)}" if self.overrides else ""
        return (
            f"harness: profile {p.name}{overrides} ({p.arch} width {p.width}, {p.pretrain} {p.pretrain_size} images), "
            f"seeds {self.seeds}, device {self.config.option.device}, cache {self.config.option.cache_dir}"
        )

    def session_rows(self) -> list["Row"]:
        """This session's rows: those its tests made, or, as pytest-xdist's controller, those its workers appended."""
        if self.rows or self._rows_offset is None:
            return self.rows
        from harness.results import ResultsStore

        return ResultsStore(self.config.option.results_dir).rows(since=self._rows_offset)

    def summary(self, write_line: Callable[[str], None], write_sep: Callable[[str, str], None]) -> None:
        from harness.results import render, report_sections, write_reports

        rows = self.session_rows()
        if not rows:
            return
        fmt = self.config.option.table_format
        for i, (title, table) in enumerate(report_sections(rows)):
            write_sep("=" if i < 2 else "-", f"harness {title}")
            for line in render(table, fmt).splitlines():
                write_line(line)
        paths = list(write_reports(rows, self.config.option.results_dir).values())
        if self.config.option.update_baseline:
            from harness.gates import save_baseline

            save_baseline(rows, self.config.option.baseline)
            paths.append(self.config.option.baseline)
        write_line(f"written: {', '.join(str(p) for p in paths)}")


SUITE_MARKERS = ("effectiveness", "ablation", "robustness", "generalisation", "cost")
harness_key = pytest.StashKey[HarnessSession]()
previous_sink_key = pytest.StashKey[Callable[[str], None]]()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "suite(question): a research-question suite of the harness (builds encoders)")
    for question in SUITE_MARKERS:
        config.addinivalue_line("markers", f"{question}: the {question} suite (select with -m {question})")
    config.addinivalue_line("markers", "slow: a suite whose full grid takes hours on two CPU cores (deselect with -m 'not slow')")
    config.addinivalue_line("markers", "gpu: needs a CUDA device; skipped without one")
    config.stash[harness_key] = HarnessSession(config)
    if hasattr(config, "workerinput"):  # a pytest-xdist worker: share the cores instead of oversubscribing them
        import torch

        workers = int(config.workerinput.get("workercount", 1))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))
    from harness.training import progress_sink, set_progress_sink

    config.stash[previous_sink_key] = progress_sink()

    def show(line: str) -> None:
        """Write a progress line live, past output capture, as pytest's live logging does."""
        # Looked up per line: the reporter may register after this hook, and xdist workers have none.
        reporter = config.pluginmanager.get_plugin("terminalreporter")
        capture = config.pluginmanager.get_plugin("capturemanager")
        if reporter is None:
            return
        with capture.global_and_fixture_disabled() if capture is not None else contextlib.nullcontext():
            reporter.write_line(line)
            reporter.flush()

    set_progress_sink(show)


def pytest_unconfigure(config: pytest.Config) -> None:
    """Give the progress sink back: a nested session (pytester) must not leave its closed terminal behind."""
    if previous_sink_key in config.stash:
        from harness.training import set_progress_sink

        set_progress_sink(config.stash[previous_sink_key])


def pytest_report_header(config: pytest.Config) -> str | None:
    session = config.stash.get(harness_key, None)
    return None if session is None else session.header()


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("gpu") is not None:
        import torch

        if not torch.cuda.is_available():
            pytest.skip("needs a CUDA device")


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    session = config.stash.get(harness_key, None)
    if session is not None:
        session.summary(terminalreporter.write_line, terminalreporter.write_sep)


@pytest.fixture(scope="session")
def harness(request: pytest.FixtureRequest) -> HarnessSession:
    """The harness session: chosen attacks, defenses, downstream tasks and seeds; `row(...)` builds and records a row."""
    return request.config.stash[harness_key]


def parametrize_grid(metafunc: pytest.Metafunc, axes: dict[str, Iterable]) -> None:
    """Parametrise the test over the product of the axes it names, ids like `badencoder-patch10-fmnist-mimic-seed0`.

    An axis named "a,b" takes tuples (joint values, e.g. each attack with its scenarios); empty parts
    are left out of the id.
    """
    names = [a for a in axes if all(part in metafunc.fixturenames for part in a.split(","))]
    if not names:
        return
    values = [list(axes[a]) for a in names]

    def label(axis: str, value) -> list[str]:
        parts = zip(axis.split(","), value) if "," in axis else [(axis, value)]
        return [f"seed{v}" if a == "seed" else str(v) for a, v in parts if v != ""]

    params = []
    for combo in itertools.product(*values):
        flat = [v for a, value in zip(names, combo) for v in (value if "," in a else (value,))]
        params.append(pytest.param(*flat, id="-".join(p for a, v in zip(names, combo) for p in label(a, v))))
    metafunc.parametrize(",".join(names), params)


def attack_scenarios(session: "HarnessSession", attacks: list[str]) -> list[tuple[str, str]]:
    """Each chosen attack with the profile's scenarios (triggers), or with "" if it brings its own trigger."""
    from harness.pipeline import OWN_TRIGGER
    from harness.registry import ATTACKS

    scenarios = session.profile.scenarios
    return [(a, s) for a in attacks for s in (("",) if ATTACKS.has_tag(a, OWN_TRIGGER) else scenarios)]


def require_implanted(row: "Row") -> None:
    """Skip the calling test, with the reason, when the row's attack did not implant: it can show no defense working."""
    __tracebackhide__ = True
    if row.implanted is False:
        import json

        control = json.loads(row.settings)["control"]
        pytest.skip(f"attack did not implant: undefended ASR(all) {control['undefended_asr_all']:.2f} % "
                    f"< the profile's bound {control['implant_asr_all']:g} %")


def session_of(config: pytest.Config) -> HarnessSession:
    return config.stash[harness_key]

