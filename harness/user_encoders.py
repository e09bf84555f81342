"""Your own encoders in the suites: a suspect file in place of the attack stage, a clean file in place of pre-training.

`--harness-suspect FILE` with `--harness-trigger` and `--harness-target` makes
the file's encoder the one attack of a suite (rows name it `suspect`). Its
trigger and target reach the evaluation side only (ASR, the positive control,
the exposure), never a defense: a defense gets a fresh copy of the encoder, the
clean subset and the budget, exactly as after a registered attack.

`--harness-clean-encoder FILE` replaces pre-training: the clean control, the
exposure's baseline, the encoder the registered attacks tamper with, and the
random control (the file's architecture, freshly initialised).

Files are read as `harness scan` reads them (harness/layouts.py: every
recognised layout, weights only) and used behind their layout's input geometry,
or the one `--harness-image-size`, `--harness-mean` and `--harness-std` give.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from harness.geometry import InputGeometry
from harness.models import Encoder
from harness.triggers import Trigger

SUSPECT_FILE = "suspect"  # the attack name of rows whose suspect is the user's file


@dataclass(frozen=True)
class UserEncoders:
    """The user's files for a suites run, with what only evaluation may know of the suspect."""

    suspect: Path | None = None
    trigger: Trigger | None = None  # the suspect's trigger
    target: int | None = None  # the suspect's target class (of every chosen downstream task)
    clean: Path | None = None
    # The input geometry of both files, where it is not their layout's default (as `harness scan --image-size ...`).
    image_size: int | None = None
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None

    def __post_init__(self) -> None:
        if self.suspect is not None and (self.trigger is None or self.target is None):
            raise ValueError("a suspect file needs its trigger and its target class")
        if self.suspect is None and (self.trigger is not None or self.target is not None):
            raise ValueError("a trigger and a target describe a suspect file; give the file too")
        if self.target is not None and self.target < 0:
            raise ValueError(f"the target class must be >= 0, got {self.target}")
        InputGeometry(**self.geometry_changes)  # ValueError as for a file's recorded geometry

    @property
    def geometry_changes(self) -> dict:
        given = {"size": self.image_size, "mean": self.mean, "std": self.std}
        return {k: v for k, v in given.items() if v is not None}

    def read(self, path: Path) -> "EncoderFile":
        """One of the user's files, read and behind its geometry (the layout's, with the given fields replaced)."""
        read = read_encoder_file(path)
        return dataclasses.replace(read, geometry=dataclasses.replace(read.geometry, **self.geometry_changes))


@dataclass(frozen=True)
class EncoderFile:
    """An encoder read from a user's file: bare (no geometry), with the geometry it takes its input in."""

    path: Path
    encoder: Encoder
    geometry: InputGeometry
    sha256: str  # of the bytes loaded
    description: str  # its architecture and layout, as `harness scan` prints them


def read_encoder_file(path: Path) -> EncoderFile:
    """The encoder in `path`, recognised and checked as `harness scan` does (a one-line ValueError otherwise)."""
    from harness.layouts import load_checkpoint

    checkpoint = load_checkpoint(Path(path))
    return EncoderFile(Path(path), checkpoint.encoder, checkpoint.geometry, checkpoint.sha256, checkpoint.describe())
