"""The harness's options: one table for the pytest plugin and every `harness` command.

Both front ends register every option as plain text with no default, then call
`resolve`, so they share the names, the parsers, the validators and the
defaults. Parsing is deferred on purpose: argparse runs a `type=` function on
its string default at start-up, and the name parsers import torch and every
method package, which would tax each pytest run in the environment, harness or
not. Here nothing is parsed until a front end asks for a harness session.

The three axes of the grid (`--attack`, `--defense`, `--downstream`) keep the
names users type; every other pytest option carries the `--harness-` prefix,
because pytest's option namespace is shared with every installed plugin
(pytest-profiling owns `--profile`). `harness run` accepts each prefixed name
and its short form (`--profile`), so a pytest command line's options paste as
they are.
"""

from __future__ import annotations

import argparse
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

if TYPE_CHECKING:
    from harness.gates import Gate
    from harness.pipeline import Workbench
    from harness.profiles import Profile
    from harness.user_encoders import UserEncoders

ALL = "all"
PREFIX = "--harness-"
TABLE_FORMATS = ("terminal", "markdown", "latex", "csv", "json")  # what harness/tables.py renders
SUMMARY_FORMATS = (*TABLE_FORMATS, "brief")  # brief: the findings alone on the terminal, every table in the files


class OptionError(ValueError):
    """A bad option value; the message starts with the option's flag."""


# -- parsers: text -> value, ValueError naming the accepted form ------------------------


def _names(kind: str) -> Callable[[str], tuple[str, ...] | None]:
    """A comma list of registered names; `all` is None (every registered one)."""

    def parse(text: str) -> tuple[str, ...] | None:
        names = tuple(n.strip() for n in text.split(",") if n.strip())
        if not names:
            raise ValueError(f"empty {kind} list; give names or '{ALL}'")
        if names == (ALL,):
            return None
        from harness import registry

        known = {"attack": registry.ATTACKS, "defense": registry.DEFENSES, "dataset": registry.DATASETS}[kind]
        for name in names:
            if kind == "defense" and name == "none":
                continue  # the undefended row, always kept
            known.get(name)  # UnknownNameError (a KeyError) lists the known names
        return names

    return parse


def _detector(text: str) -> str:
    from harness.scanning import detector

    return detector(text).name


def _profile_name(text: str) -> str:
    from harness.profiles import PROFILES

    PROFILES.get(text)
    return text


