"""DDNM / DDNM+ on the analytic Gaussian prior, where every step is affine in x_t plus Gaussian noise.

As for DDRM, the law of the output given y is computed by propagating mean and covariance through dense
matrices written from the method's equations (`ddnm_law`: Eq. 13 with the DDIM-style step for σ = 0,
the per-singular-value DDNM+ rules of Eq. 17-19 for σ > 0), independently of the solver's code, and the
solver's draws are checked against it at Monte Carlo precision. Dense propagation costs three 768³ matrix
products per step, so those tests run 20 steps instead of the default 100 (the update rules do not depend on
the step count); the noise-free consistency, batch and DDRM-equivalence tests use the default 100 steps.
"""

from __future__ import annotations

import functools
import math

import pytest
import torch
from test_solver_ddrm import OFFICIAL_CUTOFF, official_discarded  # the official 1-D rule, from dense SVDs

import operators
import solvers
from bench.priors import load_prior
from operators import image_generators
from solvers import SolverError

SHAPE = (3, 16, 16)
D = math.prod(SHAPE)
SAMPLES = 256
LAW_STEPS = 20  # instead of the default 100: see the module docstring


@pytest.fixture(scope="module")
def prior():
    return load_prior("gaussian")


def bind(task: str, ids: list[str]) -> operators.Operator:
    return operators.build(task, shape=SHAPE).for_images(ids, seed=0)


def measurement(prior, task: str, sigma: float, ids: tuple[str, ...] = ("img",)):
    op = bind(task, list(ids))
    x = prior.sample(len(ids), generator=torch.Generator().manual_seed(1))
    return op, op.measure(x, sigma, image_generators(0, list(ids), "noise"))


def draws(solver, prior, task: str, y: torch.Tensor, sigma: float, n: int = SAMPLES) -> torch.Tensor:
    op = bind(task, ["img"] * n)
    gens = image_generators(0, [f"draw-{i}" for i in range(n)], "sampler")
    ys = y.expand(n, *y.shape[1:]).contiguous()
    return solver.solve(ys, op, prior, sigma=sigma, generators=gens).double()


def dense(apply, n_in: int) -> torch.Tensor:
    """The matrix of a linear map given as a function on a batch of flat basis vectors."""
    return apply(torch.eye(n_in, dtype=torch.float64)).reshape(n_in, -1).T


