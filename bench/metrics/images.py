"""What the metric functions share: input checks, the one range conversion, loaded networks, and scoring a batch
with the selected metrics. Imports torch, so it is not a metric module (the package skips it when it looks
for declarations)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from bench.metrics import MetricError, spec

if TYPE_CHECKING:
    from operators import Operator


def check_images(x: Any, what: str) -> Tensor:
    if not isinstance(x, Tensor):
        raise MetricError(f"{what} must be a torch.Tensor (B, C, H, W) in [-1, 1], got {type(x).__name__}")
    if x.dim() != 4 or x.shape[1] not in (1, 3):
        raise MetricError(f"{what} must have shape (B, C, H, W) with C in {{1, 3}}, got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise MetricError(f"{what} must be a floating-point tensor in [-1, 1], got {x.dtype}")
    return x


def check_pair(x_hat: Any, x: Any) -> tuple[Tensor, Tensor]:
    x_hat, x = check_images(x_hat, "estimate"), check_images(x, "reference")
    if x_hat.shape != x.shape:
        raise MetricError(
            f"estimate and reference must have the same shape, got {tuple(x_hat.shape)} and {tuple(x.shape)}"
        )
    return x_hat, x


def to_unit(x: Tensor) -> Tensor:
    """[-1, 1] -> [0, 1], clamped: the one place metrics change range."""
    return ((x + 1.0) / 2.0).clamp(0.0, 1.0)


def to_uint8(x: Tensor) -> Tensor:
    """[-1, 1] (N, C, H, W) -> uint8 (N, 3, H, W), rounded as when the images are saved as 8-bit PNGs."""
    pixels = (to_unit(x) * 255.0).round().to(torch.uint8)
    return pixels.expand(-1, 3, -1, -1) if pixels.shape[1] == 1 else pixels


# Loaded networks, keyed by (what, device); each loads once per process.
_MODELS: dict[tuple[str, str], Any] = {}


def cached(key: str, device: torch.device, build: Callable[[], Any]) -> Any:
    slot = (key, str(device))
    if slot not in _MODELS:
        _MODELS[slot] = build()
    return _MODELS[slot]


def score_images(
    selection: Sequence[str], x_hat: Tensor, x: Tensor, *, op: Operator, y: Tensor
) -> tuple[dict[str, Tensor], dict[str, str]]:
    """The selected per-image metrics of a batch: ({column: (B,) scores}, {metric: why it is missing}).

    A metric whose weights cannot be found is reported missing (its images stay scorable later with
    `bench score`); any other error propagates. Images smaller than a metric's `min_size` get no score.
    """
    from bench.weights import WeightsError

    scores: dict[str, Tensor] = {}
    missing: dict[str, str] = {}
    for name in selection:
        metric = spec(name)
        if metric.scope != "image" or min(x.shape[-2:]) < metric.min_size:
            continue
        try:
            scores[metric.column] = metric.fn(op, x_hat, y) if metric.uses_measurement else metric.fn(x_hat, x)
        except WeightsError as error:
            missing[name] = str(error).splitlines()[0]
    return scores, missing
