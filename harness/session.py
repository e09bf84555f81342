"""The state of one harness session under pytest: its settings, its workbench, the rows its tests made, its summary."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Iterable

import pytest

from harness.options import Settings, device_for_worker
from harness.pytest_progress import live_logging

if TYPE_CHECKING:
    from harness.pipeline import Workbench
    from harness.planner import Case
    from harness.profiles import Profile
    from harness.rows import Row
    from harness.rowspec import RowSpec


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
            from harness.gates import check_baseline, gated

            if gated([row]):  # a defended row, as `harness gate` reads them: a stronger attack is no regression
                check_baseline(row, self.baseline, self.settings.baseline_tolerance)
        return row

    def header(self) -> str:
        from harness.compute import describe, resolve_device, resolve_precision

        p, s = self.profile, self.settings
        overrides = f" with {', '.join(self.overrides)}" if self.overrides else ""
        live = "" if live_logging(self.config) else "; live progress: --log-cli-level=INFO"
        device = resolve_device(self.device)
        compute = describe(device, resolve_precision(s.precision, device)) + (", deterministic" if s.deterministic else "")
        shard = f", shard {s.shard[0]}/{s.shard[1]}" if s.shard else ""
        return (
            f"harness: profile {p.name}{overrides} ({p.arch} width {p.width}, {p.pretrain} {p.pretrain_size} images), "
            f"seeds {self.seeds}{shard}, {compute} (training; evaluation fp32){self._workers()}, cache {s.cache_dir}{live}"
        )

    def _workers(self) -> str:
        """`; xdist workers on cuda:0, cuda:1` as the controller of several workers, or their CPU threads."""
        import os

        import torch

        workers = getattr(self.config.option, "numprocesses", None)
        if not isinstance(workers, int) or workers < 2:
            return ""
        gpus = torch.cuda.device_count()
        if gpus and self.settings.device in ("auto", "cuda"):
            return "; xdist workers on " + ", ".join(f"gw{i} {device_for_worker(self.settings.device, i, gpus)}" for i in range(workers))
        return f"; {workers} xdist workers, {max(1, (os.cpu_count() or 1) // workers)} CPU thread(s) each"

    def add_worker_rows(self, records: Iterable[dict]) -> None:
        from harness.rows import Row

        self._worker_rows.extend(Row.from_record(r) for r in records)

    def session_rows(self) -> list["Row"]:
        """This session's rows: those its tests made and, as pytest-xdist's controller, those its workers sent."""
        return list(self._rows.values()) + self._worker_rows

    def summary(self, write_line: Callable[[str], None], write_sep: Callable[[str, str], None]) -> None:
        """The findings first, then the tables in the chosen format (`brief`: none), then what was written."""
        from harness.report import summary_lines, write_reports

        rows = self.session_rows()
        if not rows:
            return
        s = self.settings
        write_sep("=", "harness")
        for line in summary_lines(rows, s.table_format):
            if line.startswith("== "):
                write_sep("-", f"harness {line[3:]}")
            else:
                write_line(line)
        paths = list(write_reports(rows, s.results_dir).values())
        if s.update_baseline:
            from harness.gates import gated, save_baseline

            save_baseline(gated(rows), s.baseline)
            paths.append(s.baseline)
        write_line(f"written: {', '.join(str(p) for p in paths)}")


def worker_number(config: pytest.Config) -> int | None:
    """N of pytest-xdist's worker `gwN`; None outside a worker."""
    worker = getattr(config, "workerinput", {}).get("workerid")
    return None if worker is None else int(worker.removeprefix("gw"))
