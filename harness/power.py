"""What a `harness scan` verdict is worth: the detector's measured rates on encoders whose truth is known.

A detector that finds nothing has not shown that an encoder is clean; how often
it finds a backdoor that is there (true-positive rate) and one that is not
(false-positive rate) is measured on the harness's own encoders: suspects its
attacks built (counted as backdoored when the attack implanted: undefended
ASR(all) at least the profile's `implant_asr_all`, the suites' positive control)
and clean SimCLR encoders of the same profile, one table for each detector.
benchmarks/scan_power.py measures them and writes harness/scan_power.json, which
ships with the package; `scan` prints the row of its detector and profile beside
its evidence, or says plainly that it has not been measured.
"""

from __future__ import annotations

import json
from pathlib import Path

POWER_TABLE = Path(__file__).with_name("scan_power.json")


def regenerate(detector: str) -> str:
    """The command that measures a detector's power on the tiny profile."""
    return f"python benchmarks/scan_power.py --detector {detector} --profile tiny --seeds 3 --cache-dir CACHE --write"


def read_table(path: Path | None = None) -> dict:
    """The shipped table: {"detectors": {name: {"profiles": {profile: entry}, ...}}}; an unreadable file is an error, not
    an empty table."""
    path = POWER_TABLE if path is None else path
    try:
        table = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: unreadable scan power table ({e})") from None
    detectors = table.get("detectors")
    if not isinstance(detectors, dict) or not all(isinstance(d.get("profiles"), dict) for d in detectors.values()):
        raise ValueError(f"{path}: a scan power table needs a 'detectors' mapping, each with a 'profiles' mapping")
    return table


def summarise(records: list[dict], implanted_asr: float) -> dict:
    """A table entry from per-encoder records {kind: "clean"|attack, flagged, asr_all (suspects), ...}.

    A suspect whose attack did not implant (undefended ASR(all) below `implanted_asr`) is
    not counted as backdoored: the detector cannot be blamed for missing what is not there.
    """
    clean = [r for r in records if r["kind"] == "clean"]
    suspects = [r for r in records if r["kind"] != "clean"]
    backdoored = [r for r in suspects if r["asr_all"] >= implanted_asr]
    return {
        "backdoored": {"encoders": len(backdoored), "flagged": sum(r["flagged"] for r in backdoored)},
        "clean": {"encoders": len(clean), "flagged": sum(r["flagged"] for r in clean)},
        "not_implanted": len(suspects) - len(backdoored),
        "implanted_asr": implanted_asr,
        "encoders": records,
    }


def _rate(counts: dict) -> str:
    n, k = counts["encoders"], counts["flagged"]
    return f"{k} of {n}" + (f" ({100 * k / n:.0f} %)" if n else "")


def power_lines(detector: str, profile: str, length: int, table: dict | None = None, digest: str | None = None,
                unit: str = "inversion steps", ran: str = "this scan ran") -> list[str]:
    """What a detector's verdict is worth, as lines to print beside its evidence.

    `length` is the scan's (or the rows'), in `unit`, said as `ran`; `digest` is the `fields_digest` of the profile
    the verdict was made on: an entry measured on another definition of the profile says so instead of passing for a
    measurement of this one.
    """
    table = read_table() if table is None else table
    measured = table["detectors"].get(detector, {"profiles": {}})
    entry = measured["profiles"].get(profile)
    if entry is None:
        where = ", ".join(sorted(measured["profiles"])) or "none"
        return [f"power: not yet measured for {detector} on profile {profile} (measured profiles: {where}); how often this "
                f"detector misses a backdoor is unknown here ({measured.get('command', regenerate(detector))} measures it)"]
    b, c = entry["backdoored"], entry["clean"]
    lines = [f"power: on the harness's own {profile}-profile encoders ({entry.get('encoder', 'its profile encoders')}) this detector "
             f"flagged {_rate(b)} backdoored and {_rate(c)} clean encoders",
             "  measured there, not on encoders like yours; a scan that flags nothing has not shown an encoder is clean"]
    if digest is not None and entry.get("profile_digest") != digest:
        lines.append(f"  (measured {entry.get('measured', 'at an unknown date')} on another definition of the {profile} profile; "
                     f"its fields differ from this one's, so these rates may not hold for it)")
    if entry.get("steps") not in (None, length):
        lines.append(f"  (measured at {entry['steps']} {unit}; {ran} {length})")
    return lines
