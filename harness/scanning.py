"""`harness scan`'s detectors: the detection half of a detecting defense, run on an encoder alone.

A scan detector takes a frozen encoder and the defender's clean images and returns
a ScanVerdict: flagged or not, the one statistic the verdict is read from, its
threshold, and the evidence behind it. Each detector is its defense's own
detection function with the defense's default configuration (defenses/decree.py
`invert`, defenses/ssl_cleanse.py `detect`); only the mitigation is left out and the
random draws differ. So a detector's power, measured from suite runs of its defense
(harness/power.py), is the power of a scan at the length those runs used.

A scan's default length is the one its printed power was measured at: the
inversion's length as its defense runs at the profile's budget (tiny: DECREE's
300 steps, SSL-Cleanse's 75 epochs for each cluster); `--steps` sets another, and
the power lines then say that they were measured at another length.
"""

from __future__ import annotations

import copy
import difflib
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import Tensor

from defenses.decree import DecreeConfig, invert
from defenses.ssl_cleanse import SSLCleanseConfig, detect
from harness.contract import Budget, CleanSubset
from harness.models import Encoder
from harness.profiles import Profile
from harness.training import freeze, seed_everything

@dataclass(frozen=True)
class ScanVerdict:
    detector: str
    flagged: bool
    statistic: str  # the name of the number the verdict is read from
    value: float
    rule: str  # how the number decides, e.g. "flagged below a 5% mask"
    length: int  # the inversion's length, in the detector's unit
    lines: tuple[str, ...]  # the evidence, for a person
    record: dict[str, Any] = field(default_factory=dict)  # the evidence, for --json (plain JSON values)


@dataclass(frozen=True)
class Detector:
    name: str  # the defense whose detection this is
    title: str  # what it does, for the scan's "detector:" line
    unit: str  # what its length counts
    length_field: str  # the defense's `steps` field that holds that length (its rows' meta and the power table)
    config: Any  # the defense's default configuration, whose `steps(budget)` gives the length its rows ran
    statistic: str  # the number its verdict is read from, as its defense's rows record it
    rule: str  # how that number decides
    run: Callable[[Encoder, Tensor, int, torch.Generator, torch.device], ScanVerdict]

    def length_at(self, profile: Profile) -> int:
        """The inversion's length as the defense runs at `profile`'s budget: where the detector's power is measured."""
        return self.config.steps(Budget.of(profile, torch.device("cpu"))).as_dict()[self.length_field]


def _box(mask: Tensor) -> tuple[list[int], list[int]]:
    """[first, last] row and column of a boolean (H, W) mask's True pixels; empty lists when none."""
    rows, cols = torch.nonzero(mask, as_tuple=True)
    if not rows.numel():
        return [], []
    return [int(rows.min()), int(rows.max())], [int(cols.min()), int(cols.max())]


def _decree(encoder: Encoder, images: Tensor, steps: int, gen: torch.Generator, device: torch.device) -> ScanVerdict:
    config = DECREE
    found = invert(encoder, CleanSubset(images), config, gen, device, steps)
    rows, cols = _box(found.mask[0] > 0.5)
    lines = (f"evidence: the smallest mask that collapses the features of clean images (mean pairwise cosine >= "
             f"{config.target_cosine}) covers {found.l1_share:.2%} of the image; flagged below {config.flag_below:.0%}",
             f"stamped clean images' mean pairwise cosine {found.cosine:.4f}; mask > 0.5 spans rows {rows}, columns {cols}")
    record = {"l1_share": found.l1_share, "cosine": found.cosine, "flag_below": config.flag_below,
              "target_cosine": config.target_cosine, "mask_rows": rows, "mask_columns": cols}
    return ScanVerdict("decree", found.flagged, DETECTORS["decree"].statistic, found.l1_share, DETECTORS["decree"].rule, steps,
                       lines, record)


def _ssl_cleanse(encoder: Encoder, images: Tensor, epochs: int, gen: torch.Generator, device: torch.device) -> ScanVerdict:
    config = SSL_CLEANSE
    found = detect(encoder, CleanSubset(images), config, gen, device, epochs)
    sizes = torch.bincount(found.labels).tolist()
    chosen, share = found.chosen, found.shares[found.chosen]
    lines = (f"evidence: the smallest trigger that moves the other clusters' images onto one cluster's features covers "
             f"{share:.2%} of the image (cluster {chosen}, {sizes[chosen]} images); its anomaly index among the "
             f"{len(sizes)} clusters' masks is {found.anomaly_index:.2f}; flagged above {config.flag_above:g}",
             "each cluster's smallest mask (1.0: no trigger reached it): "
             + ", ".join(f"{s:.3f}" for s in found.shares))
    record = {"anomaly_index": found.anomaly_index, "flag_above": config.flag_above, "l1_share": share, "chosen_cluster": chosen,
              "mask_l1_shares": found.shares, "hit_rates": [t.hit_rate for t in found.triggers], "cluster_sizes": sizes}
    return ScanVerdict("ssl_cleanse", found.flagged, DETECTORS["ssl_cleanse"].statistic, found.anomaly_index,
                       DETECTORS["ssl_cleanse"].rule, epochs, lines, record)


DECREE, SSL_CLEANSE = DecreeConfig(), SSLCleanseConfig()  # the defenses' defaults: a scan's verdict is theirs
DETECTORS: dict[str, Detector] = {d.name: d for d in (
    Detector("decree", "DECREE trigger inversion", "inversion steps", "inversion_steps", DECREE, "l1_share",
             f"flagged below a {DECREE.flag_below:.0%} mask", _decree),
    Detector("ssl_cleanse", "SSL-Cleanse trigger inversion into each k-means cluster", "inversion epochs for each cluster",
             "inversion_epochs", SSL_CLEANSE, "anomaly_index",
             f"flagged above an anomaly index of {SSL_CLEANSE.flag_above:g}", _ssl_cleanse),
)}


def detector(name: str) -> Detector:
    """The scan detector of that name; a ValueError naming the known ones otherwise."""
    if name not in DETECTORS:
        close = difflib.get_close_matches(name, DETECTORS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown detector {name!r}{hint} Known detectors: {', '.join(DETECTORS)}")
    return DETECTORS[name]


def scan_encoder(encoder: Encoder, images: Tensor, detector_name: str, length: int, seed: int = 0,
                 device: torch.device | None = None) -> ScanVerdict:
    """Run one detector on a frozen copy of `encoder` with clean images (uint8 N x 3 x H x W), `length` in the detector's
    unit (`Detector.length_at` gives the length its power is measured at): what `harness scan` runs."""
    found = detector(detector_name)
    device = torch.device("cpu") if device is None else device
    if length < 1:
        raise ValueError(f"a scan's length ({found.unit}) must be at least 1, got {length}")
    frozen = freeze(copy.deepcopy(encoder).to(device))  # the caller's encoder keeps its mode and its gradients
    return found.run(frozen, images, length, seed_everything(seed, "scan"), device)
