"""Curves of the sweeps: one PNG per (suite, swept setting), from stored rows alone.

A row belongs to a sweep when its variant reads `name=value` with a numeric value
(`lambda1=0.4`, `clean_ratio=0.01`, `trigger_size=5`). Each plot has ASR(non-target)
(solid) and ACC (dashed) against the value, one colour per (attack, downstream,
defense), means over seeds with the 95 % CI as error bars.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pandas as pd

from harness.statistics import ci95

_POINT = re.compile(r"^(?P<name>[a-z_0-9]+)=(?P<value>-?[0-9.]+(?:e-?[0-9]+)?)$")
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


def file_part(text: str) -> str:
    """`text` as part of a file name: as it is when it is safe, else its other characters replaced by `_` and a
    short hash of it added, so rows (which anyone can edit) never name a path elsewhere and two suites never clash."""
    safe = _UNSAFE.sub("_", text)
    return safe if safe == text and text else f"{safe}-{hashlib.sha256(text.encode()).hexdigest()[:8]}"


def sweep_points(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows that are sweep points, with `sweep` (the setting's name) and `value` columns; means over seeds."""
    parsed = frame["variant"].fillna("").str.extract(_POINT)
    points = frame.assign(sweep=parsed["name"], value=pd.to_numeric(parsed["value"])).dropna(subset=["sweep"])
    keys = ["suite", "sweep", "attack", "downstream", "defense", "value"]
    grouped = points.groupby(keys, sort=True)
    out = grouped[["acc", "asr_nontarget"]].mean()
    out["acc_ci"] = grouped["acc"].apply(ci95)
    out["asr_ci"] = grouped["asr_nontarget"].apply(ci95)
    return out.reset_index()


def sweep_figures(frame: pd.DataFrame) -> list[tuple[str, bytes]]:
    """One PNG per sweep in the rows: (`plot-<suite>-<sweep>.png`, both through `file_part`; its bytes)."""
    points = sweep_points(frame)
    if points.empty:
        return []
    import io

    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    figures = []
    for (suite, sweep), group in points.groupby(["suite", "sweep"], sort=True):
        fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
        for i, ((attack, downstream, defense), line) in enumerate(group.groupby(["attack", "downstream", "defense"], sort=True)):
            colour = f"C{i % 10}"
            label = f"{attack} / {downstream} / {defense}"
            ax.errorbar(line["value"], line["asr_nontarget"], yerr=line["asr_ci"], color=colour, marker="o", label=f"ASR {label}")
            ax.errorbar(line["value"], line["acc"], yerr=line["acc_ci"], color=colour, marker="s", linestyle="--", label=f"ACC {label}")
        ax.set_xlabel(sweep)
        ax.set_ylabel("% (ASR: non-target images)")
        ax.set_ylim(-2, 102)
        ax.set_title(f"{suite}: {sweep}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, loc="best")
        fig.tight_layout()
        png = io.BytesIO()
        fig.savefig(png, format="png")
        plt.close(fig)
        figures.append((f"plot-{file_part(suite)}-{file_part(sweep)}.png", png.getvalue()))
    return figures


def sweep_plots(frame: pd.DataFrame, root: Path) -> list[Path]:
    """Write every sweep's PNG (`sweep_figures`) into `root`; returns the paths written."""
    from harness.atomic import atomic_write_bytes

    paths = []
    for name, png in sweep_figures(frame):
        paths.append(Path(root) / name)
        atomic_write_bytes(paths[-1], png)
    return paths
