"""The shared sampling steps: the DDPM posterior step that solvers and trainers take on a prior
(`posterior_step`), and two unconditional samplers for checking a prior: ancestral DDPM and deterministic DDIM.

Both take `eps_fn(x_t, t) -> ε̂` with t an integer tensor (B,), and the prior's ᾱ (float64, (T,)). Like ADM's
samplers (`clip_denoised=True`), each step clamps the Tweedie estimate x̂₀ to [-1, 1] and moves with the
posterior built from it. Every random draw comes from the generator of the image it belongs to.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from bench.priors.schedule import widest_float
from operators import randn_per_image

EpsFn = Callable[[Tensor, Tensor], Tensor]


def posterior_step(prior, x_t: Tensor, prediction, t: int, s: int, noise: Tensor) -> Tensor:
    """x_s ~ q(x_s | x_t, x̂₀) with the prior's learned variance where it has one; no noise when s = -1."""
    coefficients = prior.q_posterior(t, s, dtype=x_t.dtype)
    mean = coefficients.mean(x_t, prediction.x0)
    if s < 0:
        return mean
    if prediction.variance_frac is not None:
        log_variance = prior.learned_log_variance(prediction.variance_frac, t, s)
    else:
        log_variance = coefficients.log_variance
    return mean + (0.5 * log_variance).exp() * noise


def _tweedie(x_t: Tensor, eps: Tensor, alpha_bar: Tensor) -> Tensor:
    return ((x_t - (1 - alpha_bar).sqrt() * eps) / alpha_bar.sqrt()).clamp(-1, 1)


@torch.no_grad()
def ddpm_sample(
    eps_fn: EpsFn, alphas_cumprod: Tensor, shape: Sequence[int], generators: Sequence[torch.Generator], device="cpu"
) -> Tensor:
    """Ancestral sampling over all T steps (Ho et al. 2020, Alg. 2) with the posterior variance β̃_t (ADM's
    "fixed small"): x_{t-1} = μ̃(x_t, x̂₀) + √β̃_t z, no noise at the last step. Returns (B, *shape) in [-1, 1]."""
    ab = alphas_cumprod.to(device=device, dtype=widest_float(device))
    x = randn_per_image(shape, generators, dtype=torch.float32, device=device)
    for t in range(ab.numel() - 1, -1, -1):
        a_t = ab[t]
        a_prev = ab[t - 1] if t > 0 else torch.ones((), dtype=ab.dtype, device=device)
        beta = 1 - a_t / a_prev
        eps = eps_fn(x, torch.full((x.shape[0],), t, device=device, dtype=torch.long)).float()
        x0 = _tweedie(x, eps, a_t.float())
        coef_x0 = (a_prev.sqrt() * beta / (1 - a_t)).float()
        coef_xt = ((1 - beta).sqrt() * (1 - a_prev) / (1 - a_t)).float()
        x = coef_x0 * x0 + coef_xt * x
        if t > 0:
            variance = (beta * (1 - a_prev) / (1 - a_t)).float()
            x = x + variance.sqrt() * randn_per_image(shape, generators, dtype=torch.float32, device=device)
    return x


@torch.no_grad()
def ddim_sample(
    eps_fn: EpsFn,
    alphas_cumprod: Tensor,
    shape: Sequence[int],
    generators: Sequence[torch.Generator],
    steps: int = 50,
    device="cpu",
) -> Tensor:
    """Deterministic DDIM (Song et al. 2021, Eq. 12 with η = 0) on `steps` evenly spaced timesteps
    (t = T - T/steps, ..., 0, then ᾱ = 1). Only the starting noise is random."""
    ab = alphas_cumprod.to(device=device, dtype=widest_float(device))
    total = ab.numel()
    ts = list(range(0, total, total // steps))[::-1]
    x = randn_per_image(shape, generators, dtype=torch.float32, device=device)
    for i, t in enumerate(ts):
        a_t = ab[t].float()
        a_s = ab[ts[i + 1]].float() if i + 1 < len(ts) else torch.ones((), device=device)
        eps = eps_fn(x, torch.full((x.shape[0],), t, device=device, dtype=torch.long)).float()
        x0 = _tweedie(x, eps, a_t)
        eps = (x - a_t.sqrt() * x0) / (1 - a_t).sqrt()  # ε consistent with the clamped x̂₀
        x = a_s.sqrt() * x0 + (1 - a_s).sqrt() * eps
    return x
