"""Unconditional ancestral sampling (DDPM, Ho et al. 2020, Alg. 2): ignores y.

The reference curve of the DDC paper's kurtosis figure (Fig. 2): what ε̂ looks like along a trajectory that
no measurement pushes off the prior. Learned-variance priors (ADM) use their own variance (Improved DDPM,
Eq. 15); fixed-variance priors the posterior variance β̃_t.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch
from torch import Tensor

from bench.sampling import posterior_step
from operators import Operator, randn_per_image

from . import register
from .base import Solver, SolverConfig, StepCallback


@dataclasses.dataclass(frozen=True)
class UncondConfig(SolverConfig):
    steps: int = 1000  # DDPM: every training timestep


@register
class Uncond(Solver):
    name = "uncond"
    noise_models = frozenset({"gaussian", "poisson"})  # ignores y
    Config = UncondConfig
    summary = "ancestral DDPM sampling that ignores y (reference for the kurtosis figure)"
    quick = {"steps": 100}

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
        shape, device = prior.image_shape, prior.device
        ts = prior.timesteps(self.config.steps)
        x = randn_per_image(shape, generators, dtype=torch.float32, device=device)
        for i, (t, s) in enumerate(zip(ts, [*ts[1:], -1], strict=True)):
            with torch.no_grad():
                prediction = prior.predict(x, t)
            if callback is not None:
                callback(step=i, t=t, x_t=x, eps=prediction.eps, x0=prediction.x0)
            noise = randn_per_image(shape, generators, dtype=x.dtype, device=device)
            x = posterior_step(prior, x, prediction, t, s, noise)
        return x
