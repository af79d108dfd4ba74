"""Deep Data Consistency (DDC, Chen et al. 2024): a learned correction of the Tweedie estimate, 5 steps.

A network φ sees the prior's Tweedie estimate x̂₀, the measurement y brought to image size and the timestep,
and predicts a residual Δ that moves x̂₀ toward data consistency (paper Eq. 7):

    x̂₀,y = x̂₀ − Δφ(x̂₀, y, t).

The reverse step is the DDPM posterior q(x_s | x_t, x̂₀,y) with the corrected estimate (paper Eq. 22), with the
prior's learned variance where it has one. φ is trained by `python -m bench train-ddc` (bench/train_ddc.py).

One departure from the official code, recorded in each network's provenance and checked when it loads: φ sees
x̂₀ clipped to [-1, 1] (`clip_x0`, see bench.train_ddc.CLIP_X0); `--set ddc.clip_x0=false` runs a network
trained on the unclipped x̂₀ as the official code does. Two names share this sampler: `ddc` (φ trained with
the LPIPS term, bench/assets/ddc-natural64) and `ddc-nolpips` (the paper's "DDC w/o LPIPS" ablation,
bench/assets/ddc-natural64-nolpips).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from operators import Cap, Operator, randn_per_image

from . import register
from .base import Solver, SolverConfig, SolverError, StepCallback
from .uncond import posterior_step

ASSETS = Path(__file__).resolve().parents[1] / "bench" / "assets"
Y_TO_IMAGE = ("replicate", "pinv")

# φ as a plain function: (x̂₀ (B, C, H, W), y brought to image size (B, C, H, W), t (B,) int64) -> Δ (B, C, H, W)
Phi = Callable[[Tensor, Tensor, Tensor], Tensor]


@dataclasses.dataclass(frozen=True)
class DDCConfig(SolverConfig):
    steps: int = 5  # DDC paper Sec. 4 / Appendix B: 5 steps (official schedule 800, 600, 400, 200, 0)
    network: str = "natural64"  # φ weights: a folder under bench/assets/ddc-<name>/, or a path to such a folder
    y_to_image: str = "replicate"  # official code: adaptive average pooling to image size (nearest for SR)
    clip_x0: bool = True  # φ sees x̂₀ clipped to [-1, 1], as natural64's φ was trained (bench.train_ddc.CLIP_X0)
    # A φ trained at the sampler's timesteps only refuses other step counts; true runs it anyway (steps ablation).
    off_schedule: bool = False


DC_WEIGHTS = "output_dc.safetensors"  # the mean-passing gain of a φ built with output_dc=True
DC_GAIN_SCALE = 10.0


class DeltaNetwork(nn.Module):
    """φ as a diffusers UNet2DModel on [x̂₀, y_img] concatenated on channels, conditioned on the integer t.

    output_dc=True lets each image's per-channel mean reach the output. A UNet2DModel ends with GroupNorm →
    SiLU → conv; at φ's 64² size (16 channels in 16 groups) that GroupNorm is an instance norm, which removes
    every feature channel's mean, so Δ cannot carry a per-image colour shift, and x̂₀,y kept the prior's colours
    (measured: the features' per-image means have std 0.16 before that norm and 6·10⁻⁸ after). The option adds
    γ ⊙ mean_hw(h) back after the norm, one gain per channel, zero at the start so that a network trained
    without it computes the same Δ until training moves γ. γ = DC_GAIN_SCALE · dc_gain: Adam moves a parameter
    by about the learning rate per step, and γ must reach order 1 within a short fine-tuning run.
    """

    def __init__(self, unet: nn.Module, *, output_dc: bool = False):
        super().__init__()
        self.unet = unet
        self.output_dc = output_dc
        if output_dc:
            channels = unet.conv_norm_out.num_channels
            self.dc_gain = nn.Parameter(torch.zeros(channels))
            unet.conv_norm_out.register_forward_hook(self._pass_dc)

    def _pass_dc(self, module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> Tensor:
        gain = DC_GAIN_SCALE * self.dc_gain.view(1, -1, 1, 1)
        return output + gain * inputs[0].mean(dim=(2, 3), keepdim=True)

    def forward(self, x0: Tensor, y_image: Tensor, t: Tensor) -> Tensor:
        return self.unet(torch.cat([x0, y_image], dim=1), t).sample


def measurement_to_image(y: Tensor, op: Operator, mode: str = "replicate") -> Tensor:
    """y (B, *op.measurement_shape) brought to the image shape (B, C, H, W): φ's second input.

    "replicate": image-sized measurements (blur, inpainting, JPEG, denoising) are used as they are; a
        measurement smaller by an integer factor (super-resolution) is replicated nearest-neighbour, which is
        what the official code's adaptive average pooling to image size does for SR.
    "pinv": A⁺y, the pseudo-inverse's image.
    """
    if mode == "pinv":
        return op.pinv(y)
    if mode != "replicate":
        raise SolverError(f"ddc: unknown y_to_image '{mode}' (available: {', '.join(Y_TO_IMAGE)})")
    image, measured = tuple(op.input_shape), tuple(op.measurement_shape)
    if measured == image:
        return y
    if len(measured) == 3 and measured[0] == image[0]:
        (_, h, w), (_, height, width) = measured, image
        if height % h == 0 and width % w == 0 and height // h == width // w:
            return torch.nn.functional.interpolate(y, scale_factor=height // h, mode="nearest")
    raise SolverError(
        f"ddc: cannot replicate a {measured} measurement of {op.task} to a {image} image; use --set ddc.y_to_image=pinv"
    )


def corrected_prediction(prior, phi: nn.Module | Phi, x_t: Tensor, t: int, y_image: Tensor, *, clip_x0: bool):
    """One call of the prior and one of φ at x_t: the prior's `Prediction` with x̂₀ replaced by x̂₀,y (Eq. 7).

    Shared by the sampler and by training on the sampler's own trajectory (bench.train_ddc), so both take the
    same step.
    """
    prediction = prior.predict(x_t, t)
    t_batch = torch.full((x_t.shape[0],), t, dtype=torch.long, device=x_t.device)
    x0_hat = prediction.x0.clamp(-1, 1) if clip_x0 else prediction.x0
    # φ runs in the prior's network precision (--dtype); Δ is subtracted in x̂₀'s float32, not in bf16.
    precision = prior.network_precision() if hasattr(prior, "network_precision") else contextlib.nullcontext()
    with precision:
        delta = phi(x0_hat, y_image.to(x0_hat.dtype), t_batch)
    x0_y = x0_hat - delta.to(x0_hat.dtype)
    return dataclasses.replace(prediction, x0=x0_y)


def network_folder(network: str) -> Path:
    """The folder of φ weights named by `network`: bench/assets/ddc-<name>/ for a bare name, else a path."""
    named = ASSETS / f"ddc-{network}"
    return named if "/" not in network and not Path(network).is_dir() else Path(network)


def load_phi(folder: str | Path) -> tuple[DeltaNetwork, dict[str, Any]]:
    """φ from a folder written by `bench.train_ddc.save_phi`: (network in eval mode, provenance dict).

    The weights load strictly (`bench.weights.load_exact`): a missing or unexpected key is an error naming them.
    """
    folder = Path(folder)
    config_path = folder / "unet" / "config.json"
    weights_path = folder / "unet" / "diffusion_pytorch_model.safetensors"
    if not config_path.is_file() or not weights_path.is_file():
        raise SolverError(
            f"ddc: no trained φ network at {folder} (need unet/config.json and unet/diffusion_pytorch_model"
            ".safetensors); train one with `python -m bench train-ddc` "
            "and pass the folder with --set ddc.network=<folder>"
        )
    from diffusers import UNet2DModel
    from safetensors.torch import load_file

    from bench.weights import WeightsError, load_exact

    unet = UNet2DModel.from_config(json.loads(config_path.read_text()))
    try:
        load_exact(unet, load_file(str(weights_path), device="cpu"))
    except WeightsError as error:
        raise SolverError(f"ddc: {weights_path} does not fit its config: {error}") from None
    provenance_path = folder / "provenance.json"
    provenance = json.loads(provenance_path.read_text()) if provenance_path.is_file() else {}
    output_dc = bool(provenance.get("output_dc", False))
    network = DeltaNetwork(unet, output_dc=output_dc)
    dc_path = folder / DC_WEIGHTS
    if output_dc != dc_path.is_file():
        raise SolverError(
            f"ddc: {folder} is inconsistent: provenance.json says output_dc={output_dc} but {DC_WEIGHTS} is "
            f"{'missing' if output_dc else 'present'}; re-save the network with bench.train_ddc.save_phi"
        )
    if output_dc:
        extra = load_file(str(dc_path), device="cpu")
        if set(extra) != {"dc_gain"} or extra["dc_gain"].shape != network.dc_gain.shape:
            raise SolverError(f"ddc: {dc_path} must hold one tensor 'dc_gain' of shape {tuple(network.dc_gain.shape)}")
        with torch.no_grad():
            network.dc_gain.copy_(extra["dc_gain"])
    return network.eval().requires_grad_(False), provenance


@register
class DDC(Solver):
    name = "ddc"
    Config = DDCConfig
    requires = frozenset({Cap.FORWARD, Cap.PINV})
    summary = "learned data-consistency correction of the Tweedie estimate (Chen et al. 2024), 5 steps"

    def nfe(self) -> int:
        return self.config.steps  # one prior call per step

    def __init__(self, config: SolverConfig | None = None, *, phi: nn.Module | Phi | None = None, **overrides: Any):
        super().__init__(config, **overrides)
        self._provenance: dict[str, Any] | None = None
        if self.config.y_to_image not in Y_TO_IMAGE:
            raise SolverError(
                f"ddc: unknown y_to_image '{self.config.y_to_image}' (available: {', '.join(Y_TO_IMAGE)})"
            )
        if int(self.config.steps) < 1:
            raise SolverError(f"ddc: steps must be >= 1, got {self.config.steps}")
        self._phi = phi
        self._trained_for: dict[str, Any] | None = None  # the prior spec φ was trained with, from its provenance

    def missing_weights(self) -> str | None:
        if self._phi is not None:
            return None
        folder = network_folder(self.config.network)
        if (folder / "unet" / "diffusion_pytorch_model.safetensors").is_file():
            return None
        return f"ddc: no trained φ network at {folder}; train one with `python -m bench train-ddc`"

    def phi(self, device: torch.device) -> nn.Module | Phi:
        """The φ network: the injected one, else loaded (once) from `config.network`."""
        if self._phi is None:
            network, provenance = load_phi(network_folder(self.config.network))
            trained_with = provenance.get("y_to_image")
            if trained_with is not None and trained_with != self.config.y_to_image:
                raise SolverError(
                    f"ddc: the network at {self.config.network} was trained with y_to_image={trained_with}; "
                    f"use --set ddc.y_to_image={trained_with}"
                )
            clipped = bool(provenance.get("clip_x0", False))  # networks from before the option: unclipped
            if provenance and clipped != bool(self.config.clip_x0):
                raise SolverError(
                    f"ddc: the network at {self.config.network} was trained with clip_x0={clipped}; "
                    f"use --set ddc.clip_x0={str(clipped).lower()}"
                )
            self._phi = network
            self._provenance = provenance
            self._trained_for = provenance.get("prior") if isinstance(provenance.get("prior"), dict) else None
        if isinstance(self._phi, nn.Module):
            self._phi.to(device)
        return self._phi

    def _check_prior(self, prior) -> None:
        """φ corrects one prior's x̂₀: refuse a network whose provenance names another prior's weights."""
        trained = (self._trained_for or {}).get("checkpoint_sha256")
        current = prior.spec().get("checkpoint_sha256") if hasattr(prior, "spec") else None
        if trained and current and trained != current:
            raise SolverError(
                f"ddc: the φ network '{self.config.network}' was trained for the prior with checkpoint sha256 "
                f"{trained[:12]}…, not this one ({current[:12]}…); train one for this prior with "
                "`python -m bench train-ddc --prior <spec>` and pass it with --set ddc.network=<folder>"
            )

    def solve(
        self,
        y: Tensor,
        op: Operator,
        prior,
        *,
        sigma: float,
        generators: Sequence[torch.Generator],
        callback: StepCallback | None = None,
    ) -> Tensor:
        """Algorithm 1 of the paper: per step one prior call, one φ call (Eq. 7), one posterior step (Eq. 22).

        The callback receives the prior's ε̂ and the corrected estimate x̂₀,y as x0.
        """
        shape, device = prior.image_shape, prior.device
        phi = self.counted("phi", self.phi(device))
        self._check_prior(prior)
        y_image = measurement_to_image(y.to(device), op, self.config.y_to_image)
        ts = prior.timesteps(self.config.steps)
        self._check_schedule(ts)
        x = randn_per_image(shape, generators, dtype=torch.float32, device=device)
        for i, (t, s) in enumerate(zip(ts, [*ts[1:], -1], strict=True)):
            with torch.no_grad():
                corrected = corrected_prediction(prior, phi, x, t, y_image, clip_x0=self.config.clip_x0)
            if callback is not None:
                callback(step=i, t=t, x_t=x, eps=corrected.eps, x0=corrected.x0)
            noise = randn_per_image(shape, generators, dtype=x.dtype, device=device)
            x = posterior_step(prior, x, corrected, t, s, noise)
        return x

    def _check_schedule(self, timesteps: Sequence[int]) -> None:
        """A φ trained only at the sampler's timesteps (`train-ddc --timesteps sampler`) has never seen others."""
        trained = (self._provenance or {}).get("sampler_timesteps")
        if trained is None or (self._provenance or {}).get("timesteps") != "sampler" or self.config.off_schedule:
            return
        unseen = sorted(set(timesteps) - set(trained), reverse=True)
        if unseen:
            raise SolverError(
                f"ddc: the φ network '{self.config.network}' was trained only at the timesteps {trained} of the "
                f"{len(trained)}-step sampler, and {self.config.steps} steps visit {unseen[:6]} too; run "
                f"ddc.steps={len(trained)}, or --set ddc.off_schedule=true to run it off its training schedule"
            )


@dataclasses.dataclass(frozen=True)
class DDCNoLpipsConfig(DDCConfig):
    network: str = "natural64-nolpips"  # φ trained without the LPIPS term (`train-ddc --no-lpips`)


@register
class DDCNoLpips(DDC):
    """The paper's "DDC w/o LPIPS" ablation as its own name, so one run can hold both variants side by side."""

    name = "ddc-nolpips"
    Config = DDCNoLpipsConfig
    summary = "DDC with φ trained on MSE + KL only, without the LPIPS term (paper's 'DDC w/o LPIPS')"
