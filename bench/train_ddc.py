"""`python -m bench train-ddc`: train DDC's data-consistency network φ on a folder of photos (paper Alg. 2).

Each step draws one task for the whole batch, a timestep t ~ U{0..T-1} per image, x_t from the forward
process and a noisy measurement y = A(x₀) + u·2σ_max·n (u ~ U(0, 1) per image: the model learns every noise
level up to σ_max, on the [0, 1] pixel scale, hence the factor 2 on [-1, 1]). The frozen prior gives x̂₀,
φ corrects it to x̂₀,y = x̂₀ − Δφ(x̂₀, y, t), and the loss is

    L = MSE(x̂₀,y, x₀) + w_lpips · LPIPS-alex(x̂₀,y, x₀) + w_kl · L_KL        (paper Eq. 11; weights 0.1, 1e-3)

where L_KL compares the spread of one reverse step x_{t−1} (taken with x̂₀,y) around √ᾱ_{t−1} x₀ with the
forward process's N(0, (1 − ᾱ_{t−1}) I). The result is a diffusers folder (`unet/`) plus `provenance.json`,
which `--set ddc.network=<folder>` loads.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from bench.training import TrainConfig, Trainer, atomic_write_text, crop_batches, data_record, replace_folder

DEFAULT_TASKS = ("sr4", "sr8", "gblur", "inpaint", "jpeg10", "denoise")  # the paper's six training tasks
# The official code gives φ the prior's x̂₀ unclipped. For t near T, x̂₀ = (x_t − √(1−ᾱ)ε̂)/√ᾱ multiplies ε̂'s
# error by up to 1/√ᾱ ≈ 160: with natural64 its MSE is 1.3 at t = 800, 6.4 at 900 and 41 at 999, against 0.64,
# 1.0 and 1.1 clipped, so the few t > 800 (which the 5-step sampler never visits) dominate the loss. Clipping,
# as guided-diffusion's samplers do (clip_denoised), keeps every t in proportion; --no-clip-x0 is the official.
CLIP_X0 = True
SIGMA_MAX = 0.05  # official code: noise std u·2·0.05 on [-1, 1]; the paper's noise-robust model used 0.25
W_LPIPS = 0.1  # paper Sec. 3.3: grid-searched weight of the LPIPS term
W_KL = 1e-3  # paper Sec. 3.3: grid-searched weight of the KL term
# Paper Appendix / official code: AdamW lr 1e-4, betas (0.95, 0.999), weight decay 1e-6, gradient clip 1.0,
# EMA up to 0.9999; warm-up within the code's 500-2000 steps.
DDC_OPTIMIZER = {
    "lr": 1e-4,
    "betas": (0.95, 0.999),
    "weight_decay": 1e-6,
    "grad_clip": 1.0,
    "ema_decay": 0.9999,
    "warmup_steps": 1000,
    "lr_schedule": "cosine",  # DDC's official code: cosine schedule with warm-up
}


def ddc_train_config(**overrides: Any) -> TrainConfig:
    """TrainConfig with DDC's optimiser settings (DDC_OPTIMIZER) under any explicit overrides."""
    return TrainConfig(**{**DDC_OPTIMIZER, **overrides})


def phi_unet_config(size: int = 64, channels: int = 3, block_out_channels: Sequence[int] = (32, 64, 128, 128)):
    """φ's UNet2DModel: input [x̂₀, y_img] (2C channels), output Δ (C channels).

    The paper's 256² network has blocks (128, 128, 256, 256, 512, 512) with attention in the fifth; this one is
    scaled down for 64² on a CPU (~4M parameters with the defaults) with attention at the second-lowest level.
    """
    blocks = list(block_out_channels)
    down = ["DownBlock2D"] * len(blocks)
    if len(blocks) >= 3:
        down[-2] = "AttnDownBlock2D"
    up = [name.replace("Down", "Up") for name in reversed(down)]
    return {
        "sample_size": size,
        "in_channels": 2 * channels,
        "out_channels": channels,
        "layers_per_block": 1,
        "block_out_channels": blocks,
        "down_block_types": down,
        "up_block_types": up,
        "attention_head_dim": min(32, min(blocks)),
        "norm_num_groups": min(32, min(blocks)),
        "dropout": 0.0,
    }


def build_phi(size: int = 64, channels: int = 3, block_out_channels: Sequence[int] = (32, 64, 128, 128)) -> nn.Module:
    """A fresh φ (solvers.ddc.DeltaNetwork around a UNet2DModel) whose Δ starts at exactly 0.

    The output convolution is zero-initialised so training starts from x̂₀,y = x̂₀, the prior's own estimate,
    instead of from a random perturbation of it.
    """
    from diffusers import UNet2DModel

    from solvers.ddc import DeltaNetwork

    unet = UNet2DModel(**phi_unet_config(size, channels, block_out_channels))
    nn.init.zeros_(unet.conv_out.weight)
    nn.init.zeros_(unet.conv_out.bias)
    return DeltaNetwork(unet)


