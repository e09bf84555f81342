"""Atomic files: readers see the old file or the new one, never half of one.

A write goes to a new temporary file in the same folder (created with the umask's
mode, so a shared folder stays readable; named `.{name}.{random}.tmp`, so a store
can recognise and sweep a killed writer's leftovers), is synced, renamed into
place, and the folder is synced, so the rename survives a power cut.
"""

from __future__ import annotations

import os
import re
import secrets
from pathlib import Path
from typing import Callable

TEMP_NAME = re.compile(r"^\.(?P<name>.+)\.[^.]+\.tmp$")  # `.{file name}.{random}.tmp`, as `atomic_write` names them


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """`write(tmp)`, then rename tmp to `path`: readers see the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _new_temp_file(path)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_folder(path.parent)  # the rename itself survives a power cut only once the folder is synced
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _new_temp_file(path: Path) -> Path:
    """An empty, new file beside `path`, created with mode 0o666 less the umask (mkstemp's 0o600 would hide it)."""
    while True:
        tmp = path.parent / f".{path.name}.{secrets.token_hex(8)}.tmp"
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return tmp
        except FileExistsError:
            continue


def _fsync_folder(folder: Path) -> None:
    if os.name != "posix":  # Windows cannot open a folder; its renames are journaled by NTFS
        return
    fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_write_bytes(path: Path, data: bytes) -> None:
    atomic_write(path, lambda tmp: tmp.write_bytes(data))


