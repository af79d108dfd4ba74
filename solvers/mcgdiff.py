"""MCGDiff: Monte Carlo guided diffusion (Cardoso, Janati, Le Corff & Moulines, "Monte Carlo guided Denoising
Diffusion models for Bayesian linear inverse problems", ICLR 2024; official code gabrielvc/mcg_diff,
`mcg_diff/particle_filter.py`), a sequential Monte Carlo sampler in the operator's SVD basis.

Why MCGDiff rather than FPS (Dou & Song, ICLR 2024): both are particle filters over the reverse diffusion and
both are exact as the particle count N → ∞. FPS conditions each step on a whole synthetic measurement sequence
y_{1:T} through A (a Gaussian conditioning with A Σ Aᵀ, so a dense solve or conjugate gradients per step, plus the
randomness of the sampled y_t); MCGDiff works coordinate by coordinate in the V basis of A = U diag(s) Vᵀ, where
the DDPM kernel (isotropic) and the observation factorise, so every proposal and weight is a scalar Gaussian
formula. The operators here expose exactly that implicit SVD (Cap.SVD: sr4, sr8, gblur, inpaint, denoise),
including per-image inpainting masks, so MCGDiff's form is the one they serve with no linear solve.

The model. With x̄ = Vᵀx, u = Uᵀy = s ⊙ x̄0 + σ_y n, σ_y = 2σ (the project's convention), and the prior's n-step
DDPM chain p_θ(x_{t_0}) Π p_θ(x_s | x_t) (Gaussian kernels: mean of q(x_s | x_t, x̂0(x_t)), variance β̃'), the target
is the path posterior ∝ p_θ(x_{t_0:clean}) N(u; s ⊙ x̄_clean, σ_y²). SMC with twisting potentials

    g_t(x̄_t) = Π_{i: s_i > 0} N(√ᾱ_t u_i; s_i x̄_{t,i}, s_i² (1 − ᾱ_t) + ᾱ_t σ_y²)       (g_clean: the likelihood)

(the law of √ᾱ_t u given x_t if x_t's noise were the forward noise of x0: MCGDiff's potential
N(x̄_{t,i}; √ᾱ_t ȳ_i, 1 − ᾱ_t) at σ_y = 0, up to the factor s_i) proposes from the locally optimal kernel and
weighs by the predictive ratio, per step t → s (paper Sec. 3, Eq. 3.3-3.5 in this notation):

    m = coef_x0 x̂0(x_t) + coef_xt x_t,   v² = β̃'                        DDPM kernel p_θ(x_s | x_t) = N(m, v² I)
    log w ∝ −½ Σ_i (√ᾱ_s u_i − s_i m̄_i)² / (s_i² v² + c_{s,i}) − log g_t(x̄_t),   c_{s,i} = s_i²(1 − ᾱ_s) + ᾱ_s σ_y²
    resample ancestors (multinomial, as the official code's `Categorical(logits).sample`), then
    x̄_s,i = m̄_i + K_i (√ᾱ_s u_i − s_i m̄_i) + √(v² c_{s,i} / (s_i² v² + c_{s,i})) z_i,   K_i = v² s_i / (s_i² v² + c_{s,i})

(unobserved components: K = 0, plain DDPM). The first particles are drawn from N(0, I) g_{t_0} (Gaussian, equal
weights). The last step t_last → clean has v² = 0: particles become x̂0, weighted by the likelihood over
g_{t_last}, and resampled once more; the estimate is the first resampled particle of each image (a draw from the
weighted particle system: a posterior sample), or with `estimate="mean"` their weighted mean (the posterior-mean
estimate). Every draw of image b (its particles' noise, its resampling) comes from generators[b].

Exactness. For N → ∞ the estimate's law tends to the posterior of the model p_θ for any σ_y > 0: the standard
consistency of SMC with positive potentials. On the analytic Gaussian prior p_θ is close to the true prior
(exact denoiser), and tests/test_solver_mcgdiff.py shows the mean error, in Monte-Carlo units, falling to the
exact sampler's floor as N grows.

Departures from the official code, stated:
* σ_y > 0: the official code makes observed coordinate i active only from the timestep τ_i where the diffusion's
  noise equals σ_y / s_i (rounded to the schedule, `get_taus_from_singular_values`), and treats √ᾱ_τ ȳ_i as the
  state there; that is exact only where σ_y / s_i lands on the grid (its `get_optimal_timesteps...` builds grids
  for that). We keep every observed coordinate active with the potential above, which integrates the
  measurement noise exactly (FPS's y_t sequence with its noise integrated out), so exactness holds at every σ_y.
* σ_y = 0: the official κ (`gaussian_var`, 1e-4, scripts/configs/mcg_diff/default.yaml) keeps its potentials'
  variances positive; we use it as a floor on the likelihood variance, σ_y² → max((2σ)², κ), i.e. a noise-free
  measurement is treated as one with noise std 0.01 on [-1, 1] (the degenerate δ-likelihood has no weights).
* The official code returns the DDPM state at t = 0 (noise std √(1 − ᾱ_0) = 0.01); we take the final step to the
  clean x̂0 as every sampler of this project does, weighing by the likelihood there.
* κ's units: the official κ floors the potential variance of x̄_i against ȳ_i = u_i / s_i (1 − (1 − κ) ᾱ_t / ᾱ_τ),
  i.e. a measurement noise std √κ s_i per coordinate; ours floors the measurement noise itself (std √κ for every
  i). With τ_i = clean and its gaussian_var set to max(σ_y², κ) / s_i², the official update loop is this one
  (checked to float64 round-off, 1e-14, with shared noise and resampling uniforms, at σ = 0.05 and 0).
* The timestep grid: the official's is `torch.linspace(0, 999, n_steps).long()`, n_steps − 1 network calls from
  t = 999 down to t = 0; ours is the prior's "uniform" grid (990, 980, ..., 0 for 100 steps) plus the step to clean.
* The first particles: the official draws them from N(0, I) yet divides its first weights by g_T, as if they came
  from N(0, I) g_T; we draw them from N(0, I) g_{t_0} (g_T is nearly flat at ᾱ_T ≈ 5e-5, so the two barely differ).
* The final pick: the official's noise-free branch returns log-weights −log g_0 (the likelihood left out) and its
  script draws the output from them, favouring particles far from y; ours returns a resampled particle unweighted
  (its weights after the final resampling are flat).
* `clip_x0=True` (off by default: the official code never clips the network's x̂0) clips x̂0 to [-1, 1] in the
  DDPM kernel's mean. On natural64, whose x̂0 reaches ±50 at t near 1000, the unclipped chain drifts in colour
  where few coordinates are observed: random inpainting (8% observed) ends saturated, 6–9 dB, and clipped it is
  above A⁺y (docs/solvers-new.md). On the Gaussian prior, whose samples leave [-1, 1], clipping breaks exactness.
* The official deblurring operator zeroes per-axis singular values under 3e-2; we keep every s_i > 0 (with
  σ_y² ≥ κ a tiny s_i gives a gain of about 0, so such a coordinate is in effect unobserved).
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

ESTIMATES = ("sample", "mean")


@dataclasses.dataclass(frozen=True)
class MCGDiffConfig(SolverConfig):
    steps: int = 100  # scripts/configs/diffusion/ddim_100.yaml n_steps (the default config.yaml's diffusion)
    particles: int = 64  # scripts/configs/mcg_diff/default.yaml N_particles: more particles, nearer exact
    kappa: float = 1e-4  # scripts/configs/mcg_diff/default.yaml gaussian_var κ: floor of the likelihood variance
    estimate: str = "sample"  # "sample": one resampled particle (a posterior draw); "mean": the weighted mean
    clip_x0: bool = False  # official: never clipped; True clips the prior's x̂0 to [-1, 1] in the DDPM kernel's mean

    def __post_init__(self) -> None:
        if isinstance(self.particles, bool) or not isinstance(self.particles, int) or self.particles < 1:
            raise SolverError(f"mcgdiff.particles must be an integer >= 1 (official: 64), got {self.particles!r}")
        if not (math.isfinite(self.kappa) and self.kappa > 0):
            raise SolverError(f"mcgdiff.kappa must be a finite number > 0 (official: 1e-4), got {self.kappa!r}")
        if self.estimate not in ESTIMATES:
            raise SolverError(f"mcgdiff.estimate must be one of {', '.join(ESTIMATES)}, got {self.estimate!r}")


@register
class MCGDiff(Solver):
    name = "mcgdiff"
    Config = MCGDiffConfig
    requires = frozenset({Cap.SVD})
    summary = "MCGDiff: particle filter over the reverse diffusion in the SVD basis, exact as particles grow"
    # CPU budget: half the steps, a quarter of the particles (network calls on 16·B images, not 64·B)
    quick = {"steps": 50, "particles": 16}
    options_keyed_off_default = {"clip_x0": False}  # added in version 1: results stored before keep their keys

    config: MCGDiffConfig

    def nfe(self) -> int:
        return self.config.steps  # one prior call per step, on all particles of the batch at once

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
        """The SMC estimate (B, C, H, W) for y (B, *op.measurement_shape), unclamped. Particles are kept
        particle-major, row j·B + b for particle j of image b, so that each block of B rows is a batch the bound
        operator's SVD can take."""
        n, batch = self.config.particles, y.shape[0]
        shape, device = prior.image_shape, prior.device
        y = y.to(device=device, dtype=torch.float64)
        variance_y = max(noise_std(float(sigma)) ** 2, self.config.kappa)  # σ_y², floored by κ
        with torch.no_grad():
            s, u = spectral_measurement(op, y)  # (1|B, D), (B, D), float64
        s = s.expand(batch, -1).repeat(n, 1)  # (N·B, D), particle-major like the particles
        u = u.repeat(n, 1)
        dim = s.shape[1]

        def potential_variance(ab: float) -> Tensor:
            return s * s * (1.0 - ab) + ab * variance_y  # c_{t,i}; positive everywhere since σ_y² ≥ κ > 0

        def log_potential(x_bar: Tensor, ab: float) -> Tensor:
            return -0.5 * ((math.sqrt(ab) * u - s * x_bar).square() / potential_variance(ab)).sum(1)

        def draw(*tail: int) -> Tensor:
            """(N·B, *tail) standard normal; image b's N rows from generators[b]."""
            z = randn_per_image((n, *tail), generators, dtype=torch.float64, device=device)
            return z.transpose(0, 1).reshape(n * batch, *tail)

        ts = prior.timesteps(self.config.steps)
        # x_{t_0} ~ N(0, I) g_{t_0}: per component N(K √ᾱ u, 1 − K s), K = s / (s² + c)
        ab = float(prior.alpha_bar(ts[0], torch.float64))
        c = potential_variance(ab)
        gain = s / (s * s + c)
        x_bar = gain * math.sqrt(ab) * u + (c / (s * s + c)).sqrt() * draw(dim)
        log_g = log_potential(x_bar, ab)
        x = _from_v(op, x_bar, batch).float()
        for i, (t, t_next) in enumerate(zip(ts, [*ts[1:], -1], strict=True)):
            with torch.no_grad():
                prediction = prior.predict(x, t)
            if callback is not None:  # the first particle of each image stands for its image
                callback(step=i, t=t, x_t=x[:batch], eps=prediction.eps[:batch], x0=prediction.x0[:batch])
            coefficients = prior.q_posterior(t, t_next, dtype=torch.float64)
            x0 = prediction.x0.clamp(-1, 1) if self.config.clip_x0 else prediction.x0
            mean = coefficients.mean(x.double(), x0.double())  # p_θ(x_s | x_t) = N(m, v² I)
            v2 = float(coefficients.variance.reshape(()))
            m_bar = _to_v(op, mean, batch)
            ab = float(prior.alpha_bar(t_next, torch.float64))
            c = potential_variance(ab)
            innovation = math.sqrt(ab) * u - s * m_bar
            log_w = -0.5 * (innovation.square() / (s * s * v2 + c)).sum(1) - log_g  # predictive ratio (Eq. 3.4)
            weights = _normalised(log_w, n, batch)  # (N, B)
            if t_next < 0 and self.config.estimate == "mean":
                return (
                    (weights.T[:, :, None] * mean.reshape(n, batch, -1).transpose(0, 1))
                    .sum(1)
                    .reshape(batch, *shape)
                    .float()
                )
            ancestors = _resample(weights, generators)  # (N·B,) row indices
            m_bar, innovation, c_a = m_bar[ancestors], innovation[ancestors], c
            gain = v2 * s / (s * s * v2 + c_a)
            spread = (v2 * c_a / (s * s * v2 + c_a)).sqrt()
            x_bar = m_bar + gain * innovation + spread * draw(dim)  # optimal proposal (Eq. 3.5)
            log_g = log_potential(x_bar, ab)
            x = _from_v(op, x_bar, batch).float()
        return x[:batch]  # particle 0 of each image after the final resampling