def kl_term(x_prev: Tensor, x0: Tensor, alpha_bar_prev: Tensor) -> Tensor:
    """Paper Eq. 11's KL term per image, (B,).

    X = x_prev − √ᾱ x₀ has per-image mean m and variance s² over all pixels; the term is
    KL(N(m, s²) ‖ N(0, 1 − ᾱ)) = ½(−log s² + log(1 − ᾱ) + (s² + m²)/(1 − ᾱ) − 1).
    x_prev, x0: (B, C, H, W); alpha_bar_prev: ᾱ_{t−1}, (B,) or (B, 1, 1, 1). Where ᾱ = 1 (t = 0, the step to the
    clean image) the target has no spread and the term is undefined; it is 0 there.
    """
    b = x_prev.shape[0]
    alpha_bar = alpha_bar_prev.reshape(b).to(x_prev.dtype)
    residual = (x_prev - alpha_bar.sqrt().view(b, 1, 1, 1) * x0).reshape(b, -1)
    m = residual.mean(dim=1)
    s2 = residual.var(dim=1, unbiased=False)
    defined = alpha_bar < 1.0
    target = torch.where(defined, 1.0 - alpha_bar, torch.ones_like(alpha_bar))
    kl = 0.5 * (-s2.log() + target.log() + (s2 + m**2) / target - 1.0)
    return torch.where(defined, kl, torch.zeros_like(kl))


def _lpips_loss() -> Callable[[Tensor, Tensor], Tensor]:
    """Differentiable LPIPS-alex per image, (B,), on [-1, 1] images (grey repeated to three channels)."""
    from bench import weights

    model: nn.Module | None = None

    def distance(a: Tensor, b: Tensor) -> Tensor:
        nonlocal model
        if model is None:
            model = weights.lpips_model("alex").to(a.device)
        if a.shape[1] == 1:
            a, b = a.expand(-1, 3, -1, -1), b.expand(-1, 3, -1, -1)
        return model(a.float(), b.float()).reshape(-1)

    return distance


@dataclasses.dataclass
class LossParts:
    """The last batch's loss terms (batch means), for logging and tests."""

    mse: float = 0.0
    lpips: float = 0.0
    kl: float = 0.0


def ddc_loss(
    prior,
    tasks: Sequence[str] = DEFAULT_TASKS,
    *,
    sigma_max: float = SIGMA_MAX,
    w_lpips: float = W_LPIPS,
    w_kl: float = W_KL,
    y_to_image: str = "replicate",
    clip_x0: bool = True,
    lpips_fn: Callable[[Tensor, Tensor], Tensor] | None = None,
    parts: LossParts | None = None,
) -> Callable[[nn.Module, Tensor, torch.Generator], Tensor]:
    """Algorithm 2's loss as `loss(phi, x0, generator) -> scalar` for `bench.training.Trainer`.

    x0: (B, C, H, W) clean crops in [-1, 1] at the prior's image shape. w_lpips = 0 trains "DDC w/o LPIPS" and
    loads no LPIPS network. clip_x0 clips the prior's x̂₀ to [-1, 1] before φ sees and corrects it (see
    CLIP_X0). All randomness comes from `generator`.
    """
    import operators
    from solvers.ddc import measurement_to_image

    if not tasks:
        raise ValueError("ddc_loss needs at least one task")
    unknown = [t for t in tasks if t not in operators.available()]
    if unknown:
        raise ValueError(f"unknown task(s) {unknown} (available: {', '.join(operators.available())})")
    if not sigma_max >= 0:
        raise ValueError(f"sigma_max must be >= 0 (on the [0, 1] pixel scale), got {sigma_max}")
    distance = lpips_fn if lpips_fn is not None or w_lpips == 0 else _lpips_loss()
    shape = tuple(prior.image_shape)
    op_cache: dict[str, Any] = {}

    def loss(phi: nn.Module, x0: Tensor, generator: torch.Generator) -> Tensor:
        b, device = x0.shape[0], x0.device

        def draw(fn, *args, **kwargs) -> Tensor:
            return fn(*args, generator=generator, device=generator.device, **kwargs).to(device)

        task = tasks[int(draw(torch.randint, 0, len(tasks), (1,)).item())]
        if task not in op_cache:
            op_cache[task] = operators.build(task, shape=shape)
        # per-image randomness of the operator (inpainting masks) from the loss generator
        batch_seed = int(draw(torch.randint, 0, 2**31 - 1, (1,)).item())
        op = op_cache[task].for_images([str(i) for i in range(b)], seed=batch_seed)

        t = draw(torch.randint, 0, prior.num_timesteps, (b,))
        a_t = prior.alpha_bar(t, x0.dtype).to(device)
        x_t = a_t.sqrt() * x0 + (1 - a_t).sqrt() * draw(torch.randn, x0.shape, dtype=x0.dtype)
        with torch.no_grad():
            clean = op(x0)
            u = draw(torch.rand, (b,) + (1,) * (clean.ndim - 1), dtype=x0.dtype)
            y = clean + u * 2.0 * sigma_max * draw(torch.randn, clean.shape, dtype=x0.dtype)
            y_image = measurement_to_image(y, op, y_to_image)
            prediction = prior.predict(x_t, t)
        x0_hat = prediction.x0.clamp(-1, 1) if clip_x0 else prediction.x0
        x0_y = x0_hat - phi(x0_hat, y_image, t)

        mse = torch.nn.functional.mse_loss(x0_y.float(), x0.float())
        total = mse
        lp = torch.zeros((), device=device)
        if w_lpips:
            lp = distance(x0_y, x0).mean()
            total = total + w_lpips * lp

        # one (non-respaced) reverse step t -> t-1 with the corrected estimate, Eq. 22
        coefficients = prior.q_posterior(t, t - 1, dtype=x0.dtype)
        mean = coefficients.mean(x_t, x0_y)
        if prediction.variance_frac is not None:
            log_variance = prior.learned_log_variance(prediction.variance_frac, t, t - 1)
        else:
            log_variance = coefficients.log_variance.to(device)
        last = (t == 0).view(b, 1, 1, 1)  # the step to the clean image adds no noise
        noise = draw(torch.randn, x0.shape, dtype=x0.dtype)
        x_prev = mean + torch.where(last, torch.zeros_like(noise), (0.5 * log_variance).exp() * noise)
        kl = kl_term(x_prev.float(), x0.float(), prior.alpha_bar(t - 1, torch.float32).to(device)).mean()
        total = total + w_kl * kl
        if parts is not None:
            parts.mse, parts.lpips, parts.kl = (float(v.detach()) for v in (mse, lp, kl))
        return total

    return loss


