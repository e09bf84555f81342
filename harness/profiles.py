"""Profiles: every size and budget of a run in one frozen dataclass.

Results are findings. A profile's fields are fixed by attack-side and
encoder-side criteria only, never by what a defense then does:
- the undefended attack implants: ASR(all) >= `implant_asr_all` (the positive
  control every defended row is read against);
- the clean encoder is usable: its ACC at least `USABLE_MARGIN` points above the
  random-encoder row's;
- every defense budget follows one rule, the budget rule: each defense runs its
  own reference recipe (epochs, inner steps, inversion steps, MINE steps, as
  its paper's code sets them) scaled by the profile's `budget_fraction`,
  rounded up, never below the minimum that keeps the loop meaningful nor above
  the reference (`Budget.steps` in harness/contract.py; each defense's config
  lists its reference loops). MIMIC's MINE steps count in its budget.

- `tiny`: two CPU cores, minutes; Fashion-MNIST pre-training, Fashion-MNIST and
  scikit-learn digits downstream. The CI and demo profile.
- `small`: CPU, about an hour; the same data at a larger width and budget.
- `gpu`: one GPU, minutes; the paper's encoder (ResNet-18 width 64) and
  defender (2,000 clean images) on Fashion-MNIST, which needs no download.
- `paper`: GPU; the paper's setting (ResNet-18 width 64, CIFAR10 pre-training,
  GTSRB / SVHN / STL10 downstream, 4 % clean subset, MLP probe).

Any field can be overridden from the command line with ``--set field=value``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import typing
from dataclasses import dataclass

from harness.registry import Registry

PROFILES: Registry = Registry("profile")

USABLE_MARGIN = 5.0  # points of ACC by which the clean encoder must beat a random one: the usability criterion
CONTROL_ASR_AT_MOST = 15.0  # ASR(non-target) %: a trigger alone moves few clean-encoder predictions to the target


@dataclass(frozen=True)
class Profile:
    name: str
    # encoder
    arch: str = "resnet18"
    width: int = 64  # first-stage channels; the feature has 8 * width dimensions
    proj_dim: int = 128  # SimCLR projection
    # data
    pretrain: str = "cifar10"
    pretrain_size: int = 50_000  # images of the pre-training train split used (a fixed subset)
    downstream: tuple[str, ...] = ("gtsrb", "svhn", "stl10")
    downstream_train_size: int = 1_000_000  # caps; a dataset smaller than the cap is used whole
    downstream_test_size: int = 1_000_000
    clean_ratio: float = 0.04  # the defender's unlabeled clean subset, as a share of pre-training data
    # SimCLR pre-training
    ssl_epochs: int = 1000
    ssl_batch: int = 256
    ssl_lr: float = 1e-3  # Adam, cosine schedule
    temperature: float = 0.5
    crop_scale: tuple[float, float] = (0.08, 1.0)
    # attacks
    trigger: str = "patch"  # the paper's white square; sweeps and ablations use it
    scenarios: tuple[str, ...] = ("patch",)  # triggers the effectiveness suite runs encoder-tampering attacks with
    implant_asr_all: float = 50.0  # the positive control: an undefended attack "implanted" at ASR(all) >= this, %
    trigger_size: int = 10
    attack_epochs: int = 200
    attack_batch: int = 256
    attack_lr: float = 1e-3
    attack_optimizer: str = "sgd"  # BadEncoder's reference: SGD, momentum 0.9, weight decay 5e-4
    shadow_size: int = 50_000  # images of the pre-training set the attacker holds
    reference_images: int = 1  # downstream target-class images given to BadEncoder
    shadow_with_downstream: bool = False  # add as many unlabeled downstream-train images (at most shadow_size)
    # defenses: the budget rule (module docstring). A defense runs ceil(budget_fraction * its reference
    # loop lengths), at least each loop's minimum; `defense_batch` and `defense_lr` drive its optimiser.
    budget_fraction: float = 1.0
    defense_batch: int = 128
    defense_lr: float = 1e-3
    # downstream evaluation
    probe: str = "mlp"  # "linear" or the paper's "mlp" (512-512-256, dropout 0.5)
    probe_epochs: int = 1000
    probe_batch: int = 64
    probe_lr: float = 1e-4

    def __post_init__(self) -> None:
        if not 0 < self.clean_ratio <= 1:
            raise ValueError(f"clean_ratio must be in (0, 1], got {self.clean_ratio}")
        if self.probe not in ("linear", "mlp"):
            raise ValueError(f"probe must be 'linear' or 'mlp', got {self.probe!r}")
        if self.attack_optimizer not in ("sgd", "adam"):
            raise ValueError(f"attack_optimizer must be 'sgd' or 'adam', got {self.attack_optimizer!r}")
        if not 0 < self.budget_fraction <= 1:
            raise ValueError(f"budget_fraction must be in (0, 1], got {self.budget_fraction}")
        if not 0 <= self.implant_asr_all <= 100:
            raise ValueError(f"implant_asr_all must be a percentage, got {self.implant_asr_all}")
        if not self.scenarios:
            raise ValueError("scenarios needs at least one trigger name")
        if not 1 <= self.trigger_size <= 32:
            raise ValueError(f"trigger_size must be between 1 and the image size 32, got {self.trigger_size}")
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, int) and not isinstance(v, bool) and v <= 0:
                raise ValueError(f"{f.name} must be positive, got {v}")

    @property
    def clean_size(self) -> int:
        return max(1, round(self.clean_ratio * self.pretrain_size))


@PROFILES.register("tiny")
def tiny() -> Profile:
    return Profile(
        name="tiny",
        width=16,  # 0.7M parameters, 128-d feature
        pretrain="fmnist",
        pretrain_size=5000,
        downstream=("fmnist", "digits"),
        downstream_train_size=5000,
        downstream_test_size=2000,
        clean_ratio=0.04,
        ssl_epochs=8,
        # Encoder side, fixed by the usability criterion (the clean encoder beats a random one by
        # USABLE_MARGIN, 5 points, on both tasks and seeds 0-2): at batch 256 the 8 epochs are
        # only 152 steps and 2 of the 6 task-seed pairs passed; tried 256, 64, 32, kept the one passing the
        # most pairs, then with the largest smallest margin (32: 5 of 6, digits seed 1 short by 0.14 points).
        # Measured by `python benchmarks/calibrate.py usability --set ssl_batch=N --threads 1`. On another
        # machine of the same kind 32 passed 4 of 6 (an earlier round): the digits margin is within machine variation.
        ssl_batch=32,
        crop_scale=(0.25, 1.0),  # small crops of 32x32 garments carry too little to learn from in 8 epochs
        # Attack side, fixed by the implant criterion (BadEncoder ASR(all) >= 90 % on both tasks):
        # the paper's white 10x10 square; a uniform white square also occurs in augmented crops of light
        # garments, so the defender's clean data exercises this backdoor (exposed). The effectiveness
        # suite runs the one-pixel checkerboard beside it, which never occurs in grayscale garments
        # (unexposed): two scenarios at the same budgets. harness/exposure.py measures which is which.
        trigger="patch",
        scenarios=("patch", "checkerboard"),
        implant_asr_all=90.0,
        attack_epochs=8,
        attack_batch=64,  # more, gentler steps keep clean digits ACC (a shifted domain) within 3 points
        attack_lr=3e-4,
        attack_optimizer="adam",  # SGD for a few epochs leaves ASR at ~70 % (docs/REFERENCE.md)
        shadow_size=1500,
        reference_images=5,
        shadow_with_downstream=True,  # keeps clean ACC on digits, a shifted domain
        # Defense side, the budget rule: 7.5 % of every reference recipe, chosen for the compute two CPU
        # cores give a defense run (MIMIC's 1000 reference epochs become 75 over the 200-image subset).
        budget_fraction=0.075,
        defense_batch=100,
        probe="linear",
        probe_epochs=100,
        probe_batch=256,
        probe_lr=1e-2,
    )


@PROFILES.register("small")
def small() -> Profile:
    return dataclasses.replace(
        tiny(),
        name="small",
        width=32,
        pretrain_size=20_000,
        downstream_train_size=20_000,
        downstream_test_size=10_000,
        ssl_epochs=30,
        ssl_batch=256,  # 2,340 steps: tiny's few-step reason for a small batch does not apply
        shadow_size=10_000,
        budget_fraction=0.1,
        probe="mlp",
        probe_epochs=200,
        probe_lr=1e-3,
    )


@PROFILES.register("gpu")
def gpu() -> Profile:
    """The paper's encoder on one GPU, Fashion-MNIST offline.

    Criteria (the rule of this module's docstring, plus one of this profile's): the clean encoder beats the
    random encoder by USABLE_MARGIN and a linear probe on raw pixels, on both tasks; BadEncoder (both
    scenarios) and BASSL implant, ASR(all) >= 90 %, on both tasks. `python benchmarks/calibrate.py
    usability --profile gpu` and `... implant ATTACK --profile gpu` measure them. What has been measured of them
    (one H200, seed 0, bf16 autocast) is in docs/RESULTS.md, "On one GPU"; BASSL's implant and the fp32 runs
    have not been, and a full Table I's time on this profile has not been either.
    """
    return Profile(
        name="gpu",
        width=64,  # the paper's ResNet-18: 11M parameters, 512-d feature
        pretrain="fmnist",
        pretrain_size=50_000,  # as many images as CIFAR10's train split; Fashion-MNIST's other 10,000 are the probe's
        downstream=("fmnist", "digits"),
        downstream_train_size=10_000,
        downstream_test_size=10_000,
        clean_ratio=0.04,  # 2,000 images: the paper's defender
        ssl_epochs=30,
        ssl_batch=512,
        crop_scale=(0.2, 1.0),
        trigger="patch",
        scenarios=("patch", "checkerboard"),  # as tiny: the exposed and the unexposed trigger
        implant_asr_all=90.0,
        attack_epochs=10,
        attack_batch=256,
        attack_lr=3e-4,
        attack_optimizer="adam",
        shadow_size=10_000,
        reference_images=5,
        shadow_with_downstream=True,
        budget_fraction=0.25,  # the budget rule at a quarter of every reference recipe: MIMIC distils 250 epochs
        defense_batch=128,  # MIMIC's reference batch
        probe="mlp",  # the paper's 512-256 MLP; 200 epochs at batch 256 in place of its 1,000 at 64 (cost)
        probe_epochs=200,
        probe_batch=256,
        probe_lr=1e-3,
    )


@PROFILES.register("paper")
def paper() -> Profile:
    return Profile(name="paper")


def get_profile(name: str) -> Profile:
    return PROFILES.get(name).fn()


def _parse_value(name: str, tp: typing.Any, text: str) -> typing.Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is bool:
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"{name} takes true or false, got {text!r}")
    if tp in (int, float, str):
        try:
            return tp(text)
        except ValueError:
            raise ValueError(f"{name} takes a {tp.__name__}, got {text!r}") from None
    if origin is tuple:
        parts = [p for p in text.split(",") if p]
        item_types = [args[0]] * len(parts) if args[-1] is Ellipsis else list(args)
        if len(item_types) != len(parts):
            raise ValueError(f"{name} takes {len(item_types)} comma-separated values, got {text!r}")
        return tuple(_parse_value(name, t, p) for t, p in zip(item_types, parts))
    raise TypeError(f"cannot parse a value of type {tp} for {name}")


def typed_assignments(cls: type, assignments: typing.Iterable[str], kind: str = "setting", flag: str = "--set") -> dict[str, typing.Any]:
    """``field=value`` texts as {field: value}, each value parsed by the field's type in dataclass `cls`."""
    types = typing.get_type_hints(cls)
    hints = {f.name: types[f.name] for f in dataclasses.fields(cls) if f.name != "name"}
    changes: dict[str, typing.Any] = {}
    for item in assignments:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep:
            raise ValueError(f"{flag} takes field=value, got {item!r}")
        if key not in hints:
            raise ValueError(f"unknown {kind} {key!r}; fields: {', '.join(hints)}")
        changes[key] = _parse_value(key, hints[key], text.strip())
    return changes


