"""Pseudoinverse-guided diffusion (ΠGDM; Song, Vahdat, Mardani, Kautz 2023, "Pseudoinverse-Guided Diffusion
Models for Inverse Problems", Algorithm 1 with Eqs. 5-8).

ΠGDM approximates p(x₀ | x_t) by N(x̂₀, r_t² I) around the Tweedie estimate, so that the measurement
likelihood is Gaussian and its score has a closed form (Eqs. 5-7), a vector-Jacobian product through the
network:

    p(y | x_t) ≈ N(A x̂₀, r_t² A Aᵀ + s_y² I)                                          (Eq. 5)
    g = (∂x̂₀/∂x_t)ᵀ Aᵀ (r_t² A Aᵀ + s_y² I)⁻¹ (y - A x̂₀)  ≈ ∇_{x_t} log p(y | x_t)   (Eqs. 6-7)

and the step is a DDIM step (η as the paper's Algorithm 1) whose x̂₀ is the conditional Tweedie estimate
E[x₀ | x_t, y] = x̂₀ + (1 - ᾱ_t)/√ᾱ_t · g (the unconditional score plus the guidance, Eq. 8), with the
network's ε̂ kept:

    c₁ = η √((1 - ᾱ_t/ᾱ_s)(1 - ᾱ_s)/(1 - ᾱ_t)),   c₂ = √(1 - ᾱ_s - c₁²)
    x_s = √ᾱ_s (x̂₀ + w (1 - ᾱ_t)/√ᾱ_t · g) + c₁ z + c₂ ε̂

Choices, and why:

* r_t². The paper sets r_t² = σ_t²/(1 + σ_t²) in its variance-exploding notation (σ_t² = (1 - ᾱ_t)/ᾱ_t), the
  posterior variance of x₀ given x_t for a standard normal x₀: r_t² = 1 - ᾱ_t in ours (`x0_variance="paper"`).
  The public implementations (NVlabs/RED-diff `algos/pgdm.py`, the one the DDC paper's numbers most likely
  come from, and azula) add √ᾱ_s √ᾱ_t w (∂x̂₀/∂x_t)ᵀ (A⁺y - A⁺A x̂₀) to the DDIM step. Substituting into the
  update above shows that this is exactly r_t² = (1 - ᾱ_t)/ᾱ_t = σ_t², the posterior variance under a flat
  (infinitely wide) prior (`x0_variance="flat"`): then (1 - ᾱ_t)/√ᾱ_t · g = √ᾱ_t (∂x̂₀/∂x_t)ᵀ A⁺(y - A x̂₀)
  at s_y = 0. "flat" guides ᾱ_t times more weakly, so hardly at all at high noise. The default is "flat":
  it reproduces the implementation behind the DDC paper's table and, on the analytic Gaussian prior, its
  sample mean is closer to the exact posterior mean (measured in tests/test_solver_pigdm.py).
* s_y = 2σ: the noise std on the [-1, 1] scale (σ is on [0, 1], the project's convention), the paper's noisy
  likelihood (Eq. 5). The public code uses the noiseless update at every σ; `likelihood="noiseless"` does the
  same (s_y = 0), so "reproduces the public update" holds at σ = 0 by default and at every σ with that option.
* The inverse. With the operator's SVD A = U S Vᵀ, Aᵀ (r_t² A Aᵀ + s_y² I)⁻¹ = V diag(s/(r_t² s² + s_y²)) Uᵀ,
  one division per singular value, so ΠGDM runs noisy on every SVD task, Gaussian deblurring included.
  At σ = 0 this is A⁺/r_t², and the operator's own pseudo-inverse is used instead, which discards singular
  values below its threshold (the pseudo-inverse form of the paper's noiseless ΠGDM, Sec. 3.1), so tiny
  blur singular values are not divided by. The residual A⁺y - A⁺A(x̂₀) is detached: the gradient flows only
  through the network, never through A, so the operator need not be differentiable.
* Operators without an SVD (jpeg10, whose A⁺ is the decoded image itself): the pseudo-inverse form
  (A⁺y - A⁺A(x̂₀)) / (r_t² + s_y²), which treats A Aᵀ as the identity in the A⁺ space. This is exact for the
  noiseless case and for operators with orthonormal rows; for JPEG at σ > 0 it is an approximation.
* x_T ~ N(0, I) at the first step (the paper's Algorithm 1; RED-diff's code starts from a noised A⁺y).
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
from .base import Solver, SolverConfig, SolverError, StepCallback

X0_VARIANCES = ("flat", "paper")
LIKELIHOODS = ("paper", "noiseless")


@dataclasses.dataclass(frozen=True)
class PiGDMConfig(SolverConfig):
    steps: int = 100  # DDC paper, App. B
    eta: float = 1.0  # DDC paper, App. B ("as suggested"); ΠGDM's Algorithm 1 with η = 1
    guidance_weight: float = 1.0  # DDC paper, App. B: w = 1 (RED-diff's grad_term_weight)
    x0_variance: str = "flat"  # r_t²: "flat" (1-ᾱ_t)/ᾱ_t as RED-diff's code, or "paper" 1-ᾱ_t (see module doc)
    # s_y in Eq. 5: "paper" 2σ; "noiseless" 0 whatever σ, as the public code (RED-diff's algos/pgdm.py) does
    likelihood: str = "paper"

    def __post_init__(self) -> None:
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise SolverError(f"pigdm.steps must be a positive integer (default 100), got {self.steps!r}")
        if not (isinstance(self.eta, int | float) and 0.0 <= self.eta <= 1.0):
            raise SolverError(f"pigdm.eta must be a number in [0, 1] (default 1.0), got {self.eta!r}")
        if not (isinstance(self.guidance_weight, int | float) and math.isfinite(self.guidance_weight)):
            raise SolverError(
                f"pigdm.guidance_weight must be a finite number (default 1.0), got {self.guidance_weight!r}"
            )
        if self.likelihood not in LIKELIHOODS:
            raise SolverError(f"unknown pigdm.likelihood {self.likelihood!r} (available: {', '.join(LIKELIHOODS)})")
        if self.x0_variance not in X0_VARIANCES:
            raise SolverError(f"unknown pigdm.x0_variance {self.x0_variance!r} (available: {', '.join(X0_VARIANCES)})")


def _likelihood_direction(
    y: Tensor, op: Operator, x0: Tensor, r2: float, noise_std: float, y_pinv: Tensor | None
) -> Tensor:
    """Aᵀ (r² A Aᵀ + s_y² I)⁻¹ (y - A x̂₀), or its pseudo-inverse form (see the module docstring); (B, C, H, W).

    x0 is detached here; the caller differentiates ⟨direction, x̂₀(x_t)⟩ through the network.
    """
    with torch.no_grad():
        if noise_std > 0 and op.supports(Cap.SVD):
            svd = op.svd
            s = svd.singulars_like(x0)
            residual = svd.ut(y) - s * svd.vt(x0)[:, : s.shape[-1]]
            coefficients = residual * s / (r2 * s * s + noise_std**2)
            padded = torch.zeros(x0.shape[0], x0[0].numel(), dtype=x0.dtype, device=x0.device)
            padded[:, : coefficients.shape[1]] = coefficients
            return svd.v(padded)
        assert y_pinv is not None
        return (y_pinv - op.pinv(op(x0))) / (r2 + noise_std**2)


@register
class PiGDM(Solver):
    name = "pigdm"
    Config = PiGDMConfig
    # A⁺ for the noiseless (and SVD-less) form; the SVD is used when present at σ > 0. The residual is
    # detached, so A itself is never differentiated.
    requires = frozenset({Cap.FORWARD, Cap.PINV})
    uses_when_available = frozenset({Cap.SVD})  # the exact noisy likelihood step; A⁺ form without it
    backprop_through_network = True
    summary = "ΠGDM: DDIM steps guided by the Gaussian likelihood of y given x̂₀, a VJP through the network"

    config: PiGDMConfig

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
        """Algorithm 1 of ΠGDM on y (B, *op.measurement_shape); returns x̂ (B, C, H, W).

        σ is the measurement noise on the [0, 1] scale (std 2σ on [-1, 1]); image b's draws come from
        generators[b] only.
        """
        config = self.config
        shape, device = prior.image_shape, prior.device
        # σ on [0, 1] -> std on [-1, 1]; the public code's update ignores the noise (likelihood="noiseless")
        s_y = noise_std(float(sigma)) if config.likelihood == "paper" else 0.0
        y = y.to(device=device, dtype=torch.float32)
        with torch.no_grad():
            y_pinv = op.pinv(y)
        ts = prior.timesteps(config.steps)
        x = randn_per_image(shape, generators, dtype=torch.float32, device=device)  # x_T ~ N(0, I)
        for i, (t, s) in enumerate(zip(ts, [*ts[1:], -1], strict=True)):
            ab_t = float(prior.alphas_cumprod[t])
            ab_s = float(prior.alphas_cumprod[s]) if s >= 0 else 1.0
            r2 = 1.0 - ab_t if config.x0_variance == "paper" else (1.0 - ab_t) / ab_t
            with torch.enable_grad():
                x = x.detach().requires_grad_(True)
                prediction = prior.predict(x, t)
                direction = _likelihood_direction(y, op, prediction.x0.detach(), r2, s_y, y_pinv)
                # Eq. 7: the vector-Jacobian product (∂x̂₀/∂x_t)ᵀ direction; rows are independent images.
                (score,) = torch.autograd.grad((direction * prediction.x0).sum(), x)
            x = x.detach()
            x0, eps = prediction.x0.detach(), prediction.eps.detach()
            if callback is not None:
                callback(step=i, t=t, x_t=x, eps=eps, x0=x0)
            # Eq. 8: conditional Tweedie estimate, the unconditional one plus (1 - ᾱ_t)/√ᾱ_t times the guidance.
            x0_guided = x0 + config.guidance_weight * (1.0 - ab_t) / math.sqrt(ab_t) * score
            c1 = config.eta * math.sqrt((1.0 - ab_t / ab_s) * (1.0 - ab_s) / (1.0 - ab_t))
            c2 = math.sqrt(max(1.0 - ab_s - c1 * c1, 0.0))
            noise = randn_per_image(shape, generators, dtype=x.dtype, device=device)
            x = math.sqrt(ab_s) * x0_guided + c1 * noise + c2 * eps
        return x