def save_phi(network: nn.Module, out_dir: Path, provenance: dict[str, Any]) -> None:
    """Write unet/ (diffusers config.json + safetensors) and provenance.json, renamed into place when complete."""
    unet = network.unet if hasattr(network, "unet") else network

    def write(folder: Path) -> None:
        unet.save_pretrained(folder / "unet", safe_serialization=True)
        atomic_write_text(folder / "provenance.json", json.dumps(provenance, indent=2) + "\n")

    replace_folder(out_dir, write)


def train_ddc(
    prior_spec: str,
    data: str | Path,
    out: str | Path,
    *,
    config: TrainConfig,
    tasks: Sequence[str] = DEFAULT_TASKS,
    sigma_max: float = SIGMA_MAX,
    use_lpips: bool = True,
    w_lpips: float = W_LPIPS,
    w_kl: float = W_KL,
    y_to_image: str = "replicate",
    clip_x0: bool = CLIP_X0,
    phi_channels: Sequence[int] = (32, 64, 128, 128),
    resume: bool = False,
    workers: int = 0,
    progress: bool = True,
    data_note: dict[str, Any] | None = None,
) -> Path:
    """Train φ for the prior `prior_spec` on crops of `data`; returns the final EMA folder `out/final`.

    Build `config` with `ddc_train_config(...)` for the paper's optimiser settings. use_lpips=False trains the
    paper's "DDC w/o LPIPS" variant. Snapshots at config.snapshot_steps go to out/ema-step<k>/.
    """
    from bench.priors import load_prior

    out = Path(out)
    if not resume and (out / "train" / "checkpoint.pt").exists():
        raise FileExistsError(
            f"{out} already holds a training run; pass --resume to continue it or choose another --out"
        )
    torch.manual_seed(config.seed)
    prior = load_prior(prior_spec, device=config.device)
    channels, size, _ = prior.image_shape
    network = build_phi(size, channels, phi_channels)
    weight_lpips = w_lpips if use_lpips else 0.0
    next_batch, generator = crop_batches(data, size, channels, config.seed, workers)
    description = {
        "kind": "DDC data-consistency network",
        "objective": "MSE + w_lpips LPIPS-alex + w_kl KL (DDC Alg. 2, Eq. 11)",
        "prior": prior.spec() if hasattr(prior, "spec") else prior_spec,
        "tasks": list(tasks),
        "sigma_max": sigma_max,
        "w_lpips": weight_lpips,
        "w_kl": w_kl,
        "y_to_image": y_to_image,
        "clip_x0": clip_x0,
        "phi_block_out_channels": list(phi_channels),
    }
    trainer = Trainer(
        network,
        ddc_loss(
            prior,
            tasks,
            sigma_max=sigma_max,
            w_lpips=weight_lpips,
            w_kl=w_kl,
            y_to_image=y_to_image,
            clip_x0=clip_x0,
        ),
        next_batch,
        generator,
        config,
        out / "train",
        description=description,
    )
    if resume:
        trainer.load_checkpoint()
    return trainer.run_and_save(save_phi, out, data_record(data, size, data_note), progress=progress)
