"""Inverse-problem solvers: one module per method, registered under its command-line name.

`solvers.available()` lists them, `solvers.build(name, **overrides)` makes one, and
`solvers.parse_overrides(["dps.zeta=0.5"])` turns command-line `--set` options into per-solver overrides.
Each module defines a `Solver` subclass and registers it with `@register`.
"""

from __future__ import annotations

import dataclasses
import importlib
import typing
from collections.abc import Iterable
from typing import Any

from operators import closest

from .base import Solver, SolverConfig, SolverError, StepCallback

__all__ = [
    "Solver",
    "SolverConfig",
    "SolverError",
    "StepCallback",
    "available",
    "build",
    "get",
    "parse_overrides",
    "register",
]

# Modules imported on first use of the registry, in the order `available()` lists them.
_MODULES = ("uncond", "pinv", "dps", "ddnm", "ddrm", "pigdm", "reddiff", "pnp_admm", "ddc", "cddb")
_REGISTRY: dict[str, type[Solver]] = {}
_loaded = False


def register(cls: type[Solver]) -> type[Solver]:
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"solver '{cls.name}' is already registered")
    _REGISTRY[cls.name] = cls
    return cls


def _load() -> None:
    global _loaded
    if _loaded:
        return
    for module in _MODULES:
        try:
            importlib.import_module(f"{__name__}.{module}")
        except ModuleNotFoundError as error:
            if error.name != f"{__name__}.{module}":
                raise
    _loaded = True


def _module_rank(name: str) -> int:
    module = _REGISTRY[name].__module__.rpartition(".")[2]
    return _MODULES.index(module) if module in _MODULES else len(_MODULES)


def available() -> list[str]:
    """Registered solver names in `_MODULES` order, whatever order their modules were imported in."""
    _load()
    return sorted(_REGISTRY, key=_module_rank)


def get(name: str) -> type[Solver]:
    _load()
    if name not in _REGISTRY:
        close = closest(name, list(_REGISTRY))
        hint = f"; did you mean '{close}'?" if close else ""
        raise SolverError(f"unknown solver '{name}'{hint} (available: {', '.join(available())})")
    return _REGISTRY[name]


def _convert(value: str, annotation: Any, where: str) -> Any:
    hints = [a for a in typing.get_args(annotation) if a is not type(None)] or [annotation]
    if value.lower() in ("none", "null") and type(None) in typing.get_args(annotation):
        return None
    for kind in hints:
        if kind is bool or kind == "bool":
            if value.lower() in ("true", "1", "yes"):
                return True
            if value.lower() in ("false", "0", "no"):
                return False
            continue
        try:
            return {"int": int, "float": float, "str": str}.get(kind, kind)(value)
        except (TypeError, ValueError):
            continue
    raise SolverError(f"{where}: cannot read {value!r} as {annotation}")


def build(name: str, **overrides: Any) -> Solver:
    """Make a solver; overrides replace config fields (strings are converted to the field's type)."""
    cls = get(name)
    fields = {f.name: f for f in dataclasses.fields(cls.Config)}
    typed: dict[str, Any] = {}
    hints = typing.get_type_hints(cls.Config)
    for key, value in overrides.items():
        if key not in fields:
            close = closest(key, list(fields))
            hint = f"; did you mean '{close}'?" if close else ""
            raise SolverError(f"solver '{name}' has no option '{key}'{hint} (options: {', '.join(fields) or 'none'})")
        typed[key] = _convert(value, hints[key], f"{name}.{key}") if isinstance(value, str) else value
    return cls(**typed)


def parse_overrides(items: Iterable[str]) -> dict[str, dict[str, str]]:
    """['dps.zeta=0.5', 'ddrm.steps=50'] -> {'dps': {'zeta': '0.5'}, 'ddrm': {'steps': '50'}}."""
    result: dict[str, dict[str, str]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        solver, dot, option = key.strip().partition(".")
        if not sep or not dot or not solver or not option:
            raise SolverError(f"--set expects solver.option=value (e.g. dps.zeta=0.5), got {item!r}")
        get(solver)
        result.setdefault(solver, {})[option] = value.strip()
    return result
