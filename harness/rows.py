"""A result row, and the append-only file a results directory keeps them in.

Rows are appended to `rows.jsonl` in the results directory as they are made (one
complete line per row, flushed and synced, so an interrupted run loses nothing it
finished and a partial last line is never read as a row; see ResultsStore for
what keeps that partial line from costing the row after it). Two rows are the
same row exactly when `Row.identity` is equal: rows of different resolved
profiles, precisions or scenarios are never merged.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import pandas as pd

from harness import strict_json
from harness.strict_json import jsonable, restore_non_finite

METRICS = ("acc", "asr_all", "asr_nontarget")
METRIC_TITLES = {"acc": "ACC", "asr_all": "ASR(all)", "asr_nontarget": "ASR(non-target)"}
HEADLINE = "asr_all"  # the paper's ASR: every triggered test image classified as the target
# a configuration: a row up to its seed; rows of different precisions (harness/compute.py) are never merged
KEYS = ("suite", "profile", "precision", "attack", "scenario", "downstream", "defense", "variant")
IDENTITY = (*KEYS, "seed")  # a row's identity: two rows with these fields equal are the same row
CONFIGURATION = ("profile", "precision", "attack", "scenario", "downstream")  # one line of a table, one finding
SCHEMA = 2  # of a stored row: 1 held its settings as a JSON string, 2 as an object


@dataclass(frozen=True)
class RowSettings:
    """What made a row and what backs it: the resolved profile, the evaluation, the trigger and target, the methods'
    metadata and overrides, the defender's data, and the evaluation side's evidence (exposure, the positive control).

    Each part holds JSON's own types (`jsonable`); the row is serialised once, when it is stored."""

    code: str = ""  # the project's code version (cache_keys.project_version): rows of other code are never merged
    compute: dict = field(default_factory=dict)  # device, precision (harness/compute.py) and torch version
    profile: dict = field(default_factory=dict)  # every field of the resolved profile
    profile_changes: dict = field(default_factory=dict)  # the fields that differ from the registered profile
    trigger: dict = field(default_factory=dict)  # the trigger's description (triggers.Trigger.describe)
    target: int | None = None
    attack_meta: dict = field(default_factory=dict)
    attack_overrides: dict = field(default_factory=dict)
    defense_meta: dict = field(default_factory=dict)
    defense_overrides: dict = field(default_factory=dict)
    defender_data: dict = field(default_factory=dict)  # the clean ratio and the poisoned share of the defender's subset
    probe: dict | None = None  # an encoder's row: the downstream probe's config
    classifier: str | None = None  # a supervised attack's row: which head the classifier was read with
    exposure: dict | None = None  # harness/exposure.py's measurements, of the suspect and the clean encoder
    control: dict | None = None  # the positive control: the undefended ASR(all), the bound, whether it implanted

    def as_dict(self) -> dict:
        """The parts that are present (a part of None is left out)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if getattr(self, f.name) is not None}

    @classmethod
    def from_dict(cls, parts: dict) -> "RowSettings":
        unknown = sorted(set(parts) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"row settings have no part {unknown[0]!r}")
        return cls(**jsonable(parts))


@dataclass(frozen=True)
class Row:
    suite: str
    profile: str
    attack: str  # "clean" for the clean-encoder control
    defense: str  # "none" when undefended
    pretrain: str
    downstream: str
    seed: int
    acc: float  # clean test accuracy, %
    asr_all: float  # triggered test images classified as the target, %, over all test images
    asr_nontarget: float  # the same over test images whose class is not the target, %
    n_test: int
    n_nontarget: int
    variant: str = ""  # an ablation or sweep point, e.g. "no_l2" or "clean_ratio=0.01"
    scenario: str = ""  # the trigger the row's attack used (its name), e.g. "patch10" or "checkerboard10"
    precision: str = "fp32"  # of the training stages behind the row: fp32, or bf16 autocast (harness/compute.py)
    exposure: float | None = None  # points by which the defender's data evokes the backdoor (harness/exposure.py)
    implanted: bool | None = None  # the positive control: the undefended attack reached the profile's implant bound
    seconds: dict = field(default_factory=dict, compare=False)  # stage -> seconds of its original build
    settings: RowSettings = field(default_factory=RowSettings)

    __hash__ = None  # type: ignore[assignment]  # its settings are dicts; a row is known by `identity`

    @property
    def identity(self) -> tuple:
        return tuple(getattr(self, k) for k in IDENTITY)

    def record(self) -> dict:
        """The row as JSON's types, with its schema version: what its file holds."""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return {**fields, "settings": self.settings.as_dict(), "schema": SCHEMA}

    @classmethod
    def from_record(cls, record: dict) -> "Row":
        """A row from `record()`'s form, or from a schema-1 record (settings as a JSON string); TypeError or ValueError,
        naming the field, when the record is not a row of either schema."""
        record = dict(record)
        schema = record.pop("schema", 1)
        settings = record.pop("settings", {})
        if schema not in (1, SCHEMA):
            raise ValueError(f"a row of schema {schema!r}; this version reads schemas 1 and {SCHEMA}")
        if schema == 1 and isinstance(settings, str):
            settings = json.loads(settings)
        if not isinstance(settings, dict):
            raise TypeError(f"a row's settings are an object, got {type(settings).__name__}")
        record = restore_non_finite(record)  # a metric that was not a finite number is stored as null
        unknown = sorted(set(record) - set(FIELD_TYPES))
        if unknown:
            raise TypeError(f"a row has no field {unknown[0]!r}")
        for name, kinds in FIELD_TYPES.items():
            value = record.get(name)
            if name in record and not (isinstance(value, kinds) and (bool in kinds or not isinstance(value, bool))):
                raise TypeError(f"a row's {name} is {type(value).__name__}")
        return cls(**record, settings=RowSettings.from_dict(settings))

    def to_json(self) -> str:
        """One line of strict JSON (harness/strict_json.py: a metric that is not a finite number comes back as NaN)."""
        return strict_json.dumps(self.record(), sort_keys=True)


