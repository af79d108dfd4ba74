"""Colour loss: whether an estimate kept the photo's colours (its chroma) and its channel means.

A reconstruction can score well in PSNR while it turns a red cup grey: the error is spread thin over many
pixels. Chroma is a pixel's spread across its three channels (their standard deviation on [-1, 1]), averaged
over the image; the chroma ratio compares the estimate's to the reference's. The colour shift is the largest
error of a channel's mean over the image, on [-1, 1]: a colour cast, or a wash towards grey.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bench.metrics import metric

if TYPE_CHECKING:
    from torch import Tensor

#: A reference whose mean chroma is below one 8-bit level on [-1, 1] is grey: its chroma ratio is NaN.
GREY = 2.0 / 255.0


def _chroma(images: Tensor) -> Tensor:
    """(B,) the mean over pixels of the standard deviation across the channels."""
    return images.std(dim=1, unbiased=False).flatten(1).mean(1)


@metric(
    "chroma-ratio", higher_is_better=True, scope="image",
    description="the estimate's mean chroma (per-pixel std across RGB) over the reference's; 1 keeps the colours",
    label="chroma ratio", decimals=2, in_quality_table=False,
    flag=("<", 0.5, "colours lost: {value:.0%} of the photos' chroma left"),
)  # fmt: skip
def chroma_ratio(x_hat: Tensor, x: Tensor) -> Tensor:
    """(B,) mean chroma of x̂ over that of x: 0 for a grey estimate, 1 for the photo's colours, above 1 for
    colours stronger than the photo's. NaN for 1-channel images and for a reference with less chroma than
    one 8-bit level (`GREY`). x̂ is clamped to [-1, 1], as saved."""
    import torch

    from bench.metrics.images import check_pair

    x_hat, x = check_pair(x_hat, x)
    if x.shape[1] != 3:
        return torch.full((x.shape[0],), float("nan"), dtype=torch.float32, device=x.device)
    estimate, reference = _chroma(x_hat.detach().double().clamp(-1, 1)), _chroma(x.detach().double())
    ratio = estimate / reference
    return torch.where(reference >= GREY, ratio, torch.full_like(ratio, float("nan"))).float()


@metric(
    "colour-shift", higher_is_better=False, scope="image",
    description="the largest error of a channel's mean, on [-1, 1] (a colour cast or a wash towards grey)",
    label="colour shift", decimals=3, in_quality_table=False,
    flag=(">", 0.15, "a colour cast: a channel's mean off by {value:.2f} on [-1, 1]"),
)  # fmt: skip
def colour_shift(x_hat: Tensor, x: Tensor) -> Tensor:
    """(B,) the largest |mean(x̂_c) − mean(x_c)| over the channels c, on [-1, 1]; for 1-channel images the
    brightness shift. x̂ is clamped to [-1, 1], as saved."""
    from bench.metrics.images import check_pair

    x_hat, x = check_pair(x_hat, x)
    means = (x_hat.detach().double().clamp(-1, 1) - x.detach().double()).flatten(2).mean(2)
    return means.abs().amax(1).float()
