"""MCGDiff on the analytic Gaussian prior: the particle count trades cost for exactness.

The SMC estimate's law tends to the posterior of the prior's DDPM chain as particles grow; with the exact Gaussian
denoiser that chain is close to the prior itself, so the mean of R independent runs approaches the exact posterior
mean at the Monte Carlo rate. Error unit as in the other exact-law tests: ‖mean of R draws − posterior mean‖ /
√(tr Σ_post / R), about 1 for an exact sampler.
"""

from __future__ import annotations

import pytest
import torch

import operators
import solvers
from bench.priors import load_prior
from operators import image_generators
from solvers import SolverError

RUNS = 64  # independent SMC runs (one estimate each) per particle count
STEPS = 20  # fewer than the default 100: the convergence in N does not depend on it, the test's time does


def mc_error(samples: torch.Tensor, mean: torch.Tensor, trace: float) -> float:
    return float(
        (samples.double().reshape(samples.shape[0], -1).mean(0) - mean).norm() / (trace / samples.shape[0]) ** 0.5
    )


def setup(spec: str, task: str, sigma: float, runs: int):
    prior = load_prior(spec)
    op = operators.build(task, shape=prior.image_shape).for_images(["x"], 0)
    truth = prior.sample(1, generator=torch.Generator().manual_seed(1))
    y = op.measure(truth, sigma, image_generators(0, ["x"], "noise"))
    posterior = prior.posterior(op, y, sigma)
    many = operators.build(task, shape=prior.image_shape).for_images(["x"] * runs, 0)
    return prior, many, y.expand(runs, *y.shape[1:]).contiguous(), posterior


@pytest.mark.slow
def test_mcgdiff_mean_error_falls_to_the_exact_floor_as_particles_grow():
    """gaussian:8 (3×8×8), 92% inpainting, σ = 0.05, 20 steps, 64 runs. Measured mean error (Monte Carlo units):
    N = 1: 1.59, 8: 1.45, 64: 0.84; the exact sampler with 64 draws: 0.67-1.10 over five seeds. With other
    sampler seeds: N = 1: 2.12, 8: 1.33, 64: 0.75, 256: 0.72. N = 1 is the proposal chain alone (no selection)."""
    prior, op, ys, posterior = setup("gaussian:8", "inpaint", 0.05, RUNS)
    mean, trace = posterior.mean.double().reshape(-1), float(posterior.covariance.trace())
    gens = lambda: image_generators(0, [f"run-{j}" for j in range(RUNS)], "smc")  # noqa: E731
    errors = {}
    for n in (1, 8, 64):
        solver = solvers.build("mcgdiff", particles=n, steps=STEPS)
        errors[n] = mc_error(solver.solve(ys, op, prior, sigma=0.05, generators=gens()), mean, trace)
    assert errors[1] > 1.4 and errors[1] > errors[8] > errors[64]
    assert errors[64] < 1.3  # within the exact sampler's spread (≈ 1 ± 0.15 at 64 draws)


def test_mcgdiff_noise_free_estimate_is_consistent_up_to_kappa():
    """σ = 0: the likelihood variance is floored at κ = 1e-4 (std 0.01), so the estimate reproduces y to a few times that (an unconditional draw misses by ~0.3)."""
    prior, op, ys, _ = setup("gaussian:8", "sr4", 0.0, 2)
    out = solvers.build("mcgdiff", particles=8, steps=STEPS).solve(
        ys, op, prior, sigma=0.0, generators=image_generators(0, ["a", "b"], "smc")
    )
    assert float((op(out) - ys).square().mean().sqrt()) < 0.05  # measured 0.032 (8 particles, 20 steps)


def test_mcgdiff_image_result_does_not_depend_on_its_batch():
    prior = load_prior("gaussian:8")
    ids = ["a", "b", "c"]
    op = operators.build("inpaint", shape=prior.image_shape).for_images(ids, 0)  # per-image masks and SVDs
    x = prior.sample(3, generator=torch.Generator().manual_seed(3))
    y = op.measure(x, 0.05, image_generators(0, ids, "noise"))
    solver = solvers.build("mcgdiff", particles=8, steps=10)
    batch = solver.solve(y, op, prior, sigma=0.05, generators=image_generators(0, ids, "smc"))
    alone_op = operators.build("inpaint", shape=prior.image_shape).for_images(["b"], 0)
    alone = solver.solve(y[1:2], alone_op, prior, sigma=0.05, generators=image_generators(0, ["b"], "smc"))
    torch.testing.assert_close(batch[1:2], alone, rtol=0, atol=1e-5)


def test_mcgdiff_mean_estimate_and_callback_and_errors():
    prior, op, ys, posterior = setup("gaussian:8", "denoise", 0.05, 1)
    seen = []
    out = solvers.build("mcgdiff", particles=16, steps=5, estimate="mean").solve(
        ys, op, prior, sigma=0.05, generators=image_generators(0, ["a"], "smc"), callback=lambda **kw: seen.append(kw)
    )
    assert out.shape == ys.shape and torch.isfinite(out).all()
    assert [kw["t"] for kw in seen] == prior.timesteps(5) and all(kw["x0"].shape == ys.shape for kw in seen)
    with pytest.raises(SolverError, match="particles"):
        solvers.build("mcgdiff", particles=0)
    with pytest.raises(SolverError, match="estimate"):
        solvers.build("mcgdiff", estimate="median")
    assert solvers.build("mcgdiff").unsupported(operators.build("jpeg10", shape=(3, 8, 8)), 0.0) is not None


def test_mcgdiff_clip_x0_bounds_the_unobserved_pixels_and_is_keyed_only_when_on():
    """Inpainting's V basis selects pixels, and at the last step an unobserved coordinate is x̂0's: with clip_x0
    every unobserved pixel lies in [-1, 1]; the Gaussian prior's own x̂0 leaves it. Off (the official code), the
    option is absent from the spec, so results stored before it existed keep their keys."""
    prior, op, ys, _ = setup("gaussian:8", "inpaint", 0.05, 4)
    hidden = op.restrict(torch.ones(4, *prior.image_shape)) == 0
    gens = lambda: image_generators(0, ["a", "b", "c", "d"], "smc")  # noqa: E731
    plain = solvers.build("mcgdiff", particles=4, steps=STEPS).solve(ys, op, prior, sigma=0.05, generators=gens())
    clipped = solvers.build("mcgdiff", particles=4, steps=STEPS, clip_x0=True).solve(
        ys, op, prior, sigma=0.05, generators=gens()
    )
    assert plain[hidden].abs().max() > 1.0  # the case clipping changes
    assert clipped[hidden].abs().max() <= 1.0 + 1e-6
    assert "clip_x0" not in solvers.build("mcgdiff").spec()["config"]
    assert solvers.build("mcgdiff", clip_x0=True).spec()["config"]["clip_x0"] is True
