"""The discrete DDPM noise schedule of a prior, and every coefficient solvers derive from it.

    x_t = sqrt(ᾱ_t) x0 + sqrt(1 - ᾱ_t) ε,   ε ~ N(0, I),   t in {0, ..., T-1},   ᾱ_t = prod_{i<=t} (1 - β_i).

Timesteps are integers of the training schedule; t = -1 stands for the clean image (ᾱ_{-1} = 1), so that the
last step of a sampler, "t -> clean", uses the same formulas as every other step. The schedule is kept once,
in float64 on the CPU, and every coefficient is derived from `alphas_cumprod` when asked for, then handed
over on the network's device. `NoiseSchedule` is the part of `bench.priors.Prior` that calls no network:
ᾱ, the Tweedie conversions, the posterior q(x_s | x_t, x0) between respaced steps, Improved DDPM's learned
variance, and the timestep spacings (respacing) of the samplers.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

__all__ = [
    "DDPM_BETA_END",
    "DDPM_BETA_START",
    "DDPM_NUM_TIMESTEPS",
    "NoiseSchedule",
    "PosteriorCoefficients",
    "PriorError",
    "linear_betas",
    "widest_float",
]


class PriorError(ValueError):
    """Bad input to a prior or its schedule, or a prior that cannot be loaded: the message names the problem and
    the fix."""


# DDPM (Ho et al. 2020, Sec. 4): T = 1000, β linear from 1e-4 to 0.02; ADM and most pixel-space priors use it.
DDPM_NUM_TIMESTEPS = 1000
DDPM_BETA_START = 1e-4
DDPM_BETA_END = 0.02


def linear_betas(
    num_timesteps: int = DDPM_NUM_TIMESTEPS, beta_start: float = DDPM_BETA_START, beta_end: float = DDPM_BETA_END
) -> Tensor:
    """DDPM's linear β schedule, (T,) float64 (with the defaults, ᾱ_999 ≈ 4.04e-5)."""
    return torch.linspace(beta_start, beta_end, num_timesteps, dtype=torch.float64)


@dataclass(frozen=True)
class PosteriorCoefficients:
    """q(x_s | x_t, x0) = N(coef_x0 x0 + coef_xt x_t, variance I) between timesteps t > s >= -1.

    With ᾱ_{-1} = 1 and β' = 1 - ᾱ_t / ᾱ_s (the β of the respaced step; β_t itself when s = t - 1):
        coef_x0 = sqrt(ᾱ_s) β' / (1 - ᾱ_t)
        coef_xt = sqrt(1 - β') (1 - ᾱ_s) / (1 - ᾱ_t)
        variance = β' (1 - ᾱ_s) / (1 - ᾱ_t)          (β̃', zero when s = -1)
    log_variance is log(variance), clipped as Improved DDPM does: where the variance is zero (s = -1) it is
    replaced by β̃_1, the variance of the step 1 -> 0. Each tensor is (B, 1, 1, 1), broadcastable to images.
    """

    coef_x0: Tensor
    coef_xt: Tensor
    variance: Tensor
    log_variance: Tensor
    beta: Tensor

    def mean(self, x_t: Tensor, x0: Tensor) -> Tensor:
        """The posterior mean coef_x0 x0 + coef_xt x_t for images (B, C, H, W)."""
        return self.coef_x0 * x0 + self.coef_xt * x_t


