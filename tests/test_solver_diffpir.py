"""DiffPIR on the analytic Gaussian prior, where every step is affine in x_t plus Gaussian noise.

DiffPIR is not exact in any limit (see solvers/diffpir.py), so its law is checked against its own equations: the
law of the output given y is propagated through dense matrices written from the paper's Eq. 12-15 (the proximal
step as (AᵀA + ρ_t I)⁻¹(Aᵀy + ρ_t x0), independent of the solver's SVD code) and the solver's draws are compared
with it at Monte Carlo precision. At σ = 0 with `sigma_floor=0` and ζ = 1 it is DDNM with η = 1, draw for draw.
"""

from __future__ import annotations

import math

import pytest
import torch
from test_solver_ddnm import dense, follows_law, law_statistics

import operators
import solvers
from bench.priors import load_prior
from operators import image_generators
from solvers import SolverError
from solvers.diffpir import _spectral_prox, quad_timesteps

SHAPE = (3, 16, 16)
D = math.prod(SHAPE)
SAMPLES = 256
LAW_STEPS = 20


@pytest.fixture(scope="module")
def prior():
    return load_prior("gaussian")


def bind(task: str, ids: list[str]) -> operators.Operator:
    return operators.build(task, shape=SHAPE).for_images(ids, seed=0)


def measurement(prior, task: str, sigma: float, ids=("img",)):
    op = bind(task, list(ids))
    x = prior.sample(len(ids), generator=torch.Generator().manual_seed(1))
    return op, op.measure(x, sigma, image_generators(0, list(ids), "noise"))


def diffpir_law(prior, solver, task: str, y: torch.Tensor, sigma: float):
    """Mean (D,) and covariance (D, D) of DiffPIR's output (clip_x0=False) given y, from Eq. 12-15 densely."""
    c = solver.config
    many = bind(task, ["img"] * D)
    A = dense(lambda e: many(e.reshape(D, *SHAPE)), D)  # (M, D)
    gram_values, gram_vectors = torch.linalg.eigh(A.T @ A)
    a_t_y = A.T @ y.double().reshape(-1)
    basis = prior.to_basis(torch.eye(D, dtype=torch.float64).reshape(D, *SHAPE)).reshape(D, D).T
    lam, mu = prior.eigenvalues.reshape(-1), prior.mean.reshape(-1)
    eye = torch.eye(D, dtype=torch.float64)
    zeta = c.zeta_for(task, True)
    sigma_n = max(sigma, c.sigma_floor)
    m, P = torch.zeros(D, dtype=torch.float64), eye.clone()
    ts = solver.timesteps(prior)
    for t, s in zip(ts, [*ts[1:], -1], strict=True):
        ab_t, ab_s = (float(prior.alpha_bar(k, torch.float64)) for k in (t, s))
        G = basis.T @ ((math.sqrt(ab_t) * lam / (ab_t * lam + 1 - ab_t))[:, None] * basis)  # x0 = G x_t + g
        g = mu - math.sqrt(ab_t) * G @ mu
        rho = c.lam_for(task, True) * sigma_n**2 * ab_t / (1 - ab_t)
        M = gram_vectors @ ((1.0 / (gram_values + rho))[:, None] * gram_vectors.T)  # (AᵀA + ρ I)⁻¹
        R, r = rho * M @ G, M @ (a_t_y + rho * g)  # x̂0^(t) = R x_t + r
        coef = math.sqrt(1 - ab_s) * math.sqrt(1 - zeta) / math.sqrt(1 - ab_t)
        K = math.sqrt(ab_s) * R + coef * (eye - math.sqrt(ab_t) * R)
        m = K @ m + (math.sqrt(ab_s) - coef * math.sqrt(ab_t)) * r
        P = K @ P @ K.T + (1 - ab_s) * zeta * eye
    return m, P


@pytest.mark.slow
def test_diffpir_samples_follow_its_exact_gaussian_law(prior):
    """gblur (tiny singular values), σ = 0.05: 256 draws (20 quad steps, the official λ = 7 and ζ = 0.3, unclipped
    x̂0) against the dense law. Measured: mean error 0.95 Monte Carlo units, per-pixel variance rms relative error
    0.085, variance ratio 1.003 (bounds 1.5, 0.13, (0.96, 1.04)); σ read as 2σ: (4.09, 0.144, 1.102), refused.
    The law itself is not the exact posterior (relative mean error 0.31, variance ratio 0.78; sr4 at σ = 0:
    0.094 and 0.78): DiffPIR is not a posterior sampler. sr4 at σ = 0 also matched its law (0.97, 0.083, 1.006).
    """
    task, sigma = "gblur", 0.05
    solver = solvers.build("diffpir", steps=LAW_STEPS, clip_x0=False)
    op, y = measurement(prior, task, sigma)
    mean, cov = diffpir_law(prior, solver, task, y, sigma)
    ids = [f"draw-{i}" for i in range(SAMPLES)]
    ys = y.expand(SAMPLES, *y.shape[1:]).contiguous()
    draws = solver.solve(
        ys, bind(task, ["img"] * SAMPLES), prior, sigma=sigma, generators=image_generators(0, ids, "s")
    )
    assert follows_law(law_statistics(draws.double(), mean, cov))
    # a wrong ρ_t (the noise read as 2σ on [0, 1], i.e. 4σ on [-1, 1]) fails the same check
    wrong = solver.solve(
        ys, bind(task, ["img"] * SAMPLES), prior, sigma=2 * sigma, generators=image_generators(0, ids, "s")
    )
    assert not follows_law(law_statistics(wrong.double(), mean, cov))


