"""Solvers, operators and prior kinds from installed packages, found by entry point.

A package adds to the benchmark by declaring entry points in one of three groups (see README, "Write your own
solver"):

    diffusion_inverse_bench.solvers    name = "package.module:SolverClass"   (a `solvers.Solver` subclass)
    diffusion_inverse_bench.operators  name = "package.module:OperatorClass" (an `operators.Operator` subclass)
    diffusion_inverse_bench.priors     name = "package.module:load"          (a prior-spec loader)

Each registry (`solvers`, `operators`, `bench.priors`) calls `load` once and checks what it gets against its own
contract; this module only finds, imports and reports. A plug-in that fails to import or fails its registry's
check is left out with a warning on stderr naming it and its error, and is remembered for `bench list`, so one
broken package never takes the built-ins down with it. A name that is already taken is an error: which of the
two a command means would otherwise depend on what happens to be installed.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable, Iterable
from importlib import metadata
from typing import Any, TypeVar

__all__ = ["GROUPS", "PluginError", "PluginFailure", "failures", "load", "origin"]

GROUPS: dict[str, str] = {
    "solvers": "diffusion_inverse_bench.solvers",
    "operators": "diffusion_inverse_bench.operators",
    "priors": "diffusion_inverse_bench.priors",
}

T = TypeVar("T")


class PluginError(ValueError):
    """A plug-in name that clashes with another solver, task or prior kind: both are named, with the fix."""


@dataclasses.dataclass(frozen=True)
class PluginFailure:
    kind: str  # "solvers", "operators" or "priors"
    name: str  # the entry point's name
    target: str  # "module:attribute", as the package declared it
    distribution: str
    error: str

    def describe(self) -> str:
        return f"{self.kind[:-1]} plug-in '{self.name}' ({self.target}, from {self.distribution}): {self.error}"


_failures: dict[tuple[str, str], PluginFailure] = {}
_origins: dict[tuple[str, str], str] = {}


def _entry_points(kind: str) -> list[metadata.EntryPoint]:
    if kind not in GROUPS:
        raise ValueError(f"unknown plug-in kind {kind!r} (kinds: {', '.join(GROUPS)})")
    found = metadata.entry_points(group=GROUPS[kind])
    # One distribution can be on sys.path twice (an editable install and a copy); the first one wins, as import does.
    unique: dict[tuple[str, str], metadata.EntryPoint] = {}
    for point in found:
        unique.setdefault((point.name, point.value), point)
    return sorted(unique.values(), key=lambda point: (point.name, point.value))


def _distribution(point: metadata.EntryPoint) -> str:
    dist = getattr(point, "dist", None)
    if dist is None:
        return "an unknown distribution"
    return f"{dist.metadata['Name']} {dist.version}"


def load(kind: str, check: Callable[[str, Any], T], taken: Iterable[str]) -> dict[str, T]:
    """Every entry point of `kind`, imported and passed through `check(name, obj)`, sorted by name.

    `check` returns what the registry stores, or raises (any exception) to reject the plug-in, which is then
    reported as a failure. `taken` are the built-in names; a plug-in claiming one of them, or two plug-ins
    claiming the same name, raise PluginError naming both.
    """
    builtins = set(taken)
    loaded: dict[str, T] = {}
    claimed: dict[str, str] = {}
    for point in _entry_points(kind):
        where = f"{point.value} from {_distribution(point)}"
        if point.name in builtins:
            raise PluginError(
                f"{kind[:-1]} plug-in '{point.name}' ({where}) has the name of the built-in {kind[:-1]} "
                f"'{point.name}'; rename the plug-in's entry point in its pyproject.toml"
            )
        if point.name in claimed:
            raise PluginError(
                f"two {kind[:-1]} plug-ins are named '{point.name}': {claimed[point.name]} and {where}; "
                "uninstall one or rename its entry point"
            )
        claimed[point.name] = where
        try:
            loaded[point.name] = check(point.name, point.load())
        except PluginError:
            raise
        except Exception as error:  # noqa: BLE001 - any failure of foreign code is reported, not raised
            failure = PluginFailure(kind, point.name, point.value, _distribution(point), _one_line(error))
            _failures[(kind, point.name)] = failure
            print(f"warning: {failure.describe()}; it is left out", file=sys.stderr)
            continue
        _failures.pop((kind, point.name), None)
        _origins[(kind, point.name)] = _distribution(point)
    return loaded


def failures(kind: str | None = None) -> list[PluginFailure]:
    """The plug-ins left out when their registry last loaded (of one kind, or all), sorted by kind and name."""
    return sorted((f for f in _failures.values() if kind is None or f.kind == kind), key=lambda f: (f.kind, f.name))


def origin(kind: str, name: str) -> str | None:
    """'<distribution> <version>' of a loaded plug-in, None for a built-in."""
    return _origins.get((kind, name))


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
