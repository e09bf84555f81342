"""Reading a file the harness did not necessarily write: a regular file, under a size stated here, or one line why not.

Everything the harness reads from disk itself goes through `read_bytes`: rows files,
baselines, cache digests and records, encoder files, trigger and data images, IDX files.
(The torchvision datasets of a --data-root, CIFAR-10's pickled batches among them, are
read by torchvision: a data root is trusted like the code that reads it.) A FIFO, a device, a socket or a
folder is refused before it is read (a FIFO would block, /dev/zero would never end), and a
file larger than its kind's cap is refused after reading one byte past the cap, so no
file decides how much memory a read takes.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
# The caps, one per kind of file, each well above what the harness writes for a paper-scale grid.
MAX_BYTES = {
    "rows": 512 * MiB,  # rows.jsonl: a row is a few KiB; a grid of 100,000 rows fits
    "baseline": 64 * MiB,
    "digest": 1 * KiB,  # a cache file's sha256 line
    "record": 64 * MiB,  # a cached result (JSON)
    "encoder": 1 * GiB,  # an encoder of the widest architecture the harness loads, in float64, with room to spare
    "trigger": 16 * MiB,
    "image": 64 * MiB,
    "dataset": 256 * MiB,  # an IDX file, and what a gzipped one inflates to (Fashion-MNIST's largest is 47 MiB)
}
KINDS = {"dir": "a directory", "fifo": "a FIFO", "chr": "a character device", "blk": "a block device", "sock": "a socket",
         "lnk": "a symbolic link"}


class UnreadableFile(ValueError):
    """A file that is not there, not a regular file, too large or unreadable; the message is one line naming it."""


def kind_of(mode: int) -> str:
    """A non-regular file's kind in words (`a FIFO`, ...), from its stat mode."""
    for name, test in (("dir", stat.S_ISDIR), ("fifo", stat.S_ISFIFO), ("chr", stat.S_ISCHR), ("blk", stat.S_ISBLK),
                       ("sock", stat.S_ISSOCK), ("lnk", stat.S_ISLNK)):
        if test(mode):
            return KINDS[name]
    return "not a regular file"


def read_bytes(path: Path, kind: str) -> bytes:
    """The bytes of `path`, a regular file of at most MAX_BYTES[kind] (a link to one is followed); UnreadableFile otherwise."""
    limit = MAX_BYTES[kind]
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))  # opening a FIFO must not wait for a writer
    except FileNotFoundError:
        raise UnreadableFile(f"{path}: no such file") from None
    except OSError as e:
        raise UnreadableFile(f"{path}: cannot be read ({e.strerror})") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise UnreadableFile(f"{path}: is {kind_of(mode)}, not a regular file")
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(limit + 1)
    except OSError as e:
        raise UnreadableFile(f"{path}: cannot be read ({e.strerror})") from None
    finally:
        os.close(fd)
    if len(data) > limit:
        raise UnreadableFile(f"{path}: larger than the {_size(limit)} a {kind} file may be")
    return data


def read_text(path: Path, kind: str) -> str:
    try:
        return read_bytes(path, kind).decode("utf-8")
    except UnicodeDecodeError:
        raise UnreadableFile(f"{path}: not UTF-8 text") from None


def _size(n: int) -> str:
    for unit, size in (("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if n >= size:
            return f"{n // size} {unit}"
    return f"{n} bytes"