def ddnm_law(prior, task: str, y: torch.Tensor, sigma: float, steps: int, eta: float, cutoff: float = 0.0):
    """Mean (D,) and covariance (D, D) of DDNM's output given y, in pixel coordinates, as dense matrices.

    `cutoff` > 0 (σ > 0 only): the singular values that the official 1-D rule discards are zero, taken from
    dense SVDs of the operator's row and column matrices (`official_discarded`)."""
    op, many = bind(task, ["img"]), bind(task, ["img"] * D)
    basis = prior.to_basis(torch.eye(D, dtype=torch.float64).reshape(D, *SHAPE)).reshape(D, D).T  # rows: eigvecs
    lam, mu = prior.eigenvalues.reshape(-1), prior.mean.reshape(-1)
    sigma_y = 2 * sigma
    eye = torch.eye(D, dtype=torch.float64)
    if sigma_y == 0:
        A = dense(lambda e: many(e.reshape(D, *SHAPE)), D)
        m_dim = math.prod(op.measurement_shape)
        A_pinv = dense(lambda e: bind(task, ["img"] * m_dim).pinv(e.reshape(m_dim, *op.measurement_shape)), m_dim)
        null = eye - A_pinv @ A
        range_part = A_pinv @ y.double().reshape(-1)
    else:
        V = dense(lambda e: many.svd.v(e), D)
        s = op.svd.singulars.double().reshape(-1)
        if cutoff > 0:
            s = torch.where(official_discarded(op, cutoff), torch.zeros_like(s), s)
        u = op.svd.ut(y.double()).reshape(-1)
        s = torch.cat([s, s.new_zeros(D - s.numel())])
        u = torch.cat([u, u.new_zeros(D - u.numel())])
        observed = s > 0
        y_bar = torch.where(observed, u / torch.where(observed, s, torch.ones_like(s)), torch.zeros_like(u))
    # State: mean m and covariance P of x_t (σ = 0) or of w = Vᵀ x_t (σ > 0: V orthogonal, so P starts at I).
    Q = basis if sigma_y == 0 else basis @ V
    m, P = torch.zeros(D, dtype=torch.float64), eye.clone()
    ts = prior.timesteps(steps)
    for t, t_next in zip(ts, [*ts[1:], -1], strict=True):
        ab_t = float(prior.alpha_bar(t, torch.float64))
        ab_s = float(prior.alpha_bar(t_next, torch.float64))
        a, sig = math.sqrt(ab_s), math.sqrt(1 - ab_s)
        # Exact denoiser in the VP variable: x̂0 = G x_t + c; ε̂ = E x_t + e_off.
        G = Q.T @ ((math.sqrt(ab_t) * lam / (ab_t * lam + 1 - ab_t))[:, None] * Q)
        c = (mu if sigma_y == 0 else V.T @ mu) * 1.0
        c = c - math.sqrt(ab_t) * G @ c
        E = (eye - math.sqrt(ab_t) * G) / math.sqrt(1 - ab_t)
        e_off = -math.sqrt(ab_t) * c / math.sqrt(1 - ab_t)
        if sigma_y == 0:
            # x_s = a (N x̂0 + A⁺y) + sig (η z + √(1 − η²) ε̂), N = I − A⁺A.
            K = a * null @ G + sig * math.sqrt(1 - eta**2) * E
            offset = a * (null @ c + range_part) + sig * math.sqrt(1 - eta**2) * e_off
            ell = torch.full((D,), sig * eta, dtype=torch.float64)
        else:
            # Per V-basis component i: x̄_s = α x̄0 + β ε̄ + γ + ℓ z̄.
            alpha = torch.full_like(s, a)
            beta = torch.full_like(s, sig * math.sqrt(1 - eta**2))
            gamma = torch.zeros_like(s)
            ell = torch.full_like(s, sig * eta)
            full = observed & (sig * s >= a * sigma_y)
            alpha = torch.where(full, torch.zeros_like(s), alpha)
            beta = torch.where(full, torch.zeros_like(s), beta)
            gamma = torch.where(full, a * y_bar, gamma)
            safe = torch.where(full, s, torch.ones_like(s))
            ell = torch.where(full, (sig**2 - (a * sigma_y / safe) ** 2).clamp_min(0).sqrt(), ell)
            partial = observed & ~full
            weight = math.sqrt(1 - eta**2) * sig / sigma_y
            alpha = torch.where(partial, a - weight * s, alpha)
            beta = torch.where(partial, torch.zeros_like(s), beta)
            gamma = torch.where(partial, weight * u, gamma)
            K = alpha[:, None] * G + beta[:, None] * E
            offset = alpha * c + beta * e_off + gamma
        m = K @ m + offset
        P = K @ P @ K.T + torch.diag(ell**2)
    if sigma_y == 0:
        return m, P
    return V @ m, V @ P @ V.T


def law_statistics(samples: torch.Tensor, mean: torch.Tensor, cov: torch.Tensor) -> tuple[float, float, float]:
    """(mean error in Monte Carlo units, rms relative error of per-pixel variances, total variance ratio)."""
    flat = samples.reshape(samples.shape[0], -1)
    var = cov.diagonal()
    mean_error = float((flat.mean(0) - mean).norm() / (var.sum() / flat.shape[0]).sqrt())
    sample_var = flat.var(0)
    keep = var > 1e-10 * var.max()
    relative = float(((sample_var[keep] - var[keep]) / var[keep]).pow(2).mean().sqrt())
    return mean_error, relative, float(sample_var.sum() / var.sum())


def follows_law(statistics: tuple[float, float, float]) -> bool:
    mean_error, var_error, var_ratio = statistics
    return mean_error < 1.5 and var_error < 0.13 and 0.96 < var_ratio < 1.04


