"""JSON the harness writes is strict JSON: NaN and infinity, which are not JSON, are written as null and named.

`json.dumps` writes a bare `NaN` by default, which most JSON readers refuse. A value that
is not a finite number (an ASR over no non-target images, a diverged cosine) is written
as null, and the object's `non_finite` field maps the dotted places where that happened to
"nan", "inf" or "-inf", so a reader can tell a missing value from a NaN, and
`restore_non_finite` puts each value back.
"""

from __future__ import annotations

import json
import math
from typing import Any

NON_FINITE = "non_finite"  # the field that names the places written as null


def jsonable(value: Any) -> Any:
    """`value` as JSON's own types (tuples as lists, keys as strings, anything else by its text): what a row or report holds,
    so a row read back from its file equals the row that was written."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if value is None or isinstance(value, bool):
        return value
    for kind in (str, int, float):  # their subclasses (torch's version string, numpy's numbers) as the plain type
        if isinstance(value, kind):
            return kind(value)
    return str(value)


def finite_or_null(value: Any, at: str = "") -> tuple[Any, dict[str, str]]:
    """`value` with every float that is not finite replaced by None, and {dotted place: "nan", "inf" or "-inf"}."""
    if isinstance(value, float) and not math.isfinite(value):
        return None, {at: repr(value)}
    places: dict[str, str] = {}
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            out[k], found = finite_or_null(v, f"{at}.{k}" if at else str(k))
            places.update(found)
        return out, places
    if isinstance(value, (list, tuple)):
        items = []
        for i, v in enumerate(value):
            item, found = finite_or_null(v, f"{at}.{i}" if at else str(i))
            items.append(item)
            places.update(found)
        return items, places
    return value, places


def dumps(record: dict, **kwargs: Any) -> str:
    """`record` as strict JSON (`jsonable`), with NON_FINITE naming its non-finite values' places when there are any."""
    cleaned, places = finite_or_null(jsonable(record))
    if places:
        cleaned[NON_FINITE] = places
    return json.dumps(cleaned, allow_nan=False, **kwargs)


def restore_non_finite(record: dict) -> dict:
    """`record` (read from `dumps`) without NON_FINITE, the value it names back at each place that holds null."""
    record = dict(record)
    places = record.pop(NON_FINITE, {})
    if not isinstance(places, dict) or not all(v in ("nan", "inf", "-inf") for v in places.values()):
        raise TypeError(f"{NON_FINITE} maps places to nan, inf or -inf")
    for place, value in places.items():
        *path, last = str(place).split(".")
        holder: Any = record
        for part in path:
            if isinstance(holder, list) and part.isdigit() and int(part) < len(holder):
                holder = holder[int(part)]
            else:
                holder = holder.get(part) if isinstance(holder, dict) else None
        if isinstance(holder, dict) and last in holder and holder[last] is None:
            holder[last] = float(value)
        elif isinstance(holder, list) and last.isdigit() and int(last) < len(holder) and holder[int(last)] is None:
            holder[int(last)] = float(value)
    return record
