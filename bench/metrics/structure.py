"""Structural similarity: SSIM as torchmetrics computes it, and as skimage computes it in DDC's and DPS's code."""

from __future__ import annotations

from typing import TYPE_CHECKING

from bench.metrics import MetricError, metric

if TYPE_CHECKING:
    from torch import Tensor


@metric(
    "ssim", higher_is_better=True, scope="image", description="SSIM, 11x11 Gaussian window (std 1.5), data range 1",
    label="SSIM", min_size=11, reported_by="torchmetrics' default (RED-diff)",
)  # fmt: skip
def ssim(x_hat: Tensor, x: Tensor) -> Tensor:
    """Structural similarity on [0, 1] (data_range=1), (B,).

    torchmetrics' defaults follow Wang et al. 2004: 11x11 Gaussian window with std 1.5, K1=0.01, K2=0.03,
    averaged over channels and the valid (unpadded) region. Images need H, W >= 11.
    """
    from torchmetrics.functional.image import structural_similarity_index_measure

    from bench.metrics.images import check_pair, to_unit

    x_hat, x = check_pair(x_hat, x)
    if min(x.shape[-2:]) < 11:
        raise MetricError(f"SSIM's 11x11 window needs images of at least 11x11 pixels, got {tuple(x.shape[-2:])}")
    return structural_similarity_index_measure(to_unit(x_hat), to_unit(x), data_range=1.0, reduction="none")


# The SSIM of the DDC and DPS evaluation code: skimage's `structural_similarity` on float images in [0, 1]
# with the library's defaults of the versions they pin: a 7x7 uniform window, the sample covariance
# (N / (N - 1)), K1 = 0.01, K2 = 0.03, and for float input a data range of 2 (dtype_range of floats is
# [-1, 1] there; skimage >= 0.20 makes the caller pass it). Colour images: the mean over channels.
SKIMAGE_SSIM_WINDOW = 7
SKIMAGE_SSIM_DATA_RANGE = 2.0


@metric(
    "ssim-skimage", higher_is_better=True, scope="image",
    description="SSIM as skimage computes it in DDC's and DPS's code: 7x7 uniform window, sample covariance, data range 2",
    label="SSIM (skimage)", default=False, min_size=7, reported_by="DDC, DPS",
)  # fmt: skip
def ssim_skimage(x_hat: Tensor, x: Tensor) -> Tensor:
    """SSIM as the DDC/DPS papers computed it (skimage conventions, see above), (B,).

    Written in torch so it runs on the images' device in a batch; `tests/test_metrics.py` checks it against
    `skimage.metrics.structural_similarity(..., data_range=2, channel_axis=...)` on real photos. skimage
    filters the whole image and then averages only pixels at least 3 from the border, where the 7x7 window
    lies inside the image: that is the valid region of an unpadded 7x7 average, which is computed here.
    Images need H, W >= 7. Computed in float64 where the device has it (CPU, CUDA), as skimage does.
    """
    import torch
    import torch.nn.functional as F

    from bench.metrics.images import check_pair, to_unit

    x_hat, x = check_pair(x_hat, x)
    size = SKIMAGE_SSIM_WINDOW
    if min(x.shape[-2:]) < size:
        raise MetricError(f"skimage SSIM's {size}x{size} window needs images of at least {size}x{size} pixels")
    dtype = torch.float64 if x.device.type in ("cpu", "cuda") else torch.float32
    a, b = to_unit(x_hat).to(dtype), to_unit(x).to(dtype)

    def mean(t: Tensor) -> Tensor:
        return F.avg_pool2d(t, size, stride=1)

    n = size * size
    cov_norm = n / (n - 1)  # skimage's use_sample_covariance=True
    mu_a, mu_b = mean(a), mean(b)
    var_a = cov_norm * (mean(a * a) - mu_a * mu_a)
    var_b = cov_norm * (mean(b * b) - mu_b * mu_b)
    cov = cov_norm * (mean(a * b) - mu_a * mu_b)
    c1, c2 = (0.01 * SKIMAGE_SSIM_DATA_RANGE) ** 2, (0.03 * SKIMAGE_SSIM_DATA_RANGE) ** 2
    index = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return index.mean(dim=(1, 2, 3)).float()  # channel mean of each channel's spatial mean (equal sizes)