# DDNM+ with tiny (gblur) and per-image (inpaint) singular values; DDNM's pinv path noise-free.
LAW_CASES = [("gblur", 0.05), ("inpaint", 0.05), ("sr4", 0.0)]


@functools.cache
def case(task: str, sigma: float) -> tuple:
    prior = load_prior("gaussian")
    op, y = measurement(prior, task, sigma)
    mean, cov = ddnm_law(prior, task, y, sigma, LAW_STEPS, solvers.build("ddnm").config.eta)
    return op, y, mean, cov


@pytest.mark.parametrize("task,sigma", LAW_CASES)
def test_ddnm_samples_follow_its_exact_gaussian_law(prior, task, sigma):
    """256 draws (20 steps, η = 0.85) against DDNM's dense law.

    Measured: mean error 1.02-1.05 Monte Carlo units (≈ 1 expected), per-pixel variance rms relative error
    0.083-0.086 (√(2/255) = 0.089 expected), total-variance ratio 0.994-1.005. Bounds: 1.5, 0.13, (0.96, 1.04).
    """
    _, y, mean, cov = case(task, sigma)
    samples = draws(solvers.build("ddnm", steps=LAW_STEPS), prior, task, y, sigma)
    assert follows_law(law_statistics(samples, mean, cov))


def test_ddnm_law_check_detects_a_wrong_noise_scale(prior):
    """DDNM+ run with σ off by 2x fails the law check. Measured on gblur (mean error, variance error, variance
    ratio): σ/2 (20.2, 0.103, 0.937), 2σ (11.4, 0.136, 1.095)."""
    _, y, mean, cov = case("gblur", 0.05)
    for wrong in (0.025, 0.1):
        samples = draws(solvers.build("ddnm", steps=LAW_STEPS), prior, "gblur", y, wrong)
        assert not follows_law(law_statistics(samples, mean, cov))


# Measured distance of DDNM's 20-step law from the exact posterior: relative mean error
# ‖E[x̂] − mean_post‖ / ‖μ_prior − mean_post‖ and total-variance ratio tr Cov[x̂] / tr Cov_post.
# At σ > 0 these equal DDRM's figures (same updates; the different initialisations are forgotten).
POSTERIOR_MEASURED = {("gblur", 0.05): (0.837, 0.273), ("inpaint", 0.05): (0.612, 0.779), ("sr4", 0.0): (0.043, 0.565)}


@pytest.mark.parametrize("task,sigma", LAW_CASES)
def test_ddnm_law_approximates_the_exact_posterior(prior, task, sigma):
    """DDNM's output law against the exact posterior (deterministic). Like DDRM it is approximate: its
    DDIM-style steps with η = 0.85 under-disperse small-variance components, and DDNM+ feeds the realised
    measurement noise into every draw. Bounds: measured + 0.05 relative mean error, measured ± 0.05 ratio.
    At the default 100 steps (Monte Carlo, 256 draws, σ = 0.05) the measured figures were: sr4 (0.07, 0.66),
    sr8 (0.17, 0.67), gblur (1.28, 0.30), inpaint (0.45, 0.82), denoise (0.01, 0.37).
    """
    op, y, mean, cov = case(task, sigma)
    post = prior.posterior(op, y, sigma)
    post_mean, prior_mean = post.mean.double().reshape(-1), prior.mean.reshape(-1)
    mean_error = float((mean - post_mean).norm() / (prior_mean - post_mean).norm())
    var_ratio = float(cov.diagonal().sum() / post.covariance.diagonal().sum())
    measured_error, measured_ratio = POSTERIOR_MEASURED[(task, sigma)]
    assert mean_error < min(measured_error + 0.05, 1.0)
    assert measured_ratio - 0.05 < var_ratio < measured_ratio + 0.05
    assert cov.diagonal().sum() < prior.eigenvalues.sum()


