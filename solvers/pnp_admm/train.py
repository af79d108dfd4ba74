"""`python -m bench train-denoiser`: a DnCNN Gaussian denoiser for PnP-ADMM (the network and its loader sit
beside the solver, in solvers/pnp_admm/dncnn.py; the solver never imports this trainer).

DnCNN (Zhang et al. 2017, "Beyond a Gaussian Denoiser"): 17 layers of 3×3 convolutions with 64 channels,
batch normalisation in the middle 15, and residual learning: the network predicts the noise, and the
denoised image is the input minus that prediction. It is blind: one network covers a range of noise
levels, drawn per image uniformly from [0, sigma_max] (σ on the [0, 1] pixel scale, as everywhere in this
project; the noise std on [-1, 1] images is 2σ). DnCNN-B used σ up to 55/255.

The saved network is the EMA of the weights with its batch-norm statistics recomputed for those weights
(`BN_RECALIBRATION_BATCHES` training batches, noise included; see `bench.training`). The first shipped DnCNN
was saved without that step: the EMA's weights carried the raw network's running statistics, and it removed
only about a third of the noise (23.3 dB at σ = 25/255 on the 64 held-out Kodak crops of `heldout_crops`);
the same weights with recomputed statistics reach 30.3 dB.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from bench.files import atomic_write_bytes, atomic_write_text
from bench.training import TrainConfig, Trainer, crop_batches, data_record
from operators.base import noise_std

from .dncnn import DnCNN, load_denoiser

SIGMA_MAX = 55 / 255  # DnCNN-B's blind range
BN_RECALIBRATION_BATCHES = 32  # batches of training crops over which the saved network's BN statistics are computed


def denoising_loss(sigma_max: float):
    """MSE between predicted and true noise, with σ ~ U[0, sigma_max] per image (DnCNN's residual loss)."""

    def loss(network: nn.Module, clean: Tensor, generator: torch.Generator) -> Tensor:
        b = clean.shape[0]
        sigma = torch.rand(b, 1, 1, 1, generator=generator, device=generator.device) * sigma_max
        noise = noise_std(sigma) * torch.randn(clean.shape, generator=generator, device=generator.device)
        noise = noise.to(clean.device, clean.dtype)
        return torch.nn.functional.mse_loss(network.residual(clean + noise), noise)

    return loss


def save_denoiser(network: DnCNN, out_dir: Path, provenance: dict[str, Any]) -> None:
    from safetensors.torch import save

    state = {k: v.detach().cpu().contiguous() for k, v in network.state_dict().items()}
    atomic_write_bytes(out_dir / "model.safetensors", save(state))
    atomic_write_text(out_dir / "config.json", json.dumps({"architecture": "dncnn", **network.config}, indent=2))
    atomic_write_text(out_dir / "provenance.json", json.dumps(provenance, indent=2) + "\n")


def _initial_denoiser(folder: str | Path, channels: int) -> tuple[DnCNN, dict[str, Any]]:
    """A trainable copy of the DnCNN saved in `folder` (strictly loaded) and the record of where it came from."""
    import hashlib

    folder = Path(folder)
    network = load_denoiser(folder)
    if network.config["channels"] != channels:
        raise ValueError(f"--init {folder}: that DnCNN has {network.config['channels']} channels, not {channels}")
    provenance_path = folder / "provenance.json"
    provenance = json.loads(provenance_path.read_text()) if provenance_path.is_file() else {}
    record = {
        "folder": str(folder),
        "weights_sha256": hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest(),
        "steps": provenance.get("steps"),
        "images_seen": provenance.get("images_seen"),
        "command": provenance.get("command"),
    }
    return network.train().requires_grad_(True), record


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
    init: str | Path | None = None,
    bn_batches: int = BN_RECALIBRATION_BATCHES,
) -> Path:
    """Train a DnCNN on random crops of the photos in `data`; returns out/final (the EMA weights with their
    own batch-norm statistics, recomputed over `bn_batches` training batches). `init` starts from the weights
    of a saved DnCNN folder (e.g. bench/assets/dncnn), recorded in the provenance; its architecture is kept."""
    out = Path(out)
    if not resume and (out / "train" / "checkpoint.pt").exists():
        raise FileExistsError(
            f"{out} already holds a training run; pass --resume to continue it or choose another --out"
        )
    if bn_batches < 1:
        raise ValueError(f"bn_batches must be at least 1 (the saved EMA needs its own BN statistics), got {bn_batches}")
    torch.manual_seed(config.seed)
    init_record = None
    if init is not None:
        network, init_record = _initial_denoiser(init, channels)
    else:
        network = DnCNN(channels)
    next_batch, generator = crop_batches(data, size, channels, config.seed, workers)
    trainer = Trainer(
        network,
        denoising_loss(sigma_max),
        next_batch,
        generator,
        config,
        out / "train",
        description={
            "kind": "DnCNN denoiser",
            "sigma_max": sigma_max,
            "noise": "std 2*sigma on [-1, 1]",
            "bn_statistics": f"recomputed for the EMA weights over {bn_batches} training batches",
            "init": init_record,
        },
        bn_recalibration_batches=bn_batches,
    )
    if resume:
        trainer.load_checkpoint()
    return trainer.run_and_save(save_denoiser, out, data_record(data, size), progress=progress)


