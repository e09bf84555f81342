"""The statistics tables report: means over seeds with their 95 % confidence intervals, and paired differences."""

from __future__ import annotations

import math

import pandas as pd

from harness.rows import KEYS, METRICS


def ci95(values: pd.Series) -> float:
    """Half-width of the 95 % confidence interval of the mean (Student t); 0 for a single value."""
    n = values.count()
    if n < 2:
        return 0.0
    from scipy.stats import t

    return float(t.ppf(0.975, n - 1) * values.std(ddof=1) / math.sqrt(n))


def summarise(frame: pd.DataFrame) -> pd.DataFrame:
    """Mean and 95 % CI of each metric over seeds, one line per configuration (`KEYS`).

    A metric that is not a finite number in one seed makes the mean not one either (shown as n/a), rather than
    a mean of the other seeds that reads as if every seed counted. Also the mean exposure and the positive control: "yes" when every seed's attack implanted,
    "no" when none did, "k/n" in between, "" for the controls.
    """
    grouped = frame.groupby(list(KEYS), sort=True, dropna=False)
    out = grouped[list(METRICS)].agg(lambda values: values.mean(skipna=False))
    for m in METRICS:
        out[f"{m}_ci"] = grouped[m].apply(ci95)
    out["seeds"] = grouped["seed"].nunique()
    out["exposure"] = grouped["exposure"].apply(lambda v: v.dropna().mean() if v.notna().any() else math.nan)
    out["implanted"] = grouped["implanted"].apply(implant_label)
    return out.reset_index()


def implant_label(values: pd.Series) -> str:
    known = values.dropna().astype(bool)
    if known.empty:
        return ""
    return "yes" if known.all() else "no" if not known.any() else f"{int(known.sum())}/{len(known)}"


def paired_difference(frame: pd.DataFrame, defense: str, reference: str, metric: str) -> tuple[float, float, int]:
    """Mean and 95 % CI half-width of (defense - reference) on `metric` over the seeds both have; and their number.

    Rows pair by seed: the same suspect, the same clean data, two defenses. `frame` holds one configuration
    (see harness/tables.py `one_row_per_encoder`), so each seed appears once per defense.
    """
    a = frame[frame["defense"] == defense].set_index("seed")[metric]
    b = frame[frame["defense"] == reference].set_index("seed")[metric]
    if not (a.index.is_unique and b.index.is_unique):
        raise ValueError(f"paired_difference needs one row per seed; {defense} or {reference} has several")
    diff = (a - b).dropna()
    return (float(diff.mean()), ci95(diff), len(diff)) if len(diff) else (math.nan, math.nan, 0)


