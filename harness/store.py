"""A content-addressed store of encoders and results, keyed by harness/cache_keys.py.

Encoders are encoder files (harness/encoder_files.py), results JSON. Writes are
atomic (harness/atomic.py); a file lock per key makes two workers asking for the
same artifact build it once, and the next store to open removes the temporary
files of writers that were killed (older than an hour, their lock free).

Several machines may share one store (a folder on NFS or the like). Where the
filesystem shares the locks too, each artifact is built once; where it does not,
two machines may build the same key at once, and the store stays safe: each
writes under a name of its own and renames it into place, the last rename wins,
and a file whose digest is the other machine's is a logged miss, rebuilt. On a
filesystem whose rename is not atomic, a reader may meet a half-written file:
its digest does not match, so it is a miss, never served.

A cache may come from elsewhere (a CI cache restored from another branch, a
shared folder), so nothing in it is served on trust: each file has the digest of
its key and bytes beside it, and a file whose digest is missing or does not match
(edited, damaged, copied from another key), or that does not load as a checked
encoder (torn, non-finite), is a logged miss and is rebuilt. A digest is no
signature: whoever can write the cache can write digests too. It catches damage
and edits made without knowing the scheme; a cache from someone untrusted is
still untrusted. Builds are checked before they are stored, so a NaN encoder
fails its own run, not every later one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import stat
import time
from pathlib import Path
from typing import Callable

import safetensors.torch
import torch
from filelock import FileLock, Timeout
from torch import Tensor

from harness.atomic import TEMP_NAME, atomic_write_bytes, atomic_write_text
from harness.encoder_files import ArtifactError, encoder_tensors, file_header, load_encoder, read_file, reason
from harness.memory import release_freed_memory
from harness import strict_json
from harness.reading import read_text
from harness.strict_json import restore_non_finite
from harness.models import Encoder

_STORED_SUFFIXES = (".safetensors.sha256", ".json.sha256", ".safetensors", ".json")
# A writer's temporary file lives for the seconds its bytes take to write; one older than this was left by a killed writer.
# The age, not only the lock, decides, because a cache several machines share may not share its locks.
STALE_TEMP_SECONDS = 3600

log = logging.getLogger(__name__)


class ArtifactStore:
    """Encoders and JSON results under `root`, keyed by `artifact_key`, each with its digest beside it."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.hits = 0
        self.builds = 0
        self._sweep_temp_files()

    def _path(self, key: str, suffix: str) -> Path:
        return self.root / key.split("-", 1)[0] / f"{key}{suffix}"

    def _lock(self, key: str) -> FileLock:
        path = self._path(key, ".lock")
        path.parent.mkdir(parents=True, exist_ok=True)
        return FileLock(str(path))

    def _sweep_temp_files(self) -> None:
        """Remove the temporary files of killed writers: older than STALE_TEMP_SECONDS, and their key's lock free."""
        now = time.time()
        for tmp in self.root.glob("*/.*.tmp"):
            match = TEMP_NAME.match(tmp.name)
            stored = match["name"] if match else ""
            key = next((stored.removesuffix(s) for s in _STORED_SUFFIXES if stored.endswith(s)), None)
            if not key or key.split("-", 1)[0] != tmp.parent.name:
                continue  # not a name this store writes
            try:
                if now - tmp.stat().st_mtime < STALE_TEMP_SECONDS:
                    continue  # a writer, perhaps on another machine, may be at it
            except FileNotFoundError:
                continue
            lock = self._lock(key)
            try:
                lock.acquire(timeout=0)
            except Timeout:
                continue  # a live writer is still at it
            try:
                tmp.unlink(missing_ok=True)
                log.info("%s: removed the temporary file of a killed writer", tmp)
            finally:
                lock.release()

    @staticmethod
    def _digest(key: str, data: bytes) -> str:
        return hashlib.sha256(key.encode() + b"\n" + data).hexdigest()

    def _read(self, key: str, path: Path) -> bytes | None:
        """The bytes stored for `key`, or None when nothing is; ArtifactError when they are not what was stored."""
        digest = path.with_name(path.name + ".sha256")
        if not path.exists() and not digest.exists():
            return None
        try:
            data = read_file(path)
            recorded = read_text(digest, "digest").strip()
        except (OSError, UnicodeError, ValueError) as e:  # ArtifactError and UnreadableFile are ValueErrors
            raise ArtifactError(f"{path}: unreadable, or without its digest ({reason(e)})") from None
        if recorded != self._digest(key, data):
            raise ArtifactError(f"{path}: does not match its digest (edited, damaged, or copied from another key)")
        return data

    def _write(self, key: str, path: Path, data: bytes) -> None:
        """The file, then its digest: a run killed between the two leaves a file without one, which is a miss. Anything
        but a regular file in their place (a FIFO, a device, a link) is damage to the store, removed with a warning."""
        digest = path.with_name(path.name + ".sha256")
        for target in (path, digest):
            if os.path.lexists(target) and not stat.S_ISREG(os.lstat(target).st_mode):
                log.warning("%s: not a regular file in the store; replacing it", target)
                target.unlink()
        atomic_write_bytes(path, data)
        atomic_write_text(digest, self._digest(key, data) + "\n")

    def encoder(
        self, key: str, build: Callable[[], tuple[Encoder, dict[str, Tensor], dict]]
    ) -> tuple[Encoder, dict[str, Tensor], dict]:
        """The stored encoder for `key`, or `build()` it, check it, store it and return it.

        The returned metadata holds `seconds` (time of the original build) and
        `cached` (whether this call was served from the store).
        """
        path = self._path(key, ".safetensors")
        with self._lock(key):
            try:
                data = self._read(key, path)
                if data is not None:
                    encoder, extra, meta = load_encoder(path, data)
                    self.hits += 1
                    return encoder, extra, {**meta, "cached": True}
            except ArtifactError as e:
                log.warning("%s; rebuilding it", e)
            release_freed_memory()  # the previous stage's freed pages, before this one allocates its own
            start = time.perf_counter()
            encoder, extra, meta = build()
            meta = {**meta, "seconds": meta.get("seconds", time.perf_counter() - start)}
            tensors = encoder_tensors(encoder, extra)
            for name, tensor in tensors.items():
                if tensor.is_floating_point() and not torch.isfinite(tensor).all():
                    raise ArtifactError(f"{key}: the build gave NaN or Inf in tensor {name}; nothing was stored")
            self._write(key, path, safetensors.torch.save(tensors, metadata=file_header(encoder, meta)))
            self.builds += 1
            return encoder.eval(), extra, {**meta, "cached": False}

    def load(self, key: str) -> Encoder:
        """A fresh copy of a stored encoder."""
        path = self._path(key, ".safetensors")
        data = self._read(key, path)
        if data is None:
            raise ArtifactError(f"{path}: not stored")
        return load_encoder(path, data)[0]

    def record(self, key: str, build: Callable[[], dict]) -> dict:
        """The stored JSON record for `key`, or `build()` it and store it."""
        path = self._path(key, ".json")
        with self._lock(key):
            try:
                data = self._read(key, path)
                if data is not None:
                    record = json.loads(data)
                    if not isinstance(record, dict):
                        raise ArtifactError(f"{path}: not a JSON object")
                    record = restore_non_finite(record)
                    self.hits += 1
                    return {**record, "cached": True}
            except (ValueError, TypeError, RecursionError) as e:  # ArtifactError, and the JSON parser's errors
                log.warning("%s; rebuilding it", e if isinstance(e, ArtifactError) else f"{path}: not JSON ({reason(e)})")
            start = time.perf_counter()
            record = build()
            record = {**record, "seconds": record.get("seconds", time.perf_counter() - start)}
            self._write(key, path, strict_json.dumps(record, sort_keys=True).encode())
            self.builds += 1
            return {**record, "cached": False}
