"""Perceptual distance: LPIPS v0.1 with the AlexNet trunk (the default) and with the VGG16 trunk."""

from __future__ import annotations

from typing import TYPE_CHECKING

from bench.metrics import MetricError, metric

if TYPE_CHECKING:
    import torch
    from torch import Tensor


def _lpips_network(net: str, device: torch.device) -> torch.nn.Module:
    from bench import weights
    from bench.metrics.images import cached

    return cached(f"lpips-{net}", device, lambda: weights.lpips_model(net).to(device))


# LPIPS' AlexNet trunk pools its input down five times: smaller images leave nothing to compare
@metric(
    "lpips", higher_is_better=False, scope="image", description="LPIPS v0.1, AlexNet", label="LPIPS",
    weights=("lpips-alex",), min_size=32, reported_by="DDC, RED-diff",
)  # fmt: skip
def lpips(x_hat: Tensor, x: Tensor, net: str = "alex") -> Tensor:
    """LPIPS v0.1 distance (Zhang et al. 2018), (B,); lower is more similar, 0 for equal images.

    net: "alex" (the usual choice in the literature and the lpips package's default) or "vgg".
    Grey images are repeated to three channels. Computed in float32 on the inputs' device, without gradients.
    """
    import torch

    from bench.metrics.images import check_pair, to_unit

    x_hat, x = check_pair(x_hat, x)
    if net not in ("alex", "vgg"):
        raise MetricError(f"unknown LPIPS network '{net}' (available: alex, vgg)")
    model = _lpips_network(net, x.device)
    # lpips expects [-1, 1], the project's own range; clamp the estimate like every other metric does
    a, b = (2.0 * to_unit(t).float() - 1.0 for t in (x_hat, x))
    if a.shape[1] == 1:
        a, b = a.expand(-1, 3, -1, -1), b.expand(-1, 3, -1, -1)
    with torch.no_grad():
        return model(a, b).reshape(-1)


@metric(
    "lpips-vgg", higher_is_better=False, scope="image", description="LPIPS v0.1, VGG16", label="LPIPS-VGG",
    default=False, weights=("lpips-vgg",), min_size=16, reported_by="DPS, DAPS, InverseBench (piq's VGG)",
)  # fmt: skip
def lpips_vgg(x_hat: Tensor, x: Tensor) -> Tensor:
    """LPIPS v0.1 with the VGG16 trunk (DPS's evaluation), (B,)."""
    return lpips(x_hat, x, net="vgg")
