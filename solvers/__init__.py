"""Inverse-problem solvers: one module per method (one package for a method with its own networks: sampler,
network, loader and trainer together, e.g. `solvers/ddc/`), registered under its command-line name.

`solvers.available()` lists them, `solvers.build(name, **overrides)` makes one, and
`solvers.parse_overrides(["dps.zeta=0.5"])` turns command-line `--set` options into per-solver overrides.
Each module (in a package, the module its `__init__.py` imports) defines a `Solver` subclass and registers it
with `@register`. Installed packages add solvers by entry point (group `diffusion_inverse_bench.solvers`, see
`bench.plugins`); they are checked against the contract below when they load and listed after the built-ins,
sorted by name.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import typing
from collections.abc import Iterable
from typing import Any

from bench.registry import Registry
from operators import Cap, closest

from .base import Solver, SolverConfig, SolverError, StepCallback

__all__ = [
    "Solver",
    "SolverConfig",
    "SolverError",
    "StepCallback",
    "available",
    "build",
    "build_class",
    "check_plugin",
    "get",
    "is_plugin",
    "load_class",
    "parse_overrides",
    "register",
]

# Every module and subpackage of this package is imported on first use of the registry (a new solver module
# needs no list entry); these come first, in the DDC paper's order, and any other after them by name.
_SOLVERS: Registry[type[Solver]] = Registry(
    "solver",
    package=__name__,
    first=("uncond", "pinv", "dps", "ddnm", "ddrm", "pigdm", "reddiff", "pnp_admm", "ddc", "cddb"),
    group="solvers",
    check=lambda name, obj: check_plugin(name, obj),
    error=SolverError,
)


def register(cls: type[Solver]) -> type[Solver]:
    """Class decorator: register a Solver subclass under its `name` (built-ins do this in their own module)."""
    return _SOLVERS.register(cls.name, cls, summary=cls.__doc__ or cls.name)


def available() -> list[str]:
    """Built-in solver names in module order, whatever order their modules were imported in, then plug-ins
    sorted by name."""
    return _SOLVERS.names()


def is_plugin(name: str) -> bool:
    return _SOLVERS.is_plugin(name)


_SOLVE_KEYWORDS = ("sigma", "generators", "callback")


def check_plugin(name: str, obj: Any) -> type[Solver]:
    """The Solver subclass an entry point names (a class, or a factory returning one), checked against the
    contract; a TypeError says what is missing."""
    cls = obj
    if callable(obj) and not isinstance(obj, type):
        try:
            inspect.signature(obj).bind()
        except (TypeError, ValueError):
            raise TypeError(
                f"it names {obj!r}, neither a solvers.Solver subclass nor a factory without arguments"
            ) from None
        cls = obj()
    if not (isinstance(cls, type) and issubclass(cls, Solver)):
        raise TypeError(f"it names {cls!r}, which is not a subclass of solvers.Solver")
    where = f"{cls.__module__}.{cls.__qualname__}"
    if getattr(cls, "name", None) != name:
        raise TypeError(f"{where}.name is {getattr(cls, 'name', None)!r}; it must be the entry point's name {name!r}")
    for attribute in ("requires", "requires_when_noisy", "uses_when_available"):
        value = getattr(cls, attribute)
        if not isinstance(value, frozenset) or not all(isinstance(c, Cap) for c in value):
            raise TypeError(f"{where}.{attribute} must be a frozenset of operators.Cap, got {value!r}")
    if not (isinstance(cls.Config, type) and issubclass(cls.Config, SolverConfig)) or cls.Config is SolverConfig:
        raise TypeError(f"{where}.Config must be its own dataclass subclassing solvers.SolverConfig")
    if not dataclasses.is_dataclass(cls.Config):
        raise TypeError(f"{where}.Config must be a dataclass (decorate it with @dataclasses.dataclass(frozen=True))")
    try:
        cls.Config()
    except Exception as error:
        raise TypeError(f"{where}.Config() must build with defaults alone: {error}") from error
    if cls.solve is Solver.solve:
        raise TypeError(f"{where} does not override solve(y, op, prior, *, sigma, generators, callback=None)")
    parameters = inspect.signature(cls.solve).parameters
    missing = [p for p in ("y", "op", "prior", *_SOLVE_KEYWORDS) if p not in parameters]
    if missing:
        raise TypeError(
            f"{where}.solve lacks {', '.join(missing)}: its signature must be "
            "solve(self, y, op, prior, *, sigma, generators, callback=None)"
        )
    if not isinstance(cls.version, int) or isinstance(cls.version, bool) or cls.version < 1:
        raise TypeError(f"{where}.version must be an integer >= 1, got {cls.version!r}")
    return cls


def get(name: str) -> type[Solver]:
    return _SOLVERS.get(name)


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
    return build_class(get(name), **overrides)


def load_class(target: str) -> type[Solver]:
    """The solver class at 'package.module:Class' (registered or not), checked as a plug-in would be."""
    module_name, colon, attribute = target.partition(":")
    if not colon or not module_name or not attribute:
        raise SolverError(f"expected a solver name or 'package.module:Class', got {target!r}")
    try:
        obj = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as error:
        raise SolverError(f"cannot load solver class {target!r}: {type(error).__name__}: {error}") from error
    try:
        return check_plugin(getattr(obj, "name", attribute), obj)
    except TypeError as error:
        raise SolverError(f"{target} is not a valid solver: {error}") from error


def build_class(cls: type[Solver], **overrides: Any) -> Solver:
    """`build` for a solver class: overrides replace config fields, strings converted to the field's type."""
    name = cls.name
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


def split_override(item: str) -> tuple[str, str, str]:
    """'dps.zeta=0.5' -> ('dps', 'zeta', '0.5'): one `--set` item, the solver name being all before the last dot
    of the key (plug-in names may hold dots); SolverError when it is not of that form."""
    key, sep, value = item.partition("=")
    solver, dot, option = key.strip().rpartition(".")
    if not sep or not dot or not solver or not option.strip():
        raise SolverError(f"--set expects solver.option=value (e.g. dps.zeta=0.5), got {item!r}")
    return solver, option.strip(), value.strip()


def parse_overrides(items: Iterable[str]) -> dict[str, dict[str, str]]:
    """['dps.zeta=0.5', 'ddrm.steps=50'] -> {'dps': {'zeta': '0.5'}, 'ddrm': {'steps': '50'}}."""
    result: dict[str, dict[str, str]] = {}
    for item in items:
        solver, option, value = split_override(item)
        get(solver)
        result.setdefault(solver, {})[option] = value
    return result
