"""DAPS: Decoupled Annealing Posterior Sampling (Zhang, Chu, Berner, Meng, Anandkumar & Song, "Improving
Diffusion Inverse Problem Solving with Decoupled Noise Annealing", CVPR 2025; official code
zhangbingliang2019/DAPS, `sampler.py`, `cores/scheduler.py`, `cores/mcmc.py`), pixel space.

DAPS anneals over a decreasing noise schedule σ_0 > σ_1 > ... > σ_{N_A−1} (EDM, variance-exploding: x_k = x0 +
σ_k ε). At each level k (paper Algorithm 1):

    x̂0 = ODE_{σ_k → σ_min}(x_k)                         few-step probability-flow ODE of the prior   (Eq. 9)
    x0y ~ p(x0 | x_k, y) ∝ p(y | x0) N(x0; x̂0, r_k² I)  by Langevin steps, r_k = σ_k                  (Eq. 10-11)
    x_{k+1} = x0y + σ_{k+1} ε                              re-noise to the next level (σ_{N_A} = 0)        (Eq. 8)

and returns the last x0y. Langevin (official `MCMCSampler`, "langevin", prior_solver "gaussian"), from x = x̂0:

    x ← x + η_k [(x̂0 − x) / r_k² − ∇_x ‖A(x) − y‖² / τ²] + √(2 η_k) ε,   η_k = η (1 + (k / (N_A + 1)) (m − 1))

with m = `lr_min_ratio`, and only A(x) and its autograd gradient (Cap.DIFFERENTIABLE), never the network.

The prior's discrete schedule and DAPS's EDM σ. Our prior is a DDPM ε-network on x_t = √ᾱ_t x0 + √(1 − ᾱ_t) ε,
t ∈ {0..T−1}. Dividing by √ᾱ_t gives the EDM variable x = x_t / √ᾱ_t = x0 + σ_t ε with σ_t = √((1 − ᾱ_t) / ᾱ_t),
and the EDM denoiser D(x; σ_t) is the prior's Tweedie x̂0 at (√ᾱ_t x, t). Every σ of DAPS's schedules is rounded
to the training timestep whose σ_t is nearest in log σ, and that σ_t is used in place of σ, so every network
call is at a timestep the prior was trained at and the annealing noise matches it exactly. (The official code
feeds a fractional timestep (M − 1)·t(σ) of a continuous VP fit, `model/precond.py` VPPrecond, which an
integer-timestep prior cannot take.) For T = 1000 and DDPM's β, σ_t spans 0.0100 (t = 0) to 157 (t = 999), which
holds DAPS's σ_max = 100 and σ_min = 0.01. The Euler step of the EDM PF-ODE dx/dσ = (x − D(x; σ)) / σ from σ_t to
σ_s is x + (σ_s − σ_t) ε̂, DDIM's deterministic step in the variable x_t / √ᾱ_t.

Noise convention. DAPS, like DPS, adds noise of std σ to [-1, 1] images: its "σ = 0.05" is our σ = 0.025. Its
likelihood std in the Langevin steps is not the measurement noise but the fixed τ = 0.01 of every released task
config (the gradient of the unhalved ‖A(x) − y‖² over τ², i.e. a Gaussian likelihood of std τ/√2), so the
default never reads σ. `tau=None` uses the measurement's own noise, std 2σ: the exact log-likelihood
−‖A(x) − y‖² / (2 (2σ)²); that is the setting whose limit (infinitely many annealing levels and Langevin steps of
vanishing size, an exact prior ODE) samples the posterior, and the one the Gaussian-prior test uses.

Budgets (named configs): `daps` is DAPS-1K as released: N_A = 200 annealing levels × 5 ODE steps
(commands/pixel_{ffhq,imagenet}.sh and the README: `annealing_scheduler_config.num_steps=200`,
`diffusion_scheduler_config.num_steps=5`); `daps-4k` is the paper's DAPS-4K (Sec. 5, setup): 400 levels × 10 ODE
steps (the release has no 4K command; the paper's own 1K is 250 × 4). 100 Langevin steps per level in both.

Departures from the official code, stated:
* σ rounded to the prior's timesteps (above).
* Langevin learning rate per task from configs/task/*.yaml (pixel group, `CONFIG_LR_BY_TASK`); tasks without a
  config take 5e-5 (denoise, jpeg10, colorize). Our random `inpaint` takes the box-inpainting 5e-5, not
  inpainting_rand.yaml's 1e-4: on an observed pixel the update multiplies the error by 1 − η/σ_k² − 2η/τ², which
  at η = 1e-4, τ = 0.01 is −1 − η/σ_k², a growing oscillation until η has decayed.
* The official sampler returns zeros for an image whose Langevin chain produced a NaN; we let it through, so
  that the runner records the divergence instead of a black image.
* jpeg10 (no official config) takes η = 2.5e-6, not the 5e-5 of the other config-less tasks. Its straight-through
  codec clips to [0, 255] in the forward pass only, so where the noisy y lies outside A's range (bright pixels
  plus noise) the data step x ← x − (2η/τ²)(A(x) − y) never reaches a fixed point and walks x off without bound;
  at η = 5e-5 (2η/τ² = 1) that walk dominates (natural64, 4 Kodak photos, quick budget: 12.8 dB against A⁺y's
  22.3; 5e-6: 24.3; 2e-6: 22.5). The walk grows with η × langevin_steps: at DAPS-1K's 100 Langevin steps 2.5e-6 is
  the step that keeps it (24.0 dB; 5e-6: 21.3), so that is the default, chosen for the paper budget.
* `clip_x0=True` (off by default: the official code never clips) clips the denoiser's x̂0 to [-1, 1] in every
  ODE step, as DPS's and DiffPIR's official samplers do (`clip_denoised`). For priors whose Tweedie estimates
  leave [-1, 1] (natural64: |x̂0| up to 30 at σ = 100), the Langevin step cannot pull back what the likelihood
  gives no gradient: HDR's saturated pixels (clip has zero derivative), colourisation's chroma. natural64, 4 Kodak
  photos, quick: HDR 12.2 -> 26.7 dB (A⁺y 23.3), colorize 12.9 -> 14.2 (A⁺y 17.8).
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

# configs/task/*.yaml, pixel: mcmc_sampler_config.lr. down_sampling 1e-4 (SR ×4), gaussian_blur 1e-4, inpainting
# (box) 5e-5, motion_blur 5e-5, hdr 2e-5, phase_retrieval 5e-5. Our random `inpaint` takes the box config's 5e-5, not
# inpainting_rand.yaml's 1e-4: at τ = 0.01 that step is η·2/τ² = 2 on every observed pixel, the edge where the
# Langevin update stops contracting (see the module docstring).
CONFIG_LR_BY_TASK: dict[str, float] = {
    **dict.fromkeys(("sr4", "sr8", "sr4-pool", "sr4-ddrm", "gblur"), 1e-4),
    **dict.fromkeys(("inpaint", "box-inpaint", "box-inpaint-centre", "motion-blur", "phase-retrieval"), 5e-5),
    "hdr": 2e-5,
    "jpeg10": 2.5e-6,  # no official config: 5e-5 walks off through the straight-through codec (module docstring)
}
DEFAULT_LR = 5e-5


@dataclasses.dataclass(frozen=True)
class DAPSConfig(SolverConfig):
    steps: int = 200  # N_A annealing levels: DAPS-1K, commands/pixel_*.sh annealing_scheduler_config.num_steps
    ode_steps: int = 5  # Euler steps of the PF-ODE per level: commands/pixel_*.sh diffusion_scheduler_config.num_steps
    langevin_steps: int = 100  # configs/task/*.yaml pixel mcmc_sampler_config.num_steps
    lr: float | None = None  # None: the task config's Langevin step η (`CONFIG_LR_BY_TASK`)
    lr_min_ratio: float = 0.01  # configs/task/*.yaml pixel: η decays linearly to 1% over the levels
    tau: float | None = 0.01  # configs/task/*.yaml pixel: likelihood scale τ; None: the exact likelihood, std 2σ
    sigma_max: float = 100.0  # configs/sampler/edm_daps.yaml annealing_scheduler_config.sigma_max
    sigma_min: float = 0.1  # configs/sampler/edm_daps.yaml annealing_scheduler_config.sigma_min
    ode_sigma_min: float = 0.01  # configs/sampler/edm_daps.yaml diffusion_scheduler_config.sigma_min
    rho: float = 7.0  # configs/sampler/edm_daps.yaml timestep 'poly-7' (both schedules)
    clip_x0: bool = False  # official: never clipped; True clips the denoiser's x̂0 to [-1, 1] in every ODE step

    def __post_init__(self) -> None:
        for name in ("ode_steps", "langevin_steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise SolverError(f"daps.{name} must be an integer >= 1, got {value!r}")
        if self.lr is not None and not (math.isfinite(self.lr) and self.lr > 0):
            raise SolverError(f"daps.lr must be a finite number > 0, or None for the task's value, got {self.lr!r}")
        if not 0 < self.lr_min_ratio <= 1:
            raise SolverError(f"daps.lr_min_ratio must lie in (0, 1] (official: 0.01), got {self.lr_min_ratio}")
        if self.tau is not None and not (math.isfinite(self.tau) and self.tau > 0):
            raise SolverError(f"daps.tau must be a number > 0 (official: 0.01), or None for 2σ, got {self.tau!r}")
        if not 0 < self.ode_sigma_min <= self.sigma_min < self.sigma_max:
            raise SolverError(
                "daps needs 0 < ode_sigma_min <= sigma_min < sigma_max (official: 0.01, 0.1, 100), got "
                f"{self.ode_sigma_min}, {self.sigma_min}, {self.sigma_max}"
            )
        if not self.rho > 0:
            raise SolverError(f"daps.rho must be > 0 (official: 7), got {self.rho}")

    def lr_for(self, task: str) -> float:
        return float(self.lr) if self.lr is not None else CONFIG_LR_BY_TASK.get(task, DEFAULT_LR)


def edm_sigmas(sigma_max: float, sigma_min: float, n: int, rho: float) -> list[float]:
    """The official EDM 'poly-ρ' schedule of an n-step scheduler (`cores/scheduler.py` EDMScheduler): n + 1 points
    (σ_max^(1/ρ) + r (σ_min^(1/ρ) − σ_max^(1/ρ)))^ρ, r = 0, 1/n, ..., 1, from σ_max down to σ_min."""
    a, b = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    return [(a + (k / n) * (b - a)) ** rho for k in range(n + 1)]


def nearest_timesteps(prior, sigmas: Sequence[float]) -> list[int]:
    """For each EDM σ, the training timestep t whose σ_t = √((1 − ᾱ_t) / ᾱ_t) is nearest in log σ."""
    ab = prior.alphas_cumprod
    log_levels = 0.5 * ((1 - ab) / ab).log()  # (T,) float64, increasing in t
    targets = torch.tensor([math.log(s) for s in sigmas], dtype=torch.float64)
    return (log_levels[None, :] - targets[:, None]).abs().argmin(dim=1).tolist()


def edm_sigma(prior, t: int) -> float:
    """σ_t = √((1 − ᾱ_t) / ᾱ_t), the noise level of x_t / √ᾱ_t."""
    ab = float(prior.alpha_bar(t, torch.float64))
    return math.sqrt((1.0 - ab) / ab)


@register
class DAPS(Solver):
    name = "daps"
    noise_models = frozenset({"gaussian", "poisson"})  # Langevin on ‖y − A(x₀)‖² only
    Config = DAPSConfig
    version = 2  # 2: jpeg10's Langevin step 5e-5 -> 2.5e-6 (module docstring)
    requires = frozenset({Cap.FORWARD, Cap.DIFFERENTIABLE})
    summary = (
        "DAPS-1K: annealed levels of PF-ODE x̂0 + Langevin on p(y|x0) N(x0; x̂0, σ²) + re-noising (Zhang et al. 2025)"
    )
    # CPU budget: 50 levels × 2 ODE steps (100 NFE, as DPS's quick) and 25 Langevin steps per level.
    quick = {"steps": 50, "ode_steps": 2, "langevin_steps": 25}

    config: DAPSConfig

    def nfe(self) -> int:
        return self.config.steps * self.config.ode_steps

    def schedule(self, prior) -> tuple[list[int], list[list[int]]]:
        """(annealing timesteps t_0 > ... (N_A of them), per level the ODE grid of ode_steps + 1 timesteps from
        that level down to ode_sigma_min), all rounded to the prior's timesteps (module docstring)."""
        c = self.config
        # the official annealing scheduler's sigma_steps: the first N_A points of its (N_A + 1)-point grid, then 0
        levels = nearest_timesteps(prior, edm_sigmas(c.sigma_max, c.sigma_min, c.steps, c.rho)[:-1])
        odes = []
        for t in levels:
            grid = edm_sigmas(edm_sigma(prior, t), c.ode_sigma_min, c.ode_steps, c.rho)
            odes.append(nearest_timesteps(prior, grid))
        return levels, odes

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
        """DAPS (Algorithm 1) on y (B, *op.measurement_shape); returns the last x0y (B, C, H, W), unclamped."""
        c = self.config
        shape, device = prior.image_shape, prior.device
        y = y.to(device=device, dtype=torch.float32)
        if c.tau is None and sigma <= 0:
            raise SolverError("daps.tau=None takes the likelihood std from the noise, 2σ, which is 0 at σ = 0; set tau")
        # data-score scale: ∇‖A x − y‖² / τ² (official), or / (2 (2σ)²) for the exact likelihood
        data_scale = 1.0 / c.tau**2 if c.tau is not None else 1.0 / (2.0 * noise_std(float(sigma)) ** 2)
        lr0 = c.lr_for(op.task)
        levels, odes = self.schedule(prior)
        sigmas = [edm_sigma(prior, t) for t in levels]
        x = sigmas[0] * randn_per_image(shape, generators, dtype=torch.float32, device=device)  # x_0 ~ N(0, σ_0² I)
        calls = 0
        for k, (sigma_k, grid) in enumerate(zip(sigmas, odes, strict=True)):
            # 1. x̂0 from the PF-ODE, Euler on the prior's timesteps (Eq. 9)
            x0_hat = x
            for t, s in zip(grid[:-1], grid[1:], strict=True):
                ab = float(prior.alpha_bar(t, torch.float64))
                x_t = math.sqrt(ab) * x0_hat
                with torch.no_grad():
                    prediction = prior.predict(x_t, t)
                if callback is not None:
                    callback(step=calls, t=t, x_t=x_t, eps=prediction.eps, x0=prediction.x0)
                calls += 1
                eps = prediction.eps
                if c.clip_x0:  # the Euler step towards clip(x̂0): the ε that x and the clipped estimate imply
                    eps = (x0_hat - prediction.x0.clamp(-1, 1)) / edm_sigma(prior, t)
                x0_hat = x0_hat + (edm_sigma(prior, s) - edm_sigma(prior, t)) * eps
            # 2. Langevin on log p(y | x0) − ‖x0 − x̂0‖² / (2 σ_k²) (Eq. 10-11); official ratio k / (N_A + 1)
            lr = lr0 * (1.0 + (k / (c.steps + 1)) * (c.lr_min_ratio - 1.0))
            x0 = x0_hat.detach()
            for _ in range(c.langevin_steps):
                with torch.enable_grad():
                    x0 = x0.detach().requires_grad_(True)
                    misfit = (op(x0) - y).flatten(1).square().sum()
                    (gradient,) = torch.autograd.grad(misfit, x0)
                score = (x0_hat - x0.detach()) / sigma_k**2 - data_scale * gradient
                noise = randn_per_image(shape, generators, dtype=torch.float32, device=device)
                x0 = x0.detach() + lr * score + math.sqrt(2.0 * lr) * noise
            # 3. re-noise to the next level (Eq. 8); after the last level the estimate is x0y itself
            if k + 1 < len(sigmas):
                noise = randn_per_image(shape, generators, dtype=torch.float32, device=device)
                x = x0 + sigmas[k + 1] * noise
            else:
                x = x0
        return x


@dataclasses.dataclass(frozen=True)
class DAPS4KConfig(DAPSConfig):
    steps: int = 400  # DAPS-4K: the paper's Sec. 5 setup, 400 annealing levels (no released command)
    ode_steps: int = 10  # DAPS-4K: 10 ODE steps per level (paper, Sec. 5)


@register
class DAPS4K(DAPS):
    name = "daps-4k"
    Config = DAPS4KConfig
    summary = "DAPS-4K: DAPS with the paper's 400 levels × 10 ODE steps (Zhang et al. 2025)"