# ----- held-out evaluation -------------------------------------------------------------------------------
HELDOUT_SIGMAS = (15 / 255, 25 / 255, 50 / 255)
# ../shared/data/kodak24 beside the repository (solvers/pnp_admm/train.py is three folders down); never trained on
KODAK_HELDOUT = Path(__file__).resolve().parents[3] / "shared" / "data" / "kodak24"


def heldout_crops(folder: str | Path, n: int = 64, size: int = 64, seed: int = 4) -> Tensor:
    """n random-scale size×size crops (in [-1, 1]) of the photos in `folder`, as `bench.data.RandomCrops`
    draws them. With the defaults and Kodak24 these are the 64 crops (and with `noise_seed=1` below, the
    noise) on which the README's figures for the first shipped DnCNN were measured: they reproduce its
    20.35 -> 23.26 dB at σ = 25/255."""
    from bench.data import RandomCrops

    return RandomCrops(folder, size, seed=seed).batch(n)


@torch.no_grad()
def denoising_table(
    network: nn.Module,
    clean: Tensor,
    sigmas=HELDOUT_SIGMAS,
    *,
    noise_seed: int = 1,
    prior=None,
    chunk: int = 16,
) -> list[dict[str, float]]:
    """Per σ (on [0, 1]): PSNR of the noisy input (clipped) and of the network's output (clipped) against
    `clean`, and ‖predicted residual‖ / ‖noise‖ (close to 1 for a good denoiser; well below 1 means it
    leaves most of the noise in). Noise std 2σ on [-1, 1], one generator seeded `noise_seed` per σ.
    With `prior` (a diffusion prior), also its Tweedie estimate x̂₀(x_t, t) at the timestep whose
    √((1-ᾱ_t)/ᾱ_t) is nearest 2σ, from the same standard-normal draw."""
    from bench.metrics import psnr

    network.eval()
    rows = []
    for sigma in sigmas:
        standard = torch.randn(clean.shape, generator=torch.Generator().manual_seed(noise_seed))
        noise = noise_std(sigma) * standard
        noisy = clean + noise
        residual = torch.cat([network.residual(noisy[i : i + chunk]) for i in range(0, len(noisy), chunk)])
        row = {
            "sigma_255": round(sigma * 255, 3),
            "psnr_noisy": psnr(noisy.clamp(-1, 1), clean).mean().item(),
            "psnr_denoised": psnr((noisy - residual).clamp(-1, 1), clean).mean().item(),
            "residual_over_noise": (residual.norm() / noise.norm()).item(),
        }
        if prior is not None:
            steps = torch.arange(prior.num_timesteps)
            alpha_bar = prior.alpha_bar(steps).flatten()
            t = int((((1 - alpha_bar) / alpha_bar).sqrt() - noise_std(sigma)).abs().argmin())
            a = prior.alpha_bar(t)
            x_t = a.sqrt() * clean + (1 - a).sqrt() * standard
            x0 = torch.cat([prior.x0(x_t[i : i + chunk], t) for i in range(0, len(x_t), chunk)])
            row["tweedie_t"] = t
            row["psnr_tweedie"] = psnr(x0.clamp(-1, 1), clean).mean().item()
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    """`python -m solvers.pnp_admm.train FOLDER [--heldout DIR] [--prior natural64]`: the held-out table."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m solvers.pnp_admm.train", description=main.__doc__)
    parser.add_argument("folder", help="a saved DnCNN (config.json + model.safetensors), e.g. bench/assets/dncnn")
    parser.add_argument("--heldout", default=str(KODAK_HELDOUT), help="held-out photos (default: %(default)s)")
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--prior", default=None, help="also the Tweedie estimate of this prior (e.g. natural64)")
    args = parser.parse_args(argv)
    prior = None
    if args.prior:
        from bench.priors import load_prior

        prior = load_prior(args.prior)
    rows = denoising_table(load_denoiser(args.folder), heldout_crops(args.heldout, args.n, args.size), prior=prior)
    print(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
