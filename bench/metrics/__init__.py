"""The metrics: each is declared once, beside the function that computes it, and found by name.

A metric module of this package decorates its function with `@metric(...)`: name, direction, per image or
per set, the store's column, the report's header, the weights it loads. The runner (`bench.pipeline.evaluate`), the
store's columns (`bench.pipeline.store.UNIT_COLUMNS`), the report's tables (`bench.report.tables`) and `--metrics`
(`select`) all read these declarations, so a new metric is one new module here and nothing else.

The package is found and read without torch (the store and the report run on machines without PyTorch), so a
metric module imports torch inside its functions, never at its top. Name the module other than its
functions (`bench.metrics.psnr` is the function; its module is `bench.metrics.pixel`). Shared code that needs
torch lives in `bench.metrics.images`, which is not a metric module.

Per-image metrics take (B, C, H, W) tensors in [-1, 1] (C in {1, 3}), estimate first and reference second,
and return a (B,) tensor. Estimates are clamped to [-1, 1] before scoring, as an image saved to disk would be.
Per-set metrics compare two sets of images, each a (N, C, H, W) tensor in [-1, 1] or a folder of image files.
The pretrained networks (LPIPS trunks, the FID Inception) come from `bench.weights`, never from a model hub.

A metric declared with a `flag` (direction, threshold, reason) is a visual check (blockiness, colour loss,
clipping): the report shows it in its own table and flags the quality-table cells of a (method, task, σ) whose
mean lies beyond the threshold, with the reason in a footnote.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from bench.registry import Registry

__all__ = [
    "ALWAYS_METRICS",
    "DEFAULT_METRICS",
    "MetricError",
    "MetricSpec",
    "available",
    "metric",
    "names",
    "select",
    "spec",
    "specs",
    "weights_needed",
]


class MetricError(ValueError):
    """Bad input to a metric: the message names the problem and the fix."""


@dataclass(frozen=True)
class MetricSpec:
    """A registered metric. Per-image metrics are called as fn(x_hat, x) (or fn(op, x_hat, y) when
    `uses_measurement`) and return (B,); per-set ones compare two image sets. `weights` are the
    `bench.weights` names the metric loads: a run resolves them before its first unit."""

    name: str
    higher_is_better: bool
    scope: Literal["image", "set"]
    description: str
    function: str  # the name of the function that computes it, an attribute of this package
    module: str  # the module that defines the function
    label: str  # the report's column header
    decimals: int = 3  # shown in the report's tables
    default: bool = True  # scored when --metrics is not given (the report shows a non-default one where scored)
    in_quality_table: bool = True
    weights: tuple[str, ...] = ()
    min_size: int = 1  # smaller images get NaN: the metric is not defined there
    uses_measurement: bool = False
    reported_by: str = ""  # which papers report the metric this way
    # A visual check: (">" or "<", threshold, reason). The report flags a quality-table cell whose (method, task,
    # σ) mean lies beyond the threshold, with the reason (a format string of `value`) in a footnote.
    flag: tuple[str, float, str] | None = None

    def __post_init__(self) -> None:
        flag = self.flag
        if flag is not None and not (
            isinstance(flag, tuple)
            and len(flag) == 3
            and flag[0] in (">", "<")
            and isinstance(flag[1], int | float)
            and isinstance(flag[2], str)
        ):
            raise MetricError(
                f"metric {self.name!r}: flag must be ('>' or '<', threshold, 'reason with {{value}}'), got {flag!r}"
            )

    def flagged(self, value: float) -> str | None:
        """The flag's reason for a mean `value` beyond the threshold; None when within it, NaN or unflagged."""
        if self.flag is None:
            return None
        direction, threshold, reason = self.flag
        value = float(value)
        if (value > threshold) if direction == ">" else (value < threshold):  # NaN compares False either way
            return reason.format(value=value)
        return None

    @property
    def column(self) -> str:
        """The metric's column in the store's tables."""
        return self.name.replace("-", "_")

    @property
    def fn(self) -> Callable[..., Any]:
        """The function that computes it, looked up on this package (so a test may replace it there)."""
        return getattr(importlib.import_module(__name__), self.function)


