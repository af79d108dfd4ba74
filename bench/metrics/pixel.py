"""Pixel fidelity: PSNR."""

from __future__ import annotations

from typing import TYPE_CHECKING

from bench.metrics import metric

if TYPE_CHECKING:
    from torch import Tensor


@metric(
    "psnr", higher_is_better=True, scope="image", description="PSNR in dB on [0, 1]", label="PSNR", decimals=2,
    reported_by="every paper",
)  # fmt: skip
def psnr(x_hat: Tensor, x: Tensor) -> Tensor:
    """Peak signal-to-noise ratio in dB on [0, 1] (data_range=1), (B,); +inf where the images are equal."""
    from torchmetrics.functional.image import peak_signal_noise_ratio

    from bench.metrics.images import check_pair, to_unit

    x_hat, x = check_pair(x_hat, x)
    return peak_signal_noise_ratio(to_unit(x_hat), to_unit(x), data_range=1.0, reduction="none", dim=(1, 2, 3))
