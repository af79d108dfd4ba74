"""`uncond` (ancestral DDPM) against the exact law it samples on a Gaussian prior.

With the exact ε of a Gaussian prior N(μ, Σ), every step of ancestral sampling is linear and Gaussian, and
diagonal in Σ's eigenbasis: component k with prior mean m_k and variance λ_k has Tweedie estimate
x̂₀ = m_k + g_t (x_t − √ᾱ_t m_k), g_t = √ᾱ_t λ_k / (ᾱ_t λ_k + 1 − ᾱ_t), and the step t → s draws
x_s = c₀ x̂₀ + c_t x_t + √β̃ z (DDPM's posterior q(x_s | x_t, x̂₀); β' = 1 − ᾱ_t/ᾱ_s for skipped steps). So the
sampler's output law is N(m_out, v_out) per component, computed below from the schedule alone. DDPM with the
posterior variance β̃ is not an exact sampler of the prior: it gives slightly less variance than Σ.
The prior is `gaussian:16?variant=lowvar` (varying mean, steep spectrum, pixel std ≈ 0.1), so that the samples
stay inside [-1, 1] and the sampler's clamp does not matter.
"""

from __future__ import annotations

import functools
import math

import pytest
import torch

import operators
import solvers
from bench.priors import load_prior

DRAWS = 512


@pytest.fixture(scope="module")
def prior():
    return load_prior("gaussian:16?variant=lowvar")


def schedule_alpha_bar(prior) -> torch.Tensor:
    """ᾱ_t of DDPM's linear schedule, rebuilt here from the prior's recorded config (not its code)."""
    config = prior.spec()["config"]["schedule"]
    betas = torch.linspace(config["beta_start"], config["beta_end"], config["num_train_timesteps"], dtype=torch.float64)
    return torch.cumprod(1 - betas, 0)


def exact_law(prior, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and variance (C, H, W) in the prior's eigenbasis of uncond's output at `steps` steps."""
    alpha_bar = schedule_alpha_bar(prior)
    lam = prior.eigenvalues
    m = prior.to_basis(prior.mean[None])[0]
    mean, var = torch.zeros_like(m), torch.ones_like(m)  # x_T ~ N(0, I)
    ts = prior.timesteps(steps)
    for t, s in zip(ts, [*ts[1:], -1], strict=True):
        ab_t = float(alpha_bar[t])
        ab_s = 1.0 if s < 0 else float(alpha_bar[s])
        gain = math.sqrt(ab_t) * lam / (ab_t * lam + 1 - ab_t)
        # x̂₀ = (1 − g√ᾱ_t) m + g x_t, an affine map of x_t
        beta = 1 - ab_t / ab_s
        c0 = math.sqrt(ab_s) * beta / (1 - ab_t)
        ct = math.sqrt(ab_t / ab_s) * (1 - ab_s) / (1 - ab_t)
        slope = c0 * gain + ct
        mean = c0 * (1 - gain * math.sqrt(ab_t)) * m + slope * mean
        var = slope**2 * var + ((1 - ab_s) / (1 - ab_t) * beta if s >= 0 else 0.0)
    return mean, var


@functools.cache
def draws(prior, steps: int, n: int = DRAWS) -> torch.Tensor:
    op = operators.build("denoise", shape=prior.image_shape)
    y = torch.zeros(n, *op.measurement_shape)
    generators = [torch.Generator().manual_seed(500 + i) for i in range(n)]
    solver = solvers.build("uncond", steps=steps)
    return solver.solve(y, op, prior, sigma=0.0, generators=generators).double()


def law_statistics(samples: torch.Tensor, prior, mean: torch.Tensor, var: torch.Tensor) -> tuple[float, float, float]:
    """(mean error in Monte Carlo units per component, rms relative variance error, total variance ratio − 1 in
    units of its Monte Carlo std √(2 Σv²/(n − 1)) / Σv, which is 0.024 here: a few components dominate)."""
    coefficients = prior.to_basis(samples).reshape(samples.shape[0], -1)
    mean, var, n = mean.reshape(-1), var.reshape(-1), samples.shape[0]
    mean_error = float(((coefficients.mean(0) - mean).square() / (var / n)).mean().sqrt())
    sample_var = coefficients.var(0)
    relative = float(((sample_var - var) / var).square().mean().sqrt())
    ratio_std = float((2 * var.square().sum() / (n - 1)).sqrt() / var.sum())
    return mean_error, relative, float(sample_var.sum() / var.sum() - 1) / ratio_std


def follows(statistics: tuple[float, float, float]) -> bool:
    """Expected for exact draws: mean error ≈ 1, variance error ≈ √(2/(n − 1)) = 0.063, ratio within ±4 std."""
    mean_error, var_error, ratio_z = statistics
    return mean_error < 1.2 and var_error < 0.08 and abs(ratio_z) < 4


@pytest.mark.slow
@pytest.mark.parametrize("steps", [1000, 100])
def test_uncond_samples_follow_the_exact_law_of_ddpm(prior, steps):
    """Measured (mean error, variance error, total-variance ratio): 1000 steps (1.00, 0.060, 0.973 = −1.1 std),
    100 steps (0.99, 0.061, 1.010 = +0.4 std)."""
    samples = draws(prior, steps)
    assert samples.abs().max() < 1  # inside the clamp: the law below is the sampler's whole output
    mean, var = exact_law(prior, steps)
    assert follows(law_statistics(samples, prior, mean, var))


def test_uncond_law_differs_from_the_prior_as_computed(prior):
    """DDPM with β̃ under-disperses this prior: the law's total variance is 0.973 of Σ's at 1000 steps and
    0.854 at 100. The same acceptance test refuses the prior itself as the draws' law (variance error 0.51),
    and a law whose mean is off by 0.2 std per component (mean error 4.7)."""
    mean, var = exact_law(prior, 1000)
    assert 0.96 < float(var.sum() / prior.eigenvalues.sum()) < 0.98
    assert 0.84 < float(exact_law(prior, 100)[1].sum() / prior.eigenvalues.sum()) < 0.87
    samples = draws(prior, 1000)
    prior_mean = prior.to_basis(prior.mean[None])[0]
    assert not follows(law_statistics(samples, prior, prior_mean, prior.eigenvalues))
    shifted = mean + 0.2 * var.sqrt()
    assert not follows(law_statistics(samples, prior, shifted, var))
