"""Diffusion Posterior Sampling (DPS; Chung et al. 2023, "Diffusion Posterior Sampling for General Noisy
Inverse Problems", Algorithm 1).

Each step is an ancestral DDPM step followed by a gradient step on the measurement residual of the Tweedie
estimate x̂₀(x_t), differentiated through the network:

    x̂₀ = (x_t - sqrt(1 - ᾱ_t) ε_θ(x_t, t)) / sqrt(ᾱ_t)                      (Alg. 1, line 4)
    x'_s = coef_x0 x̂₀ + coef_xt x_t + σ_t z                                   (Alg. 1, lines 5-6)
    x_s = x'_s - ζ ∇_{x_t} ||y - A(x̂₀)||₂                                     (Alg. 1, line 7)

Choices where the paper and its official code differ, and why:

* The guidance differentiates the norm ||y - A(x̂₀)||₂, not its square, with a constant ζ. The paper writes
  ζ_i = ζ' / ||y - A(x̂₀)|| in front of the gradient of the squared norm, which is 2ζ' times the gradient of
  the norm; the official code uses the norm with a constant scale, and the DDC paper's ζ values (Appendix B)
  are values of that scale.
* The norm is taken per image. The official code takes one norm over the whole batch, which makes an image's
  result depend on its batch companions; per image, each image's step is the one the paper writes for it.
* The step's variance is the prior's learned variance where it has one (Improved DDPM, Eq. 15), otherwise
  the posterior variance β̃_t, as in the official code's ADM sampler (the paper's σ_t² = β_t is the other
  choice it mentions; β̃_t is the variance of the true reverse step given x̂₀).
* x̂₀ is clipped to [-1, 1] before both uses, as the official code does (its `clip_denoised: True`);
  `clip_x0=False` follows the paper's algorithm literally.
* With `steps` below the prior's T the ancestral step is the respaced one t -> s (β' = 1 - ᾱ_t / ᾱ_s).

DPS never reads σ: the noise level enters only through y. It needs only A(x) and its autograd gradient, so it
runs on the non-linear jpeg10 too.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import torch
from torch import Tensor

from operators import Cap, Operator, randn_per_image

from . import register
from .base import Solver, SolverConfig, SolverError, StepCallback
from .uncond import posterior_step

# DDC paper, Appendix B: ζ = 0.4 for (ImageNet) Gaussian deblurring, 1.0 for every other task.
PAPER_ZETA_BY_TASK: dict[str, float] = {"gblur": 0.4}
PAPER_ZETA_DEFAULT = 1.0


@dataclasses.dataclass(frozen=True)
class DPSConfig(SolverConfig):
    steps: int = 1000  # DDC paper, App. B (and DPS): one step per training timestep
    zeta: float | None = None  # None: the DDC paper's per-task value (App. B), see `PAPER_ZETA_BY_TASK`
    clip_x0: bool = True  # official DPS code: diffusion config `clip_denoised: True`

    def __post_init__(self) -> None:
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise SolverError(f"dps.steps must be a positive integer (default 1000), got {self.steps!r}")
        if self.zeta is not None and not (math.isfinite(self.zeta) and self.zeta >= 0):
            raise SolverError(
                f"dps.zeta must be a finite number >= 0, or None for the paper's per-task value, got {self.zeta!r}"
            )

    def zeta_for(self, task: str) -> float:
        """The guidance scale ζ used on `task`: the configured one, else the DDC paper's value for the task."""
        if self.zeta is not None:
            return float(self.zeta)
        return PAPER_ZETA_BY_TASK.get(task, PAPER_ZETA_DEFAULT)


def residual_norm_gradient(y: Tensor, op: Operator, x_t: Tensor, x0: Tensor) -> Tensor:
    """∇_{x_t} ||y_b - A(x̂₀_b)||₂ for every image b, (B, C, H, W); x0 must be a differentiable function of x_t.

    The norms are summed over the batch before differentiating: image b's x̂₀ depends on its own x_t only,
    so the gradient of the sum is, row by row, the gradient of each image's own norm.
    """
    residual = (y - op(x0)).flatten(1)
    norms = torch.linalg.vector_norm(residual, dim=1)
    (gradient,) = torch.autograd.grad(norms.sum(), x_t)
    return gradient


def _detached(prediction, x0: Tensor):
    """The prior's `Prediction` cut from the autograd graph, with x̂₀ replaced by the (possibly clipped) one used."""
    return dataclasses.replace(
        prediction,
        eps=prediction.eps.detach(),
        x0=x0.detach(),
        log_variance=None if prediction.log_variance is None else prediction.log_variance.detach(),
        variance_frac=None if prediction.variance_frac is None else prediction.variance_frac.detach(),
    )


@register
class DPS(Solver):
    name = "dps"
    Config = DPSConfig
    requires = frozenset({Cap.FORWARD, Cap.DIFFERENTIABLE})
    backprop_through_network = True
    summary = "diffusion posterior sampling: ancestral DDPM steps with a per-image ∇||y - A(x̂₀)|| guidance"
    quick = {"steps": 100}  # a tenth of the paper's 1000 backprop steps: minutes, not an hour, on a CPU

    config: DPSConfig

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
        """Algorithm 1 of DPS on y (B, *op.measurement_shape); returns x̂ (B, C, H, W) in [-1, 1].

        σ (on the [0, 1] scale) is not used by the update; image b's noise comes from generators[b] only.
        """
        self.check(op, sigma)
        if len(generators) != y.shape[0]:
            raise SolverError(f"need one generator per image: got {len(generators)} for a batch of {y.shape[0]}")
        shape, device = prior.image_shape, prior.device
        zeta = self.config.zeta_for(op.task)
        y = y.to(device=device, dtype=torch.float32)
        ts = prior.timesteps(self.config.steps)
        x = randn_per_image(shape, generators, dtype=torch.float32, device=device)  # x_T ~ N(0, I)
        for i, (t, s) in enumerate(zip(ts, [*ts[1:], -1], strict=True)):
            with torch.enable_grad():
                x = x.detach().requires_grad_(True)
                prediction = prior.predict(x, t)
                x0 = prediction.x0.clamp(-1, 1) if self.config.clip_x0 else prediction.x0
                guidance = residual_norm_gradient(y, op, x, x0)
            x, prediction = x.detach(), _detached(prediction, x0)
            if callback is not None:
                callback(step=i, t=t, x_t=x, eps=prediction.eps, x0=prediction.x0)
            noise = randn_per_image(shape, generators, dtype=x.dtype, device=device)
            with torch.no_grad():
                x = posterior_step(prior, x, prediction, t, s, noise) - zeta * guidance
        return x.clamp(-1, 1)
