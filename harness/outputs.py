"""Where a `harness` command writes: each output path checked before any work starts.

An output path is refused, in one line:
- when it exists as anything but a regular file: a device, a FIFO, a socket, a folder or a
  symbolic link, with or without --force (harness/atomic.py never replaces one either);
- when it is one of the command's inputs: the encoder, a trigger or its mask, an image of the
  data folder, a rows file (a command never replaces what it read);
- without --force, when it exists; the file is then also published exclusively
  (`atomic_write(..., exclusive=True)`), so of two runs writing one output without --force one
  succeeds and the other is refused, instead of each replacing the other's file;
- when its folder cannot be written.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

from harness.atomic import refuse_non_regular


def claim(path: Path, force: bool, inputs: Iterable[Path] = ()) -> None:
    """`path` checked as the module docstring says, before any work; ValueError (one line) when it is refused."""
    path = Path(path)
    refuse_non_regular(path)
    for source in inputs:
        if _same_file(path, Path(source)):
            raise ValueError(f"{path}: is one of the command's inputs ({source}); write the output elsewhere")
    if os.path.lexists(path) and not force:
        raise ValueError(f"{path}: exists; pass --force to replace it")
    writable_folder(path.parent)


def _same_file(a: Path, b: Path) -> bool:
    try:
        return Path(os.path.realpath(a)) == Path(os.path.realpath(b)) or (a.exists() and b.exists() and os.path.samefile(a, b))
    except OSError:
        return False


def writable_folder(folder: Path) -> None:
    """`folder` exists and can be written, or its nearest existing ancestor is a folder that can (it is made later)."""
    existing = Path(os.path.abspath(folder))
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(f"{existing}: is a file, so {folder} cannot be a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"{existing}: cannot be written")
