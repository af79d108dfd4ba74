"""DAPS on the analytic Gaussian prior: its schedule on the prior's timesteps, its plumbing, and how near the exact
posterior it gets when its Langevin chains target the exact likelihood.

DAPS is not exact at any finite budget: p(x0 | x_t) is replaced by N(x̂0_ODE, σ_t² I). The paper's limit argument
needs infinitely many levels and Langevin chains that mix; the released step sizes (η = 1e-4 with τ = 0.01) only mix
because τ sharpens the likelihood far beyond the measurement noise. With the exact likelihood (tau=None) and a step
that mixes, the draws come within about two Monte Carlo units of the posterior mean.
"""

from __future__ import annotations

import pytest
import torch

import operators
import solvers
from bench.priors import load_prior
from operators import image_generators
from solvers import SolverError
from solvers.daps import edm_sigma

RUNS = 64


def setup(task: str, sigma: float, runs: int, spec: str = "gaussian:8"):
    prior = load_prior(spec)
    op = operators.build(task, shape=prior.image_shape).for_images(["x"], 0)
    truth = prior.sample(1, generator=torch.Generator().manual_seed(1))
    y = op.measure(truth, sigma, image_generators(0, ["x"], "noise"))
    many = operators.build(task, shape=prior.image_shape).for_images(["x"] * runs, 0)
    return prior, many, y.expand(runs, *y.shape[1:]).contiguous(), prior.posterior(op, y, sigma)


def test_daps_schedule_lies_on_the_prior_timesteps():
    """DAPS-1K: 200 levels from σ ≈ 100 down towards 0.1 (poly-7), each with a 5-step ODE grid ending at σ_min = 0.01,
    which is t = 0 of DDPM's schedule (σ_0 = 0.0100)."""
    prior = load_prior("gaussian:8")
    levels, odes = solvers.build("daps").schedule(prior)
    assert len(levels) == 200 and all(a >= b for a, b in zip(levels, levels[1:], strict=False))
    assert abs(edm_sigma(prior, levels[0]) / 100 - 1) < 0.02 and 0.09 < edm_sigma(prior, levels[-1]) < 0.12
    assert all(len(grid) == 6 and grid[0] == t and grid[-1] == 0 for t, grid in zip(levels, odes, strict=True))
    four = solvers.build("daps-4k")
    assert four.nfe() == 4000 and solvers.build("daps").nfe() == 1000


@pytest.mark.slow
def test_daps_with_the_exact_likelihood_nears_the_posterior():
    """gaussian:8, sr4, σ = 0.05, 64 runs of 50 levels × 2 ODE steps, 50 Langevin steps of η = 2e-3, tau=None.
    Measured: mean error 1.74 Monte Carlo units (an exact sampler: ≈ 1), relative mean error 0.45, variance ratio
    0.96; the released settings (τ = 0.01, η = 1e-4, 25 steps) give variance ratio 0.59: the sharpened likelihood
    under-disperses."""
    prior, op, ys, posterior = setup("sr4", 0.05, RUNS)
    mean, trace = posterior.mean.double().reshape(-1), float(posterior.covariance.trace())
    gens = image_generators(0, [f"run-{j}" for j in range(RUNS)], "daps")
    solver = solvers.build("daps", steps=50, ode_steps=2, langevin_steps=50, lr=2e-3, tau=None)
    draws = solver.solve(ys, op, prior, sigma=0.05, generators=gens).double().reshape(RUNS, -1)
    assert float((draws.mean(0) - mean).norm() / (trace / RUNS) ** 0.5) < 2.5
    assert 0.85 < float(draws.var(0).sum() / trace) < 1.1


