"""The metrics, declared once: name, direction, scope, the store's column, the report's header, the weights.

The runner (`bench.evaluate`), the store's columns (`bench.store.UNIT_COLUMNS`), the report's tables
(`bench.report.tables.METRICS`) and `--metrics` (`select`) all read these declarations, so a metric added here
(with its function in `bench.metrics`) is scored, stored and shown without another edit. This module imports
neither torch nor the metric code: the store and the report read it on machines without PyTorch.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from bench.registry import unknown_name

__all__ = [
    "ALWAYS_METRICS",
    "DEFAULT_METRICS",
    "MetricError",
    "MetricSpec",
    "available",
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
    function: str  # the attribute of bench.metrics that computes it
    label: str  # the report's column header
    decimals: int = 3  # shown in the report's tables
    default: bool = True  # scored when --metrics is not given (the report shows a non-default one where scored)
    in_quality_table: bool = True
    weights: tuple[str, ...] = ()
    min_size: int = 1  # smaller images get NaN: the metric is not defined there
    uses_measurement: bool = False
    reported_by: str = ""  # which papers report the metric this way

    @property
    def column(self) -> str:
        """The metric's column in the store's tables."""
        return self.name.replace("-", "_")

    @property
    def fn(self) -> Callable[..., Any]:
        """The function that computes it (imports bench.metrics, hence torch, on first use)."""
        return getattr(importlib.import_module("bench.metrics"), self.function)


_SPECS: tuple[MetricSpec, ...] = (
    MetricSpec("psnr", True, "image", "PSNR in dB on [0, 1]", "psnr", "PSNR", decimals=2, reported_by="every paper"),
    MetricSpec(
        "ssim", True, "image", "SSIM, 11x11 Gaussian window (std 1.5), data range 1", "ssim", "SSIM", min_size=11,
        reported_by="torchmetrics' default (RED-diff)",
    ),
    MetricSpec(
        "ssim-skimage", True, "image",
        "SSIM as skimage computes it in DDC's and DPS's code: 7x7 uniform window, sample covariance, data range 2",
        "ssim_skimage", "SSIM (skimage)", default=False, min_size=7, reported_by="DDC, DPS",
    ),
    # LPIPS' AlexNet trunk pools its input down five times: smaller images leave nothing to compare
    MetricSpec(
        "lpips", False, "image", "LPIPS v0.1, AlexNet", "lpips", "LPIPS", weights=("lpips-alex",), min_size=32,
        reported_by="DDC, RED-diff",
    ),
    MetricSpec(
        "lpips-vgg", False, "image", "LPIPS v0.1, VGG16", "lpips_vgg", "LPIPS-VGG", default=False,
        weights=("lpips-vgg",), min_size=16, reported_by="DPS, DAPS, InverseBench (piq's VGG)",
    ),
    MetricSpec(
        "consistency", False, "image", "RMS of A(x_hat) - y on the measurement's scale", "consistency",
        "consistency", in_quality_table=False, uses_measurement=True,
    ),
    MetricSpec(
        "fid", False, "set", "Frechet Inception distance (clean-fid; biased below ~2k images)", "fid", "FID",
        decimals=1, weights=("inception-fid",), reported_by="RED-diff (clean-fid)",
    ),
    MetricSpec(
        "kid", False, "set", "kernel Inception distance, mean and std over subsets (clean-fid)", "kid", "KID",
        weights=("inception-fid",),
    ),
)  # fmt: skip
_BY_NAME = {metric.name: metric for metric in _SPECS}

#: What `bench run` scores when --metrics is not given.
DEFAULT_METRICS = tuple(metric.name for metric in _SPECS if metric.default)
#: Scored in every run whatever --metrics says: they need no network, and the summary and report use them.
ALWAYS_METRICS = ("psnr", "consistency")


def specs(scope: Literal["image", "set"] | None = None) -> list[MetricSpec]:
    """The registered metrics in order, optionally only the per-image or per-set ones."""
    return [m for m in _SPECS if scope is None or m.scope == scope]


def spec(name: str) -> MetricSpec:
    """The registered metric called `name`; an unknown name gets a suggestion."""
    if name not in _BY_NAME:
        raise MetricError(unknown_name("metric", name, list(_BY_NAME)))
    return _BY_NAME[name]


def names(scope: Literal["image", "set"] | None = None) -> list[str]:
    """Registered metric names, optionally only the per-image or per-set ones."""
    return [m.name for m in specs(scope)]


def select(text: str | Sequence[str] | None) -> tuple[str, ...]:
    """The metric selection of a run, in registry order: the defaults, `+name` added to them, or a full list.

    text: None (the defaults), "lpips-vgg,ssim-skimage" (exactly these), "+lpips-vgg" (the defaults and
    these), or a sequence of such items. `ALWAYS_METRICS` are always included.
    """
    items = [part.strip() for part in (text.split(",") if isinstance(text, str) else (text or ())) if part.strip()]
    if items and all(item.startswith("+") for item in items):
        chosen = {*DEFAULT_METRICS, *(item[1:] for item in items)}
    elif any(item.startswith("+") for item in items):
        raise MetricError(
            "--metrics mixes '+name' (add to the defaults) with plain names (exactly these); use one form, "
            f"e.g. --metrics +lpips-vgg or --metrics {','.join(DEFAULT_METRICS)},lpips-vgg"
        )
    else:
        chosen = set(items or DEFAULT_METRICS)
    for name in chosen:
        spec(name)  # an unknown name is an error with a suggestion
    chosen |= set(ALWAYS_METRICS)
    return tuple(name for name in _BY_NAME if name in chosen)


def weights_needed(selection: Sequence[str], image_size: int) -> dict[str, list[str]]:
    """weight name -> the selected metrics that load it, for images of `image_size` pixels a side."""
    needed: dict[str, list[str]] = {}
    for name in selection:
        metric = spec(name)
        if metric.scope == "image" and image_size < metric.min_size:
            continue
        for weight in metric.weights:
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
        for m in _SPECS
    ]
