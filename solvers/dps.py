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
* With `steps` below the prior's T the ancestral step is the respaced one t -> s (β' = 1 - ᾱ_t / ᾱ_s, as in
  guided-diffusion's `SpacedDiffusion`), on the timesteps of guided-diffusion's `space_timesteps(T, str(steps))`
  (`spacing="respace"`, `Prior.timesteps`), which the official code's `timestep_respacing` uses: for 100 of
  1000 steps 999, 989, ..., 10, 0. `spacing="uniform"` is the older 990, 980, ..., 0 of the other solvers.
* Step-size rule (`zeta_rule`). The official code keeps ζ per step whatever the respacing (its conditioning
  step is `x_t -= norm_grad * scale`), but ζ was tuned for one step per training timestep: at 100 steps a
  tenth of the guidance is left and the result all but ignores y (on 4 Kodak images at 64x64, sr4, σ = 0.05,
  the RMS of A(x̂) - y is 0.195 against 0.043 at 1000 steps). Algorithm 1 subtracts ζ ∇ once per training
  step t -> t - 1, so over the k steps from t down to s it subtracts about ζ k ∇ where the gradient barely
  moves over the stretch: the guidance is the Euler discretisation of a drift of rate ζ per unit of training
  time, just as the prior's part of a respaced step, β' = 1 - ᾱ_t / ᾱ_s ≈ β_t + ... + β_{s+1}, sums the β of
  the steps it skips. The default rule ("scaled") gives the respaced step t_i -> t_{i+1} the scale of the
  training time it covers:

      ζ_i = ζ (t_i - t_{i+1}),   t_n = -1 (the clean image).

  Summed over the trajectory that is ζ (t_0 + 1), the 1000-step total ζ T on respaced timesteps (t_0 = T - 1
  for n >= 2); at n = T every step covers one training step and ζ_i = ζ, Algorithm 1 bit for bit. Its mean
  per step is ζ T / n, the rule of one scale for all steps; per step they differ where the stride does (10 or
  11 training steps for 100 of 1000, and 1 for the last step 0 -> -1, which covers one training step at any
  n); measured, the two are within noise of each other. Source: this project's derivation from Algorithm 1
  and guided-diffusion's respacing (neither the paper nor the official code scales ζ with the step count);
  `zeta_rule="constant"` is the official code's, and this project's before. Its limits are those of a large
  Euler step. The gradient of the norm does not shrink with the residual, so near t = 0 a step of
  ζ (t_i - t_{i+1}) overshoots where the 10 steps of ζ it replaces would have settled; the overshoot moves
  A(x̂) by about ζ_i ||A Aᵀ|| per step: small for sr4 (A Aᵀ = I / 16) and blur, as large as the step for
  inpainting (A Aᵀ = I), where on the 16x16 Gaussian test prior the noise-free RMS residual is 0.14 at 100
  steps against 0.018 at 1000. At high noise the gradient changes faster than the stretch assumes: on one
  of 4 Kodak images (kodim03, gblur, σ = 0.05) 100 steps paint stripes into the sky, 15.6 dB against 21.1 at
  1000 steps (21.8 at 200 steps; 22.6 with the scaled ζ below t = 500 only, so the large steps above t = 500
  are the cause).

DPS never reads σ: the noise level enters only through y. It needs only A(x) and its autograd gradient, so it
runs on the non-linear jpeg10 too.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import torch
from torch import Tensor

from bench.sampling import posterior_step
from operators import Cap, Operator, randn_per_image

from . import register
from .base import Solver, SolverConfig, SolverError, StepCallback

# DDC paper, Appendix B: ζ = 0.4 for (ImageNet) Gaussian deblurring, 1.0 for every other task.
PAPER_ZETA_BY_TASK: dict[str, float] = {"gblur": 0.4}
PAPER_ZETA_DEFAULT = 1.0
ZETA_RULES = ("scaled", "constant")
SPACINGS = ("respace", "uniform", "linspace")


