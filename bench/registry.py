"""One registry type for everything the benchmark looks up by name: solvers, tasks (operators), prior kinds,
datasets and metrics. Torch-free, so the store and the report can use it.

A built-in registers itself in the module that defines it (`Registry.register`, as a call or a decorator). The
registry finds the built-ins by importing every module of its package on first use (`package`), so a new
built-in is one new module and no list is kept by hand; `first` only orders the listing. Installed packages add
entries by entry point (`group`, through `bench.plugins` and the registry's `check`); they are listed after the
built-ins, sorted by name, and may not take a built-in's name.
"""

from __future__ import annotations

import difflib
import importlib
import pkgutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

__all__ = ["Entry", "Registry", "closest", "unknown_name"]

T = TypeVar("T")


def closest(name: str, valid: Sequence[str], cutoff: float = 0.6) -> str | None:
    """The most similar valid name, or None if nothing is close. Ties go to a name with the same letters (a
    transposition: 'ddmn' is 'ddnm', not 'ddrm'), then to the earlier one."""
    scored = [
        (difflib.SequenceMatcher(None, name, v).ratio(), sorted(name) == sorted(v), -i, v) for i, v in enumerate(valid)
    ]
    best = max(scored, default=None)
    return best[-1] if best and best[0] >= cutoff else None


def unknown_name(kind: str, name: str, valid: Sequence[str]) -> str:
    """"unknown metric 'lpip'; did you mean 'lpips'? (available: psnr, ssim, ...)"."""
    close = closest(name, list(valid))
    hint = f"; did you mean '{close}'?" if close else ""
    return f"unknown {kind} '{name}'{hint} (available: {', '.join(valid)})"


@dataclass(frozen=True)
class Entry(Generic[T]):
    """One registered thing: its name, the object itself, a one-line summary, where it came from."""

    name: str
    value: T
    summary: str
    module: str  # the module that registered it (a plug-in's own module)
    plugin: bool = False


class Registry(Generic[T]):
    """Names -> entries of one kind of thing.

    kind: how error messages call the things ("solver", "task", "dataset").
    package: the package whose modules are imported to find the built-ins (modules named `_x` are skipped, and
        so are those in `skip`: shared code such as `base`).
    first: module names listed first, in this order; every other module follows by name.
    group: the plug-in entry-point group's suffix (`bench.plugins`), None for no plug-ins.
    check: `check(name, obj) -> value` for a plug-in's entry point; a TypeError names what is wrong.
    error: the exception type of an unknown name.
    """

    def __init__(
        self,
        kind: str,
        *,
        package: str | None = None,
        first: Sequence[str] = (),
        skip: Sequence[str] = ("base",),
        group: str | None = None,
        check: Callable[[str, Any], Any] | None = None,
        summarize: Callable[[str, Any], Any] | None = None,
        error: type[Exception] = ValueError,
    ) -> None:
        self.kind = kind
        self.package = package
        self.first = tuple(first)
        self.skip = frozenset(skip)
        self.group = group
        self.check = check
        self.summarize = summarize
        self.error = error
        self._entries: dict[str, Entry[T]] = {}
        self._discovered = False
        self._plugins_loaded = False

    # ----- registering --------------------------------------------------------------------------------
    def register(self, name: str, value: Any = None, *, summary: str | None = None, module: str | None = None) -> Any:
        """Register `value` under `name`; without `value`, a decorator that registers what it decorates.

        summary: one line for listings; else the first line of the value's docstring. module: where it is
        defined (orders the listing), else the value's own `__module__`. Registering a second, different object
        under a taken name is an error naming both."""
        if value is None:
            return lambda decorated: self._add(name, decorated, summary, module) or decorated
        self._add(name, value, summary, module)
        return value

    def _add(self, name: str, value: Any, summary: str | None, module: str | None = None, plugin: bool = False) -> None:
        module = module or getattr(value, "__module__", None) or "?"
        if name in self._entries and self._entries[name].value is not value:
            other = self._entries[name]
            raise ValueError(
                f"{self.kind} '{name}' is registered twice: by {other.module} and by {module}; give one of them "
                "another name"
            )
        text = summary if summary is not None else (getattr(value, "__doc__", None) or "")
        line = text.strip().splitlines()[0].strip() if text.strip() else ""
        self._entries[name] = Entry(name, value, line, module, plugin)

    # ----- finding the entries ------------------------------------------------------------------------
    def modules(self) -> list[str]:
        """The package's modules that may register built-ins, in listing order."""
        if self.package is None:
            return []
        found = [
            info.name
            for info in pkgutil.iter_modules(importlib.import_module(self.package).__path__)
            if not info.name.startswith("_") and info.name not in self.skip
        ]
        rank = {name: i for i, name in enumerate(self.first)}
        return sorted(found, key=lambda name: (rank.get(name, len(rank)), name))

    def _load(self) -> None:
        if not self._discovered:
            self._discovered = True  # first: a module that looks names up while it is imported sees what is there
            for module in self.modules():
                importlib.import_module(f"{self.package}.{module}")
        if not self._plugins_loaded:
            self._plugins_loaded = True  # first: a plug-in module may import this registry's package
            if self.group is not None:
                from bench import plugins

                check = self.check or (lambda _, value: value)
                for name, obj in plugins.load(self.group, check, taken=list(self._entries)).items():
                    self._add(name, obj, self.summarize(name, obj) if self.summarize else None, plugin=True)

    def entries(self) -> list[Entry[T]]:
        """Built-ins in module order (registration order within a module), then plug-ins by name."""
        self._load()
        rank = {name: i for i, name in enumerate(self.modules())}  # the package is listed once per call

        def order(entry: Entry[T]) -> tuple[int, int, str]:
            if entry.plugin:
                return 1, 0, entry.name
            short = entry.module.removeprefix(f"{self.package}.").partition(".")[0]
            return 0, rank.get(short, len(rank)), ""

        return sorted(self._entries.values(), key=order)  # sorted() is stable: registration order holds

    def names(self) -> list[str]:
        return [entry.name for entry in self.entries()]

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def entry(self, name: str) -> Entry[T]:
        """The entry of `name`; an unknown name raises `error` with the closest registered name."""
        self._load()
        if name not in self._entries:
            raise self.error(unknown_name(self.kind, name, self.names()))
        return self._entries[name]

    def get(self, name: str) -> T:
        return self.entry(name).value

    def summary(self, name: str) -> str:
        return self.entry(name).summary

    def copy(self) -> Registry[T]:
        """A registry with this one's built-ins that loads the plug-ins anew (tests swap it in to add entries)."""
        self._load()
        twin: Registry[T] = Registry(
            self.kind, package=self.package, first=self.first, skip=tuple(self.skip), group=self.group,
            check=self.check, summarize=self.summarize, error=self.error,
        )
        twin._entries = {name: entry for name, entry in self._entries.items() if not entry.plugin}
        twin._discovered = True
        return twin

    def is_plugin(self, name: str) -> bool:
        self._load()
        return name in self._entries and self._entries[name].plugin