@pytest.mark.parametrize("task", ["sr4", "sr8", "inpaint", "denoise"])
def test_ddnm_noise_free_estimate_satisfies_a_x_equals_y(prior, task):
    """The last x̂0|y = x̂0 − A⁺(A x̂0 − y) has A x̂ = y when A A⁺ A = A. Checked on the unclamped output
    (the Gaussian prior's images leave [-1, 1], and clamping would move A x̂)."""
    ids = ("a", "b")
    op, y = measurement(prior, task, 0.0, ids)
    x_hat = solvers.build("ddnm").solve(
        y, op, prior, sigma=0.0, generators=image_generators(0, list(ids), "s")
    )
    torch.testing.assert_close(op(x_hat), y, rtol=0, atol=2e-5)


def test_ddnm_noise_free_gblur_is_consistent_on_the_pinv_range(prior):
    """For blur A⁺ drops singular values below 3e-2 max s (the operator's rcond): A⁺(A x̂ − y) = 0 holds,
    A x̂ = y only up to the dropped components."""
    op, y = measurement(prior, "gblur", 0.0)
    x_hat = solvers.build("ddnm").solve(y, op, prior, sigma=0.0, generators=image_generators(0, ["i"], "s"))
    assert op.pinv(op(x_hat) - y).abs().max() < 1e-4
    assert (op(x_hat) - y).abs().max() < 0.05 * (op(prior.mean[None].float()) - y).abs().max()


def test_ddnm_noise_free_jpeg_runs_through_its_decoder_pinv(prior):
    """jpeg10 at σ = 0: A⁺ is the decoded image, so the correction is x̂0 − (JPEG(x̂0) − y), not a true
    pseudo-inverse; the result still re-encodes to (nearly) y. Measured ‖JPEG(x̂) − y‖: 0.0, 1.79, 0.0 for three
    sampler seeds, against 9.87 for the prior mean and 14-17 for unconditional samples."""
    op, y = measurement(prior, "jpeg10", 0.0)
    x_hat = solvers.build("ddnm").reconstruct(y, op, prior, sigma=0.0, generators=image_generators(0, ["i"], "s"))
    assert torch.isfinite(x_hat).all() and x_hat.abs().max() <= 1
    assert (op(x_hat) - y).norm() < 0.3 * (op(prior.mean[None].float()) - y).norm()


def test_ddnm_plus_equals_ddrm_with_eta_b_1_on_denoising(prior):
    """DDNM+'s updates are DDRM's (η_b = 1) in the variable x_t / √ᾱ_t; for denoising (V = I) both draw the
    same numbers and the first step forgets the initialisations, so 100-step outputs agree draw for draw."""
    ids = ("a", "b", "c")
    op, y = measurement(prior, "denoise", 0.05, ids)
    gens = lambda: image_generators(0, list(ids), "sampler")  # noqa: E731
    ddnm = solvers.build("ddnm").solve(y, op, prior, sigma=0.05, generators=gens())
    ddrm = solvers.build("ddrm", steps=100, eta=0.85, eta_b=1.0)
    torch.testing.assert_close(
        ddnm, ddrm.solve(y, op, prior, sigma=0.05, generators=gens()), atol=1e-4, rtol=0
    )


@pytest.mark.parametrize("task,sigma", [("inpaint", 0.05), ("inpaint", 0.0), ("sr4", 0.05)])
def test_ddnm_image_result_does_not_depend_on_its_batch(prior, task, sigma):
    ids = ["a", "b", "c", "d"]
    x = prior.sample(4, generator=torch.Generator().manual_seed(3))
    op = bind(task, ids)
    y = op.measure(x, sigma, image_generators(0, ids, "noise"))
    solver = solvers.build("ddnm", steps=LAW_STEPS)
    batch = solver.reconstruct(y, op, prior, sigma=sigma, generators=image_generators(0, ids, "sampler"))
    alone = solver.reconstruct(
        y[2:3], bind(task, ["c"]), prior, sigma=sigma, generators=image_generators(0, ["c"], "sampler")
    )
    torch.testing.assert_close(batch[2:3], alone, rtol=0, atol=1e-5)
    assert not torch.allclose(batch[1], batch[2])


