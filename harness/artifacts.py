"""A content-addressed store of encoders and results.

An artifact's key is the hash of everything that made it: the stage, its config
dataclasses, the seed, the identity of its data and the code version of the
modules that computed it. Encoders are written as safetensors (never pickles),
with their architecture and metadata as JSON beside the tensors; results as JSON.
Writes go to a temporary file in the same folder and are renamed into place, so
a killed run never leaves a half-written artifact; a file lock per key makes two
workers asking for the same artifact build it once.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch
from filelock import FileLock
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from harness import resnets  # noqa: F401 - registers the deeper ResNets that files may name
from harness.memory import release_freed_memory
from harness.models import Encoder
from harness.registry import ARCHS

FORMAT_VERSION = 1


class ArtifactError(ValueError):
    """An artifact or encoder file that cannot be used; the message names the file."""


def canonical(obj: Any) -> Any:
    """A JSON-able, order-independent rendering of configs, tensors and plain values."""
    if hasattr(obj, "fingerprint") and callable(obj.fingerprint):  # tensors-bearing values, e.g. a Trigger
        return {"__fingerprint__": obj.fingerprint()}
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {"__type__": type(obj).__name__, **{f.name: canonical(getattr(obj, f.name)) for f in dataclasses.fields(obj)}}
    if isinstance(obj, dict):
        return {str(k): canonical(v) for k, v in sorted(obj.items(), key=lambda kv: str(kv[0]))}
    if isinstance(obj, (list, tuple)):
        return [canonical(v) for v in obj]
    if isinstance(obj, torch.device):
        return None  # results must not depend on where they were computed
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    raise TypeError(f"cannot put a {type(obj).__name__} into an artifact key")


PROJECT_PACKAGES = ("harness", "attacks", "defenses")  # imports of these are part of a stage's code


def code_version(*modules: str, packages: tuple[str, ...] = PROJECT_PACKAGES) -> str:
    """Hash of the source of the named modules and of every in-project module they import, transitively.

    Editing any module a stage's code reaches invalidates what it built, with no hand-kept list to go
    stale. Imports are read from the source (`import`/`from` statements anywhere in the file, so lazy
    imports inside functions count); a package's `__init__` counts only where it is imported by name.
    """
    h = hashlib.sha256()
    for name in sorted(_closure(tuple(sorted(set(modules))), packages)):
        h.update(name.encode())
        h.update(_source_hash(name).encode())
    return h.hexdigest()[:16]


def _closure(modules: tuple[str, ...], packages: tuple[str, ...]) -> set[str]:
    seen: set[str] = set()
    todo = list(modules)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        todo.extend(m for m in _imports(name, packages) if m.split(".")[0] in packages)
    return seen


@functools.lru_cache(maxsize=None)
def _imports(module: str, packages: tuple[str, ...]) -> tuple[str, ...]:
    """Modules named by the import statements of `module`'s source (`from a.b import c` names a.b, or a.b.c if that is a module)."""
    import ast
    import importlib.util

    tree = ast.parse(_source(module))
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.append(node.module)
            for alias in node.names if node.module.split(".")[0] in packages else ():
                child = f"{node.module}.{alias.name}"
                try:
                    if importlib.util.find_spec(child) is not None:
                        found.append(child)
                except (ImportError, ValueError):
                    pass  # `from package import name` where name is not a module
    return tuple(found)


@functools.lru_cache(maxsize=None)
def _source(module: str) -> bytes:
    import importlib.util

    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise ValueError(f"cannot hash the source of module {module!r}: not found")
    return Path(spec.origin).read_bytes()


def clear_source_caches() -> None:
    """Forget the sources read so far, as a new process would (tests)."""
    for cached in (_imports, _source, _source_hash):
        cached.cache_clear()


@functools.lru_cache(maxsize=None)
def _source_hash(module: str) -> str:
    """Read once per process, so a file edited while a run goes on does not relabel what that run builds."""
    return hashlib.sha256(_source(module)).hexdigest()


def artifact_key(stage: str, **parts: Any) -> str:
    blob = json.dumps({"stage": stage, "format": FORMAT_VERSION, **canonical(parts)}, sort_keys=True)
    return f"{stage}-{hashlib.sha256(blob.encode()).hexdigest()[:24]}"