def test_daps_reports_every_network_call_and_keeps_images_apart():
    prior, _, _, _ = setup("inpaint", 0.05, 1)
    ids = ["a", "b", "c"]
    op = operators.build("inpaint", shape=prior.image_shape).for_images(ids, 0)
    y = op.measure(prior.sample(3, generator=torch.Generator().manual_seed(2)), 0.05, image_generators(0, ids, "n"))
    solver = solvers.build("daps", steps=4, ode_steps=2, langevin_steps=5)
    seen = []
    prior.reset_stats()
    batch = solver.solve(
        y, op, prior, sigma=0.05, generators=image_generators(0, ids, "s"), callback=lambda **k: seen.append(k)
    )
    levels, odes = solver.schedule(prior)
    assert prior.stats.nfe == len(seen) == solver.nfe() == 8
    assert [k["t"] for k in seen] == [t for grid in odes for t in grid[:-1]]
    alone_op = operators.build("inpaint", shape=prior.image_shape).for_images(["b"], 0)
    alone = solver.solve(y[1:2], alone_op, prior, sigma=0.05, generators=image_generators(0, ["b"], "s"))
    torch.testing.assert_close(batch[1:2], alone, rtol=0, atol=1e-5)


def test_daps_options_and_errors():
    prior, op, ys, _ = setup("sr4", 0.0, 1)
    with pytest.raises(SolverError, match="tau=None"):
        solvers.build("daps", steps=2, tau=None).solve(
            ys, op, prior, sigma=0.0, generators=image_generators(0, ["a"], "s")
        )
    for option, value in (("ode_steps", 0), ("langevin_steps", 0), ("tau", -1.0), ("lr_min_ratio", 0.0)):
        with pytest.raises(SolverError, match=f"daps.{option}"):
            solvers.build("daps", **{option: value})
    assert solvers.build("daps").config.lr_for("inpaint") == 5e-5 and solvers.build("daps").config.lr_for("sr4") == 1e-4
    jpeg = operators.build("jpeg10", shape=prior.image_shape)
    assert solvers.build("daps").unsupported(jpeg, 0.05) is None  # forward and autograd only


class LoudPrior:
    """A prior whose Tweedie estimates are `gain` times the Gaussian prior's (ε to match): far outside [-1, 1],
    as natural64's are at high noise (|x̂0| up to 30 at σ = 100)."""

    def __init__(self, base, gain: float = 6.0):
        self.base, self.gain = base, gain

    def __getattr__(self, name):
        return getattr(self.base, name)

    def predict(self, x_t, t):
        import dataclasses

        prediction = self.base.predict(x_t, t)
        x0 = prediction.x0 * self.gain
        a = self.base.alpha_bar(t, x_t.dtype)
        a = a.reshape(-1, *([1] * (x_t.ndim - 1))) if torch.is_tensor(a) and a.ndim else a
        eps = (x_t - (a**0.5) * x0) / ((1 - a) ** 0.5)
        return dataclasses.replace(prediction, x0=x0, eps=eps)


def test_daps_clip_x0_keeps_the_ode_estimate_in_range_and_is_off_by_default():
    """With a prior whose x̂0 leaves [-1, 1] and a Langevin step too small to move, the output is the last ODE
    estimate: unclipped (the official code) it lies far outside [-1, 1]; clip_x0 = true steers each Euler step
    towards clip(x̂0), so it ends within [-1, 1] up to the last step's σ_min/σ_k share of x."""
    prior = LoudPrior(load_prior("gaussian:8"))
    op = operators.build("hdr", shape=prior.image_shape).for_images(["x"], 0)
    y = op.measure(torch.zeros(1, *prior.image_shape), 0.05, image_generators(0, ["x"], "noise"))
    options = {"steps": 8, "ode_steps": 2, "langevin_steps": 1, "lr": 1e-12}
    assert solvers.build("daps").config.clip_x0 is False
    loose = solvers.build("daps", **options).solve(y, op, prior, sigma=0.05, generators=image_generators(0, ["x"], "s"))
    tight = solvers.build("daps", clip_x0=True, **options).solve(
        y, op, prior, sigma=0.05, generators=image_generators(0, ["x"], "s")
    )
    assert loose.abs().max() > 2.0
    assert tight.abs().max() < 1.25