# The types a stored row's fields take (JSON's: a float field may hold an integer); `exposure` and `implanted` may be null.
FIELD_TYPES: dict[str, tuple[type, ...]] = {
    **{f: (str,) for f in ("suite", "profile", "attack", "defense", "pretrain", "downstream", "variant", "scenario", "precision")},
    **{f: (int,) for f in ("seed", "n_test", "n_nontarget")},
    **{f: (int, float) for f in ("acc", "asr_all", "asr_nontarget")},
    "exposure": (int, float, type(None)), "implanted": (bool, type(None)), "seconds": (dict,),
}
MISFITS = "misfits.jsonl"  # beside rows.jsonl: its lines that are no row of this version, as they were
ROW_START = '{"acc": '  # every stored row begins so (sorted keys): where a complete row may follow a torn one


@dataclass
class RowsRead:
    """What a rows file held: its rows; the lines that are JSON but no row of this version (another schema, a missing or
    extra field: kept and reported); and the parts of lines that killed writers left (not JSON, not rows)."""

    rows: list[Row]
    misfits: list[str]
    torn: int

    def warning(self, path: Path) -> str | None:
        """One line saying how many lines of `path` are not rows this version reads, or None when all are."""
        if not self.misfits:
            return None
        return (f"{len(self.misfits)} line(s) of {path} are not rows this version reads (another schema, a missing or extra "
                f"field, a field of the wrong type); copied to {path.parent / MISFITS}, left out of the tables")


