"""Forward operators shared by every solver of the benchmark.

Conventions, followed everywhere in this project:

* Images are float tensors (B, C, H, W) with values in [-1, 1] and C in {1, 3}.
* A measurement is y = A(x) + n with n ~ N(0, (2 sigma)^2 I). sigma is given on the [0, 1] pixel scale, as
  in DDRM, DDNM, RED-diff and DDC; on the [-1, 1] scale the noise std is therefore 2 sigma. DPS and DAPS
  add std sigma on [-1, 1], so their "sigma = 0.05" is our sigma = 0.025. `add_noise` is the one function
  that applies noise, and it draws image b's noise from generators[b] alone.
* Each operator declares its capabilities (`Cap`): forward, adjoint, pinv, svd, differentiable. Solvers
  declare the capabilities they require and the runner compares the two sets; nothing probes attributes.
* `operators.build(task, shape=(C, H, W), **params)` builds one; `operators.available()` lists the tasks;
  `op.spec()` is a JSON-able dict of everything that defines the operator.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Sequence
from typing import Any

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

__all__ = [
    "SVD",
    "Cap",
    "Operator",
    "OperatorError",
    "PAPER_TASKS",
    "add_noise",
    "available",
    "closest",
    "build",
    "describe",
    "image_generators",
    "randn_per_image",
    "register",
    "resolve_tasks",
    "seeded_generator",
]

# The DDC paper's five tasks: what `--tasks all` means.
PAPER_TASKS: tuple[str, ...] = ("sr4", "sr8", "gblur", "inpaint", "jpeg10")

_REGISTRY: dict[str, tuple[Callable[..., Operator], dict[str, Any], str]] = {}


def register(task: str, factory: Callable[..., Operator], summary: str, **defaults: Any) -> None:
    """Register `factory(shape, **params)` under a task name, with its default parameters."""
    if task in _REGISTRY:
        raise ValueError(f"task '{task}' is already registered")
    _REGISTRY[task] = (factory, defaults, summary)


def available() -> list[str]:
    """Registered task names, in registration order."""
    return list(_REGISTRY)


def closest(name: str, valid: Sequence[str], cutoff: float = 0.6) -> str | None:
    """The most similar valid name (ties go to the earlier one), or None if nothing is close."""
    scored = [(difflib.SequenceMatcher(None, name, v).ratio(), -i, v) for i, v in enumerate(valid)]
    best = max(scored, default=None)
    return best[2] if best and best[0] >= cutoff else None


def _unknown(kind: str, name: str, valid: Sequence[str]) -> OperatorError:
    close = closest(name, valid)
    hint = f"; did you mean '{close}'?" if close else ""
    return OperatorError(f"unknown {kind} '{name}'{hint} (available: {', '.join(valid)})")


def build(task: str, shape: Sequence[int] = (3, 64, 64), **params: Any) -> Operator:
    """Build the operator of a task for images of `shape` (C, H, W); params override the task's defaults."""
    if task not in _REGISTRY:
        raise _unknown("task", task, available())
    factory, defaults, _ = _REGISTRY[task]
    accepted = set(inspect.signature(factory).parameters) - {"shape"}
    for key in params:
        if key not in accepted:
            raise _unknown(f"parameter for task '{task}'", key, sorted(accepted))
    return factory(shape, **{**defaults, **params})


def describe(task: str) -> str:
    """A one-line summary of a task."""
    if task not in _REGISTRY:
        raise _unknown("task", task, available())
    return _REGISTRY[task][2]


def resolve_tasks(text: str) -> list[str]:
    """Parse a comma-separated task list; 'all' means the paper's five tasks."""
    names: list[str] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        expanded = list(PAPER_TASKS) if part == "all" else [part]
        for name in expanded:
            if name not in _REGISTRY:
                raise _unknown("task", name, [*available(), "all"])
            if name not in names:
                names.append(name)
    if not names:
        raise OperatorError(f"no task given in {text!r} (available: {', '.join(available())}, all)")
    return names


def _register_builtin() -> None:
    from . import denoise, inpaint, jpeg, separable

    register("sr4", separable.SuperResolution, "bicubic x4 downsampling (antialiased Keys a=-0.5, reflect)", factor=4)
    register("sr8", separable.SuperResolution, "bicubic x8 downsampling (antialiased Keys a=-0.5, reflect)", factor=8)
    register("gblur", separable.GaussianBlur, "Gaussian blur, 61x61 kernel, std 3.0, reflect padding", size=61, std=3.0)
    register("inpaint", inpaint.RandomInpainting, "random inpainting: 92% of pixels masked, per-image mask", ratio=0.92)
    register(
        "jpeg10",
        jpeg.JPEG,
        "JPEG quality 10 (YCbCr, 4:2:0, 8x8 DCT, IJG tables), straight-through rounding",
        quality=10,
    )
    register("denoise", denoise.Identity, "denoising: A is the identity")


_register_builtin()
