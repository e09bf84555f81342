"""The harness as a library: a slice of the grid into a DataFrame, your own encoder scanned, purified or evaluated.

    import harness

    frame = harness.run(attack="badencoder", downstream="fmnist", defense="mimic")
    found = harness.scan("suspect.safetensors", "clean-images/")              # found.flagged, found.value, found.lines
    purified = harness.purify("suspect.safetensors", "clean-images/")         # purified.encoder, purified.meta
    metrics = harness.evaluate_encoder(purified.encoder, "fmnist")            # metrics.acc, metrics.asr_nontarget

`run` takes the options of `pytest suites/` and `harness run` by their setting
names in harness/options.py (`profile`, `overrides`, `seed`, `seeds`, `device`,
`cache_dir`...), checked by the same validators, and chooses the same grid.
The others take an encoder as an `Encoder` or a file in any recognised layout
(harness/layouts.py; with `arch`, `key_prefix`, `key_map` and the input geometry
`image_size`, `mean`, `std` as `harness scan` takes them: a file's encoder is
wrapped in its layout's geometry, harness/geometry.py) and images as a uint8
(N, 3, 32, 32) tensor or a folder. Progress goes to the logger "harness" at INFO; wrap a call
in `with harness.progress_to(): ...` to see it.

The evaluation is called `evaluate_encoder` because `harness.evaluate` is the
module that holds the probe.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

if TYPE_CHECKING:
    import pandas as pd
    import torch
    from torch import Tensor

    from harness.geometry import InputGeometry
    from harness.layouts import Checkpoint

    from harness.contract import Budget, DefenseResult
    from harness.evaluate import Metrics
    from harness.models import Encoder
    from harness.options import Settings
    from harness.profiles import Profile
    from harness.pipeline import Workbench
    from harness.registry import Method
    from harness.rows import Row
    from harness.scanning import ScanVerdict
    from harness.triggers import Trigger

log = logging.getLogger("harness")


# -- a slice of the grid --------------------------------------------------------------


def settings_from(**options: Any) -> "Settings":
    """Settings from Python values by setting name (lists for the name axes and `overrides`), checked as options are."""
    from harness.options import BY_NAME, RUN_OPTIONS, resolve

    known = {o.name for o in RUN_OPTIONS}
    unknown = sorted(set(options) - known)
    if unknown:
        raise TypeError(f"unknown option {', '.join(unknown)}; options: {', '.join(sorted(known))}")
    values: dict[str, Any] = {}
    for name, value in options.items():
        kind = BY_NAME[name].kind
        if value is None or kind == "flag":
            values[name] = value
        elif kind == "list":
            values[name] = [value] if isinstance(value, str) else list(value)
        elif isinstance(value, (list, tuple)):
            values[name] = ",".join(map(str, value))
        else:
            values[name] = str(value)
    return resolve(values)


def run_rows(settings: "Settings") -> list["Row"]:
    """The effectiveness grid the settings choose, as the suite plans it (harness/planner.py): per seed and downstream task,
    the clean and random controls of every scenario, then per encoder attack and scenario (or its own trigger, with its
    controls) the undefended suspect and every chosen defense. An attack that does not apply to a task is skipped, with a
    warning that says why."""
    from harness.contract import AttackNotApplicable
    from harness.planner import chosen_attacks, plan, planned_rows, shard_of

    supervised = [a for a in settings.attack or () if a not in chosen_attacks(settings)]
    if supervised:
        raise ValueError(f"{', '.join(supervised)}: backdoors a classifier, not an encoder; its grid is "
                         f"`pytest suites/test_generalisation.py --attack={','.join(supervised)}`")
    bench = settings.workbench()
    rows: dict[tuple, Row] = {}
    for spec in planned_rows(shard_of(plan(settings, "effectiveness"), settings.shard)):
        try:
            row = bench.row(spec)
        except AttackNotApplicable as why:
            log.warning("harness: skipped %s on %s: %s", spec.trigger_of or spec.attack, spec.downstream, why)
            continue
        rows.setdefault(row.identity, row)  # a control whose trigger is the profile's is the plain control again
    return list(rows.values())


def run(attack: str | Sequence[str] = "all", defense: str | Sequence[str] = "all", downstream: str | Sequence[str] = "all",
        **options: Any) -> "pd.DataFrame":
    """Build (or read from the cache) a slice of the effectiveness grid and return its rows as a DataFrame.

    Options as `harness run` takes them, by setting name: profile="tiny", overrides=["width=8"], seed=0, seeds=1,
    device="auto", data_root=None, download=False, cache_dir=".harness-cache". Nothing is written but the cache.
    """
    from harness.rows import to_frame

    return to_frame(run_rows(settings_from(attack=attack, defense=defense, downstream=downstream, **options)))


# -- your own encoder ------------------------------------------------------------------


Triple = tuple[float, float, float]


def load_user_encoder(path: str | Path, arch: str | None = None, key_prefix: str = "", key_map: Sequence[str] = (),
                      image_size: int | None = None, mean: "Triple | None" = None,
                      std: "Triple | None" = None) -> "tuple[Checkpoint, Encoder, InputGeometry]":
    """A user's file read once and recognised (its Checkpoint, whose sha256 is of the bytes loaded), its encoder behind
    its input geometry, and that geometry: the layout's (or what a harness file records) with the given fields replaced."""
    import dataclasses

    from harness.geometry import with_geometry
    from harness.layouts import load_checkpoint

    checkpoint = load_checkpoint(Path(path), arch, key_prefix, tuple(key_map))
    given = {"size": image_size, "mean": None if mean is None else tuple(mean), "std": None if std is None else tuple(std)}
    geometry = dataclasses.replace(checkpoint.geometry, **{k: v for k, v in given.items() if v is not None})
    return checkpoint, with_geometry(checkpoint.encoder, geometry), geometry


