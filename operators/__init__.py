"""Forward operators shared by every solver of the benchmark.

Conventions, followed everywhere in this project:

* Images are float tensors (B, C, H, W) with values in [-1, 1] and C in {1, 3}.
* A measurement is y = A(x) + n with n ~ N(0, (2 sigma)^2 I). sigma is given on the [0, 1] pixel scale, as
  in DDRM, DDNM, RED-diff and DDC; on the [-1, 1] scale the noise std is therefore 2 sigma. DPS and DAPS
  add std sigma on [-1, 1], so their "sigma = 0.05" is our sigma = 0.025. `add_noise` is the one function
  that applies Gaussian noise, and it draws image b's noise from generators[b] alone. The noise model is an
  object (`operators.noise`: Gaussian, the default, or DPS's Poisson) chosen per run; its level is σ as above.
* Each operator declares its capabilities (`Cap`): forward, adjoint, pinv, svd, differentiable. Solvers
  declare the capabilities they require and the runner compares the two sets; nothing probes attributes.
* `operators.build(task, shape=(C, H, W), **params)` builds one; `operators.available()` lists the tasks;
  `op.spec()` is a JSON-able dict of everything that defines the operator.
* Installed packages add tasks by entry point (group `diffusion_inverse_bench.operators`, see `bench.plugins`):
  an `Operator` subclass checked by `check_plugin`, listed after the built-ins, sorted by name.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from bench.registry import Registry, unknown_name
from bench.registry import closest as closest  # re-exported: settings and solvers suggest names with it

from .base import (
    SVD,
    Cap,
    Operator,
    OperatorError,
    add_noise,
    image_generators,
    randn_per_image,
    seeded_generator,
)
from .noise import NOISE_MODELS, GaussianNoise, NoiseModel, PoissonNoise, noise_model

__all__ = [
    "NOISE_MODELS",
    "SVD",
    "Cap",
    "GaussianNoise",
    "NoiseModel",
    "Operator",
    "OperatorError",
    "PAPER_TASKS",
    "PoissonNoise",
    "SUITES",
    "TaskSpec",
    "add_noise",
    "available",
    "closest",
    "build",
    "check_plugin",
    "describe",
    "image_generators",
    "is_plugin",
    "noise_model",
    "randn_per_image",
    "register",
    "resolve_tasks",
    "seeded_generator",
    "suite",
]

# The DDC paper's five tasks: what `--tasks all` means.
PAPER_TASKS: tuple[str, ...] = ("sr4", "sr8", "gblur", "inpaint", "jpeg10")

# Named task suites for `--tasks` (docs/tasks.md has the table and what each paper's task is here).
# "every" (all registered built-ins) is resolved when asked, so it needs no list.
SUITES: dict[str, tuple[str, ...]] = {
    "all": PAPER_TASKS,
    "ddc": PAPER_TASKS,
    # DPS (Chung et al. 2022), Sec. 4 / Table 1-2: SR x4, box and random inpainting, Gaussian and motion deblur,
    # phase retrieval (its non-linear deblur needs a trained blur network: not here).
    "dps": ("sr4", "box-inpaint", "inpaint", "gblur", "motion-blur", "phase-retrieval"),
    # DAPS (Zhang et al. 2025), configs/task: 6 of its 8 (random 70% inpainting and non-linear deblur are missing).
    "daps": ("sr4", "box-inpaint", "gblur", "motion-blur", "phase-retrieval", "hdr"),
}


@dataclass(frozen=True)
class TaskSpec:
    """A registered task: the operator's factory `factory(shape, **params)` and the task's default parameters."""

    factory: Callable[..., Operator]
    defaults: dict[str, Any] = field(default_factory=dict)


# Built-in tasks register in the module that defines their operator (the last lines of each); these modules are
# listed first, in this order (the DDC paper's tasks, then I²SB's bridges', then the other papers'), any other
# after.
_TASKS: Registry[TaskSpec] = Registry(
    "task",
    package=__name__,
    first=("separable", "inpaint", "jpeg", "denoise", "bridge_degradations", "box", "motion", "colour", "phase", "hdr"),
    skip=("base", "noise", "circulant", "motion_kernels"),
    group="operators",
    check=lambda task, obj: TaskSpec(check_plugin(task, obj)),  # a plug-in's entry point names its class
    summarize=lambda task, spec: _plugin_summary(spec.factory),
    error=OperatorError,
)


def is_plugin(task: str) -> bool:
    return _TASKS.is_plugin(task)


_CAPABILITY_METHODS = {Cap.ADJOINT: "_adjoint", Cap.PINV: "_pinv", Cap.SVD: "_svd"}


def check_plugin(task: str, obj: Any) -> type[Operator]:
    """The Operator subclass a plug-in's entry point names, checked: `task` is the entry point's name,
    `capabilities` a frozenset of Cap, `_forward` and `measurement_shape` are implemented, and so is the method of
    every capability it declares; `__init__(shape, **params)` gives every parameter a default. A TypeError says
    what is missing."""
    if not (isinstance(obj, type) and issubclass(obj, Operator)):
        raise TypeError(f"it names {obj!r}, which is not a subclass of operators.Operator")
    where = f"{obj.__module__}.{obj.__qualname__}"
    if getattr(obj, "task", None) != task:
        raise TypeError(f"{where}.task is {getattr(obj, 'task', None)!r}; it must be the entry point's name {task!r}")
    capabilities = getattr(obj, "capabilities", None)
    if not isinstance(capabilities, frozenset) or not all(isinstance(c, Cap) for c in capabilities):
        raise TypeError(f"{where}.capabilities must be a frozenset of operators.Cap, got {capabilities!r}")
    if Cap.FORWARD not in capabilities:
        raise TypeError(f"{where}.capabilities must include Cap.FORWARD")
    needed = {"_forward": Cap.FORWARD, "measurement_shape": Cap.FORWARD}
    needed.update({method: cap for cap, method in _CAPABILITY_METHODS.items() if cap in capabilities})
    for method, cap in needed.items():
        if getattr(obj, method) is getattr(Operator, method):
            raise TypeError(f"{where} declares {cap.value} but does not implement {method}")
    parameters = list(inspect.signature(obj.__init__).parameters.values())[1:]
    if not parameters or parameters[0].name != "shape":
        raise TypeError(f"{where}.__init__ must take the image shape first: __init__(self, shape, **params)")
    named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    required = [p.name for p in parameters[1:] if p.kind in named and p.default is inspect.Parameter.empty]
    if required:
        raise TypeError(f"{where}.__init__ must give every parameter a default; {', '.join(required)} has none")
    if not _plugin_summary(obj):
        raise TypeError(f"{where} needs a one-line summary: a class attribute `summary` or a docstring")
    return obj


def _plugin_summary(cls: type[Operator]) -> str:
    text = getattr(cls, "summary", None) or (cls.__doc__ or "")
    return text.strip().splitlines()[0].strip() if text.strip() else ""


def register(task: str, factory: Callable[..., Operator], summary: str, **defaults: Any) -> None:
    """Register `factory(shape, **params)` under a task name, with its default parameters (a built-in calls
    this in its own module)."""
    caller = sys._getframe(1).f_globals.get("__name__", factory.__module__)  # lists the task with its module
    _TASKS.register(task, TaskSpec(factory, defaults), summary=summary, module=caller)


def available() -> list[str]:
    """Registered task names: the built-ins in module order (`_TASKS`), then plug-ins sorted by name."""
    return _TASKS.names()


def _unknown(kind: str, name: str, valid: Sequence[str]) -> OperatorError:
    return OperatorError(unknown_name(kind, name, valid))


def build(task: str, shape: Sequence[int] = (3, 64, 64), **params: Any) -> Operator:
    """Build the operator of a task for images of `shape` (C, H, W); params override the task's defaults."""
    if task not in _TASKS:
        raise _unknown("task", task, available())
    factory, defaults = _TASKS.get(task).factory, _TASKS.get(task).defaults
    accepted = set(inspect.signature(factory).parameters) - {"shape"}
    for key in params:
        if key not in accepted:
            raise _unknown(f"parameter for task '{task}'", key, sorted(accepted))
    op = factory(shape, **{**defaults, **params})
    op.task = task  # a registered variant (sr4-pool) names itself, in its spec and so in result keys
    return op


def describe(task: str) -> str:
    """A one-line summary of a task."""
    if task not in _TASKS:
        raise _unknown("task", task, available())
    return _TASKS.summary(task)


def suite(name: str) -> list[str]:
    """The tasks of a named suite (`SUITES`, or "every": every built-in task, in registration order)."""
    if name == "every":
        return [task for task in available() if not is_plugin(task)]
    if name not in SUITES:
        raise _unknown("task suite", name, [*SUITES, "every"])
    return list(SUITES[name])


def resolve_tasks(text: str) -> list[str]:
    """Parse a comma-separated list of tasks and suites: 'all' (= 'ddc') is the DDC paper's five tasks; 'dps',
    'daps' and 'every' are the other suites (`SUITES`). Duplicates are dropped, first occurrence kept."""
    names: list[str] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        expanded = suite(part) if part in SUITES or part == "every" else [part]
        for name in expanded:
            if name not in _TASKS:
                raise _unknown("task", name, [*available(), *SUITES, "every"])
            if name not in names:
                names.append(name)
    if not names:
        raise OperatorError(f"no task given in {text!r} (available: {', '.join([*available(), *SUITES, 'every'])})")
    return names
