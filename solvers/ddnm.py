"""DDNM and DDNM+: Zero-Shot Image Restoration Using Denoising Diffusion Null-Space Model (Wang, Yu & Zhang,
ICLR 2023).

Noise-free (σ = 0, paper Alg. 1): the prior's x̂0 keeps its null-space part and takes its range-space part
from the measurement,

    x̂0|y = x̂0 − A⁺(A x̂0 − y)                                             (paper Eq. 13)

and the next state is drawn DDIM-style around it, as the official code does (the paper's Alg. 1 writes the
DDPM posterior p(x_{t-1} | x_t, x̂0|y) instead):

    x_s = √ᾱ_s x̂0|y + √(1 − ᾱ_s) (η z + √(1 − η²) ε̂),    z ~ N(0, I),

with ε̂ the network's own prediction at x_t (not re-derived from x̂0|y). η = 1 draws x_s from q(x_s | x̂0|y);
η = 0 is deterministic. At the last step (ᾱ_{-1} = 1) x_s = x̂0|y, so for linear operators with A A⁺ A = A
the estimate reproduces y exactly. For jpeg10 A⁺ is the operator's `pinv`, the decoded image itself, so the
update is x̂0 − (JPEG(x̂0) − y): not a true pseudo-inverse, and consistency then holds only approximately.

Noisy (σ > 0, DDNM+, paper Eq. 17-19): the correction is scaled per singular value and the fresh noise is
reduced so that the measurement noise carried in by the correction plus the added noise matches the noise
x_s should hold. With A = U diag(s) Vᵀ, bars for V-basis coefficients (x̄0 = Vᵀ x̂0, ε̄ = Vᵀ ε̂, z̄ = Vᵀ z),
σ_y = 2σ the noise std on the [-1, 1] scale, and the official code's choices σ_t → √(1 − ᾱ_s), a_t → √ᾱ_s
for the paper's DDPM posterior std and x0 coefficient (the DDIM-style step above), each component of x_s is

    s_i = 0:                 a x̄0_i + σ (η z̄_i + √(1 − η²) ε̄_i)             (null space: DDNM as is)
    σ ≥ a σ_y / s_i:          a ȳ_i + √(σ² − a² σ_y² / s_i²) z̄_i                (λ_i = 1, Φ reduced)
    σ < a σ_y / s_i:          a (x̄0_i + λ_i (ȳ_i − x̄0_i)) + σ η z̄_i,  λ_i = √(1 − η²) σ s_i / (a σ_y)

with a = √ᾱ_s, σ = √(1 − ᾱ_s) and ȳ_i = (Uᵀy)_i / s_i. In the last case the correction's measurement noise,
of std a λ_i σ_y / s_i = √(1 − η²) σ, takes the place of the ε̂ term, and λ_i (ȳ_i − x̄0_i) is computed as
√(1 − η²) σ ((Uᵀy)_i − s_i x̄0_i) / (a σ_y), which never divides by s_i: tiny blur singular values simply
follow the prior, and every task with an SVD (sr4, sr8, gblur, inpaint, denoise) works. At the last step
σ = 0, so every observed component is in the last case with λ_i = 0: the estimate is x̂0, the prior's
denoised image. In the variance-exploding variable x_s / √ᾱ_s these are exactly DDRM's updates with η_b = 1.
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
class DDNMConfig(SolverConfig):
    steps: int = 100  # DDC paper App. B (DDNM's configs use 100 as well)
    eta: float = 0.85  # DDC paper App. B; DDNM's default
    # No time travel (the DDC paper's App. B: "no time travel"), so no travel length / repeat options.
    # Ours: 0, every singular value as the operator has it. DDNM's svd_operators.py (from DDRM's code) zeroes 1-D
    # singular values below `ZERO = 3e-2` for blur and SR; `singular_cutoff=3e-2` does the same: those components
    # count as unobserved, in DDNM+'s steps and, at σ = 0, in the pseudo-inverse V Σ⁺ Uᵀ (which then needs svd).
    singular_cutoff: float = 0.0

    def __post_init__(self) -> None:
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise SolverError(f"ddnm.steps must be a positive integer, got {self.steps!r}")
        if not 0.0 <= self.eta <= 1.0:
            raise SolverError(f"ddnm.eta must lie in [0, 1], got {self.eta}")
        if not 0.0 <= self.singular_cutoff < 1.0:
            raise SolverError(f"ddnm.singular_cutoff must lie in [0, 1) (official: 3e-2), got {self.singular_cutoff}")


@register
class DDNM(Solver):
    name = "ddnm"
    Config = DDNMConfig
    requires = frozenset({Cap.FORWARD, Cap.PINV})
    requires_when_noisy = frozenset({Cap.SVD})  # DDNM+ scales the correction per singular value
    summary = "DDNM: null-space consistency x̂0 − A⁺(A x̂0 − y); DDNM+ at σ > 0 (Wang et al. 2023)"

    def required_capabilities(self, sigma: float) -> frozenset[Cap]:
        # the official cutoff needs the singular values at σ = 0 too (jpeg10 then becomes unsupported)
        extra = frozenset({Cap.SVD}) if self.config.singular_cutoff > 0 else frozenset()
        return super().required_capabilities(sigma) | extra

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
        """The estimate before the final clamp to [-1, 1] (B, C, H, W): the last x̂0|y, which satisfies
        A x̂ = y for noise-free linear measurements (clamping would break that)."""
        eta = self.config.eta
        shape, device = prior.image_shape, prior.device
        y = y.to(device=device, dtype=torch.float32)
        sigma_y = noise_std(float(sigma))
        cutoff = self.config.singular_cutoff
        if sigma_y > 0:
            with torch.no_grad():
                s, u_y = spectral_measurement(op, y, cutoff)
            observed = s > 0
            y_bar = _divide_observed(u_y, s)  # ȳ = Σ⁺ Uᵀ y

        ts = prior.timesteps(self.config.steps)
        x = randn_per_image(shape, generators, dtype=torch.float32, device=device)
        for i, (t, t_next) in enumerate(zip(ts, [*ts[1:], -1], strict=True)):
            with torch.no_grad():
                prediction = prior.predict(x, t)
            if callback is not None:
                callback(step=i, t=t, x_t=x, eps=prediction.eps, x0=prediction.x0)
            alpha_bar = float(prior.alpha_bar(t_next, torch.float64))
            a, sigma_next = math.sqrt(alpha_bar), math.sqrt(1.0 - alpha_bar)
            z = randn_per_image(shape, generators, dtype=torch.float32, device=device)
            with torch.no_grad():
                if sigma_y == 0:
                    x0_y = prediction.x0 - _pinv(op, op(prediction.x0) - y, cutoff)  # Eq. 13
                    x = a * x0_y + sigma_next * (eta * z + math.sqrt(1 - eta**2) * prediction.eps)
                else:
                    x = self._ddnm_plus_step(prediction, z, op, s, u_y, y_bar, observed, a, sigma_next, sigma_y)
        return x

    def _ddnm_plus_step(
        self,
        prediction,
        z: Tensor,
        op: Operator,
        s: Tensor,
        u_y: Tensor,
        y_bar: Tensor,
        observed: Tensor,
        a: float,
        sigma_next: float,
        sigma_y: float,
    ) -> Tensor:
        """x_s from x̂0 and ε̂ with DDNM+'s per-singular-value Σ_t and Φ_t (Eq. 17-19); see the module docstring."""
        eta, svd = self.config.eta, op.svd
        x0_bar, eps_bar, z_bar = svd.vt(prediction.x0), svd.vt(prediction.eps), svd.vt(z)
        # Null space (and every component while the correction is exact): plain DDNM.
        x_bar = a * x0_bar + sigma_next * (eta * z_bar + math.sqrt(1 - eta**2) * eps_bar)
        # Compare σ with a σ_y / s_i as σ s_i ≥ a σ_y: no division by tiny singular values.
        full = observed & (sigma_next * s >= a * sigma_y)
        spread = (sigma_next**2 - (a * sigma_y / torch.where(full, s, torch.ones_like(s))) ** 2).clamp_min(0).sqrt()
        x_bar = torch.where(full, a * y_bar + spread * z_bar, x_bar)
        partial = observed & ~full
        correction = math.sqrt(1 - eta**2) * sigma_next * (u_y - s * x0_bar) / (a * sigma_y)  # λ_i (ȳ_i − x̄0_i)
        x_bar = torch.where(partial, a * (x0_bar + correction) + sigma_next * eta * z_bar, x_bar)
        return svd.v(x_bar)


def _pinv(op: Operator, residual: Tensor, cutoff: float) -> Tensor:
    """A⁺ r: the operator's own pseudo-inverse, or V Σ⁺ Uᵀ r with the official 1-D cutoff when one is set."""
    if cutoff <= 0:
        return op.pinv(residual)
    s, u_r = spectral_measurement(op, residual, cutoff)
    return op.svd.v(_divide_observed(u_r, s))


def _divide_observed(u: Tensor, s: Tensor) -> Tensor:
    """Σ⁺ u: u_i / s_i where s_i > 0, and 0 where the component is not observed."""
    observed = s > 0
    return torch.where(observed, u / torch.where(observed, s, torch.ones_like(s)), torch.zeros_like(u))
