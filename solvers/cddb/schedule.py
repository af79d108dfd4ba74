"""The diffusion bridge of I²SB (Liu et al. 2023, "I²SB: Image-to-Image Schrödinger Bridge"), which CDDB samples.

A bridge runs between a clean image x₀ (step 0) and its degraded image x₁ = A⁺y (the last step), not between an
image and noise, so it is kept apart from the priors' DDPM schedule on purpose: its σ's are accumulated β's, not
√(1 − ᾱ).

    β_n     = (linspace(√β_min, √(β_max / N), N)²), first half mirrored onto the second (symmetric in n)
    σ_n²    = Σ_{s ≤ n} β_s          (variance accumulated from the x₀ end)
    σ̄_n²    = Σ_{s ≥ n} β_s          (variance accumulated from the x₁ end)

Marginal (I²SB Eq. 11): q(x_n | x₀, x₁) = N(σ̄_n²/(σ_n² + σ̄_n²)·x₀ + σ_n²/(σ_n² + σ̄_n²)·x₁,
                                            σ_n²σ̄_n²/(σ_n² + σ̄_n²)·I).
Posterior (I²SB Eq. 4), for m < n: p(x_m | x_n, x₀) = N(c₀·x₀ + c_n·x_n, v·I) with
    c₀ = (σ_n² − σ_m²)/σ_n²,  c_n = σ_m²/σ_n²,  v = σ_m²(σ_n² − σ_m²)/σ_n²,
which is a Brownian bridge from x₀ to x_n and so does not involve x₁.

The network predicts (x_n − x₀)/σ_n (I²SB Eq. 12); x̂₀ = x_n − σ_n·output. Defaults: I²SB's `make_beta_schedule`
with β_min = 1e-4 and N = 1000; β_max = 0.3 for super-resolution and JPEG (I²SB's and CDDB's training scripts).

How the network sees the step is not part of the schedule: our bridges take n itself, I²SB's released ones
linspace(10⁻⁴, 1, N)[n]·N (0.1..1000); solvers.cddb.network applies either inside the loaded network.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

DEFAULT_STEPS = 1000  # I²SB `--interval`
DEFAULT_BETA_MIN = 1e-4  # I²SB make_beta_schedule's linear_start
DEFAULT_BETA_MAX = 0.3  # I²SB / CDDB scripts for sr4 and JPEG (1.0 with the OT-ODE for blur and inpainting)


class BridgeSchedule:
    """The bridge's β's and the coefficients of its marginal and posterior, in float64 (used in float32)."""

    def __init__(
        self, steps: int = DEFAULT_STEPS, beta_max: float = DEFAULT_BETA_MAX, beta_min: float = DEFAULT_BETA_MIN
    ):
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 2 or steps % 2:
            raise ValueError(f"bridge steps must be an even integer >= 2, got {steps!r}")
        for name, value in (("beta_max", beta_max), ("beta_min", beta_min)):
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise ValueError(f"bridge {name} must be a finite number > 0, got {value!r}")
        self.steps, self.beta_max, self.beta_min = int(steps), float(beta_max), float(beta_min)
        half = torch.linspace(beta_min**0.5, (beta_max / steps) ** 0.5, steps, dtype=torch.float64) ** 2
        half = half[: steps // 2]
        self.betas = torch.cat([half, half.flip(0)])
        self.sigma2 = self.betas.cumsum(0)  # σ_n²
        self.sigma_bar2 = self.betas.flip(0).cumsum(0).flip(0)  # σ̄_n²

    def spec(self) -> dict[str, Any]:
        return {"steps": self.steps, "beta_min": self.beta_min, "beta_max": self.beta_max}

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> BridgeSchedule:
        return cls(int(spec["steps"]), float(spec["beta_max"]), float(spec["beta_min"]))

    def sigma(self, n: int | Tensor) -> Tensor:
        """σ_n, the std the network's output is scaled by, for an int or a (B,) tensor of steps."""
        return self.sigma2[torch.as_tensor(n, device="cpu")].sqrt()

    def marginal(self, n: int | Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(weight of x₀, weight of x₁, std) of q(x_n | x₀, x₁), for an int or a (B,) tensor of steps."""
        index = torch.as_tensor(n, device="cpu")
        s2, sb2 = self.sigma2[index], self.sigma_bar2[index]
        total = s2 + sb2
        return sb2 / total, s2 / total, (s2 * sb2 / total).sqrt()

    def sample_marginal(self, x0: Tensor, x1: Tensor, n: Tensor, noise: Tensor) -> Tensor:
        """x_n ~ q(x_n | x₀, x₁) for per-image steps n (B,), given standard-normal `noise` like x0."""
        shape = (-1,) + (1,) * (x0.ndim - 1)
        w0, w1, std = (c.to(x0.device, x0.dtype).view(shape) for c in self.marginal(n))
        return w0 * x0 + w1 * x1 + std * noise

    def target(self, x_n: Tensor, x0: Tensor, n: Tensor) -> Tensor:
        """The network's training target (x_n − x₀)/σ_n, per-image steps n (B,)."""
        shape = (-1,) + (1,) * (x0.ndim - 1)
        return (x_n - x0) / self.sigma(n).to(x0.device, x0.dtype).view(shape)

    def x0_from_output(self, x_n: Tensor, n: int, output: Tensor) -> Tensor:
        """x̂₀ = x_n − σ_n·output."""
        return x_n - float(self.sigma(n)) * output

    def posterior(self, m: int, n: int) -> tuple[float, float, float]:
        """(c₀, c_n, std) of p(x_m | x_n, x₀), m < n; std is 0 for m = 0 (I²SB adds no noise at the last step)."""
        if not 0 <= m < n < self.steps:
            raise ValueError(f"posterior needs 0 <= m < n < {self.steps}, got m={m}, n={n}")
        s2_n, s2_m = float(self.sigma2[n]), float(self.sigma2[m])
        delta = s2_n - s2_m
        std = math.sqrt(s2_m * delta / s2_n) if m > 0 else 0.0
        return delta / s2_n, s2_m / s2_n, std

    def sampling_steps(self, nfe: int) -> list[int]:
        """NFE + 1 steps from 0 to N − 1, evenly spaced and rounded (I²SB `space_indices(N, nfe + 1)`),
        ascending; sampling walks them from the last down to 0, one network call per pair."""
        if isinstance(nfe, bool) or not isinstance(nfe, int) or not 0 < nfe < self.steps:
            raise ValueError(f"bridge NFE must be an integer in [1, {self.steps - 1}], got {nfe!r}")
        # Accumulated, not i·stride: they round differently at ties (at NFE 20 the 11th step is
        # 499, not 500), and I²SB accumulates.
        stride, position, steps = (self.steps - 1) / nfe, 0.0, []
        for _ in range(nfe + 1):
            steps.append(round(position))
            position += stride
        return steps
