"""Peak resident memory of a block of code, for tests that bound what a hostile file can make the harness allocate.

Linux keeps a high-water mark of resident memory (VmHWM) that writing "5" to
/proc/self/clear_refs resets to the current size; the peak of a block is the mark
after it minus the resident size before it. Freed heap pages are handed back first,
so a block cannot hide an allocation in pages an earlier test left resident.
"""

from __future__ import annotations

import contextlib
import functools
import re
import sys
from pathlib import Path
from typing import Iterator

import pytest

from harness.memory import release_freed_memory

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _kib(field: str) -> int:
    return int(re.search(rf"^{field}:\s+(\d+) kB", _STATUS.read_text(), re.M).group(1))


@functools.cache
def available() -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return True


class Peak:
    """`bytes`: how far resident memory rose above its starting size inside the block."""

    bytes: int = 0


@contextlib.contextmanager
def peak_memory(required: bool = True) -> Iterator[Peak]:
    """Measure the block's peak; where that cannot be done, skip the test, or (`required=False`) report 0."""
    if not available():
        if required:
            pytest.skip("needs Linux's /proc/self/clear_refs to measure peak memory")
        yield Peak()
        return
    release_freed_memory()
    _CLEAR_REFS.write_text("5")
    start = _kib("VmRSS")
    peak = Peak()
    try:
        yield peak
    finally:
        peak.bytes = (_kib("VmHWM") - start) * 1024
