"""Clipping: the share of an estimate's values pinned at black or white beyond what the photo has.

A solver that overshoots writes pixels at ±1 (salt and pepper, or burnt-out patches), which costs less PSNR
than it costs the eye. Values within half an 8-bit level of ±1 count as clipped (they save as 0 or 255); the
reference's own share is subtracted, so the photo's saturated highlights do not count.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bench.metrics import metric

if TYPE_CHECKING:
    from torch import Tensor

#: Half of one 8-bit level on [-1, 1]: a value this close to ±1 saves as 0 or 255.
HALF_LEVEL = 1.0 / 255.0


@metric(
    "clipping", higher_is_better=False, scope="image",
    description="share of values at ±1 (0 or 255 when saved) beyond the reference's own share",
    label="clipped", decimals=3, in_quality_table=False,
    flag=(">", 0.05, "clipped: {value:.1%} of the values at ±1 beyond the photo's own"),
)  # fmt: skip
def clipping(x_hat: Tensor, x: Tensor) -> Tensor:
    """(B,) the share of x̂'s values (over pixels and channels) with |v| ≥ 1 − HALF_LEVEL, minus that share of
    x; negative where the photo clips more than the estimate. Values beyond ±1 count as clipped (they are
    clamped when saved); NaN values do not."""
    from bench.metrics.images import check_pair

    x_hat, x = check_pair(x_hat, x)

    def share(images: Tensor) -> Tensor:
        return (images.detach().abs() >= 1.0 - HALF_LEVEL).flatten(1).double().mean(1)

    return (share(x_hat) - share(x)).float()
