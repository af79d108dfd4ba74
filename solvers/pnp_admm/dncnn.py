"""DnCNN (Zhang et al. 2017, "Beyond a Gaussian Denoiser"), the Gaussian denoiser PnP-ADMM plugs in, and the
loader of a saved one (solvers.pnp_admm.train writes it: config.json and model.safetensors).

17 layers of 3×3 convolutions with 64 channels, batch normalisation in the middle 15, and residual learning: the
network predicts the noise, and the denoised image is the input minus that prediction.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import Tensor, nn


class DnCNN(nn.Module):
    """x_noisy (B, C, H, W) in [-1, 1] -> denoised image; `residual(x)` is the predicted noise."""

    def __init__(self, channels: int = 3, depth: int = 17, features: int = 64):
        super().__init__()
        self.config = {"channels": channels, "depth": depth, "features": features}
        layers: list[nn.Module] = [nn.Conv2d(channels, features, 3, padding=1), nn.ReLU(inplace=True)]
        for _ in range(depth - 2):
            layers += [nn.Conv2d(features, features, 3, padding=1, bias=False), nn.BatchNorm2d(features)]
            layers.append(nn.ReLU(inplace=True))
        layers.append(nn.Conv2d(features, channels, 3, padding=1))
        self.body = nn.Sequential(*layers)

    def residual(self, x: Tensor) -> Tensor:
        return self.body(x)

    def forward(self, x: Tensor) -> Tensor:
        return x - self.body(x)


def load_denoiser(folder: str | Path, device: str | torch.device = "cpu") -> DnCNN:
    """A DnCNN saved by `solvers.pnp_admm.train.save_denoiser`, in eval mode on `device`.

    The weights load strictly (`bench.weights.load_exact`): a missing or unexpected key is a ValueError naming
    the file and the keys."""
    from safetensors.torch import load_file

    from bench.weights import WeightsError, load_exact

    folder = Path(folder)
    config_path, weights_path = folder / "config.json", folder / "model.safetensors"
    for path in (config_path, weights_path):
        if not path.is_file():
            raise FileNotFoundError(f"denoiser file {path} is missing; train one with `python -m bench train-denoiser`")
    config = json.loads(config_path.read_text())
    if config.pop("architecture", None) != "dncnn":
        raise ValueError(f"{config_path} does not describe a DnCNN")
    network = DnCNN(**config)
    try:
        load_exact(network, load_file(weights_path))
    except WeightsError as error:
        raise ValueError(f"{weights_path}: {error}") from None
    return network.to(device).eval()
