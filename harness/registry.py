"""One registry type for every pluggable thing: attacks, defenses, datasets, architectures.

An entry is a function registered under its public name together with a frozen
dataclass holding its default configuration:

    @DEFENSES.register("mimic", config=MimicConfig)
    def mimic(suspect, clean, budget, config, seed): ...

    method = DEFENSES.create("mimic", lambda1=0.5)   # config with one field replaced
    method(suspect, clean, budget, seed=0)

Third-party packages add entries without touching this repository by declaring
an entry point in the group named by the registry (e.g. ``harness.defenses``);
the entry point's target module is imported the first time the registry is read.
"""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any, Callable, Generic, Iterator, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


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

    Registering a name twice is refused; looking up an unknown name raises
    UnknownNameError naming the known entries and the closest match.
    """

    def __init__(self, kind: str, entry_point_group: str | None = None) -> None:
        self.kind = kind
        self.entry_point_group = entry_point_group
        self._entries: dict[str, Entry[F]] = {}
        self._plugins_loaded = entry_point_group is None

    def register(self, name: str | None = None, *, config: type | None = None, tags: tuple[str, ...] = ()) -> Callable[[F], F]:
        """Decorator: add the function under ``name`` (default: its own name), with optional tags."""
        if config is not None and not (dataclasses.is_dataclass(config) and config.__dataclass_params__.frozen):
            raise TypeError(f"{self.kind} config must be a frozen dataclass, got {config!r}")

        def decorate(fn: F) -> F:
            key = name or fn.__name__
            if key in self._entries:
                raise ValueError(f"{self.kind} {key!r} is already registered (by {self._entries[key].module})")
            self._entries[key] = Entry(key, fn, config, fn.__module__, frozenset(tags))
            return fn

        return decorate

    def _load_plugins(self) -> None:
        if self._plugins_loaded:
            return
        self._plugins_loaded = True
        for ep in entry_points(group=self.entry_point_group):
            ep.load()  # importing the module runs its @register decorators

    def get(self, name: str) -> Entry[F]:
        self._load_plugins()
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
        self._load_plugins()
        return sorted(n for n in self._entries if fnmatch.fnmatchcase(n, pattern))

    def has_tag(self, name: str, tag: str) -> bool:
        return tag in self.get(name).tags

    def __contains__(self, name: object) -> bool:
        self._load_plugins()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())


ATTACKS: Registry = Registry("attack", "harness.attacks")
DEFENSES: Registry = Registry("defense", "harness.defenses")
DATASETS: Registry = Registry("dataset", "harness.datasets")
ARCHS: Registry = Registry("architecture", "harness.archs")
TRIGGERS: Registry = Registry("trigger", "harness.triggers")
