"""Shared set-up for testing solvers against the analytic Gaussian prior's exact posterior."""

from __future__ import annotations

from collections.abc import Callable

import torch

import operators

SHAPE = (3, 16, 16)
DRAWS = 256


def seeded_generators(n: int, offset: int = 1000) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(offset + j) for j in range(n)]


def problem(prior, task: str, sigma: float, seed: int = 1):
    """One truth drawn from the prior, its measurement and the operator bound to that image."""
    op = operators.build(task, shape=SHAPE).for_images(["x"], seed=0)
    truth = prior.sample(1, generator=torch.Generator().manual_seed(seed))
    y = op.measure(truth, sigma, operators.image_generators(0, ["x"], "noise"))
    return op, truth, y


def repeated_solve(solver, prior, task: str, y: torch.Tensor, sigma: float, n: int = DRAWS) -> torch.Tensor:
    """n solutions for the same y in one batch (the same inpainting mask for all: one image id)."""
    batch_op = operators.build(task, shape=SHAPE).for_images(["x"] * n, seed=0)
    return solver.reconstruct(y.expand(n, *y.shape[1:]), batch_op, prior, sigma=sigma, generators=seeded_generators(n))


def posterior_error(prior, op, y: torch.Tensor, sigma: float) -> Callable[[torch.Tensor], float]:
    """Squared distance of an estimate to the exact posterior mean, relative to the prior mean's (= 1)."""
    posterior_mean = prior.posterior(op, y, sigma).mean
    reference = (prior.mean.float()[None] - posterior_mean).square().sum()
    return lambda estimate: float((estimate - posterior_mean).square().sum() / reference)
