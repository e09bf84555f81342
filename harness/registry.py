"""One registry type for every pluggable thing: attacks, defenses, datasets, architectures.

An entry is a function registered under its public name together with a frozen
dataclass holding its default configuration:

    @DEFENSES.register("mimic", config=MimicConfig)
    def mimic(suspect, clean, budget, config, seed): ...

    method = DEFENSES.create("mimic", lambda1=0.5)   # config with one field replaced
    method(suspect, clean, budget, seed=0)

A registry fills itself the first time it is read: it imports the modules that
hold the built-in entries (the `attacks` and `defenses` packages, harness/data.py
...), then every entry point in its group, so third-party packages add entries
without touching this repository by declaring an entry point in the group named
by the registry (e.g. ``harness.defenses``). Nobody has to import a method
package first; and `import harness` stays light, because nothing is imported
until a registry is read.

Tags are the registry's vocabulary for what callers must know of an entry:
SUPERVISED (an attack that backdoors a classifier, not an encoder), OWN_TRIGGER
(an attack that brings its own trigger, so the profile's scenarios do not apply)
and INPUT_DETECTION (a defense that flags inputs at test time instead of
purifying the encoder; harness/contract.py).
"""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
from dataclasses import dataclass
import importlib
from importlib.metadata import entry_points
from typing import Any, Callable, Generic, Iterator, TypeVar

F = TypeVar("F", bound=Callable[..., Any])

SUPERVISED = "supervised"  # an attack that backdoors a classifier (its backbone is the encoder)
OWN_TRIGGER = "own_trigger"  # an attack that brings its own trigger (the profile's scenarios do not apply)
INPUT_DETECTION = "input_detection"  # a defense that returns a test-time input detector, not a purified encoder


class UnknownNameError(KeyError):
    """A name that is not in a registry; the message lists the known names."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


@dataclass(frozen=True)
class Method(Generic[F]):
    """A registered function bound to a resolved configuration."""

    name: str
    fn: F
    config: Any  # an instance of the entry's config dataclass, or None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.config is not None:
            kwargs.setdefault("config", self.config)
        return self.fn(*args, **kwargs)


@dataclass(frozen=True)
class Entry(Generic[F]):
    name: str
    fn: F
    config_type: type | None  # frozen dataclass of defaults, or None
    module: str  # where it was defined: its code version goes into cache keys
    tags: frozenset[str] = frozenset()  # e.g. "supervised": an attack that backdoors a classifier, not an encoder

    def default_config(self) -> Any:
        return None if self.config_type is None else self.config_type()


class Registry(Generic[F]):
    """Name -> function table with typed configs.

    Registering a name twice from two places is refused; looking up an unknown name raises
    UnknownNameError naming the known entries and the closest match.
    """

    def __init__(self, kind: str, entry_point_group: str | None = None, builtins: tuple[str, ...] = ()) -> None:
        self.kind = kind
        self.entry_point_group = entry_point_group
        self.builtins = builtins  # modules whose import registers the built-in entries
        self._entries: dict[str, Entry[F]] = {}
        self._loaded = False

    def register(self, name: str | None = None, *, config: type | None = None, tags: tuple[str, ...] = ()) -> Callable[[F], F]:
        """Decorator: add the function under ``name`` (default: its own name), with optional tags."""
        if config is not None and not (dataclasses.is_dataclass(config) and config.__dataclass_params__.frozen):
            raise TypeError(f"{self.kind} config must be a frozen dataclass, got {config!r}")

        def decorate(fn: F) -> F:
            key = name or fn.__name__
            known = self._entries.get(key)
            if known is not None and (known.module, known.fn.__qualname__) != (fn.__module__, fn.__qualname__):
                raise ValueError(f"{self.kind} {key!r} is already registered (by {known.module})")
            # the same definition again (its module imported a second time, as pytester's runs do) replaces itself
            self._entries[key] = Entry(key, fn, config, fn.__module__, frozenset(tags))
            return fn

        return decorate

    def _load(self) -> None:
        """Import the built-in modules, then the entry points' (importing a module runs its @register decorators)."""
        if self._loaded:
            return
        self._loaded = True
        for module in self.builtins:
            importlib.import_module(module)
        for ep in entry_points(group=self.entry_point_group) if self.entry_point_group else ():
            ep.load()

    def get(self, name: str) -> Entry[F]:
        self._load()
        try:
            return self._entries[name]
        except KeyError:
            known = sorted(self._entries)
            close = difflib.get_close_matches(name, known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}{hint} Known {self.kind}s: {', '.join(known) or '(none)'}"
            ) from None

    def create(self, name: str, **overrides: Any) -> Method[F]:
        """The entry bound to its default config with ``overrides`` replaced.

        ``None`` values are dropped so callers can pass optional settings through.
        """
        entry = self.get(name)
        overrides = {k: v for k, v in overrides.items() if v is not None}
        config = entry.default_config()
        if overrides:
            if config is None:
                raise TypeError(f"{self.kind} {name!r} takes no configuration, got {sorted(overrides)}")
            fields = {f.name for f in dataclasses.fields(config)}
            unknown = sorted(set(overrides) - fields)
            if unknown:
                raise TypeError(f"{self.kind} {name!r} has no setting {unknown}; settings: {sorted(fields)}")
            config = dataclasses.replace(config, **overrides)
        return Method(name, entry.fn, config)

    def names(self, pattern: str = "*") -> list[str]:
        """Registered names matching a shell-style pattern, sorted."""
        self._load()
        return sorted(n for n in self._entries if fnmatch.fnmatchcase(n, pattern))

    def has_tag(self, name: str, tag: str) -> bool:
        return tag in self.get(name).tags

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())


ATTACKS: Registry = Registry("attack", "harness.attacks", builtins=("attacks",))
DEFENSES: Registry = Registry("defense", "harness.defenses", builtins=("defenses",))
DATASETS: Registry = Registry("dataset", "harness.datasets", builtins=("harness.data",))
ARCHS: Registry = Registry("architecture", "harness.archs", builtins=("harness.models", "harness.resnets"))
TRIGGERS: Registry = Registry("trigger", "harness.triggers", builtins=("harness.triggers",))
