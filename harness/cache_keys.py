"""Cache keys: what an artifact's identity is made of.

An artifact's key is the hash of everything that made it: the stage, its config
dataclasses, the seed, the identity of its data and the code version of the
modules that computed it (`code_version`: the source of every in-project module a
stage's code reaches, transitively), so a change anywhere a stage reaches
invalidates what it built, with no hand-kept list to go stale.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from pathlib import Path
from typing import Any

import torch

FORMAT_VERSION = 1  # of the store's keys and encoder files


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


@functools.lru_cache(maxsize=None)
def project_version(packages: tuple[str, ...] = PROJECT_PACKAGES) -> str:
    """Hash of the source of every module of the project's packages: the code a row was made with, as rows record it."""
    import importlib.util
    import pkgutil

    names = []
    for package in packages:
        spec = importlib.util.find_spec(package)
        if spec is None or spec.submodule_search_locations is None:
            raise ValueError(f"cannot hash package {package!r}: not found")
        names += [package] + [f"{package}.{info.name}" for info in pkgutil.iter_modules(spec.submodule_search_locations)]
    return code_version(*names, packages=packages)


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

    tree = ast.parse(_source(module))
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.append(node.module)
            if node.module.split(".")[0] in packages and _is_package(node.module):
                found.extend(f"{node.module}.{alias.name}" for alias in node.names if _has_module(node.module, alias.name))
    return tuple(found)


@functools.lru_cache(maxsize=None)
def _is_package(name: str) -> bool:
    """Whether `name` is a package (only a package's names can be modules); finding out imports its parents, never it."""
    import importlib.util

    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return False
    return spec is not None and spec.submodule_search_locations is not None


def _has_module(package: str, name: str) -> bool:
    """Whether `package.name` is a module, looked up in the package's folders without importing anything."""
    import importlib.util

    spec = importlib.util.find_spec(package)
    return any((Path(folder) / f"{name}.py").is_file() or (Path(folder) / name / "__init__.py").is_file()
               for folder in spec.submodule_search_locations or ())


@functools.lru_cache(maxsize=None)
def _source(module: str) -> bytes:
    import importlib.util

    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise ValueError(f"cannot hash the source of module {module!r}: not found")
    return Path(spec.origin).read_bytes()


def clear_source_caches() -> None:
    """Forget the sources read so far, as a new process would (tests)."""
    for cached in (_imports, _source, _source_hash, _is_package, project_version):
        cached.cache_clear()


@functools.lru_cache(maxsize=None)
def _source_hash(module: str) -> str:
    """Read once per process, so a file edited while a run goes on does not relabel what that run builds."""
    return hashlib.sha256(_source(module)).hexdigest()


def artifact_key(stage: str, **parts: Any) -> str:
    blob = json.dumps({"stage": stage, "format": FORMAT_VERSION, **canonical(parts)}, sort_keys=True)
    return f"{stage}-{hashlib.sha256(blob.encode()).hexdigest()[:24]}"


