"""`python -m bench train-prior`: train a small diffusion prior on a folder of photos.

A diffusers `UNet2DModel` predicts the noise ε (DDPM, Ho et al. 2020, Eq. 14 "simple" loss) under the linear
β schedule of DDPM/ADM (β from 1e-4 to 0.02 over 1000 steps). Training images are random crops at random
scales with horizontal flips (`bench.data.RandomCrops`), so a 64×64 crop shows fine texture as often as
whole objects. The result is a diffusers folder (`unet/`, `scheduler/`) plus `provenance.json`, which
`--prior diffusers:<dir>` loads, and which ships as the embedded `natural64` prior.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from bench.files import atomic_write_text, replace_folder
from bench.training import TrainConfig, Trainer, crop_batches, data_record

SCHEDULE = {"beta_schedule": "linear", "beta_start": 1e-4, "beta_end": 0.02, "num_train_timesteps": 1000}


def unet_config(size: int = 64, channels: int = 3) -> dict[str, Any]:
    """The embedded prior's network: ~4.5M parameters, attention at 16x16 and 8x8 (for size 64).

    Sized for a 2-core CPU: one batch of 16 at 64x64 takes a fraction of a second forward.
    """
    return {
        "sample_size": size,
        "in_channels": channels,
        "out_channels": channels,
        "layers_per_block": 1,
        "block_out_channels": [32, 64, 128, 128],
        "down_block_types": ["DownBlock2D", "DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"],
        "up_block_types": ["AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D"],
        "attention_head_dim": 32,
        "norm_num_groups": 32,
        "dropout": 0.0,
    }


def build_unet(config: dict[str, Any]) -> nn.Module:
    from diffusers import UNet2DModel

    return UNet2DModel(**config)


def linear_alphas_cumprod(device: torch.device | str = "cpu") -> Tensor:
    betas = torch.linspace(SCHEDULE["beta_start"], SCHEDULE["beta_end"], SCHEDULE["num_train_timesteps"])
    return torch.cumprod(1.0 - betas.double(), 0).float().to(device)


def diffusion_loss(alphas_cumprod: Tensor) -> Any:
    """MSE between the true and predicted noise at a uniformly drawn timestep (DDPM's L_simple)."""

    def loss(network: nn.Module, x0: Tensor, generator: torch.Generator) -> Tensor:
        b = x0.shape[0]
        t = torch.randint(0, alphas_cumprod.numel(), (b,), generator=generator, device=generator.device)
        noise = torch.randn(x0.shape, generator=generator, device=generator.device, dtype=x0.dtype)
        t, noise = t.to(x0.device), noise.to(x0.device)
        a = alphas_cumprod.to(x0.device)[t].view(b, 1, 1, 1)
        x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
        predicted = network(x_t, t).sample
        return torch.nn.functional.mse_loss(predicted.float(), noise.float())

    return loss


def save_diffusers_prior(network: nn.Module, out_dir: Path, provenance: dict[str, Any]) -> None:
    """Write unet/ (config.json + safetensors), scheduler/ and provenance.json, renamed into place when complete."""
    from diffusers import DDPMScheduler

    def write(folder: Path) -> None:
        network.save_pretrained(folder / "unet", safe_serialization=True)
        DDPMScheduler(**SCHEDULE, prediction_type="epsilon", clip_sample=False).save_pretrained(folder / "scheduler")
        atomic_write_text(folder / "provenance.json", json.dumps(provenance, indent=2) + "\n")

    replace_folder(out_dir, write)


def train_prior(
    data: str | Path,
    out: str | Path,
    *,
    size: int = 64,
    channels: int = 3,
    config: TrainConfig,
    resume: bool = False,
    workers: int = 0,
    progress: bool = True,
    data_note: dict[str, Any] | None = None,
) -> Path:
    out = Path(out)
    if not resume and (out / "train" / "checkpoint.pt").exists():
        raise FileExistsError(
            f"{out} already holds a training run; pass --resume to continue it or choose another --out"
        )
    torch.manual_seed(config.seed)
    unet_cfg = unet_config(size, channels)
    network = build_unet(unet_cfg)
    next_batch, generator = crop_batches(data, size, channels, config.seed, workers)
    trainer = Trainer(
        network,
        diffusion_loss(linear_alphas_cumprod(config.device)),
        next_batch,
        generator,
        config,
        out / "train",
        description={"kind": "diffusion prior", "objective": "epsilon MSE (DDPM L_simple)", "schedule": SCHEDULE},
    )
    if resume:
        trainer.load_checkpoint()

    return trainer.run_and_save(save_diffusers_prior, out, data_record(data, size, data_note), progress=progress)
