"""Plug-and-play ADMM (Chan, Wang, Elgendy 2016, "Plug-and-Play ADMM for Image Restoration: Fixed-Point
Convergence and Applications", Algorithm 1; Venkatakrishnan et al. 2013).

ADMM on ½‖y - A x‖²/s_y² + R(x) with the splitting x = z, where the proximal step of R is replaced by a
Gaussian denoiser D at noise std 1/√ρ (on [-1, 1]):

    x ← argmin_x ½‖y - A x‖²/s_y² + (ρ/2)‖x - (z - u)‖²        (data step, a linear solve)
    z ← D(x + u)                                               (denoising step)
    u ← u + x - z                                              (dual update)

It is an optimiser, not a sampler: no diffusion prior and no randomness. With an exact MMSE denoiser of a
Gaussian prior (which equals its MAP denoiser), the fixed point is the MAP estimate, which for a Gaussian
prior and a linear A is the exact posterior mean (tests/test_solver_pnp_admm.py checks this).

Choices, and why:

* The data term is weighted by 1/s_y², s_y = 2σ the noise std on [-1, 1], so that ρ sets the denoiser's
  noise level independently of σ: the z-step is MAP denoising at std 1/√ρ on [-1, 1], that is
  σ_D = 1/(2√ρ) on the [0, 1] scale, which is what the denoiser callable receives. At σ = 0 the data term
  would be a hard constraint; s_y is floored at the noise of storing y in 8 bits (a uniform error of one
  level: std 1/(255·√12) on [0, 1]), which keeps the solve well posed where singular values are tiny (blur).
* ρ = 8 and 10 iterations: SCICO's PnP-ADMM DnCNN deconvolution example (`deconv_ppp_dncnn_admm.py`:
  ρ = 0.2 on an unweighted data term ½‖y - Ax‖² at noise 20/255 on [0, 1], maxiter = 10, started from Aᵀy).
  In this weighting that ρ is 0.2 / (20/255)² on [0, 1], 4 times less on [-1, 1]: ≈ 8.1, so σ_D ≈ 0.18
  (46/255), inside the DnCNN's blind training range [0, 55/255]. The DDC paper gives no settings.
* The data step is closed form through the SVD where the operator has one (diagonal in the V basis:
  c_i = (s_i ⟨u_i, y⟩ + ρ s_y² ⟨v_i, v⟩)/(s_i² + ρ s_y²)), else conjugate gradients on
  (AᵀA + ρ s_y² I) x = Aᵀy + ρ s_y² v, per image (each image stops at its own tolerance).
* Start: z = A⁺y where the operator has a pseudo-inverse, else Aᵀy (SCICO); u = 0.
* The denoiser: the DnCNN of solvers/pnp_admm/dncnn.py, trained by solvers/pnp_admm/train.py
  (`denoiser="dncnn"` means the shipped `bench/assets/dncnn/`, any other value a folder holding `config.json`
  and `model.safetensors`), or any callable D(x (B, C, H, W) on [-1, 1], σ_D on [0, 1]) -> (B, C, H, W) passed
  as `PnPADMM(denoiser_fn=...)`. The DnCNN is blind and ignores σ_D.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from bench.files import asset
from operators import Cap, Operator
from operators.base import noise_std

from .. import register
from ..base import Solver, SolverConfig, SolverError, StepCallback
from .dncnn import load_denoiser

Denoiser = Callable[[Tensor, float], Tensor]

DNCNN_ASSET = asset("dncnn")
MEASUREMENT_NOISE_FLOOR = 1.0 / (255.0 * math.sqrt(12.0))  # 8-bit storage of y: uniform error of one level


@dataclasses.dataclass(frozen=True)
class PnPADMMConfig(SolverConfig):
    iterations: int = 10  # SCICO deconv_ppp_dncnn_admm example: maxiter = 10 (the DDC paper gives none)
    rho: float = 8.0  # SCICO's ρ = 0.2 at σ = 20/255, in this module's weighting (see the module docstring)
    denoiser: str = "dncnn"  # "dncnn": bench/assets/dncnn/; else a folder saved by solvers.pnp_admm.train
    cg_iterations: int = 100  # only for operators without an SVD
    cg_tolerance: float = 1e-5  # relative residual at which an image's conjugate gradients stop

    def __post_init__(self) -> None:
        for name in ("iterations", "cg_iterations"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise SolverError(f"pnp-admm.{name} must be a positive integer, got {value!r}")
        for name in ("rho", "cg_tolerance"):
            value = getattr(self, name)
            if not (
                isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value > 0
            ):
                raise SolverError(f"pnp-admm.{name} must be a finite number > 0, got {value!r}")
        if not isinstance(self.denoiser, str) or not self.denoiser:
            raise SolverError(f"pnp-admm.denoiser must be 'dncnn' or a folder path, got {self.denoiser!r}")

    def denoiser_folder(self) -> Path:
        return DNCNN_ASSET if self.denoiser == "dncnn" else Path(self.denoiser)


def _batched_dot(a: Tensor, b: Tensor) -> Tensor:
    """Per-image inner products of (B, ...) tensors: (B,)."""
    return (a * b).flatten(1).sum(dim=1)


def conjugate_gradients(
    apply: Callable[[Tensor], Tensor], rhs: Tensor, x: Tensor, *, iterations: int, tolerance: float
) -> Tensor:
    """Solve apply(x) = rhs for a symmetric positive definite per-image linear map, per image.

    rhs, x (initial guess): (B, C, H, W). Each image iterates until its residual norm falls below
    `tolerance` times its ‖rhs‖ (or `iterations` run out) and is then frozen, so its result does not depend
    on the other images of the batch. apply must act on every image independently.
    """
    residual = rhs - apply(x)
    direction = residual.clone()
    rr = _batched_dot(residual, residual)
    target = tolerance**2 * _batched_dot(rhs, rhs).clamp_min(torch.finfo(rhs.dtype).tiny)
    shape = (-1,) + (1,) * (rhs.ndim - 1)
    for _ in range(iterations):
        active = rr > target
        if not bool(active.any()):
            break
        applied = apply(direction)
        curvature = _batched_dot(direction, applied)
        step = torch.where(active, rr / torch.where(active, curvature, 1.0), 0.0)
        x = x + step.view(shape) * direction
        residual = residual - step.view(shape) * applied
        rr_new = _batched_dot(residual, residual)
        beta = torch.where(active, rr_new / torch.where(active, rr, 1.0), 0.0)
        direction = torch.where(active.view(shape), residual + beta.view(shape) * direction, direction)
        rr = torch.where(active, rr_new, rr)
    return x


def data_step(
    y: Tensor, op: Operator, v: Tensor, weight: float, *, cg_iterations: int = 100, cg_tolerance: float = 1e-5
) -> Tensor:
    """argmin_x ½‖y - A x‖² + (weight/2)‖x - v‖² per image, weight = ρ s_y²; v and the result (B, C, H, W).

    Closed form in the V basis of the operator's SVD where it has one, else conjugate gradients with Aᵀ.
    """
    if op.supports(Cap.SVD):
        svd = op.svd
        s = svd.singulars_like(v)
        coefficients = svd.vt(v)
        m = s.shape[-1]
        observed = (s * svd.ut(y) + weight * coefficients[:, :m]) / (s * s + weight)
        return svd.v(torch.cat([observed, coefficients[:, m:]], dim=1))
    rhs = op.adjoint(y) + weight * v
    return conjugate_gradients(
        lambda x: op.adjoint(op(x)) + weight * x, rhs, v, iterations=cg_iterations, tolerance=cg_tolerance
    )


class _DnCNNDenoiser:
    """The blind DnCNN as a `Denoiser`: σ_D is ignored."""

    def __init__(self, network: torch.nn.Module) -> None:
        self.network = network

    def __call__(self, x: Tensor, sigma: float) -> Tensor:
        return self.network(x)


@register
class PnPADMM(Solver):
    name = "pnp-admm"
    noise_models = frozenset({"gaussian", "poisson"})  # a least-squares x-step on ‖y − Ax‖ only
    Config = PnPADMMConfig
    requires = frozenset({Cap.FORWARD, Cap.ADJOINT})
    # A⁺y as the start and the data step in closed form in A's SVD; Aᵀy and conjugate gradients without them
    uses_when_available = frozenset({Cap.PINV, Cap.SVD})
    backprop_through_network = False
    uses_prior = False
    summary = "plug-and-play ADMM with a Gaussian denoiser (DnCNN); ignores the diffusion prior"

    config: PnPADMMConfig

    def __init__(self, config: SolverConfig | None = None, *, denoiser_fn: Denoiser | None = None, **overrides: Any):
        super().__init__(config, **overrides)
        self.denoiser_fn = denoiser_fn
        self._loaded: dict[str, Denoiser] = {}

    def spec(self) -> dict[str, Any]:
        spec = super().spec()
        if self.denoiser_fn is not None:
            spec["denoiser"] = f"callable:{getattr(self.denoiser_fn, '__qualname__', type(self.denoiser_fn).__name__)}"
        else:
            weights = self.config.denoiser_folder() / "model.safetensors"
            if weights.is_file():
                from bench.files import file_sha256

                spec["denoiser_sha256"] = file_sha256(weights)
        return spec

    def denoiser(self, device: torch.device) -> Denoiser:
        """The configured denoiser on `device`; a missing DnCNN is a SolverError saying how to train one."""
        if self.denoiser_fn is not None:
            return self.denoiser_fn
        key = str(device)
        if key not in self._loaded:
            folder = self.config.denoiser_folder()
            if not (folder / "config.json").is_file() or not (folder / "model.safetensors").is_file():
                raise SolverError(
                    f"pnp-admm needs a DnCNN denoiser in {folder} (config.json and model.safetensors), which is "
                    "missing; train one with `python -m bench train-denoiser --data <training photos> --out <dir>` "
                    "and pass its final folder with --set pnp-admm.denoiser=<dir>/final (or copy it to "
                    f"{DNCNN_ASSET})"
                )
            try:
                network = load_denoiser(folder, device=device)
            except (ValueError, OSError) as error:
                raise SolverError(f"pnp-admm cannot load the denoiser in {folder}: {error}") from error
            network.requires_grad_(False)
            self._loaded[key] = _DnCNNDenoiser(network)
        return self._loaded[key]

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
        """Plug-and-play ADMM on y (B, *op.measurement_shape); returns x̂ (B, C, H, W).

        `prior` gives only the image shape and device; `generators` are unused (the method is deterministic)
        and `callback` is never called (there is no network of the diffusion prior to report).
        """
        config = self.config
        device = prior.device
        denoise = self.counted("dncnn", self.denoiser(device))
        s_y = noise_std(max(float(sigma), MEASUREMENT_NOISE_FLOOR))
        weight = config.rho * s_y**2
        denoiser_sigma = 1.0 / (2.0 * math.sqrt(config.rho))  # the z-step's noise std, on the [0, 1] scale
        y = y.to(device=device, dtype=torch.float32)
        with torch.no_grad():
            z = op.pinv(y) if op.supports(Cap.PINV) else op.adjoint(y)
            u = torch.zeros_like(z)
            for _ in range(config.iterations):
                x = data_step(
                    y, op, z - u, weight, cg_iterations=config.cg_iterations, cg_tolerance=config.cg_tolerance
                )
                z = denoise(x + u, denoiser_sigma)
                u = u + x - z
        # z is the denoiser's output, the regularised iterate (x and z agree at convergence).
        return z