@pytest.mark.parametrize("task", ["inpaint", "denoise"])
def test_diffpir_noise_free_projection_with_zeta_one_is_ddnm_with_eta_one(prior, task):
    """σ = 0, sigma_floor = 0 (ρ_t = 0: the prox is the projection), ζ = 1, same timesteps: DDNM with η = 1."""
    ids = ("a", "b")
    op, y = measurement(prior, task, 0.0, ids)
    gens = lambda: image_generators(0, list(ids), "s")  # noqa: E731
    diffpir = solvers.build("diffpir", steps=30, zeta=1.0, sigma_floor=0.0, spacing="uniform", clip_x0=False)
    ddnm = solvers.build("ddnm", steps=30, eta=1.0)
    torch.testing.assert_close(
        diffpir.solve(y, op, prior, sigma=0.0, generators=gens()),
        ddnm.solve(y, op, prior, sigma=0.0, generators=gens()),
        rtol=0,
        atol=1e-4,
    )


@pytest.mark.parametrize("task", ["sr4", "inpaint"])
def test_diffpir_noise_free_exact_projection_satisfies_a_x_equals_y(prior, task):
    """The last step takes the data step too (paper Alg. 1): with sigma_floor = 0 the estimate has A x̂ = y."""
    op, y = measurement(prior, task, 0.0, ("a", "b"))
    x_hat = solvers.build("diffpir", sigma_floor=0.0).solve(
        y, op, prior, sigma=0.0, generators=image_generators(0, ["a", "b"], "s")
    )
    torch.testing.assert_close(op(x_hat), y, rtol=0, atol=2e-5)


def test_diffpir_gradient_step_is_the_exact_prox_for_a_unit_gain_operator(prior):
    """γ = 1 / (2 (ρ + L)) with L = 1: one gradient step from x0 is the closed-form prox of A = I."""
    op, y = measurement(prior, "denoise", 0.05, ("a", "b"))
    x0 = prior.sample(2, generator=torch.Generator().manual_seed(7)).float()
    solver = solvers.build("diffpir")
    for rho in (1e-6, 0.3, 40.0):
        from solvers.base import spectral_measurement

        s, u = spectral_measurement(op, y)
        torch.testing.assert_close(
            solver._gradient_prox(op, y, x0, rho), _spectral_prox(op, x0, s, u, rho), rtol=0, atol=1e-5
        )


def test_diffpir_runs_the_gradient_path_on_jpeg(prior):
    op, y = measurement(prior, "jpeg10", 0.05)
    prior.reset_stats()
    x_hat = solvers.build("diffpir", steps=10).reconstruct(
        y, op, prior, sigma=0.05, generators=image_generators(0, ["i"], "s")
    )
    assert torch.isfinite(x_hat).all() and prior.stats.nfe == 10


def test_diffpir_quad_timesteps_match_the_official_skip():
    ts = quad_timesteps(1000, 100)
    assert ts[:4] == [999, 899, 857, 825] and ts[-3:] == [10, 5, 0] and len(set(ts)) == 100
    assert quad_timesteps(1000, 1) == [999]
    with pytest.raises(SolverError, match="repeat timesteps"):
        quad_timesteps(1000, 900)


def test_diffpir_image_result_does_not_depend_on_its_batch(prior):
    ids = ["a", "b", "c"]
    op, y = measurement(prior, "inpaint", 0.05, ids)
    solver = solvers.build("diffpir", steps=20)
    batch = solver.solve(y, op, prior, sigma=0.05, generators=image_generators(0, ids, "s"))
    alone = solver.solve(y[1:2], bind("inpaint", ["b"]), prior, sigma=0.05, generators=image_generators(0, ["b"], "s"))
    torch.testing.assert_close(batch[1:2], alone, rtol=0, atol=1e-5)


def test_diffpir_bad_options_give_clear_errors():
    for option, value in (("zeta", 1.5), ("lam", 0.0), ("sigma_floor", -1.0), ("spacing", "cubic"), ("grad_steps", 0)):
        with pytest.raises(SolverError, match=f"diffpir.{option}"):
            solvers.build("diffpir", **{option: value})


def test_diffpir_defaults_are_the_values_the_official_main_runs():
    """main_ddpir.py main() multiplies the yaml's lambda_ = 1 and deblurring's zeta = 0.1: deblurring runs λ = 7,
    ζ = 0.3, SR sweeps λ = 2..12 (7 chosen) at ζ = 0.25, inpainting λ = 1, ζ = 1; explicit options win."""
    config = solvers.build("diffpir").config
    assert [config.lam_for(t, True) for t in ("gblur", "sr4", "inpaint", "motion-blur")] == [7.0, 7.0, 1.0, 7.0]
    assert [config.zeta_for(t, True) for t in ("gblur", "sr4", "inpaint")] == [0.3, 0.25, 1.0]
    assert (config.lam_for("jpeg10", False), config.zeta_for("jpeg10", False)) == (15.0, 0.25)
    chosen = solvers.build("diffpir", lam=2.0, zeta=0.5).config
    assert (chosen.lam_for("gblur", True), chosen.zeta_for("inpaint", True)) == (2.0, 0.5)
    assert solvers.build("diffpir").version == 2  # results of λ = 1 (version 1) are not mixed with these
    with pytest.raises(SolverError, match="diffpir.lam must be a finite number > 0"):
        solvers.build("diffpir", lam=0.0)
