"""Measurement consistency: how far A(x̂) lies from y, on the measurement's scale."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from bench.metrics import MetricError, metric

if TYPE_CHECKING:
    from torch import Tensor

    from operators import Operator


@metric(
    "consistency", higher_is_better=False, scope="image",
    description="RMS of A(x_hat) - y on the measurement's scale", label="consistency", in_quality_table=False,
    uses_measurement=True,
)  # fmt: skip
def consistency(op: Operator, x_hat: Tensor, y: Tensor) -> Tensor:
    """||A(x_hat) - y|| / sqrt(m) per image, (B,): the RMS measurement residual on y's scale.

    op: the operator that produced y (bound to these images); m = number of entries of one measurement.
    With y = A(x) + n, n ~ N(0, (2 sigma)^2 I) (see operators.add_noise), the true image scores about
    2 sigma; a much lower value means the estimate fits the noise. x_hat is not clamped: A sees it as given.
    """
    import torch
    from torch import Tensor

    from bench.metrics.images import check_images

    x_hat = check_images(x_hat, "estimate")
    if not isinstance(y, Tensor):
        raise MetricError(f"measurement y must be a torch.Tensor, got {type(y).__name__}")
    expected = (x_hat.shape[0], *op.measurement_shape)
    if tuple(y.shape) != expected:
        raise MetricError(f"measurement y must have shape {expected} for {op!r}, got {tuple(y.shape)}")
    with torch.no_grad():
        residual = (op(x_hat) - y).reshape(y.shape[0], -1)
    return residual.norm(dim=1) / math.sqrt(residual.shape[1])
