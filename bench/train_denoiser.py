"""`python -m bench train-denoiser`: a DnCNN Gaussian denoiser for PnP-ADMM.

DnCNN (Zhang et al. 2017, "Beyond a Gaussian Denoiser"): 17 layers of 3×3 convolutions with 64 channels,
batch normalisation in the middle 15, and residual learning: the network predicts the noise, and the
denoised image is the input minus that prediction. It is blind: one network covers a range of noise
levels, drawn per image uniformly from [0, sigma_max] (σ on the [0, 1] pixel scale, as everywhere in this
project; the noise std on [-1, 1] images is 2σ). DnCNN-B used σ up to 55/255.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from bench.training import TrainConfig, Trainer, atomic_write_text, crop_batches, data_record

SIGMA_MAX = 55 / 255  # DnCNN-B's blind range


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


def denoising_loss(sigma_max: float):
    """MSE between predicted and true noise, with σ ~ U[0, sigma_max] per image (DnCNN's residual loss)."""

    def loss(network: nn.Module, clean: Tensor, generator: torch.Generator) -> Tensor:
        b = clean.shape[0]
        sigma = torch.rand(b, 1, 1, 1, generator=generator, device=generator.device) * sigma_max
        noise = 2 * sigma * torch.randn(clean.shape, generator=generator, device=generator.device)
        noise = noise.to(clean.device, clean.dtype)
        return torch.nn.functional.mse_loss(network.residual(clean + noise), noise)

    return loss


def save_denoiser(network: DnCNN, out_dir: Path, provenance: dict[str, Any]) -> None:
    from safetensors.torch import save_file

    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / "model.safetensors.tmp"
    save_file({k: v.detach().cpu().contiguous() for k, v in network.state_dict().items()}, tmp)
    tmp.replace(out_dir / "model.safetensors")
    atomic_write_text(out_dir / "config.json", json.dumps({"architecture": "dncnn", **network.config}, indent=2))
    atomic_write_text(out_dir / "provenance.json", json.dumps(provenance, indent=2) + "\n")


def load_denoiser(folder: str | Path, device: str | torch.device = "cpu") -> DnCNN:
    """Load a saved DnCNN strictly: a missing or unexpected key is an error naming it."""
    from safetensors.torch import load_file

    folder = Path(folder)
    config_path, weights_path = folder / "config.json", folder / "model.safetensors"
    for path in (config_path, weights_path):
        if not path.is_file():
            raise FileNotFoundError(f"denoiser file {path} is missing; train one with `python -m bench train-denoiser`")
    config = json.loads(config_path.read_text())
    if config.pop("architecture", None) != "dncnn":
        raise ValueError(f"{config_path} does not describe a DnCNN")
    network = DnCNN(**config)
    state = load_file(weights_path)
    expected = network.state_dict()
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ValueError(f"{weights_path}: missing keys {missing[:5]}, unexpected keys {unexpected[:5]}")
    network.load_state_dict(state, strict=True)
    return network.to(device).eval()


def train_denoiser(
    data: str | Path,
    out: str | Path,
    *,
    size: int = 40,
    channels: int = 3,
    config: TrainConfig,
    resume: bool = False,
    sigma_max: float = SIGMA_MAX,
    workers: int = 0,
    progress: bool = True,
) -> Path:

    out = Path(out)
    if not resume and (out / "train" / "checkpoint.pt").exists():
        raise FileExistsError(
            f"{out} already holds a training run; pass --resume to continue it or choose another --out"
        )
    torch.manual_seed(config.seed)
    network = DnCNN(channels)
    next_batch, generator = crop_batches(data, size, channels, config.seed, workers)
    trainer = Trainer(
        network,
        denoising_loss(sigma_max),
        next_batch,
        generator,
        config,
        out / "train",
        description={"kind": "DnCNN denoiser", "sigma_max": sigma_max, "noise": "std 2*sigma on [-1, 1]"},
    )
    if resume:
        trainer.load_checkpoint()
    return trainer.run_and_save(save_denoiser, out, data_record(data, size), progress=progress)
