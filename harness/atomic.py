"""Atomic files: readers see the old file or the new one, never half of one.

A write goes to a new temporary file in the same folder (created with the umask's
mode, so a shared folder stays readable; named `.{name}.{random}.tmp`, so a store
can recognise and sweep a killed writer's leftovers), is synced, renamed into
place, and the folder is synced, so the rename survives a power cut.
"""

from __future__ import annotations

import errno
import os
import re
import secrets
import stat
from pathlib import Path
from typing import Callable

from harness.reading import kind_of

TEMP_NAME = re.compile(r"^\.(?P<name>.+)\.[^.]+\.tmp$")  # `.{file name}.{random}.tmp`, as `atomic_write` names them


def atomic_write(path: Path, write: Callable[[Path], None], exclusive: bool = False) -> None:
    """`write(tmp)`, then rename tmp to `path`: readers see the old file or the new one, never half of one.

    The file takes the umask's mode whatever `write` did to it (a library may create its file 0600). Only a regular
    file is ever replaced: a device, FIFO, socket, folder or symbolic link at `path` is NotARegularFile (replacing
    /dev/null as root breaks the machine; replacing a link hides where the bytes went). With `exclusive` the file is
    published only where nothing exists yet: of two writers to one path, one succeeds and the other gets
    FileExistsError, instead of each replacing the other's file.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    refuse_non_regular(path)
    tmp = _new_temp_file(path)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        refuse_non_regular(path)  # again, just before: something else may have been put there meanwhile
        if exclusive:
            _publish_new(tmp, path)
        else:
            os.replace(tmp, path)
        _fsync_folder(path.parent)  # the rename itself survives a power cut only once the folder is synced
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _publish_new(tmp: Path, path: Path) -> None:
    """`tmp` at `path` where nothing is there yet, else FileExistsError: a hard link, atomic; where the filesystem has
    none, the name is claimed with O_EXCL first."""
    taken = FileExistsError(errno.EEXIST, "written by another run meanwhile; pass --force to replace it", str(path))
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise taken from None
    except OSError:  # no hard links here (some FUSE or object-store mounts)
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        except FileExistsError:
            raise taken from None
        os.replace(tmp, path)


class NotARegularFile(ValueError):
    """An output path that names something other than a regular file: never replaced."""


def refuse_non_regular(path: Path) -> None:
    """NotARegularFile (one line) when `path` exists as anything but a regular file; a symbolic link counts as one."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISREG(mode):
        raise NotARegularFile(f"{path}: is {kind_of(mode)}; an output must be a regular file, and this one is never replaced")


def _umask() -> int:
    """The process's umask, read without changing it where Linux says it (os.umask can only set it)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


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


def atomic_write_text(path: Path, text: str, exclusive: bool = False) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"), exclusive)


def atomic_write_bytes(path: Path, data: bytes, exclusive: bool = False) -> None:
    atomic_write(path, lambda tmp: tmp.write_bytes(data), exclusive)