def _encoder(encoder: "Encoder | str | Path", arch: str | None, key_prefix: str, key_map: Sequence[str] = (),
             image_size: int | None = None, mean: "Triple | None" = None, std: "Triple | None" = None) -> "Encoder":
    """The encoder in a file (behind its geometry), or a copy of the one given in eval mode, as a file's loads: a
    defense trains what it gets, and the caller's encoder stays theirs, mode included."""
    import copy

    if isinstance(encoder, (str, Path)):
        return load_user_encoder(encoder, arch, key_prefix, key_map, image_size, mean, std)[1]
    if arch is not None or key_prefix or key_map or (image_size, mean, std) != (None, None, None):
        raise ValueError("arch, key_prefix, key_map, image_size, mean and std describe a file; for an Encoder, give its "
                         "geometry with harness.geometry.with_geometry")
    return copy.deepcopy(encoder).eval()


def _named(encoder: "Encoder | str | Path") -> str:
    return str(encoder) if isinstance(encoder, (str, Path)) else "the encoder"


def _images(images: "Tensor | str | Path") -> "Tensor":
    from harness.images import load_image_folder

    return load_image_folder(Path(images)) if isinstance(images, (str, Path)) else images


def scan(encoder: "Encoder | str | Path", images: "Tensor | str | Path", *, detector: str = "decree", steps: int | None = None,
         profile: str = "tiny", seed: int = 0, device: str = "auto", arch: str | None = None, key_prefix: str = "",
         key_map: Sequence[str] = (), image_size: int | None = None, mean: "Triple | None" = None,
         std: "Triple | None" = None) -> "ScanVerdict":
    """Look for a backdoor with one of harness/scanning.py's detectors (DECREE's smallest collapsing mask, SSL-Cleanse's
    outlier among per-cluster triggers): the verdict, the statistic it is read from and its evidence.

    `steps`: the inversion's length in the detector's unit (default: its defense's at `profile`'s budget, the length
    its power is measured at).
    """
    from harness.compute import resolve_device
    from harness.finite import check_input_encoder
    from harness.profiles import get_profile
    from harness.scanning import detector as detector_named, scan_encoder

    found = detector_named(detector)
    length = found.length_at(get_profile(profile)) if steps is None else steps
    dev = resolve_device(device)
    model, data = _encoder(encoder, arch, key_prefix, key_map, image_size, mean, std), _images(images)
    check_input_encoder(model, data, _named(encoder))
    return scan_encoder(model, data, found.name, length, seed, dev)


def purifier(defense: str, **settings: Any) -> "Method[Callable]":
    """The defense bound to its settings, if it returns a purified encoder (a test-time input detector does not)."""
    from harness.registry import DEFENSES, INPUT_DETECTION

    if DEFENSES.has_tag(defense, INPUT_DETECTION):
        raise ValueError(f"{defense} flags triggered inputs at test time and leaves the encoder as it is; it purifies nothing "
                         f"(its rows come from the suites: pytest suites/ --defense={defense})")
    return DEFENSES.create(defense, **settings)