def test_ddnm_solve_clamps_and_reports_every_network_call(prior):
    op, y = measurement(prior, "sr4", 0.05)
    seen = []
    x_hat = solvers.build("ddnm", steps=9).reconstruct(
        y, op, prior, sigma=0.05, generators=image_generators(0, ["img"], "s"), callback=lambda **kw: seen.append(kw)
    )
    assert x_hat.shape == (1, *SHAPE) and x_hat.abs().max() <= 1
    assert [kw["step"] for kw in seen] == list(range(9))
    assert [kw["t"] for kw in seen] == prior.timesteps(9)


def test_ddnm_bad_configuration_and_inputs_give_clear_errors(prior):
    with pytest.raises(SolverError, match="eta must lie in"):
        solvers.build("ddnm", eta="-0.1")
    with pytest.raises(SolverError, match="positive integer"):
        solvers.build("ddnm", steps=0)
    solver = solvers.build("ddnm")
    jpeg = operators.build("jpeg10", shape=SHAPE)
    assert solver.unsupported(jpeg, 0.0) is None
    reason = solver.unsupported(jpeg, 0.05)
    assert "svd" in reason and "sigma > 0" in reason
    with pytest.raises(SolverError, match="svd"):
        solver.reconstruct(torch.zeros(1, *SHAPE), jpeg, prior, sigma=0.05, generators=image_generators(0, ["i"], "s"))
    op = bind("sr8", ["img"])
    with pytest.raises(SolverError, match="y must have shape"):
        solver.reconstruct(torch.zeros(1, *SHAPE), op, prior, sigma=0.0, generators=image_generators(0, ["i"], "s"))
    with pytest.raises(SolverError, match="one generator per image"):
        solver.reconstruct(torch.zeros(1, 3, 2, 2), op, prior, sigma=0.0, generators=[])




def test_ddnm_plus_with_the_official_cutoff_follows_its_exact_law_on_gblur(prior):
    """`ddnm.singular_cutoff=3e-2` at σ = 0.05: DDNM+ on the operator with the official zeroed singular values
    (those components follow the prior), by the same acceptance test as the default."""
    op, y = measurement(prior, "gblur", 0.05)
    solver = solvers.build("ddnm", steps=LAW_STEPS, singular_cutoff=OFFICIAL_CUTOFF)
    mean, cov = ddnm_law(prior, "gblur", y, 0.05, LAW_STEPS, solver.config.eta, OFFICIAL_CUTOFF)
    assert follows_law(law_statistics(draws(solver, prior, "gblur", y, 0.05), mean, cov))
    default_mean = case("gblur", 0.05)[2]
    assert (mean - default_mean).norm() > 10 * (cov.diagonal().sum() / SAMPLES).sqrt()


def test_ddnm_noise_free_with_the_official_cutoff_imposes_exactly_the_kept_components(prior):
    """σ = 0 with the cutoff: A⁺ is V Σ⁺ Uᵀ over the kept singular values, so s_i (Vᵀx̂)_i = (Uᵀy)_i exactly where
    the official rule keeps s_i, and not where it discards it (those follow the prior)."""
    op, y = measurement(prior, "gblur", 0.0)
    solver = solvers.build("ddnm", singular_cutoff=OFFICIAL_CUTOFF)
    x_hat = solver.solve(y, op, prior, sigma=0.0, generators=image_generators(0, ["img"], "s"))
    s = op.svd.singulars.double().reshape(-1)
    m = s.numel()
    residual = (s * op.svd.vt(x_hat.double())[0, :m] - op.svd.ut(y.double())[0]).abs()
    discarded = official_discarded(op, OFFICIAL_CUTOFF)
    assert discarded.any() and (~discarded).any()
    assert residual[~discarded].max() < 1e-4
    # in x's coordinates, (Vᵀx̂)_i − ȳ_i: the discarded components keep what the prior drew, not the measurement
    assert (residual[discarded] / s[discarded]).median() > 1e-2
    assert solver.unsupported(operators.build("jpeg10", shape=SHAPE), 0.0) is not None  # no SVD there
    assert solvers.build("ddnm").unsupported(operators.build("jpeg10", shape=SHAPE), 0.0) is None