@dataclasses.dataclass(frozen=True)
class DPSConfig(SolverConfig):
    steps: int = 1000  # DDC paper, App. B (and DPS): one step per training timestep
    zeta: float | None = None  # None: the DDC paper's per-task value (App. B), see `PAPER_ZETA_BY_TASK`
    # "scaled": step t_i -> t_{i+1} uses ζ (t_i - t_{i+1}), ζ per training step it covers (t_n = -1), so the
    # total guidance is the 1000-step one at any step count and equals Algorithm 1's at steps = T (this
    # project's rule: the guidance is the Euler step of a drift, see the module docstring); "constant": ζ at
    # every step, the official code's behaviour under `timestep_respacing` (and this project's before).
    zeta_rule: str = "scaled"
    # "respace": guided-diffusion's space_timesteps(T, str(steps)), the official DPS code's respacing (for
    # 100 of 1000 steps 999, 989, ..., 10, 0); "uniform", "linspace": the other `Prior.timesteps` spacings.
    spacing: str = "respace"
    clip_x0: bool = True  # official DPS code: diffusion config `clip_denoised: True`

    def __post_init__(self) -> None:
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise SolverError(f"dps.steps must be a positive integer (default 1000), got {self.steps!r}")
        if self.zeta is not None and not (math.isfinite(self.zeta) and self.zeta >= 0):
            raise SolverError(
                f"dps.zeta must be a finite number >= 0, or None for the paper's per-task value, got {self.zeta!r}"
            )
        if self.zeta_rule not in ZETA_RULES:
            raise SolverError(f"dps.zeta_rule must be one of {', '.join(ZETA_RULES)}, got {self.zeta_rule!r}")
        if self.spacing not in SPACINGS:
            raise SolverError(f"dps.spacing must be one of {', '.join(SPACINGS)}, got {self.spacing!r}")

    def zeta_for(self, task: str) -> float:
        """The guidance scale ζ used on `task`: the configured one, else the DDC paper's value for the task."""
        if self.zeta is not None:
            return float(self.zeta)
        return PAPER_ZETA_BY_TASK.get(task, PAPER_ZETA_DEFAULT)


def guidance_scales(timesteps: Sequence[int], zeta: float, rule: str = "scaled") -> list[float]:
    """The guidance scale ζ_i of each step t_i -> t_{i+1} of a sampler on `timesteps` (descending, t_n = -1).

    "scaled": ζ_i = ζ (t_i - t_{i+1}), ζ per training step the step covers; on every timestep of the
    schedule (t_i = T - 1 - i) each ζ_i is ζ itself. "constant": ζ_i = ζ. See the module docstring.
    """
    if rule == "constant":
        return [float(zeta)] * len(timesteps)
    if rule != "scaled":
        raise SolverError(f"dps.zeta_rule must be one of {', '.join(ZETA_RULES)}, got {rule!r}")
    ends = [*timesteps[1:], -1]
    return [float(zeta) * (t - s) for t, s in zip(timesteps, ends, strict=True)]


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
    noise_models = frozenset({"gaussian", "poisson"})  # DPS ran Poisson in its paper (Sec. 4): ∇‖y − A(x̂₀)‖
    Config = DPSConfig
    requires = frozenset({Cap.FORWARD, Cap.DIFFERENTIABLE})
    backprop_through_network = True
    summary = "diffusion posterior sampling: ancestral DDPM steps with a per-image ∇||y - A(x̂₀)|| guidance"
    # A tenth of the paper's 1000 backprop steps: minutes, not an hour, on a CPU; the default zeta_rule keeps
    # the 1000-step guidance in total.
    quick = {"steps": 100}

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
        """Algorithm 1 of DPS on y (B, *op.measurement_shape); returns x̂ (B, C, H, W).

        σ (on the [0, 1] scale) is not used by the update; image b's noise comes from generators[b] only.
        """
        shape, device = prior.image_shape, prior.device
        y = y.to(device=device, dtype=torch.float32)
        ts = prior.timesteps(self.config.steps, self.config.spacing)
        zetas = guidance_scales(ts, self.config.zeta_for(op.task), self.config.zeta_rule)
        x = randn_per_image(shape, generators, dtype=torch.float32, device=device)  # x_T ~ N(0, I)
        for i, (t, s, zeta) in enumerate(zip(ts, [*ts[1:], -1], zetas, strict=True)):
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
        return x
