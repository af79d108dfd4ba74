"""High dynamic range reconstruction: the image scaled up and clipped (DAPS's `high_dynamic_range`).

DAPS (`forward_operator/__init__.py`, configs/task/hdr.yaml with scale 2): y = clip(α·x, −1, 1) with α = 2, on
the [-1, 1] image. Pixels with |x| > 1/α saturate and carry no information beyond their sign.

Nonlinear. Differentiable where defined: the derivative is α where |α·x| < 1 and 0 where the image saturates
(torch's clamp gradient, undefined only on the measure-zero set |α·x| = 1).

Pseudo-inverse: A⁺y = clip(y, −1, 1)/α, the minimum-norm least-squares solution of clip(α·x) = y. For each pixel
the closest attainable value to y is clip(y), reached by every x with clip(α·x) = clip(y); the one of least
magnitude is clip(y)/α. Hence A(A⁺(A x)) = A x and A⁺(A(A⁺ y)) = A⁺ y exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor

from operators import register

from .base import Cap, Operator, OperatorError

DAPS_SCALE = 2.0  # DAPS configs/task/hdr.yaml: scale 2


class HighDynamicRange(Operator):
    """y = clip(α·x, −1, 1), α = 2 (DAPS): x (B, C, H, W) in [-1, 1] -> y (B, C, H, W)."""

    task = "hdr"
    capabilities = frozenset({Cap.FORWARD, Cap.PINV, Cap.DIFFERENTIABLE})
    linear = False

    def __init__(self, shape: Sequence[int], scale: float = DAPS_SCALE):
        super().__init__(shape)
        scale = float(scale)
        if not scale > 0.0:
            raise OperatorError(f"HDR scale α must be > 0 (DAPS: 2), got {scale}")
        self.scale = scale

    @property
    def measurement_shape(self) -> tuple[int, int, int]:
        return self.input_shape

    def params(self) -> dict[str, Any]:
        return {"scale": self.scale, "clip": [-1.0, 1.0]}

    def _forward(self, x: Tensor) -> Tensor:
        return (self.scale * x).clamp(-1.0, 1.0)

    def _pinv(self, y: Tensor) -> Tensor:
        return y.clamp(-1.0, 1.0) / self.scale


register("hdr", HighDynamicRange, "high dynamic range: clip(2x, -1, 1) (DAPS)")