class NoiseSchedule:
    """β_1..β_T and ᾱ in float64 on the CPU, with the coefficients derived from them (see the module docstring).

    `device` is where coefficients are handed over (a prior sets it to its network's device).
    """

    def __init__(self, betas: Tensor, device: str | torch.device = "cpu") -> None:
        betas = torch.as_tensor(betas, dtype=torch.float64).detach().cpu()
        if betas.ndim != 1 or len(betas) < 2 or not bool(((betas > 0) & (betas < 1)).all()):
            raise PriorError(
                f"betas must be a 1-D schedule of at least 2 values in (0, 1), got shape {tuple(betas.shape)}"
            )
        self.betas = betas
        self.alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
        self.num_timesteps = len(betas)
        self.device = torch.device(device)

    def alpha_bar(self, t: int | Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
        """ᾱ_t for t in -1..T-1 (ᾱ_{-1} = 1): (B, 1, 1, 1) for a tensor t of shape (B,), (1, 1, 1, 1) for an int."""
        return self._schedule_value(self._alpha_bar64(t), dtype)

    def x0_from_eps(self, x_t: Tensor, t: int | Tensor, eps: Tensor) -> Tensor:
        """(x_t - sqrt(1 - ᾱ_t) eps) / sqrt(ᾱ_t), in x_t's dtype."""
        ab = self._alpha_bar64(t)
        return (x_t - self._schedule_value((1.0 - ab).sqrt(), x_t.dtype) * eps) / self._schedule_value(
            ab.sqrt(), x_t.dtype
        )

    def eps_from_x0(self, x_t: Tensor, t: int | Tensor, x0: Tensor) -> Tensor:
        """(x_t - sqrt(ᾱ_t) x0) / sqrt(1 - ᾱ_t), the ε consistent with an estimate of x0; t in 0..T-1."""
        ab = self._alpha_bar64(t)
        if bool((ab >= 1.0).any()):
            raise PriorError("eps_from_x0 needs t >= 0: at t = -1 the image holds no noise")
        return (x_t - self._schedule_value(ab.sqrt(), x_t.dtype) * x0) / self._schedule_value(
            (1.0 - ab).sqrt(), x_t.dtype
        )

    def q_posterior(
        self, t: int | Tensor, s: int | Tensor | None = None, dtype: torch.dtype = torch.float32
    ) -> PosteriorCoefficients:
        """Coefficients of q(x_s | x_t, x0) for t > s >= -1 (s defaults to t - 1); see PosteriorCoefficients.

        t and s are ints or (B,) integer tensors; s = -1 is the clean image, where the variance is 0.
        """
        ab_t = self._alpha_bar64(t)
        ab_s = self._alpha_bar64(t - 1 if s is None else s)
        if bool((ab_s <= ab_t).any()):
            raise PriorError(f"q_posterior needs t > s (earlier step s), got t={_show(t)}, s={_show(s)}")
        beta = 1.0 - ab_t / ab_s
        variance = beta * (1.0 - ab_s) / (1.0 - ab_t)
        # Improved DDPM clips log β̃ at the last step, where β̃ = 0, to the value of the step 1 -> 0.
        ab0, ab1 = self.alphas_cumprod[0], self.alphas_cumprod[1]
        variance_1 = (1.0 - ab1 / ab0) * (1.0 - ab0) / (1.0 - ab1)
        log_variance = torch.where(variance > 0, variance, variance_1).log()
        return PosteriorCoefficients(
            coef_x0=self._schedule_value(ab_s.sqrt() * beta / (1.0 - ab_t), dtype),
            coef_xt=self._schedule_value((1.0 - beta).sqrt() * (1.0 - ab_s) / (1.0 - ab_t), dtype),
            variance=self._schedule_value(variance, dtype),
            log_variance=self._schedule_value(log_variance, dtype),
            beta=self._schedule_value(beta, dtype),
        )

    def learned_log_variance(self, frac: Tensor, t: int | Tensor, s: int | Tensor | None = None) -> Tensor:
        """frac log β' + (1 - frac) log β̃' (clipped) for the step t -> s (default s = t - 1: Improved DDPM Eq. 15).

        frac: (B, C, H, W), `Prediction.variance_frac`. frac = 1 gives log β', frac = 0 the clipped log β̃'.
        """
        coefficients = self.q_posterior(t, s, dtype=torch.float64)
        log_beta = coefficients.beta.log().to(device=frac.device, dtype=frac.dtype)
        log_tilde = coefficients.log_variance.to(device=frac.device, dtype=frac.dtype)
        return frac * log_beta + (1.0 - frac) * log_tilde

    def timesteps(self, n: int, spacing: Literal["uniform", "linspace", "respace"] = "uniform") -> list[int]:
        """n distinct training timesteps in descending order, for an n-step sampler.

        "uniform" (default): t_i = i * (T // n), i = 0..n-1, the "uniform" skip of DDIM's code that DDNM,
            DDRM and DDC inherit (range(0, T, T // n) has exactly these n values when n divides T). For
            T = 1000, n = 5: [800, 600, 400, 200, 0]; the highest step is T - T // n, not T - 1.
        "linspace": round(i (T - 1) / (n - 1)), Improved DDPM's even spacing, which includes T - 1 and 0.
        "respace": the set of guided-diffusion's `space_timesteps(T, str(n))` (respace.py, one section), which
            ADM and the official DPS code sample on: an index that starts at 0.0 and grows by the float
            stride (T - 1) / (n - 1) once per step, each value rounded by Python's `round` (halves to even);
            {0} for n = 1. For T = 1000, n = 100: 999, 989, ..., 20, 10, 0. It is "linspace" except where the
            summed stride lands within rounding error of a half: T = 1000, n = 21 has 499 here and 500 there.
        A sampler's last step goes from timesteps[-1] to -1, the clean image.
        """
        n = int(n)
        if not 1 <= n <= self.num_timesteps:
            raise PriorError(f"number of steps must be in 1..{self.num_timesteps}, got {n}")
        if spacing == "uniform":
            stride = self.num_timesteps // n
            steps = [i * stride for i in range(n)]
        elif spacing == "linspace":
            if n == 1:
                steps = [self.num_timesteps - 1]
            else:
                stride = (self.num_timesteps - 1) / (n - 1)
                steps = [int(round(i * stride)) for i in range(n)]
        elif spacing == "respace":
            # Accumulated, not multiplied: i * stride and the running sum differ in the last bit, which
            # decides the rounding of values that are halves in exact arithmetic.
            increment = 1.0 if n == 1 else (self.num_timesteps - 1) / (n - 1)
            index, steps = 0.0, []
            for _ in range(n):
                steps.append(round(index))
                index += increment
        else:
            raise PriorError(f"unknown timestep spacing {spacing!r} (available: uniform, linspace, respace)")
        return steps[::-1]

    # ----- internals ----------------------------------------------------------------------------
    def _alpha_bar64(self, t: int | Tensor) -> Tensor:
        """ᾱ_t as float64 on the CPU, shape () for an int and (B,) for a tensor; t = -1 gives 1."""
        steps = _integer_steps(t).cpu()
        if bool(((steps < -1) | (steps >= self.num_timesteps)).any()):
            raise PriorError(f"timesteps must lie in -1..{self.num_timesteps - 1}, got {_show(t)}")
        padded = torch.cat([torch.ones(1, dtype=torch.float64), self.alphas_cumprod])
        return padded[steps + 1]

    def _schedule_value(self, values: Tensor, dtype: torch.dtype) -> Tensor:
        """float64 values of shape () or (B,) -> (B or 1, 1, 1, 1) in `dtype` on the network's device (float64
        asked for on a device without it, Apple's MPS, gives float32 there)."""
        if dtype == torch.float64:
            dtype = widest_float(self.device)
        return values.reshape(-1, 1, 1, 1).to(device=self.device, dtype=dtype)


def widest_float(device: str | torch.device) -> torch.dtype:
    """float64 where the device computes it (CPU, CUDA), else float32: Apple's MPS has no float64 at all."""
    return torch.float64 if torch.device(device).type in ("cpu", "cuda") else torch.float32


def _integer_steps(t: int | Tensor) -> Tensor:
    if isinstance(t, bool) or (isinstance(t, Tensor) and t.dtype == torch.bool):
        raise PriorError(f"timesteps must be integers, got a boolean {t!r}")
    if isinstance(t, Tensor):
        if t.is_floating_point() or t.is_complex():
            raise PriorError(f"timesteps must be an integer tensor, got {t.dtype}; use t.long() on integer values")
        return t.long()
    try:
        return torch.tensor(operator.index(t), dtype=torch.long)
    except TypeError as exc:
        raise PriorError(f"timesteps must be an int or an integer tensor, got {type(t).__name__} {t!r}") from exc


def _show(t: int | Tensor | None) -> str:
    return str(t.tolist()) if isinstance(t, Tensor) else str(t)