def _atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_text(path: Path, text: str) -> None:
    _atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def save_encoder(path: Path, encoder: Encoder, extra: dict[str, Tensor] | None = None, meta: dict | None = None) -> None:
    """Write an encoder (and optional extra tensors, e.g. a trigger) as one safetensors file, atomically."""
    tensors = {f"encoder.{k}": v.detach().cpu().contiguous() for k, v in encoder.state_dict().items()}
    tensors.update({f"extra.{k}": v.detach().cpu().contiguous() for k, v in (extra or {}).items()})
    header = {
        "format": str(FORMAT_VERSION),
        "arch": getattr(encoder, "ARCH", "resnet18"),  # the registry name that builds `config` (resnets.ResNet: "resnet")
        "arch_config": json.dumps(dataclasses.asdict(encoder.config)),
        "meta": json.dumps(meta or {}),
    }
    _atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=header))


def load_encoder(path: Path) -> tuple[Encoder, dict[str, Tensor], dict]:
    """Read a file written by `save_encoder`; no code in the file is ever executed."""
    try:
        tensors = load_file(str(path))
        with open(path, "rb") as f:
            header_len = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(header_len)).get("__metadata__", {})
        arch_config = {k: tuple(v) if isinstance(v, list) else v for k, v in json.loads(header["arch_config"]).items()}
        encoder: Encoder = ARCHS.create(header["arch"], **arch_config)()
    except (SafetensorError, OSError, KeyError, ValueError, TypeError) as e:
        raise ArtifactError(f"{path}: not a readable encoder file ({type(e).__name__}: {e})") from None
    state = {k.removeprefix("encoder."): v for k, v in tensors.items() if k.startswith("encoder.")}
    check_weights(path, state, encoder, f"{header['arch']} {encoder.config}")
    encoder.load_state_dict(state, strict=True)
    extra = {k.removeprefix("extra."): v for k, v in tensors.items() if k.startswith("extra.")}
    return encoder.eval(), extra, json.loads(header.get("meta", "{}"))


def check_weights(path: Path, state: dict[str, Tensor], encoder: Encoder, arch: str) -> None:
    """One-line errors naming the file and the tensor: missing, unexpected, misshapen or non-finite weights."""
    expected = encoder.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing:
        raise ArtifactError(f"{path}: missing tensor {missing[0]} for {arch} ({len(missing)} missing)")
    if unexpected:
        raise ArtifactError(f"{path}: unexpected tensor {unexpected[0]} for {arch} ({len(unexpected)} unexpected)")
    for key, value in state.items():
        if value.shape != expected[key].shape:
            raise ArtifactError(f"{path}: tensor {key} has shape {tuple(value.shape)}, {arch} needs {tuple(expected[key].shape)}")
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise ArtifactError(f"{path}: tensor {key} holds NaN or Inf values")


class ArtifactStore:
    """Encoders and JSON results under `root`, keyed by `artifact_key`."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.hits = 0
        self.builds = 0

    def _path(self, key: str, suffix: str) -> Path:
        return self.root / key.split("-", 1)[0] / f"{key}{suffix}"

    def _lock(self, key: str) -> FileLock:
        path = self._path(key, ".lock")
        path.parent.mkdir(parents=True, exist_ok=True)
        return FileLock(str(path))

    def encoder(
        self, key: str, build: Callable[[], tuple[Encoder, dict[str, Tensor], dict]]
    ) -> tuple[Encoder, dict[str, Tensor], dict]:
        """The stored encoder for `key`, or `build()` it, store it and return it.

        The returned metadata holds `seconds` (time of the original build) and
        `cached` (whether this call was served from the store).
        """
        path = self._path(key, ".safetensors")
        with self._lock(key):
            if path.exists():
                self.hits += 1
                encoder, extra, meta = load_encoder(path)
                return encoder, extra, {**meta, "cached": True}
            release_freed_memory()  # the previous stage's freed pages, before this one allocates its own
            start = time.perf_counter()
            encoder, extra, meta = build()
            meta = {**meta, "seconds": meta.get("seconds", time.perf_counter() - start)}
            save_encoder(path, encoder, extra, meta)
            self.builds += 1
            return encoder.eval(), extra, {**meta, "cached": False}

    def load(self, key: str) -> Encoder:
        """A fresh copy of a stored encoder."""
        return load_encoder(self._path(key, ".safetensors"))[0]

    def record(self, key: str, build: Callable[[], dict]) -> dict:
        """The stored JSON record for `key`, or `build()` it and store it."""
        path = self._path(key, ".json")
        with self._lock(key):
            if path.exists():
                try:
                    record = json.loads(path.read_text())
                    self.hits += 1
                    return {**record, "cached": True}
                except json.JSONDecodeError as e:
                    raise ArtifactError(f"{path}: corrupt result record ({e}); delete it to rebuild") from None
            start = time.perf_counter()
            record = build()
            record = {**record, "seconds": record.get("seconds", time.perf_counter() - start)}
            atomic_write_text(path, json.dumps(record, sort_keys=True))
            self.builds += 1
            return {**record, "cached": False}
