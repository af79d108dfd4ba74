"""DDRM: Denoising Diffusion Restoration Models (Kawar, Elad, Ermon & Song, NeurIPS 2022).

DDRM samples in the spectral basis of A = U diag(s) Vᵀ and in the "variance-exploding" parametrisation of
the diffusion: with the prior's variance-preserving x_t = √ᾱ_t x0 + √(1 − ᾱ_t) ε, DDRM's variable is

    x̃_t = x_t / √ᾱ_t = x0 + σ_t ε,     σ_t = √((1 − ᾱ_t) / ᾱ_t),

so σ_t grows from 0 (clean) to about 157 at t = 999 (the DDPM linear schedule). Every coefficient below is in
that parametrisation; the prior is queried with x_t = √ᾱ_t x̃_t and the result is brought back.

Spectral quantities (bars): x̄ = Vᵀ x̃, x̄0 = Vᵀ x̂0, ε̄ = Vᵀ ε̂ and, for s_i > 0, ȳ_i = (Uᵀ y)_i / s_i, an
observation of x̄0_i with noise std σ_y / s_i. σ_y is the measurement noise std on the [-1, 1] image scale,
2σ in this project's σ (DDRM's own code also adds 2σ on [-1, 1]). Each component of x̄_s at the next, lower
noise level σ_s is drawn from (paper Eq. 8; ε̄ = (x̄_t − x̄0) / σ_t in the zero case):

    s_i = 0:               x̄0_i + σ_s (√(1 − η²) ε̄_i + η z_i)
    σ_s < σ_y / s_i:       x̄0_i + σ_s (√(1 − η²) (ȳ_i − x̄0_i) / (σ_y / s_i) + η z_i)
    σ_s ≥ σ_y / s_i:       (1 − η_b) x̄0_i + η_b ȳ_i + √(σ_s² − η_b² σ_y² / s_i²) z_i

and x_T is initialised from the measurement (paper Eq. 7): x̄_T,i = ȳ_i + √(σ_T² − σ_y² / s_i²) z_i where
σ_T > σ_y / s_i, and x̄_T,i = σ_T z_i (the prior, whose mean is negligible next to σ_T) elsewhere. At the
last step σ_s = 0: the estimate is x̄0 on noisy and unobserved components and (1 − η_b) x̄0 + η_b ȳ on the
others (ȳ itself with the default η_b = 1 when σ = 0, so a noise-free estimate reproduces y).

Tiny singular values (Gaussian blur): at σ > 0 they need no special case. (ȳ_i − x̄0_i) / (σ_y / s_i) is
computed as ((Uᵀy)_i − s_i x̄0_i) / σ_y, which never divides by s_i; for s_i ≪ σ_y it is essentially the
measurement noise divided by its std, a standard normal, so such components follow the prior. At σ = 0 every
s_i > 0 would be trusted exactly and ȳ_i = (Uᵀy)_i / s_i would amplify the float rounding of y by 1 / s_i,
so singular values below `zero_singular_rtol` times the image's largest one are treated as zero.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import torch
from torch import Tensor

from operators import Cap, Operator, randn_per_image
from operators.base import noise_std

from . import register
from .base import Solver, SolverConfig, SolverError, StepCallback, spectral_measurement


@dataclasses.dataclass(frozen=True)
class DDRMConfig(SolverConfig):
    steps: int = 20  # DDC paper App. B (and DDRM's README examples); DDRM's main.py defaults to 1000
    eta: float = 0.85  # η of the unobserved and noisy components: DDC paper App. B (DDRM's own choice)
    eta_b: float = 1.0  # η_b of the components less noisy than y: DDC paper App. B (DDRM's own choice)
    # Ours: at σ = 0, s_i < 1e-4 · max s counts as zero. float32 rounding of y (~1e-7) is then amplified at
    # most to ~1e-3 in ȳ; Gaussian blur has singular values down to ~1e-13.
    zero_singular_rtol: float = 1e-4
    # Ours: 0, every singular value as the operator has it. The official operators (DDRM's and DDNM's
    # svd_replacement.py / svd_operators.py, `ZERO = 3e-2`) zero 1-D singular values below 3e-2 for blur and SR
    # before forming their products; `singular_cutoff=3e-2` does the same, so those components are unobserved.
    singular_cutoff: float = 0.0

    def __post_init__(self) -> None:
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise SolverError(f"ddrm.steps must be a positive integer, got {self.steps!r}")
        if not 0.0 <= self.eta <= 1.0:
            raise SolverError(f"ddrm.eta must lie in [0, 1], got {self.eta}")
        if not 0.0 <= self.eta_b <= 1.0:
            raise SolverError(
                f"ddrm.eta_b must lie in [0, 1] (its variance σ² − η_b² σ_y²/s² < 0 above 1), got {self.eta_b}"
            )
        if not 0.0 <= self.zero_singular_rtol < 1.0:
            raise SolverError(f"ddrm.zero_singular_rtol must lie in [0, 1), got {self.zero_singular_rtol}")
        if not 0.0 <= self.singular_cutoff < 1.0:
            raise SolverError(f"ddrm.singular_cutoff must lie in [0, 1) (official: 3e-2), got {self.singular_cutoff}")


def ve_sigma(prior, t: int) -> float:
    """σ_t = √((1 − ᾱ_t) / ᾱ_t), the noise level of x_t / √ᾱ_t; 0 at t = -1 (the clean image)."""
    alpha_bar = float(prior.alpha_bar(t, torch.float64))
    return math.sqrt((1.0 - alpha_bar) / alpha_bar)


@register
class DDRM(Solver):
    name = "ddrm"
    Config = DDRMConfig
    requires = frozenset({Cap.FORWARD, Cap.SVD})
    summary = "DDRM: per-singular-value variational sampling in A's spectral basis (Kawar et al. 2022)"

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
        """The estimate before the final clamp to [-1, 1] (B, C, H, W): the sampler's own output, which
        reproduces noise-free measurements exactly."""
        eta, eta_b = self.config.eta, self.config.eta_b
        svd, device = op.svd, prior.device
        n = math.prod(op.input_shape)
        y = y.to(device=device, dtype=torch.float32)
        sigma_y = noise_std(float(sigma))
        with torch.no_grad():
            s, u_y = spectral_measurement(op, y, self.config.singular_cutoff)
        if sigma_y > 0:
            observed = s > 0
        else:
            observed = s > self.config.zero_singular_rtol * s.amax(dim=1, keepdim=True)
        safe_s = torch.where(observed, s, torch.ones_like(s))
        y_bar = torch.where(observed, u_y / safe_s, torch.zeros_like(u_y))  # ȳ = Σ⁺ Uᵀ y
        noise_of_y_bar = sigma_y / safe_s  # σ_y / s_i, the std of ȳ_i (observed components only)

        ts = prior.timesteps(self.config.steps)
        # Eq. 7: x̄_T from the measurement where σ_T exceeds its noise, from the prior elsewhere.
        sigma_T = ve_sigma(prior, ts[0])
        z = randn_per_image((n,), generators, dtype=torch.float32, device=device)
        from_y = observed & (noise_of_y_bar < sigma_T)
        spread = (sigma_T**2 - torch.where(from_y, noise_of_y_bar, torch.zeros_like(s)) ** 2).sqrt()
        x_bar = torch.where(from_y, y_bar + spread * z, sigma_T * z)
        x = math.sqrt(float(prior.alpha_bar(ts[0], torch.float64))) * svd.v(x_bar)

        for i, (t, t_next) in enumerate(zip(ts, [*ts[1:], -1], strict=True)):
            with torch.no_grad():
                prediction = prior.predict(x, t)
            if callback is not None:
                callback(step=i, t=t, x_t=x, eps=prediction.eps, x0=prediction.x0)
            with torch.no_grad():
                x0_bar, eps_bar = svd.vt(prediction.x0), svd.vt(prediction.eps)
                sigma_next = ve_sigma(prior, t_next)
                z = randn_per_image((n,), generators, dtype=torch.float32, device=device)
                # Eq. 8, case s_i = 0: DDIM in the VE parametrisation.
                x_bar = x0_bar + sigma_next * (math.sqrt(1 - eta**2) * eps_bar + eta * z)
                # Case σ_s ≥ σ_y / s_i: the measurement is less noisy than x̄_s should be.
                less_noisy = observed & (noise_of_y_bar <= sigma_next)
                spread = sigma_next**2 - (eta_b * torch.where(less_noisy, noise_of_y_bar, torch.zeros_like(s))) ** 2
                measured = (1 - eta_b) * x0_bar + eta_b * y_bar + spread.clamp_min(0).sqrt() * z
                x_bar = torch.where(less_noisy, measured, x_bar)
                if sigma_y > 0:
                    # Case σ_s < σ_y / s_i: (ȳ − x̄0) / (σ_y / s) = (Uᵀy − s x̄0) / σ_y, never divided by a tiny s.
                    noisier = observed & ~less_noisy
                    residual = (u_y - s * x0_bar) / sigma_y
                    mixed = x0_bar + sigma_next * (math.sqrt(1 - eta**2) * residual + eta * z)
                    x_bar = torch.where(noisier, mixed, x_bar)
                x = math.sqrt(float(prior.alpha_bar(t_next, torch.float64))) * svd.v(x_bar)
        return x
