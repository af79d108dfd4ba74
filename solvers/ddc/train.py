"""`python -m bench train-ddc`: train DDC's data-consistency network φ on a folder of photos (paper Alg. 2).

Each step draws one task for the whole batch, a timestep t ~ U{0..T-1} per image, x_t from the forward
process and a noisy measurement y = A(x₀) + u·2σ_max·n (u ~ U(0, 1) per image: the model learns every noise
level up to σ_max, on the [0, 1] pixel scale, hence the factor 2 on [-1, 1]). The frozen prior gives x̂₀,
φ corrects it to x̂₀,y = x̂₀ − Δφ(x̂₀, y, t), and the loss is

    L = MSE(x̂₀,y, x₀) + w_lpips · LPIPS-alex(x̂₀,y, x₀) + w_kl · L_KL        (paper Eq. 11; weights 0.1, 1e-3)

where L_KL compares the spread of one reverse step x_{t−1} (taken with x̂₀,y) around √ᾱ_{t−1} x₀ with the
forward process's N(0, (1 − ᾱ_{t−1}) I). The result is a diffusers folder (`unet/`) plus `provenance.json`,
which `--set ddc.network=<folder>` loads, and `export_ema` writes such a folder from a run in progress
(`python -m bench export-ema`).

The trainer imports φ (solvers/ddc/network.py) and the sampler's corrected step (solvers/ddc/sampler.py); the
solver never imports the trainer.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from bench.files import atomic_write_text, replace_folder
from bench.training import TrainConfig, Trainer, crop_batches, data_record, training_measurement
from operators.base import noise_std

from .network import DC_WEIGHTS, DeltaNetwork, load_phi, phi_unet_config
from .sampler import INPAINT_UNOBSERVED, Y_TO_IMAGE, corrected_prediction, phi_input, trained_conventions

DEFAULT_TASKS = ("sr4", "sr8", "gblur", "inpaint", "jpeg10", "denoise")  # the paper's six training tasks
# The official code gives φ the prior's x̂₀ unclipped. For t near T, x̂₀ = (x_t − √(1−ᾱ)ε̂)/√ᾱ multiplies ε̂'s
# error by up to 1/√ᾱ ≈ 160: with natural64 its MSE is 1.3 at t = 800, 6.4 at 900 and 41 at 999, against 0.64,
# 1.0 and 1.1 clipped, so the few t > 800 (which the 5-step sampler never visits) dominate the loss. Clipping,
# as guided-diffusion's samplers do (clip_denoised), keeps every t in proportion; --no-clip-x0 is the official.
CLIP_X0 = True
# Where φ is trained: "uniform" t ~ U{0..T-1} (Alg. 2), or "sampler": only the timesteps the sampler visits.
TIMESTEPS = ("uniform", "sampler")
# What φ may see in inpainting's unobserved pixels when we train it ("noise" is the official code's convention).
TRAINED_UNOBSERVED = tuple(mode for mode in INPAINT_UNOBSERVED if mode != "noise")
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


def build_phi(
    size: int = 64,
    channels: int = 3,
    block_out_channels: Sequence[int] = (32, 64, 128, 128),
    *,
    output_dc: bool = False,
) -> nn.Module:
    """A fresh φ (`DeltaNetwork` around a UNet2DModel) whose Δ starts at exactly 0.

    The output convolution is zero-initialised so training starts from x̂₀,y = x̂₀, the prior's own estimate,
    instead of from a random perturbation of it.
    """
    from diffusers import UNet2DModel

    unet = UNet2DModel(**phi_unet_config(size, channels, block_out_channels))
    nn.init.zeros_(unet.conv_out.weight)
    nn.init.zeros_(unet.conv_out.bias)
    return DeltaNetwork(unet, output_dc=output_dc)


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


def draw_sampler_timesteps(
    schedule: Sequence[int], count: int, generator: torch.Generator, *, jitter: int = 0, num_timesteps: int = 1000
) -> Tensor:
    """`count` timesteps drawn uniformly from the sampler's `schedule`, each moved by up to ±jitter (kept in range).

    The 5-step sampler visits 5 of the prior's 1000 timesteps; drawing t ~ U{0..999} (Alg. 2) spends 99.5% of
    the samples elsewhere. Jitter widens each scheduled t into a small window, for a φ that tolerates nearby t.
    """
    device = generator.device
    table = torch.tensor(list(schedule), dtype=torch.long, device=device)
    t = table[torch.randint(0, table.numel(), (count,), generator=generator, device=device)]
    if jitter:
        t = t + torch.randint(-jitter, jitter + 1, (count,), generator=generator, device=device)
    return t.clamp(0, num_timesteps - 1)


def ddc_loss(
    prior,
    tasks: Sequence[str] = DEFAULT_TASKS,
    *,
    sigma_max: float = SIGMA_MAX,
    w_lpips: float = W_LPIPS,
    w_kl: float = W_KL,
    y_to_image: str = "replicate",
    inpaint_unobserved: str = "zero",
    clip_x0: bool = True,
    timesteps: str = "uniform",
    timestep_jitter: int = 0,
    sampler_steps: int = 5,
    chain_fraction: float = 0.0,
    lpips_fn: Callable[[Tensor, Tensor], Tensor] | None = None,
    parts: LossParts | None = None,
) -> Callable[[nn.Module, Tensor, torch.Generator], Tensor]:
    """Algorithm 2's loss as `loss(phi, x0, generator) -> scalar` for `bench.training.Trainer`.

    x0: (B, C, H, W) clean crops in [-1, 1] at the prior's image shape. w_lpips = 0 trains "DDC w/o LPIPS" and
    loads no LPIPS network. clip_x0 clips the prior's x̂₀ to [-1, 1] before φ sees and corrects it (see
    CLIP_X0). y_to_image and inpaint_unobserved ("zero" or "mean") say how y becomes φ's input, exactly as the
    sampler's `phi_input` makes it. All randomness comes from `generator`.

    Where φ learns (see TIMESTEPS and the README's "Training φ"):
    * timesteps="uniform": t ~ U{0..T-1} (Alg. 2); "sampler": t drawn from the `sampler_steps`-step sampler's
      timesteps, ± timestep_jitter.
    * chain_fraction: the share of batches whose x_t is the sampler's own, not the forward process's. Such a
      batch draws one step k of the sampler, runs the sampler with the current φ (no gradients) from pure
      noise through steps 0..k-1 on the batch's y, and trains φ at step k on where the chain arrived. Training
      on the forward process only (0, Alg. 2) teaches φ small corrections around the true x_t, which the
      sampler's drifted x_t never are (exposure bias).
    """
    import operators
    from bench.sampling import posterior_step

    if timesteps not in TIMESTEPS:
        raise ValueError(f"unknown timesteps '{timesteps}' (available: {', '.join(TIMESTEPS)})")
    if y_to_image not in Y_TO_IMAGE:
        raise ValueError(f"unknown y_to_image '{y_to_image}' (available: {', '.join(Y_TO_IMAGE)})")
    if inpaint_unobserved not in TRAINED_UNOBSERVED:
        raise ValueError(
            f"inpaint_unobserved '{inpaint_unobserved}' cannot be trained here (available: "
            f"{', '.join(TRAINED_UNOBSERVED)}; 'noise' is the official code's, for its released φ)"
        )
    if not 0.0 <= chain_fraction <= 1.0:
        raise ValueError(f"chain_fraction must be in [0, 1], got {chain_fraction}")
    if timestep_jitter < 0:
        raise ValueError(f"timestep_jitter must be >= 0, got {timestep_jitter}")
    schedule = prior.timesteps(sampler_steps)

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

        from_chain = chain_fraction > 0 and float(draw(torch.rand, (1,)).item()) < chain_fraction
        if from_chain:
            k = int(draw(torch.randint, 0, len(schedule), (1,)).item())
            t = torch.full((b,), schedule[k], dtype=torch.long, device=device)
        elif timesteps == "sampler":
            t = draw_sampler_timesteps(
                schedule, b, generator, jitter=timestep_jitter, num_timesteps=prior.num_timesteps
            ).to(device)
        else:
            t = draw(torch.randint, 0, prior.num_timesteps, (b,))
        with torch.no_grad():
            measured_shape = (b, *op.measurement_shape)
            u = draw(torch.rand, (b,) + (1,) * (len(measured_shape) - 1), dtype=x0.dtype)
            y = training_measurement(op, x0, u * noise_std(sigma_max), draw(torch.randn, measured_shape, dtype=x0.dtype))
            y_image = phi_input(y, op, y_to_image, inpaint_unobserved)
            if from_chain:
                x_t = draw(torch.randn, x0.shape, dtype=x0.dtype)  # x_T ~ N(0, I), as the sampler starts
                for step in range(k):
                    current, following = schedule[step], schedule[step + 1]
                    corrected = corrected_prediction(prior, phi, x_t, current, y_image, clip_x0=clip_x0)
                    noise = draw(torch.randn, x0.shape, dtype=x0.dtype)
                    x_t = posterior_step(prior, x_t, corrected, current, following, noise)
            else:
                a_t = prior.alpha_bar(t, x0.dtype).to(device)
                x_t = a_t.sqrt() * x0 + (1 - a_t).sqrt() * draw(torch.randn, x0.shape, dtype=x0.dtype)
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
    from safetensors.torch import save_file

    unet = network.unet if hasattr(network, "unet") else network
    output_dc = bool(getattr(network, "output_dc", False))

    def write(folder: Path) -> None:
        unet.save_pretrained(folder / "unet", safe_serialization=True)
        if output_dc:
            save_file({"dc_gain": network.dc_gain.detach().cpu().contiguous()}, str(folder / DC_WEIGHTS))
        record = {**provenance, "output_dc": output_dc}
        atomic_write_text(folder / "provenance.json", json.dumps(record, indent=2) + "\n")

    replace_folder(out_dir, write)


def _initial_phi(folder: str | Path, prior, output_dc: bool) -> tuple[nn.Module, dict[str, Any]]:
    """A trainable copy of the φ at `folder` (strictly loaded) and the record of where it came from.

    output_dc=True on a network saved without it adds the mean-passing gain at zero (same Δ as the init).
    """
    import hashlib

    network, provenance = load_phi(folder)
    if output_dc and not network.output_dc:
        network = DeltaNetwork(network.unet, output_dc=True)
    elif network.output_dc and not output_dc:
        raise ValueError(f"--init {folder}: that φ passes the per-image mean (output_dc); train with --output-dc")
    trained = (
        (provenance.get("prior") or {}).get("checkpoint_sha256") if isinstance(provenance.get("prior"), dict) else None
    )
    current = prior.spec().get("checkpoint_sha256") if hasattr(prior, "spec") else None
    if trained and current and trained != current:
        raise ValueError(f"--init {folder}: that φ was trained for another prior (checkpoint {trained[:12]}…)")
    weights = Path(folder) / "unet" / "diffusion_pytorch_model.safetensors"
    record = {
        "folder": str(Path(folder)),
        "weights_sha256": hashlib.sha256(weights.read_bytes()).hexdigest(),
        "steps": provenance.get("steps"),
        "objective": provenance.get("objective"),
        "timesteps": provenance.get("timesteps", "uniform"),
        "chain_fraction": provenance.get("chain_fraction", 0.0),
        "output_dc": provenance.get("output_dc", False),
        **trained_conventions(provenance),  # a fine-tune may change φ's input conventions: the init's stay here
        "init": provenance.get("init"),  # the lineage, when the init was itself fine-tuned
    }
    network.train().requires_grad_(True)
    return network, record


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
    inpaint_unobserved: str = "zero",
    clip_x0: bool = CLIP_X0,
    phi_channels: Sequence[int] = (32, 64, 128, 128),
    timesteps: str = "uniform",
    timestep_jitter: int = 0,
    sampler_steps: int = 5,
    chain_fraction: float = 0.0,
    init: str | Path | None = None,
    output_dc: bool = False,
    resume: bool = False,
    workers: int = 0,
    progress: bool = True,
    data_note: dict[str, Any] | None = None,
) -> Path:
    """Train φ for the prior `prior_spec` on crops of `data`; returns the final EMA folder `out/final`.

    Build `config` with `ddc_train_config(...)` for the paper's optimiser settings. use_lpips=False trains the
    paper's "DDC w/o LPIPS" variant. Snapshots at config.snapshot_steps go to out/ema-step<k>/.
    timesteps, timestep_jitter, sampler_steps and chain_fraction choose where φ learns (see `ddc_loss`);
    `init` starts from the weights of a φ folder (its width replaces phi_channels), recorded in the provenance.
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
    init_record = None
    if init is not None:
        network, init_record = _initial_phi(init, prior, output_dc)
        phi_channels = tuple(network.unet.config.block_out_channels)
    else:
        network = build_phi(size, channels, phi_channels, output_dc=output_dc)
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
        "inpaint_unobserved": inpaint_unobserved,
        "clip_x0": clip_x0,
        "phi_block_out_channels": list(phi_channels),
        "timesteps": timesteps,
        "timestep_jitter": timestep_jitter,
        "sampler_steps": sampler_steps,
        "sampler_timesteps": prior.timesteps(sampler_steps) if timesteps == "sampler" or chain_fraction else None,
        "chain_fraction": chain_fraction,
        "x_t": "forward process (Alg. 2)"
        if not chain_fraction
        else f"sampler's own trajectory in {chain_fraction:.0%} of batches",
        "init": init_record,
        "output_dc": output_dc,
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
            inpaint_unobserved=inpaint_unobserved,
            clip_x0=clip_x0,
            timesteps=timesteps,
            timestep_jitter=timestep_jitter,
            sampler_steps=sampler_steps,
            chain_fraction=chain_fraction,
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


def export_ema(checkpoint: dict[str, Any], template: Path, out: Path, note: str) -> int:
    """The EMA weights of a train-ddc checkpoint (`train/checkpoint.pt`, loaded) as a φ folder at `out`, with the
    architecture and provenance of the φ folder `template`; returns the checkpoint's step."""
    network, provenance = load_phi(template)
    ema = {k.removeprefix("unet."): v for k, v in checkpoint["ema"].items() if k.startswith("unet.")}
    network.unet.load_state_dict(ema, strict=True)
    if "dc_gain" in checkpoint["ema"]:
        network = DeltaNetwork(network.unet, output_dc=True)
        network.load_state_dict(checkpoint["ema"], strict=True)
    step = checkpoint["state"]["step"]
    save_phi(network, out, {**provenance, "steps": step, "note": note})
    return step