def _to_v(op: Operator, x: Tensor, batch: int) -> Tensor:
    """Vᵀx for particle-major rows (N·B, C, H, W) -> (N·B, D): one SVD call per block of B images."""
    return torch.cat([op.svd.vt(block) for block in x.split(batch)])


def _from_v(op: Operator, x_bar: Tensor, batch: int) -> Tensor:
    """V x̄ for particle-major rows (N·B, D) -> (N·B, C, H, W)."""
    return torch.cat([op.svd.v(block) for block in x_bar.split(batch)])


def _normalised(log_w: Tensor, n: int, batch: int) -> Tensor:
    """(N·B,) log-weights -> (N, B) weights normalised over each image's N particles."""
    return torch.softmax(log_w.reshape(n, batch), dim=0)


def _resample(weights: Tensor, generators: Sequence[torch.Generator]) -> Tensor:
    """Multinomial resampling, image b's N draws from generators[b]: (N·B,) particle-major ancestor rows."""
    n, batch = weights.shape
    columns = []
    for b, generator in enumerate(generators):
        w = weights[:, b].to(generator.device)
        columns.append(torch.multinomial(w, n, replacement=True, generator=generator).to(weights.device))
    picks = torch.stack(columns, dim=1)  # (N, B): ancestor particle index per (new particle, image)
    return (picks * batch + torch.arange(batch, device=weights.device)[None, :]).reshape(-1)