class ResultsStore:
    """Append-only rows of one results directory.

    A run killed mid-append leaves part of a line. Appends therefore hold a lock (`.rows.jsonl.lock`, so
    xdist workers take turns) and begin on a new line when the file does not end with one, and the reader
    also finds a complete row glued to such a part (files written before appends began on a new line).
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.path = self.root / "rows.jsonl"

    def append(self, row: Row) -> None:
        from filelock import FileLock

        from harness.atomic import refuse_non_regular

        self.root.mkdir(parents=True, exist_ok=True)
        refuse_non_regular(self.path)  # a FIFO would block the append, a device would swallow it
        line = (row.to_json() + "\n").encode("utf-8")
        with FileLock(str(self.root / ".rows.jsonl.lock")), open(self.path, "a+b") as f:
            end = f.seek(0, os.SEEK_END)
            if end:
                f.seek(end - 1)
                if f.read(1) != b"\n":
                    line = b"\n" + line  # after a killed writer's part of a line
            f.write(line)
            f.flush()
            os.fsync(f.fileno())

    def read(self) -> RowsRead:
        """Every line of the file read: rows, misfits and torn parts (RowsRead); the file is read bounded
        (harness/reading.py), and in time linear in its length."""
        from harness.reading import read_text

        if not self.path.exists() and not self.path.is_symlink():
            return RowsRead([], [], 0)
        rows, misfits, torn = [], [], 0
        for line in read_text(self.path, "rows").split("\n"):
            kind, value = _parse_line(line)
            if kind == "row":
                rows.append(value)
            elif kind == "misfit":
                misfits.append(line)
            elif kind == "torn":
                torn += 1
        return RowsRead(rows, misfits, torn)

    def rows(self) -> list[Row]:
        """Every complete row in the file (the misfits and torn parts left out: `read` says how many)."""
        return self.read().rows

    def rows_kept(self, warn: Callable[[str], None]) -> list[Row]:
        """Every complete row; the lines that are no row of this version are copied to misfits.jsonl beside the file
        (replacing an older copy) and `warn` gets one line saying so, so no row is lost without a word."""
        from harness.atomic import atomic_write_text

        read = self.read()
        line = read.warning(self.path)
        if line is not None:
            atomic_write_text(self.root / MISFITS, "\n".join(read.misfits) + "\n")
            warn(line)
        return read.rows


def _parse_line(line: str) -> tuple[str, Row | None]:
    """("row", the row) for a row of this version, or a complete row glued after a killed writer's part of a line;
    ("misfit", None) for JSON that is no row this version reads; ("torn", None) for a part of a line;
    ("empty", None) for a blank line. Each candidate start is a ROW_START, so a line is read in linear time."""
    if not line.strip():
        return "empty", None
    try:
        record = json.loads(line)
    except (ValueError, RecursionError):
        starts, at = [], line.find(ROW_START, 1)
        while at != -1 and len(starts) < 8:
            starts.append(at)
            at = line.find(ROW_START, at + 1)
        for start in starts:
            try:
                return "row", Row.from_record(json.loads(line[start:]))
            except (ValueError, TypeError, RecursionError):
                continue
        return "torn", None
    if not isinstance(record, dict):
        return "misfit", None
    try:
        return "row", Row.from_record(record)
    except (ValueError, TypeError, RecursionError):
        return "misfit", None


class MergeError(ValueError):
    """Results folders whose rows cannot be one table: another profile, precision or code; the message is one line."""


def merge_folders(folders: Iterable[Path]) -> tuple[list[Row], list[str]]:
    """The rows of several results folders (shards of one grid) as one list, and a warning line per conflict.

    Refused with MergeError when the folders' rows differ in resolved profile, precision or code version: such
    rows are not one grid. A row several shards made (a control two suspects read) counts once; where its
    numbers differ between shards (machines round differently), the first folder's is kept and a warning says so.
    """
    by_identity: dict[tuple, tuple[Row, Path]] = {}
    warnings = []
    seen: dict[str, dict[str, Path]] = {"profile": {}, "precision": {}, "code": {}}
    for folder in folders:
        rows = ResultsStore(folder).rows_kept(warnings.append)
        if not rows:
            raise MergeError(f"{folder}: no rows (no {Path(folder) / 'rows.jsonl'})")
        for row in rows:
            for what, value in (("profile", row.profile), ("precision", row.precision), ("code", row.settings.code)):
                seen[what].setdefault(value, Path(folder))
                if len(seen[what]) > 1:
                    (a, fa), (b, fb) = list(seen[what].items())[:2]
                    raise MergeError(f"the shards are not one grid: {what} {a or '(none)'} in {fa} but {b or '(none)'} in {fb}")
            known = by_identity.get(row.identity)
            if known is None:
                by_identity[row.identity] = (row, Path(folder))
            elif (known[0].acc, known[0].asr_all, known[0].asr_nontarget) != (row.acc, row.asr_all, row.asr_nontarget):
                warnings.append(f"{'-'.join(map(str, row.identity))}: made in {known[1]} and {folder} with different numbers; "
                                f"kept {known[1]}'s")
    return [row for row, _ in by_identity.values()], warnings


def latest(rows: Iterable[Row]) -> list[Row]:
    """One row per identity, the latest: a row made again (a re-run appends to rows.jsonl, two xdist workers build one
    control) counts once."""
    return list({r.identity: r for r in rows}.values())


def to_frame(rows: Iterable[Row]) -> pd.DataFrame:
    """The rows as a frame, one column per field (settings as their JSON text), seconds left out."""
    records = [{**{k: v for k, v in r.record().items() if k not in ("seconds", "schema")},
                "settings": json.dumps(r.settings.as_dict(), sort_keys=True)} for r in rows]
    columns = [f.name for f in dataclasses.fields(Row) if f.name != "seconds"]
    frame = pd.DataFrame.from_records(records, columns=columns)
    # A row made again (a re-run, or two xdist workers building the same control) counts once: the latest.
    frame = frame.drop_duplicates(subset=list(IDENTITY), keep="last")
    return frame.sort_values([*KEYS, "seed"], kind="stable").reset_index(drop=True)