def with_overrides(profile: Profile, assignments: typing.Iterable[str]) -> Profile:
    """``profile`` with ``field=value`` assignments applied (values parsed by the field's type)."""
    changes = typed_assignments(Profile, assignments, kind="profile field")
    return dataclasses.replace(profile, **changes) if changes else profile


def changed_fields(profile: Profile) -> dict[str, typing.Any]:
    """The fields in which `profile` differs from the registered profile of its name."""
    base = get_profile(profile.name)
    return {f.name: getattr(profile, f.name) for f in dataclasses.fields(Profile) if getattr(profile, f.name) != getattr(base, f.name)}


def fields_digest(profile: Profile) -> str:
    """A short hash of every field: what a measurement made on a profile records, so that a later change of
    the profile's definition shows as a different digest rather than passing for the same profile."""
    return hashlib.sha256(json.dumps(dataclasses.asdict(profile), sort_keys=True, default=str).encode()).hexdigest()[:12]


def resolved_id(profile: Profile) -> str:
    """The profile's name, with a hash of its changed fields when it is not the registered profile.

    Rows record it, and tables never merge rows of different resolved profiles: a run with
    `--set width=32` is not a `tiny` run.
    """
    changes = changed_fields(profile)
    if not changes:
        return profile.name
    digest = hashlib.sha256(json.dumps(changes, sort_keys=True, default=str).encode()).hexdigest()[:8]
    return f"{profile.name}+{digest}"
