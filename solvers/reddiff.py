"""RED-diff (Mardani et al. 2023, "A Variational Perspective on Solving Inverse Problems with Diffusion Models",
Algorithm 1): fit the mean μ of a variational distribution by Adam on a data term plus a denoising regulariser.

    μ ← A⁺y                                                                     (initialisation)
    for t = t_1 > t_2 > ... > t_n (descending):
        ε ~ N(0, I);  x_t = sqrt(ᾱ_t) μ + sqrt(1 - ᾱ_t) ε
        loss(μ) = ½ ||y - A(μ)||² / M  +  λ w_t [sg(ε_θ(x_t, t) - ε)]ᵀ μ / N       (Alg. 1, "loss")
        μ ← Adam step on loss                                                  (Alg. 1, "OptimizerStep")
    return μ

sg is stop-gradient: the network is evaluated without autograd, so the regulariser's gradient is
λ w_t (ε_θ - ε) / N, the score-matching residual (the paper's Eq. 9 "RED" view), and nothing backpropagates
through the network.

Weights, and why:

* w_t = sqrt(1 - ᾱ_t) / sqrt(ᾱ_t) = 1 / sqrt(SNR_t): the paper's SNR-based weighting λ_t = λ σ_t / α_t
  (Sec. 4.3, with the paper's x_t = α_t x0 + σ_t ε, i.e. α_t = sqrt(ᾱ_t), σ_t = sqrt(1 - ᾱ_t)), which is also
  the official code's default (`denoise_term_weight: linear`). Large at high noise, ≈ 0.01 at t = 0.
* The data term has no 1 / σ_v²: the paper's ½||y - A μ||² / σ_v² would be infinite for noise-free
  measurements, and the official code, whose λ the DDC paper reuses, absorbs σ_v into λ (`obs_weight: 1`).
* Each term is a mean, as in the official code (it averages the squared residual over the measurement's
  entries and the regulariser over the pixels): M is the number of measured coefficients of one image (the
  number of singular values where the operator has an SVD, so that inpainting counts only the observed
  pixels, as the official code's measurement vector does; the measurement's size otherwise), N = C·H·W.
  λ = 0.25 was tuned for this balance; with sums instead, λ would mean something different on every task.
* The official code averages over the batch too. Here the loss is the sum over images of each image's loss:
  Adam's state is elementwise, so each image then follows exactly the trajectory it would follow alone.

The estimate is μ after the last step (Alg. 1); the official code saves the last step's x̂₀, computed before
that step (`output="x0"`). Adam uses the official code's betas (0.9, 0.99). The DDC paper (Appendix B) runs 100 steps with lr 0.5 and
λ = 0.25; the official configuration file's default lr is 0.1.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import torch
from torch import Tensor

from operators import Cap, Operator, randn_per_image

from . import register
from .base import Solver, SolverConfig, SolverError, StepCallback

# Official RED-diff code: torch.optim.Adam(..., betas=(0.9, 0.99)) (the comment there notes 0.999 originally).
ADAM_BETAS = (0.9, 0.99)


@dataclasses.dataclass(frozen=True)
class RedDiffConfig(SolverConfig):
    steps: int = 100  # DDC paper, App. B
    lr: float = 0.5  # DDC paper, App. B (the official yaml's default is 0.1)
    lam: float = 0.25  # λ, DDC paper, App. B (= official `grad_term_weight`)
    # The estimate returned: "mu", Alg. 1's μ after the last Adam step; "x0", the last step's Tweedie estimate
    # x̂₀(x_t), computed before that step, which is what the official code saves.
    output: str = "mu"

    def __post_init__(self) -> None:
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise SolverError(f"reddiff.steps must be a positive integer (default 100), got {self.steps!r}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise SolverError(f"reddiff.lr must be a finite number > 0 (default 0.5), got {self.lr!r}")
        if not (math.isfinite(self.lam) and self.lam >= 0):
            raise SolverError(f"reddiff.lam must be a finite number >= 0 (default 0.25), got {self.lam!r}")
        if self.output not in ("mu", "x0"):
            raise SolverError(f"reddiff.output must be 'mu' (Alg. 1) or 'x0' (the official code), got {self.output!r}")


def measured_entries(op: Operator) -> int:
    """M, the number of coefficients one image's measurement actually observes (see the module docstring)."""
    if op.supports(Cap.SVD):
        return int(op.svd.singulars.shape[-1])
    return math.prod(op.measurement_shape)


def inverse_sqrt_snr(prior, t: int) -> Tensor:
    """w_t = sqrt(1 - ᾱ_t) / sqrt(ᾱ_t), shape (1, 1, 1, 1) float32."""
    alpha_bar = prior.alpha_bar(t, dtype=torch.float64)
    return ((1.0 - alpha_bar) / alpha_bar).sqrt().float()


@register
class RedDiff(Solver):
    name = "reddiff"
    noise_models = frozenset({"gaussian", "poisson"})  # ½‖y − Aμ‖² only
    Config = RedDiffConfig
    requires = frozenset({Cap.FORWARD, Cap.PINV, Cap.DIFFERENTIABLE})
    uses_when_available = frozenset({Cap.SVD})  # counts the measured entries; the measurement size without it
    summary = "RED-diff: Adam on ½||y - Aμ||² + λ/√SNR_t · sg(ε_θ(x_t) - ε)ᵀμ from μ = A⁺y, descending t"

    config: RedDiffConfig

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
        """Algorithm 1 of RED-diff on y (B, *op.measurement_shape); returns μ (B, C, H, W).

        σ (on the [0, 1] scale) is not used: λ carries the noise level (see the module docstring).
        """
        shape, device = prior.image_shape, prior.device
        y = y.to(device=device, dtype=torch.float32)
        data_scale = 0.5 / measured_entries(op)
        prior_scale = self.config.lam / math.prod(shape)
        with torch.no_grad():
            mu = op.pinv(y).to(device=device, dtype=torch.float32).clone()
        mu.requires_grad_(True)
        optimizer = torch.optim.Adam([mu], lr=self.config.lr, betas=ADAM_BETAS)
        for i, t in enumerate(prior.timesteps(self.config.steps)):
            noise = randn_per_image(shape, generators, dtype=mu.dtype, device=device)
            with torch.no_grad():
                x_t = prior.alpha_bar(t).sqrt() * mu + (1.0 - prior.alpha_bar(t)).sqrt() * noise
                prediction = prior.predict(x_t, t)
            if callback is not None:
                callback(step=i, t=t, x_t=x_t, eps=prediction.eps, x0=prediction.x0)
            with torch.enable_grad():
                data = (y - op(mu)).flatten(1).square().sum(1)
                regulariser = ((prediction.eps - noise) * mu).flatten(1).sum(1)
                # A sum over images of per-image losses: no image's gradient depends on the batch.
                loss = (data_scale * data + prior_scale * inverse_sqrt_snr(prior, t).flatten() * regulariser).sum()
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
            optimizer.step()
        estimate = prediction.x0 if self.config.output == "x0" else mu.detach()
        return estimate