def _whole(least: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise ValueError(f"expected a whole number, got {text!r}") from None
        if value < least:
            raise ValueError(f"expected a number >= {least}, got {value}")
        return value

    return parse


def _points(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"expected a number of percentage points, got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"expected a finite number >= 0, got {text!r}")
    return value


def three_numbers(text: str) -> tuple[float, float, float]:
    """'R,G,B' as three finite numbers (an input normalisation's mean or std)."""
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3 or not all(math.isfinite(v) for v in values):
        raise ValueError(f"takes three comma-separated numbers R,G,B, got {text!r}")
    return values  # type: ignore[return-value]


def _device(text: str) -> str:
    from harness.compute import resolve_device

    resolve_device(text)  # DeviceError (a ValueError) on a malformed or absent device
    return text


def _gates(text: str) -> tuple["Gate", ...]:
    from harness.gates import parse_gates

    return parse_gates(text)


def _shard(text: str) -> tuple[int, int]:
    """'I/N': this machine runs shard I of N (1 <= I <= N)."""
    i, sep, n = text.partition("/")
    try:
        shard = int(i), int(n)
    except ValueError:
        shard = (0, 0)
    if not sep or not 1 <= shard[0] <= shard[1]:
        raise ValueError(f"takes I/N with 1 <= I <= N, e.g. 2/4, got {text!r}")
    return shard


def _folder(text: str) -> Path:
    if not text or "\0" in text:
        raise ValueError(f"expected a path, got {text!r}")
    return Path(text)


def _name(kind: str) -> Callable[[str], str]:
    """One registered name (a command's single attack, defense or dataset)."""

    def parse(text: str) -> str:
        from harness import registry

        {"defense": registry.DEFENSES, "dataset": registry.DATASETS}[kind].get(text)
        return text

    return parse


# The front ends: the pytest plugin, `harness run`, and the commands on a user's own encoder and files.
PYTEST, RUN = "pytest", "run"
SESSION = (PYTEST, RUN)  # the options of a harness session (Settings)
FILES = ("scan", "purify", "evaluate")  # the commands that read a user's encoder and run on a device
ENCODER_FILE = (*FILES, "convert")  # the commands that read an encoder file in any layout


@dataclass(frozen=True)
class Option:
    """One row of the table: a setting, its flag, its default, its parser and the front ends that take it."""

    name: str  # the Settings field, or the command's argument
    flag: str  # as pytest spells it; a name without dashes is a command's positional argument
    default: Any  # the value when the option is not given (already parsed)
    help: str  # without the default, which is appended
    parse: Callable[[str], Any] | None = None  # None: the text itself
    metavar: str | None = None
    kind: str = "value"  # "value", "flag" (store_true) or "list" (repeatable)
    choices: tuple[str, ...] | None = None
    shown_default: str | None = None  # how the help names the default, when not str(default)
    fronts: tuple[str, ...] = SESSION  # "pytest", "run", and the `harness` commands that take it
    required: tuple[str, ...] = ()  # the commands where it must be given
    aliases: tuple[str, ...] = ()  # more flags the commands take

    @property
    def dest(self) -> str:
        """The attribute in pytest's option namespace, which every plugin shares: prefixed."""
        return f"harness_{self.name}"

    @property
    def positional(self) -> bool:
        return not self.flag.startswith("-")

    @property
    def cli_flags(self) -> tuple[str, ...]:
        """The `harness` commands take the short form as well as pytest's."""
        if not self.flag.startswith(PREFIX):
            return (self.flag, *self.aliases)
        return ("--" + self.flag[len(PREFIX):], self.flag, *self.aliases)

    def help_text(self) -> str:
        if self.kind == "flag" or self.positional or (self.default is None and self.required and self.shown_default is None):
            return self.help
        shown = self.shown_default if self.shown_default is not None else str(self.default)
        return f"{self.help} (default: {shown})".replace("%", "%%")


OPTIONS: tuple[Option, ...] = (
    Option("attack", "--attack", None, "comma list of registered attacks, or 'all' (each suite takes those it tests: on encoders, or supervised)",
           _names("attack"), "NAMES", shown_default=ALL),
    Option("defense", "--defense", None, "comma list of registered defenses, or 'all'; the undefended row 'none' is always kept",
           _names("defense"), "NAMES", shown_default=ALL),
    Option("downstream", "--downstream", None, "comma list of downstream datasets, or 'all' for the profile's",
           _names("dataset"), "NAMES", shown_default=ALL),
    Option("profile", "--harness-profile", "tiny", "sizes and budgets: tiny (CPU, minutes), small (CPU, ~1 h), gpu (one GPU, "
           "Fashion-MNIST), paper (GPU, CIFAR10); scan prints its measured detection rates, purify its defense budget",
           _profile_name, "NAME", fronts=(*SESSION, *FILES, "list")),
    Option("overrides", "--harness-set", (), "override a profile field, e.g. --harness-set ssl_epochs=5 (repeatable)",
           None, "FIELD=VALUE", kind="list", shown_default="none", fronts=(*SESSION, "purify", "evaluate")),
    Option("seed", "--harness-seed", 0, "first seed", _whole(0), "N", fronts=(*SESSION, *FILES)),
    Option("seeds", "--harness-seeds", 1, "repeat every row over N seeds; tables show mean ± 95% CI", _whole(1), "N"),
    Option("device", "--harness-device", "auto", "cpu, cuda, cuda:N or auto (CUDA when present; one GPU per xdist worker)",
           _device, "DEVICE", fronts=(*SESSION, *FILES)),
    Option("shard", "--harness-shard", None, "run shard I of N of the grid (I/N); a suspect's tests stay in one shard; "
           "`harness merge` joins the shards' results folders", _shard, "I/N", shown_default="all"),
    Option("precision", "--harness-precision", "fp32", "of the training stages: fp32, or bf16 (autocast of the forwards); rows of "
           "different precisions are never merged", None, "PRECISION", choices=("fp32", "bf16"), fronts=(*SESSION, "purify")),
    Option("deterministic", "--harness-deterministic", False, "ask PyTorch for deterministic algorithms (and no cuDNN autotuning); "
           "slower on a GPU; docs/DESIGN.md says what it does not cover", kind="flag"),
    Option("data_root", "--harness-data-root", None,
           "folder holding the datasets in torchvision's layout (Fashion-MNIST also from Debian's package)", _folder, "DIR",
           shown_default="none", fronts=(*SESSION, "evaluate", "export")),
    Option("download", "--harness-download", False, "let torchvision download missing datasets into --harness-data-root (needs a network)",
           kind="flag", fronts=(*SESSION, "evaluate")),
    Option("suspect", "--harness-suspect", None,
           "test your own encoder file (any layout `harness scan` reads) in place of the attacks; needs --harness-trigger "
           "and --harness-target, which only evaluation sees", _folder, "FILE", shown_default="none"),
    Option("trigger", "--harness-trigger", None, "the backdoor's trigger (of --harness-suspect, or of the encoder evaluated): a "
           "registered trigger, an image (RGBA, or with --trigger-mask) or .safetensors", None, "NAME|FILE", shown_default="none",
           fronts=(*SESSION, "evaluate"), required=("evaluate",)),
    Option("target", "--harness-target", None, "the backdoor's target class (of --harness-suspect, or of the encoder evaluated)",
           _whole(0), "N", shown_default="none", fronts=(*SESSION, "evaluate"), required=("evaluate",)),
    Option("clean_encoder", "--harness-clean-encoder", None,
           "your own clean encoder file in place of pre-training (the controls, the exposure's baseline, what attacks tamper with)",
           _folder, "FILE", shown_default="none"),
    Option("image_size", "--harness-image-size", None, "input size your encoder files take (e.g. 224 for ImageNet stems)", _whole(1),
           "N", shown_default="the layout's", fronts=(*SESSION, *FILES)),
    Option("mean", "--harness-mean", None, "input normalisation mean of your encoder files", three_numbers, "R,G,B",
           shown_default="the layout's", fronts=(*SESSION, *FILES)),
    Option("std", "--harness-std", None, "input normalisation std of your encoder files", three_numbers, "R,G,B",
           shown_default="the layout's", fronts=(*SESSION, *FILES)),
    Option("cache_dir", "--harness-cache-dir", Path(".harness-cache"), "content-addressed store of encoders and results", _folder, "DIR"),
    Option("results_dir", "--harness-results-dir", Path("harness-results"), "where rows, tables and timings are written", _folder, "DIR"),
    Option("table_format", "--harness-table-format", "terminal", "format of the summary's tables after its findings: "
           + ", ".join(TABLE_FORMATS) + ", or brief (the findings alone; every table is written to files either way)", None, "FORMAT",
           choices=SUMMARY_FORMATS, fronts=(*SESSION, "table"), aliases=("--format",)),
    Option("gate", "--harness-gate", (), "bounds every defended row must meet, e.g. 'asr_nontarget<=10,acc_drop<=5'", _gates, "GATES",
           shown_default="none", fronts=(PYTEST, "gate")),
    Option("baseline", "--harness-baseline", None,
           "fail a defended row whose ASR (all or non-target) rose or ACC fell beyond --harness-baseline-tolerance against this "
           "saved file",
           _folder, "FILE", shown_default="none", fronts=(PYTEST, "gate")),
    Option("update_baseline", "--harness-update-baseline", False,
           "write this session's defended rows into the --harness-baseline file instead of checking against it", kind="flag", fronts=(PYTEST,)),
    Option("baseline_tolerance", "--harness-baseline-tolerance", 2.0, "percentage points a row may move against the baseline",
           _points, "POINTS", shown_default="2", fronts=(PYTEST, "gate")),
    # The commands' own arguments.
    Option("encoder", "encoder", None, ".safetensors, or a weights-only PyTorch state dict (.pt/.pth), in any recognised layout",
           _folder, "ENCODER", fronts=ENCODER_FILE),
    Option("arch", "--arch", None, "override the architecture recognised from the tensor shapes (resnet18, resnet34, resnet50, "
           "each also *_imagenet)", None, "ARCH", shown_default="recognised", fronts=ENCODER_FILE),
    Option("key_prefix", "--key-prefix", "", "where the encoder's tensors are, e.g. 'model.encoder.'", None, "PREFIX",
           shown_default="none", fronts=ENCODER_FILE),
    Option("key_map", "--key-map", (), "rewrite tensor names (re.sub, in order) into a known layout; '' leaves a tensor out of the "
           "encoder (repeatable)", None, "REGEX=REPLACEMENT", kind="list", shown_default="none", fronts=ENCODER_FILE),
    Option("data", "--data", None, "folder of unlabeled clean images (flat, or one sub-folder per class)", _folder, "IMAGES",
           fronts=("scan", "purify"), required=("scan", "purify")),
    Option("detector", "--detector", "decree", "the scan's detector: decree or ssl_cleanse (harness/scanning.py)", _detector,
           "NAME", fronts=("scan",)),
    Option("steps", "--steps", None, "the detector's trigger-inversion length: DECREE's steps, SSL-Cleanse's epochs for each "
           "cluster", _whole(1), "N", shown_default="its defense's at the profile's budget, where its power is measured (tiny: 300 or 75)",
           fronts=("scan",)),
    Option("purify_defense", "--defense", "mimic", "the registered defense to run", _name("defense"), "NAME", fronts=("purify",)),
    Option("task", "--downstream", None, "registered downstream dataset, e.g. fmnist, digits, gtsrb", _name("dataset"), "NAME",
           fronts=("evaluate",), required=("evaluate",)),
    Option("trigger_mask", "--trigger-mask", None, "grayscale mask image for an opaque --trigger image", _folder, "FILE",
           shown_default="none", fronts=("evaluate",)),
    Option("layout", "--layout", None, "the layout to write: harness, torchvision, badencoder, moco or solo-learn", None, "LAYOUT",
           choices=("harness", "torchvision", "badencoder", "moco", "solo-learn"), fronts=("convert",), required=("convert",)),
    Option("dataset", "--dataset", "fmnist", "registered dataset whose images to write", _name("dataset"), "NAME", fronts=("export",)),
    Option("split", "--split", "test", "which split", None, "SPLIT", choices=("train", "test"), fronts=("export",)),
    Option("count", "--count", 200, "how many images", _whole(1), "N", fronts=("export",)),
    Option("offset", "--offset", 0, "index of the first image", _whole(0), "N", fronts=("export",)),
    Option("json", "--json", None, "also write the verdict or metrics and their evidence as JSON", _folder, "REPORT.json",
           shown_default="none", fronts=("scan", "evaluate")),
    Option("out", "--out", None, "where to write: purify's .safetensors (OUT.<layout><input suffix> holds it in the input's "
           "layout), convert's .pt/.pth or .safetensors, export's folder of PNG files", _folder, "PATH",
           fronts=("purify", "convert", "export"), required=("purify", "convert", "export")),
    Option("force", "--force", False, "replace output files that exist (never an input)", kind="flag",
           fronts=(*ENCODER_FILE, "export", "report", "merge")),
    Option("report_dirs", "results_dirs", (), "results directories whose rows.jsonl the page shows", _folder, "RESULTS_DIR",
           kind="list", fronts=("report",)),
    Option("report_out", "--out", Path("report.html"), "the HTML file to write", _folder, "REPORT.html", fronts=("report",)),
    Option("rows_dir", "results_dir", None, "a results directory: its rows.jsonl", _folder, "RESULTS_DIR", fronts=("table", "gate")),
    Option("merge_dirs", "results_dirs", (), "the shards' results directories", _folder, "RESULTS_DIR", kind="list", fronts=("merge",)),
    Option("merge_out", "--out", None, "the results directory to write the merged rows, tables and report into", _folder, "DIR",
           fronts=("merge",), required=("merge",)),
    Option("what", "what", None, "attacks, defenses, scan detectors, profiles, or a profile's fields", None, "WHAT",
           choices=("attacks", "defenses", "detectors", "profiles", "fields"), fronts=("list",)),
)
BY_NAME = {o.name: o for o in OPTIONS}
SESSION_OPTIONS = tuple(o for o in OPTIONS if PYTEST in o.fronts)  # the pytest plugin's, and Settings' fields


@dataclass(frozen=True)
class Settings:
    """Every option's value, parsed and checked together; what both front ends run from (built by `resolve`)."""

    attack: tuple[str, ...] | None  # None: every registered attack
    defense: tuple[str, ...] | None
    downstream: tuple[str, ...] | None  # None: the profile's
    profile: str
    overrides: tuple[str, ...]  # FIELD=VALUE assignments to the profile
    seed: int
    seeds: int
    device: str
    shard: tuple[int, int] | None  # (i, n): this machine's share of the grid (harness/planner.py shard_of)
    precision: str  # fp32 or bf16 (harness/compute.py)
    deterministic: bool
    data_root: Path | None
    download: bool
    suspect: Path | None
    trigger: str | None
    target: int | None
    clean_encoder: Path | None
    image_size: int | None
    mean: tuple[float, float, float] | None
    std: tuple[float, float, float] | None
    cache_dir: Path
    results_dir: Path
    table_format: str
    gate: tuple
    baseline: Path | None
    update_baseline: bool
    baseline_tolerance: float
    resolved_profile: "Profile"  # the profile with its overrides, resolved once by `resolve`

    def workbench(self, device: str | None = None) -> "Workbench":
        """The workbench these settings build rows with, on `device` (default: the settings'), which is prepared for
        the run's precision and determinism (harness/compute.py)."""
        from harness.store import ArtifactStore
        from harness.compute import prepare, resolve_device
        from harness.pipeline import Workbench

        where = resolve_device(device or self.device)
        prepare(where, self.deterministic)
        return Workbench(self.resolved_profile, ArtifactStore(self.cache_dir), where, self.data_root, self.download,
                         self.user_encoders(), self.precision)

    def user_encoders(self) -> "UserEncoders":
        """The user's encoder files and the suspect's trigger (at the profile's trigger size) and target."""
        from harness.trigger_files import load_trigger
        from harness.user_encoders import UserEncoders

        trigger = None if self.trigger is None else load_trigger(self.trigger, self.resolved_profile.trigger_size)
        return UserEncoders(self.suspect, trigger, self.target, self.clean_encoder, self.image_size, self.mean, self.std)

    @property
    def seed_list(self) -> list[int]:
        return [self.seed + i for i in range(self.seeds)]


def given(values: Mapping[str, Any]) -> bool:
    """Whether any harness option was given (not given: None, as both front ends register them)."""
    return any(values.get(o.name) not in (None, False) for o in SESSION_OPTIONS)


def resolve(values: Mapping[str, Any]) -> Settings:
    """Settings from raw values by option name (text, a list of texts, a flag's bool; None or absent: not given).

    Raises OptionError whose message names the option, for one-line usage errors.
    """
    parsed: dict[str, Any] = {}
    for opt in SESSION_OPTIONS:
        raw = values.get(opt.name)
        if raw is None or (opt.kind == "flag" and raw is False):
            parsed[opt.name] = opt.default
        elif opt.kind == "list":
            parsed[opt.name] = tuple(raw)
        elif opt.kind == "flag":
            parsed[opt.name] = True
        else:
            if opt.choices is not None and raw not in opt.choices:
                raise OptionError(f"{opt.flag}: {raw!r} is not one of {', '.join(opt.choices)}")
            try:
                parsed[opt.name] = raw if opt.parse is None else opt.parse(raw)
            except (ValueError, KeyError, RuntimeError) as e:  # KeyError: the registries' UnknownNameError
                raise OptionError(f"{opt.flag}: {e}") from None
    from harness.profiles import get_profile, with_overrides

    try:
        parsed["resolved_profile"] = with_overrides(get_profile(parsed["profile"]), parsed["overrides"])
    except (ValueError, TypeError) as e:
        raise OptionError(f"{BY_NAME['overrides'].flag}: {e}") from None
    settings = Settings(**parsed)
    _check_together(settings)
    return settings


def _check_together(s: Settings) -> None:
    """What no single parser can see: folders, option pairs."""
    flag = {o.name: o.flag for o in SESSION_OPTIONS}
    if s.data_root is not None and not s.data_root.is_dir():
        raise OptionError(f"{flag['data_root']} {s.data_root} is not a folder")
    for name in ("results_dir", "cache_dir"):
        folder = getattr(s, name)
        if folder.exists() and not folder.is_dir():
            raise OptionError(f"{flag[name]} {folder} exists and is not a folder")
        if folder.is_dir() and not os.access(folder, os.W_OK | os.X_OK):
            raise OptionError(f"{flag[name]} {folder} is not writable")
    for name in ("suspect", "clean_encoder"):
        path = getattr(s, name)
        if path is not None and not path.is_file():
            raise OptionError(f"{flag[name]} {path}: no such file")
    if s.suspect is not None and s.attack is not None:
        raise OptionError(f"{flag['suspect']} takes the place of the attacks; leave out {flag['attack']}")
    for name in ("trigger", "target"):
        if s.suspect is None and getattr(s, name) is not None:
            raise OptionError(f"{flag[name]} describes a suspect file: give it with {flag['suspect']} FILE")
    for name in ("image_size", "mean", "std"):
        if s.suspect is None and s.clean_encoder is None and getattr(s, name) is not None:
            raise OptionError(f"{flag[name]} describes your encoder files: give {flag['suspect']} or {flag['clean_encoder']}")
    for name, field in (("image_size", "size"), ("std", "std")):
        if getattr(s, name) is not None:
            from harness.geometry import InputGeometry

            try:
                InputGeometry(**{field: getattr(s, name)})
            except ValueError as e:
                raise OptionError(f"{flag[name]}: {e}") from None
    if s.trigger is not None:
        from harness.trigger_files import load_trigger

        try:
            load_trigger(s.trigger, s.resolved_profile.trigger_size)
        except ValueError as e:
            raise OptionError(f"{flag['trigger']}: {e}") from None
    try:
        s.user_encoders()
    except ValueError as e:
        raise OptionError(f"{flag['suspect']}: {e}") from None
    if s.update_baseline and s.baseline is None:
        raise OptionError(f"{flag['update_baseline']} needs {flag['baseline']} FILE to write")


def add_to_argparse(parser: argparse.ArgumentParser, command: str) -> None:
    """Register the options `command` takes on its argparse parser, by both their names.

    `harness run` takes them as text defaulting to None and resolves them as pytest does (`resolve`); the other
    commands parse each value as it is read (an argparse error names the flag) and start from the table's defaults.
    """
    for opt in (o for o in OPTIONS if command in o.fronts):
        if command == RUN:
            parser.add_argument(*opt.cli_flags, **argparse_kwargs(opt))
            continue
        kwargs = argparse_kwargs(opt)
        kwargs.update(dest=opt.name, default=list(opt.default) if opt.kind == "list" else opt.default)
        if opt.parse is not None and opt.kind != "flag":
            kwargs["type"] = _argparse_type(opt)
        if opt.positional:
            kwargs.pop("dest"), kwargs.pop("default")
            if opt.kind == "list":
                kwargs.update(action="store", nargs="+")
            parser.add_argument(opt.name, **kwargs)
        else:
            parser.add_argument(*opt.cli_flags, required=command in opt.required, **kwargs)


def _argparse_type(opt: Option) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            return opt.parse(text)
        except (ValueError, KeyError) as e:  # KeyError: the registries' UnknownNameError
            raise argparse.ArgumentTypeError(str(e)) from None

    parse.__name__ = opt.metavar or opt.name  # what argparse calls the type in its "invalid ... value" error
    return parse


def argparse_kwargs(opt: Option) -> dict[str, Any]:
    """Keywords for `add_argument`/`addoption`: raw text, no `type=` and no default (see the module docstring)."""
    kwargs: dict[str, Any] = {"dest": opt.dest, "default": None, "help": opt.help_text()}
    if opt.kind == "flag":
        kwargs["action"] = "store_true"
    elif opt.kind == "list":
        kwargs.update(action="append", metavar=opt.metavar)
    else:
        kwargs["metavar"] = opt.metavar
        if opt.choices is not None:
            kwargs["choices"] = opt.choices
    return kwargs


def values_of(namespace: Any) -> dict[str, Any]:
    """Raw values by option name from a parsed namespace (pytest's `config.option` or `harness run`'s); absent: None."""
    return {o.name: getattr(namespace, o.dest, None) for o in SESSION_OPTIONS}


RUN_OPTIONS = tuple(o for o in OPTIONS if RUN in o.fronts)


def device_for_worker(requested: str, worker: int | None, cuda_devices: int) -> str:
    """The device a process builds on: pytest-xdist's worker N takes GPU N (mod the count: `cuda` shares GPUs between
    workers when there are more workers, `auto` refuses that in `gpu_workers_fit`); cpu and an explicit `cuda:N` are
    kept as given."""
    if worker is None or cuda_devices == 0 or requested not in ("auto", "cuda"):
        return requested
    return f"cuda:{worker % cuda_devices}"


def gpu_workers_fit(requested: str, workers: int, cuda_devices: int) -> None:
    """Refuse, in one line, more pytest-xdist workers than GPUs with `--harness-device auto`: two workers on one GPU
    only when asked (`--harness-device cuda`)."""
    if requested == "auto" and cuda_devices and workers > cuda_devices:
        raise OptionError(f"-n {workers} would put two workers on one of this machine's {cuda_devices} GPU(s); use -n {cuda_devices} "
                          "(or -n auto), or --harness-device cuda to share them")
