"""DiffPIR: Denoising Diffusion Models for Plug-and-Play Image Restoration (Zhu et al., CVPRW 2023; official
code yuanzhi-zhu/DiffPIR, `main_ddpir.py` with `configs/{sisr,deblur,inpaint}.yaml`).

Each step splits half-quadratically into a prior step (the diffusion model as denoiser) and a data step (a
proximal problem), then re-noises (paper Algorithm 1; equation numbers are the paper's):

    x0^(t)  = x̂0(x_t)                                   Tweedie estimate of the prior           (Eq. 10-11)
    x̂0^(t) = argmin_x ‖y − A x‖² + ρ_t ‖x − x0^(t)‖²,   ρ_t = λ σ_n² / σ̄_t²                   (Eq. 12-13)
    ε̂      = (x_t − √ᾱ_t x̂0^(t)) / √(1 − ᾱ_t)          noise implied by the corrected x̂0      (Eq. 14)
    x_s     = √ᾱ_s x̂0^(t) + √(1 − ᾱ_s) (√(1 − ζ) ε̂ + √ζ ε),   ε ~ N(0, I)                       (Eq. 15)

with σ̄_t = √(1 − ᾱ_t) / √ᾱ_t the noise level of x_t / √ᾱ_t. The noise convention is ours: the official code
adds noise of std 2σ_n on [-1, 1] for its "noise_level_img" σ_n on [0, 1], exactly as this project does, so
σ_n is our σ, and its data step is scale-free (both terms of the objective scale alike between [0, 1], where
it solves SR and deblurring, and [-1, 1], where it solves inpainting).

Data step. Where the operator has an SVD (Cap.SVD: sr4, sr8, gblur, inpaint, denoise) the proximal problem is
solved in closed form per singular value, with x̄ = Vᵀx and u = Uᵀy:

    x̄_i = (s_i u_i + ρ_t x̄0_i) / (s_i² + ρ_t)   (s_i > 0),     x̄_i = x̄0_i   (s_i = 0),

which is what the official code's FFT solution (SR, deblur, circular boundaries) and its mask formula
(inpainting) compute for their operators. Elsewhere (jpeg10, plug-in operators without an SVD) the paper's
first-order step for general degradations is taken (Sec. 3.3): x̂0 = x0 − γ ∇‖y − A(x0)‖², autograd through
the operator (Cap.DIFFERENTIABLE).

σ = 0. ρ_t → 0 turns the data step into the projection onto {A x = y} nearest to x0^(t) (u_i / s_i on the
observed components). The official code never reaches it: it floors σ_n at 0.001 (`config.sigma =
max(0.001, noise_level_img)`), so that its inpainting formula (mask y + ρ x0) / (mask + ρ) never divides by 0;
ρ_t then grows from ~1e-12 at t = 999 to λ·1e-6/σ̄_0² ≈ 0.01 λ at t = 0, a projection except in the last steps.
`sigma_floor` keeps that floor (default 0.001); `sigma_floor=0` takes the exact projection at σ = 0 (SVD path;
tiny blur singular values are then divided by, as a projection must).

λ and ζ are the values the official code runs, which are not the yaml's: `main_ddpir.py` main() (and the per-task
scripts) multiply them, deblurring running λ = 7·lambda_ = 7 and ζ = 3·zeta = 0.3, super-resolution sweeping
λ = 2..12 × lambda_ at ζ = 0.25, inpainting λ = 1, ζ = 1 (`CONFIG_LAMBDA_BY_TASK`, `CONFIG_ZETA_BY_TASK`). λ
matters: ρ_t is λ/4 of the Gaussian-posterior weight (2σ)²/σ̄_t², so λ = 1 under-regularises the data step by 4x
and, on blurs at σ = 0.05, passes noise amplified by up to 1/(2√ρ_t) that the late, nearly noise-free prior steps
no longer remove.

Departures from the official code, stated:

* The last step (t_last -> clean) takes the data step too, as the paper's Algorithm 1 does (x_0 = x̂0^(1)); the
  official loop evaluates the prior at its last timestep (t = 0) but discards the result and returns x_0 as the
  previous step's re-noising left it, √ᾱ_0 x̂0^(t) + √(1 − ᾱ_0)(√(1 − ζ) ε̂ + √ζ ε) (noise of std ≈ 0.01 on
  [-1, 1]), without a data step at t = 0. The estimate is the last x̂0^(t), unclamped.
* x_T ~ N(0, I). The official loop starts from √ᾱ_T (2 x_init − 1) + √(1 − ᾱ_T) ε at T − 1 = 999, x_init being
  the bicubic upsampling of y (SR), y (deblurring) or mask · y (inpainting) on [0, 1]: a weight √ᾱ_999 ≈ 0.0064
  on the measurement, which the first x̂0 = (x_T − √(1 − ᾱ_T) ε̂)/√ᾱ_T magnifies to O(1). At 100 steps it is
  gone by the end (max |Δ| ≤ 2e-5 on the output, natural64 Kodak); at inpaint.yaml's 20 steps it is not (0.047,
  +0.26 dB for the official start on 4 photos at σ = 0.05).
* The official re-noising has an η (DDIM) term, 0 in every released config; η = 0 is Eq. 15 and is all we do.
* Gradient path: the paper's step γ = σ̄_t² / (2 λ σ_n²) = 1 / (2 ρ_t) overshoots by a factor s²/ρ_t on every
  component where ρ_t < s² (at t = 999 and σ_n = 0.001, by ~1e12 for a unit-gain operator like jpeg10). We take
  γ = 1 / (2 (ρ_t + L)), the 1/Lipschitz step of the proximal objective for an operator with ‖A‖² ≤ L
  (`lipschitz`, 1 for jpeg10, inpainting, denoising; our blur and SR kernels are normalised): the paper's step
  where ρ_t ≫ L, the exact prox of a unit-gain linear operator always, and a contraction everywhere.
  `grad_steps` repeats it (1, the paper's single step). λ = 15 there, main_ddpir_sisr.py's note for its
  first-order branch (no released config runs that branch).
* `lam` and `zeta` are per task as the official main() runs them (SR's λ = 7 is one value of its sweep);
  `steps` is one number for all tasks (NFE must not depend on the task): 100 from sisr.yaml and deblur.yaml.
  inpaint.yaml runs 20 steps; the README's 100-step inpainting row is the better one.

Not exact in any limit we know: it is a MAP-flavoured splitting with a Gaussian re-noising. At σ = 0 with
`sigma_floor=0` and ζ = 1 it is DDNM with η = 1 (x_s = √ᾱ_s P(x̂0) + √(1 − ᾱ_s) ε, P the projection), which is
itself approximate. On the Gaussian prior every step is affine plus Gaussian noise, and tests/test_solver_diffpir.py
checks the draws against that law (propagated densely from the equations above).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import torch
from torch import Tensor

from operators import Cap, Operator, randn_per_image

from . import register
from .base import Solver, SolverConfig, SolverError, StepCallback, spectral_measurement

# ζ of the released configs, per task: configs/sisr.yaml (SR ×4, our sr4 and sr8), configs/deblur.yaml (Gaussian
# deblurring), configs/inpaint.yaml (inpainting). Denoising has no config: A = I is deblurring with a delta kernel,
# so it takes deblur.yaml's. Tasks without an SVD take the gradient path, for which main_ddpir_sisr.py's
# first-order branch notes "zeta=0.25; lambda_=15: FFHQ". Other SVD tasks (colorize): deblurring's.
# The values are those main_ddpir.py main() runs, not the yaml's own (see the module docstring): deblurring
# `lambdas = [lambda_*i for i in range(7,8)]`, `zeta*i for i in range(3,4)`; SR `lambdas = [lambda_*i for i in
# range(2,13)]` (a sweep; 7, deblurring's, lies in it and was best at σ = 0.05 on natural64 Kodak: 2, 4, 7, 12 gave
# 21.72, 22.09, 22.13, 21.91 dB for the official loop); inpainting `range(1,2)`.
CONFIG_ZETA_BY_TASK: dict[str, float] = {
    **dict.fromkeys(("sr4", "sr8", "sr4-pool", "sr4-ddrm"), 0.25),  # sisr.yaml, main(): zeta_i in [config.zeta]
    **dict.fromkeys(("gblur", "motion-blur", "denoise"), 0.3),  # deblur.yaml 0.1, main(): zeta * 3
    **dict.fromkeys(("inpaint", "box-inpaint", "box-inpaint-centre"), 1.0),  # inpaint.yaml (random or box masks)
}
CONFIG_LAMBDA_BY_TASK: dict[str, float] = {
    **dict.fromkeys(("sr4", "sr8", "sr4-pool", "sr4-ddrm"), 7.0),  # sisr.yaml 1, main(): lambda_ * (2..12)
    **dict.fromkeys(("gblur", "motion-blur", "denoise"), 7.0),  # deblur.yaml 1, main(): lambda_ * 7
    **dict.fromkeys(("inpaint", "box-inpaint", "box-inpaint-centre"), 1.0),  # inpaint.yaml 1, main(): lambda_ * 1
}
DEFAULT_ZETA, DEFAULT_LAMBDA = 0.3, 7.0  # other SVD tasks: deblurring's
GRADIENT_PATH_ZETA = 0.25
GRADIENT_PATH_LAMBDA = 15.0  # main_ddpir_sisr.py, first-order branch: "zeta=0.25; lambda_=15: FFHQ"
SPACINGS = ("quad", "uniform", "linspace", "respace")


@dataclasses.dataclass(frozen=True)
class DiffPIRConfig(SolverConfig):
    steps: int = 100  # configs/sisr.yaml and configs/deblur.yaml: iter_num 100 (inpaint.yaml: 20)
    lam: float | None = None  # None: the value the official code runs for the task (`CONFIG_LAMBDA_BY_TASK`)
    zeta: float | None = None  # None: the released config's ζ for the task (`CONFIG_ZETA_BY_TASK`)
    sigma_floor: float = 0.001  # main_ddpir.py: config.sigma = max(0.001, noise_level_img); 0: exact projection
    # configs/*.yaml skip_type "quad": t_k = T − 1 − ⌊T √(k / (n − 1))⌋ (last one T − 1 − (T − 1) = 0); the others
    # are `Prior.timesteps` spacings.
    spacing: str = "quad"
    clip_x0: bool = True  # utils/utils_model.py model_fn: p_sample(..., clip_denoised=True)
    grad_steps: int = 1  # paper Sec. 3.3: one gradient step for a general A
    lipschitz: float = 1.0  # ours: ‖A‖² bound in the gradient step 1 / (2 (ρ_t + L)), see the module docstring

    def __post_init__(self) -> None:
        if self.lam is not None and not (math.isfinite(self.lam) and self.lam > 0):
            raise SolverError(
                f"diffpir.lam must be a finite number > 0, or None for the official per-task value, got {self.lam!r}"
            )
        if self.zeta is not None and not 0.0 <= self.zeta <= 1.0:
            raise SolverError(
                f"diffpir.zeta must lie in [0, 1], or None for the config's per-task value, got {self.zeta}"
            )
        if not (math.isfinite(self.sigma_floor) and self.sigma_floor >= 0):
            raise SolverError(f"diffpir.sigma_floor must be >= 0 (official: 0.001), got {self.sigma_floor!r}")
        if self.spacing not in SPACINGS:
            raise SolverError(f"diffpir.spacing must be one of {', '.join(SPACINGS)}, got {self.spacing!r}")
        if isinstance(self.grad_steps, bool) or not isinstance(self.grad_steps, int) or self.grad_steps < 1:
            raise SolverError(f"diffpir.grad_steps must be an integer >= 1, got {self.grad_steps!r}")
        if not (math.isfinite(self.lipschitz) and self.lipschitz > 0):
            raise SolverError(f"diffpir.lipschitz must be a finite number > 0, got {self.lipschitz!r}")

    def zeta_for(self, task: str, spectral: bool) -> float:
        if self.zeta is not None:
            return float(self.zeta)
        return CONFIG_ZETA_BY_TASK.get(task, DEFAULT_ZETA) if spectral else GRADIENT_PATH_ZETA

    def lam_for(self, task: str, spectral: bool) -> float:
        if self.lam is not None:
            return float(self.lam)
        return CONFIG_LAMBDA_BY_TASK.get(task, DEFAULT_LAMBDA) if spectral else GRADIENT_PATH_LAMBDA


def quad_timesteps(num_timesteps: int, n: int) -> list[int]:
    """The official "quad" skip: t_k = T − 1 − ⌊√(k T² / (n − 1))⌋, k = 0..n−1, the last lowered by one to 0 —
    dense near t = 0. For T = 1000, n = 100: 999, 899, 857, 825, ..., 4, 0. Descending; SolverError if n is so
    large that two coincide."""
    total = int(num_timesteps)
    if n == 1:
        return [total - 1]
    step = total * total / (n - 1)
    seq = [int(math.sqrt(k * step)) for k in range(n)]
    seq[-1] -= 1
    ts = [total - 1 - s for s in seq]
    if any(a <= b for a, b in zip(ts, ts[1:], strict=False)):
        raise SolverError(f"diffpir: {n} 'quad' steps repeat timesteps of a {total}-step prior; use fewer steps")
    return ts


@register
class DiffPIR(Solver):
    name = "diffpir"
    version = 2  # 2: per-task λ and deblurring's ζ = 0.3, as the official main() runs them (1: λ = 1, ζ = 0.1)
    noise_models = frozenset({"gaussian", "poisson"})  # a proximal step on ‖y − Ax‖² only
    Config = DiffPIRConfig
    requires = frozenset({Cap.FORWARD})
    # the closed-form prox where the operator has an SVD, else gradient steps through the operator
    uses_when_available = frozenset({Cap.SVD, Cap.DIFFERENTIABLE})
    summary = "DiffPIR: prior denoising, proximal data step (closed form via the SVD), ζ re-noising (Zhu et al. 2023)"

    config: DiffPIRConfig

    def unsupported(self, op: Operator, sigma: float) -> str | None:
        reason = super().unsupported(op, sigma)
        if reason is None and not op.supports(Cap.SVD) and not op.supports(Cap.DIFFERENTIABLE):
            return f"{self.name} needs svd or differentiable, which {op.task} does not provide"
        return reason

    def nfe(self) -> int:
        return self.config.steps  # one prior call per step

    def timesteps(self, prior) -> list[int]:
        if self.config.spacing == "quad":
            return quad_timesteps(prior.num_timesteps, self.config.steps)
        return prior.timesteps(self.config.steps, self.config.spacing)

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
        """Algorithm 1 of DiffPIR on y (B, *op.measurement_shape); returns the last x̂0^(t) (B, C, H, W), unclamped."""
        config = self.config
        shape, device = prior.image_shape, prior.device
        y = y.to(device=device, dtype=torch.float32)
        spectral = op.supports(Cap.SVD)
        zeta = config.zeta_for(op.task, spectral)
        lam = config.lam_for(op.task, spectral)
        sigma_n = max(float(sigma), config.sigma_floor)  # σ_n on [0, 1], as the official code reads it
        if spectral:
            with torch.no_grad():
                s, u_y = spectral_measurement(op, y)
        ts = self.timesteps(prior)
        x = randn_per_image(shape, generators, dtype=torch.float32, device=device)  # x_T ~ N(0, I)
        for i, (t, t_next) in enumerate(zip(ts, [*ts[1:], -1], strict=True)):
            with torch.no_grad():
                prediction = prior.predict(x, t)
            x0 = prediction.x0.clamp(-1, 1) if config.clip_x0 else prediction.x0  # x0^(t), Eq. 11
            if callback is not None:
                callback(step=i, t=t, x_t=x, eps=prediction.eps, x0=x0)
            ab_t = float(prior.alpha_bar(t, torch.float64))
            rho = lam * sigma_n**2 * ab_t / (1.0 - ab_t)  # ρ_t = λ σ_n² / σ̄_t², Eq. 13
            if spectral:
                with torch.no_grad():
                    x0 = _spectral_prox(op, x0, s, u_y, rho)  # Eq. 12, closed form
            else:
                x0 = self._gradient_prox(op, y, x0, rho)  # Sec. 3.3, first-order
            noise = randn_per_image(shape, generators, dtype=torch.float32, device=device)
            ab_s = float(prior.alpha_bar(t_next, torch.float64))
            with torch.no_grad():
                eps_hat = (x - math.sqrt(ab_t) * x0) / math.sqrt(1.0 - ab_t)  # Eq. 14
                mixed = math.sqrt(1.0 - zeta) * eps_hat + math.sqrt(zeta) * noise
                x = math.sqrt(ab_s) * x0 + math.sqrt(1.0 - ab_s) * mixed  # Eq. 15; at s = -1, x = x̂0^(t)
        return x

    def _gradient_prox(self, op: Operator, y: Tensor, x0: Tensor, rho: float) -> Tensor:
        """grad_steps steps x ← x − γ ∇_x (‖y − A(x)‖² + ρ ‖x − x0‖²) from x0, γ = 1 / (2 (ρ + L)), per image."""
        gamma = 1.0 / (2.0 * (rho + self.config.lipschitz))
        x = x0.detach()
        for _ in range(self.config.grad_steps):
            with torch.enable_grad():
                x = x.detach().requires_grad_(True)
                objective = (y - op(x)).flatten(1).square().sum() + rho * (x - x0).flatten(1).square().sum()
                (gradient,) = torch.autograd.grad(objective, x)
            x = x.detach() - gamma * gradient
        return x


def _spectral_prox(op: Operator, x0: Tensor, s: Tensor, u_y: Tensor, rho: float) -> Tensor:
    """argmin_x ‖y − A x‖² + ρ ‖x − x0‖² through A = U diag(s) Vᵀ: (s_i u_i + ρ x̄0_i) / (s_i² + ρ) on observed
    components, x̄0_i elsewhere; at ρ = 0 the projection u_i / s_i."""
    svd = op.svd
    x0_bar = svd.vt(x0)
    observed = s > 0
    denominator = torch.where(observed, s * s + rho, torch.ones_like(s))
    x_bar = torch.where(observed, (s * u_y + rho * x0_bar) / denominator, x0_bar)
    return svd.v(x_bar)