def purify_encoder(method: "Method[Callable]", encoder: "Encoder", images: "Tensor", budget: "Budget", seed: int) -> "DefenseResult":
    """Run a defense on an encoder with clean images (what `harness purify` runs); the defense sees nothing else, and
    a result that is not finite on those images is refused (NonFiniteDefense)."""
    from harness.contract import CleanSubset
    from harness.finite import check_defense_result

    result = method(encoder, CleanSubset(images), budget, seed)
    check_defense_result(method.name, result.encoder, images)
    return result


def purify(encoder: "Encoder | str | Path", images: "Tensor | str | Path", defense: str = "mimic", *, profile: str = "tiny",
           overrides: Sequence[str] = (), seed: int = 0, device: str = "auto", precision: str = "fp32", arch: str | None = None, key_prefix: str = "",
           key_map: Sequence[str] = (), image_size: int | None = None, mean: "Triple | None" = None, std: "Triple | None" = None,
           **settings: Any) -> "DefenseResult":
    """The purified encoder and the defense's metadata; `settings` replace fields of the defense's config.

    A file's encoder is purified behind its input geometry and returned so (harness.geometry.unwrap gives the
    bare weights); `harness purify` also writes them back in the file's own layout.
    """
    from harness.compute import resolve_device, resolve_precision
    from harness.contract import Budget
    from harness.profiles import get_profile, with_overrides

    method = purifier(defense, **settings)
    dev = resolve_device(device)
    from harness.finite import check_input_encoder

    budget = Budget.of(with_overrides(get_profile(profile), overrides), dev, resolve_precision(precision, dev))
    model, data = _encoder(encoder, arch, key_prefix, key_map, image_size, mean, std), _images(images)
    check_input_encoder(model, data, _named(encoder))
    return purify_encoder(method, model, data, budget, seed)


def evaluation_bench(profile: "Profile", device: "torch.device", data_root: Path | None = None, download: bool = False) -> "Workbench":
    """A workbench for the profile's downstream splits and probe only: it builds nothing, so its store stays empty."""
    from harness.store import ArtifactStore
    from harness.pipeline import Workbench

    return Workbench(profile, ArtifactStore(Path(".harness-cache")), device, data_root, download)


def evaluate_on(bench: "Workbench", encoder: "Encoder", downstream: str, trigger: "Trigger", target: int, seed: int) -> "Metrics":
    """ACC and ASR of a probe on the encoder's frozen features, on the bench's split of a downstream task (what
    `harness evaluate` and every grid row compute)."""
    from harness.evaluate import evaluate

    train, test = bench.downstream(downstream)
    return evaluate(encoder, train, test, trigger, target, bench.probe_config(), seed, bench.device)


def evaluate_encoder(encoder: "Encoder | str | Path", downstream: str = "fmnist", *, trigger: "Trigger | None" = None,
                     target: int | None = None, profile: str = "tiny", overrides: Sequence[str] = (), seed: int = 0,
                     device: str = "auto", data_root: str | Path | None = None, download: bool = False,
                     arch: str | None = None, key_prefix: str = "", key_map: Sequence[str] = (), image_size: int | None = None,
                     mean: "Triple | None" = None, std: "Triple | None" = None) -> "Metrics":
    """ACC and ASR of a probe trained on the encoder's frozen features, on the profile's split of a downstream task.

    The trigger defaults to the profile's and the target to the task's; a grid row's numbers are the same call.
    """
    from harness.profiles import get_profile, with_overrides
    from harness.compute import resolve_device

    bench = evaluation_bench(with_overrides(get_profile(profile), overrides), resolve_device(device),
                             None if data_root is None else Path(data_root), download)
    trigger = bench.trigger() if trigger is None else trigger
    target = bench.downstream(downstream)[0].default_target if target is None else target
    from harness.finite import check_input_encoder

    model = _encoder(encoder, arch, key_prefix, key_map, image_size, mean, std)
    check_input_encoder(model, bench.downstream(downstream)[1].images, _named(encoder))
    return evaluate_on(bench, model, downstream, trigger, target, seed)