# The metric modules, listed in this order (the report's column order); a new module follows by name.
_METRICS: Registry[MetricSpec] = Registry(
    "metric",
    package=__name__,
    first=("pixel", "structure", "perceptual", "measurement", "inception"),
    skip=("images",),
    error=MetricError,
)


def metric(
    name: str,
    *,
    higher_is_better: bool,
    scope: Literal["image", "set"],
    description: str,
    label: str,
    **options: Any,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: declare the function it decorates as metric `name` (the other fields: `MetricSpec`)."""

    def declare(function: Callable[..., Any]) -> Callable[..., Any]:
        declared = MetricSpec(
            name, higher_is_better, scope, description, function.__name__, function.__module__, label, **options
        )
        _METRICS.register(name, declared, summary=description, module=function.__module__)
        return function

    return declare


#: Scored in every run whatever --metrics says: they need no network, and the summary and report use them.
ALWAYS_METRICS = ("psnr", "consistency")


def __getattr__(attribute: str) -> Any:
    """`DEFAULT_METRICS` and each metric's function (bench.metrics.psnr), read from the declarations."""
    if attribute == "DEFAULT_METRICS":
        return tuple(m.name for m in specs() if m.default)
    if not attribute.startswith("_"):
        for declared in specs():
            if declared.function == attribute:
                return getattr(importlib.import_module(declared.module), attribute)
    raise AttributeError(f"module {__name__!r} has no attribute {attribute!r}")


def specs(scope: Literal["image", "set"] | None = None) -> list[MetricSpec]:
    """The registered metrics in order, optionally only the per-image or per-set ones."""
    return [m for m in (e.value for e in _METRICS.entries()) if scope is None or m.scope == scope]


def spec(name: str) -> MetricSpec:
    """The registered metric called `name`; an unknown name gets a suggestion."""
    return _METRICS.get(name)


def names(scope: Literal["image", "set"] | None = None) -> list[str]:
    """Registered metric names, optionally only the per-image or per-set ones."""
    return [m.name for m in specs(scope)]


def select(text: str | Sequence[str] | None) -> tuple[str, ...]:
    """The metric selection of a run, in registry order: the defaults, `+name` added to them, or a full list.

    text: None (the defaults), "lpips-vgg,ssim-skimage" (exactly these), "+lpips-vgg" (the defaults and
    these), or a sequence of such items. `ALWAYS_METRICS` are always included.
    """
    defaults = tuple(m.name for m in specs() if m.default)
    items = [part.strip() for part in (text.split(",") if isinstance(text, str) else (text or ())) if part.strip()]
    if items and all(item.startswith("+") for item in items):
        chosen = {*defaults, *(item[1:] for item in items)}
    elif any(item.startswith("+") for item in items):
        raise MetricError(
            "--metrics mixes '+name' (add to the defaults) with plain names (exactly these); use one form, "
            f"e.g. --metrics +lpips-vgg or --metrics {','.join(defaults)},lpips-vgg"
        )
    else:
        chosen = set(items or defaults)
    for name in chosen:
        spec(name)  # an unknown name is an error with a suggestion
    chosen |= set(ALWAYS_METRICS)
    return tuple(name for name in names() if name in chosen)


def weights_needed(selection: Sequence[str], image_size: int) -> dict[str, list[str]]:
    """weight name -> the selected metrics that load it, for images of `image_size` pixels a side."""
    needed: dict[str, list[str]] = {}
    for name in selection:
        declared = spec(name)
        if declared.scope == "image" and image_size < declared.min_size:
            continue
        for weight in declared.weights:
            needed.setdefault(weight, []).append(name)
    return needed


def available() -> list[tuple[str, str]]:
    """(name, one-line description with direction and scope) for each metric, for `bench list`."""
    return [
        (
            m.name,
            f"{'higher' if m.higher_is_better else 'lower'} is better, per {m.scope}"
            f"{', default' if m.default else ''}: {m.description}",
        )
        for m in specs()
    ]
