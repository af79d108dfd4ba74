"""DDRM on the analytic Gaussian prior, where everything it does is linear-Gaussian.

With the exact denoiser x̂0 = μ + Σ (Σ + σ_t²)⁻¹ (x̃_t − μ) (variance-exploding variable x̃_t = x_t / √ᾱ_t),
each DDRM step is an affine map of x̃_t plus independent Gaussian noise, so the law of DDRM's output given y
is a Gaussian whose mean and covariance follow by propagating dense matrices through the steps. That law is
computed here from the paper's Eq. 7-8 written as matrices (`ddrm_law`), independently of the solver's
implicit spectral code, and the solver's samples are checked against it at Monte Carlo precision: this
catches wrong noise scales, wrong cases, batch mixing. The law itself is then compared with the exact
posterior: DDRM with 20 steps and η = 0.85 is only an approximate posterior sampler (its DDIM-like steps
shrink the small-variance, high-frequency components), so that comparison uses measured, looser bounds.
"""

from __future__ import annotations

import functools
import math

import pytest
import torch

import operators
import solvers
from bench.priors import load_prior
from operators import image_generators
from solvers import SolverError

SHAPE = (3, 16, 16)
D = math.prod(SHAPE)
SAMPLES = 256


@pytest.fixture(scope="module")
def prior():
    return load_prior("gaussian")


def bind(task: str, ids: list[str]) -> operators.Operator:
    return operators.build(task, shape=SHAPE).for_images(ids, seed=0)


def measurement(prior, task: str, sigma: float) -> tuple[operators.Operator, torch.Tensor]:
    op = bind(task, ["img"])
    x = prior.sample(1, generator=torch.Generator().manual_seed(1))
    return op, op.measure(x, sigma, image_generators(0, ["img"], "noise"))


def draws(solver, prior, task: str, y: torch.Tensor, sigma: float, n: int = SAMPLES) -> torch.Tensor:
    """n DDRM draws (float64, unclamped) for one measurement y, each with its own generator."""
    op = bind(task, ["img"] * n)
    gens = image_generators(0, [f"draw-{i}" for i in range(n)], "sampler")
    ys = y.expand(n, *y.shape[1:]).contiguous()
    return solver.solve(ys, op, prior, sigma=sigma, generators=gens).double()


def spectral_basis(task: str) -> torch.Tensor:
    """V as a dense (D, D) matrix: column k is op.svd.v(e_k)."""
    op = bind(task, ["img"] * D)
    return op.svd.v(torch.eye(D, dtype=torch.float64)).reshape(D, D).T


def ddrm_law(
    prior, task: str, y: torch.Tensor, sigma: float, steps: int, eta: float, eta_b: float, rtol: float, cutoff=0.0
):
    """Mean (D,) and covariance (D, D) of DDRM's output given y, from the paper's Eq. 7-8 as dense matrices.

    `cutoff` > 0 zeroes the singular values of components whose 1-D factor is below it, computed here from
    dense SVDs of the operator's row and column matrices (the official rule), not from the solver's code."""
    op = bind(task, ["img"])
    V = spectral_basis(task)
    s = op.svd.singulars.double().reshape(-1)
    if cutoff > 0:
        s = torch.where(official_discarded(op, cutoff), torch.zeros_like(s), s)
    u = op.svd.ut(y.double()).reshape(-1)
    s = torch.cat([s, s.new_zeros(D - s.numel())])
    u = torch.cat([u, u.new_zeros(D - u.numel())])
    sigma_y = 2 * sigma
    observed = s > 0 if sigma_y > 0 else s > rtol * s.max()
    safe = torch.where(observed, s, torch.ones_like(s))
    y_bar = torch.where(observed, u / safe, torch.zeros_like(u))
    basis = prior.to_basis(torch.eye(D, dtype=torch.float64).reshape(D, *SHAPE)).reshape(D, D).T  # rows: eigvecs
    Q = basis @ V  # prior eigenbasis coordinates of the V basis vectors
    lam, mu = prior.eigenvalues.reshape(-1), prior.mean.reshape(-1)

    def ve(t: int) -> float:
        ab = float(prior.alpha_bar(t, torch.float64))
        return math.sqrt((1 - ab) / ab)

    ts = prior.timesteps(steps)
    sigma_T = ve(ts[0])
    from_y = observed & (sigma_y / safe < sigma_T)
    m = torch.where(from_y, y_bar, torch.zeros_like(y_bar))
    P = torch.diag(torch.where(from_y, sigma_T**2 - (sigma_y / safe) ** 2, torch.full_like(s, sigma_T**2)))
    for t, t_next in zip(ts, [*ts[1:], -1], strict=True):
        sig, nxt = ve(t), ve(t_next)
        # x̄0 = c + G w in V coordinates, from the exact Gaussian denoiser.
        G = Q.T @ ((lam / (lam + sig**2))[:, None] * Q)
        c = V.T @ mu - G @ (V.T @ mu)
        k = nxt * math.sqrt(1 - eta**2) / sig
        alpha, beta = torch.full_like(s, 1 - k), torch.full_like(s, k)  # s_i = 0: DDIM in VE
        gamma, ell = torch.zeros_like(s), torch.full_like(s, nxt * eta)
        less = observed & (sigma_y / safe <= nxt)
        alpha = torch.where(less, torch.full_like(s, 1 - eta_b), alpha)
        beta = torch.where(less, torch.zeros_like(s), beta)
        gamma = torch.where(less, eta_b * y_bar, gamma)
        ell = torch.where(less, (nxt**2 - (eta_b * sigma_y / safe) ** 2).clamp_min(0).sqrt(), ell)
        if sigma_y > 0:
            more = observed & ~less
            w = nxt * math.sqrt(1 - eta**2) / sigma_y
            alpha = torch.where(more, 1 - w * s, alpha)
            beta = torch.where(more, torch.zeros_like(s), beta)
            gamma = torch.where(more, w * u, gamma)
        K = alpha[:, None] * G + torch.diag(beta)
        m = K @ m + alpha * c + gamma
        P = K @ P @ K.T + torch.diag(ell**2)
    return V @ m, V @ P @ V.T


def official_discarded(op, cutoff: float) -> torch.Tensor:
    """(M,) True where the official DDRM/DDNM separable operators zero the singular value: the products
    s_h[i]·s_w[j] are formed after 1-D values below `cutoff` are set to 0 (`ZERO = 3e-2` in their code)."""
    s_h = torch.linalg.svdvals(op.a_h.double())
    s_w = torch.linalg.svdvals(op.a_w.double())
    kept_h, kept_w = torch.where(s_h < cutoff, 0.0, s_h), torch.where(s_w < cutoff, 0.0, s_w)
    grid = (kept_h[:, None] * kept_w[None, :]).expand(SHAPE[0], -1, -1).reshape(-1)
    exact = (s_h[:, None] * s_w[None, :]).expand(SHAPE[0], -1, -1).reshape(-1)
    # The operator's own ordering of singular values must be the same products in the same order.
    torch.testing.assert_close(op.svd.singulars.double().reshape(-1), exact)
    return grid == 0


def law_statistics(samples: torch.Tensor, mean: torch.Tensor, cov: torch.Tensor) -> tuple[float, float, float]:
    """(mean error in Monte Carlo units, rms relative error of per-pixel variances, total variance ratio)."""
    flat = samples.reshape(samples.shape[0], -1)
    var = cov.diagonal()
    mean_error = float((flat.mean(0) - mean).norm() / (var.sum() / flat.shape[0]).sqrt())
    sample_var = flat.var(0)
    keep = var > 1e-10 * var.max()  # noise-free measured pixels have zero variance
    relative = float(((sample_var[keep] - var[keep]) / var[keep]).pow(2).mean().sqrt())
    return mean_error, relative, float(sample_var.sum() / var.sum())


# (task, σ): the noisy case of every SVD task and a noise-free one (noise-free sr4/sr8/denoise: consistency tests).
LAW_CASES = [
    ("sr4", 0.05),
    ("sr8", 0.05),
    ("gblur", 0.05),
    ("inpaint", 0.05),
    ("denoise", 0.05),
    ("inpaint", 0.0),
]


@functools.cache
def case(task: str, sigma: float) -> tuple:
    """(operator, y, law mean, law covariance) of one case for the default DDRM, computed once per session."""
    prior = load_prior("gaussian")
    cfg = solvers.build("ddrm").config
    op, y = measurement(prior, task, sigma)
    mean, cov = ddrm_law(prior, task, y, sigma, cfg.steps, cfg.eta, cfg.eta_b, cfg.zero_singular_rtol)
    return op, y, mean, cov


def follows_law(statistics: tuple[float, float, float]) -> bool:
    """The Monte Carlo acceptance test of 256 draws against a law (see the test below for the figures)."""
    mean_error, var_error, var_ratio = statistics
    return mean_error < 1.5 and var_error < 0.13 and 0.96 < var_ratio < 1.04


@pytest.mark.parametrize("task,sigma", LAW_CASES)
def test_ddrm_samples_follow_its_exact_gaussian_law(prior, task, sigma):
    """256 draws against the law of DDRM (default config: 20 steps, η = 0.85, η_b = 1) computed densely.

    Measured: mean error 0.87-1.15 Monte Carlo units (≈ 1 expected), per-pixel variance rms relative error
    0.086-0.091 (√(2/255) = 0.089 expected), total-variance ratio 0.989-1.011. Bounds (`follows_law`): 1.5,
    0.13, (0.96, 1.04). The same check fails when DDRM is run with σ off by 2x (next test).
    """
    _, y, mean, cov = case(task, sigma)
    assert follows_law(law_statistics(draws(solvers.build("ddrm"), prior, task, y, sigma), mean, cov))


def test_ddrm_law_check_detects_a_wrong_noise_scale(prior):
    """Running DDRM with σ off by 2x (the [0, 1] vs [-1, 1] confusion) fails the law check above.

    Measured on sr4 (mean error, variance error, variance ratio): σ/2 (2.07, 0.089, 0.981), 2σ (3.39, 0.13,
    1.087). sr4 is the least sensitive case seen (denoise: σ/2 (1.51, 0.24, 1.21), 2σ (10.4, 0.57, 1.55)).
    """
    _, y, mean, cov = case("sr4", 0.05)
    for wrong in (0.025, 0.1):
        assert not follows_law(law_statistics(draws(solvers.build("ddrm"), prior, "sr4", y, wrong), mean, cov))


# Measured distance of DDRM's law (default config) from the exact posterior, per (task, σ): relative mean
# error ‖E[x̂] − mean_post‖ / ‖μ_prior − mean_post‖ and total-variance ratio tr Cov[x̂] / tr Cov_post.
POSTERIOR_MEASURED = {
    ("sr4", 0.05): (0.068, 0.552),
    ("sr8", 0.05): (0.038, 0.581),
    ("gblur", 0.05): (0.837, 0.273),
    ("inpaint", 0.05): (0.612, 0.779),
    ("denoise", 0.05): (0.086, 0.929),
    ("inpaint", 0.0): (0.606, 0.787),
}


@pytest.mark.parametrize("task,sigma", LAW_CASES)
def test_ddrm_law_approximates_the_exact_posterior(prior, task, sigma):
    """DDRM's output law against the exact Gaussian posterior (deterministic: no sampling).

    DDRM is an approximate posterior sampler: 20 DDIM-like steps with η = 0.85 under-disperse the
    small-variance, high-frequency components (20-step sampling of this prior alone gives 0.62 of its
    variance), and for fixed y the "noisier than y" update feeds the same realised measurement noise into
    every draw, which biases the mean where singular values are tiny (gblur). Measured values are in
    POSTERIOR_MEASURED; bounds allow 0.05 more relative mean error, ±0.05 in the variance ratio, and always
    require a mean closer to the posterior's than the prior mean and less variance than the prior.
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
def test_ddrm_noise_free_estimate_reproduces_y(prior, task):
    """At σ = 0 the last step sets every measured spectral component to ȳ: A x̂ = y (before the clamp)."""
    op, y = measurement(prior, task, 0.0)
    x_hat = solvers.build("ddrm").solve(y, op, prior, sigma=0.0, generators=image_generators(0, ["img"], "s"))
    torch.testing.assert_close(op(x_hat), y, rtol=0, atol=2e-5)


def test_ddrm_noise_free_gblur_reproduces_y_up_to_the_dropped_singular_values(prior):
    """For blur only components with s_i ≥ 1e-4 max s are imposed; the rest of A x̂ − y is tiny (< 2e-4)."""
    op, y = measurement(prior, "gblur", 0.0)
    x_hat = solvers.build("ddrm").solve(y, op, prior, sigma=0.0, generators=image_generators(0, ["img"], "s"))
    residual = (op(x_hat) - y).abs().max()
    assert residual < 2e-4
    assert residual < 0.01 * (op(prior.mean[None].float()) - y).abs().max()


@pytest.mark.parametrize("task", ["inpaint", "gblur"])
def test_ddrm_image_result_does_not_depend_on_its_batch(prior, task):
    ids = ["a", "b", "c", "d"]
    x = prior.sample(4, generator=torch.Generator().manual_seed(3))
    op = bind(task, ids)
    y = op.measure(x, 0.05, image_generators(0, ids, "noise"))
    solver = solvers.build("ddrm")
    batch = solver.reconstruct(y, op, prior, sigma=0.05, generators=image_generators(0, ids, "sampler"))
    alone = solver.reconstruct(y[2:3], bind(task, ["c"]), prior, sigma=0.05, generators=image_generators(0, ["c"], "sampler"))
    torch.testing.assert_close(batch[2:3], alone, rtol=0, atol=1e-5)
    assert not torch.allclose(batch[1], batch[2])


def test_ddrm_solve_clamps_and_reports_every_network_call(prior):
    op, y = measurement(prior, "sr4", 0.05)
    seen = []
    solver = solvers.build("ddrm", steps=7)
    x_hat = solver.reconstruct(
        y, op, prior, sigma=0.05, generators=image_generators(0, ["img"], "s"), callback=lambda **kw: seen.append(kw)
    )
    assert x_hat.shape == (1, *SHAPE) and x_hat.abs().max() <= 1
    assert [kw["step"] for kw in seen] == list(range(7))
    assert [kw["t"] for kw in seen] == prior.timesteps(7)
    assert all(kw["x0"].shape == (1, *SHAPE) for kw in seen)


def test_ddrm_bad_configuration_and_inputs_give_clear_errors(prior):
    with pytest.raises(SolverError, match="eta must lie in"):
        solvers.build("ddrm", eta="1.5")
    with pytest.raises(SolverError, match="eta_b"):
        solvers.build("ddrm", eta_b=2.0)
    with pytest.raises(SolverError, match="positive integer"):
        solvers.build("ddrm", steps=0)
    with pytest.raises(SolverError, match="did you mean 'eta'"):
        solvers.build("ddrm", etta=0.5)
    solver = solvers.build("ddrm")
    jpeg = operators.build("jpeg10", shape=SHAPE)
    assert "svd" in solver.unsupported(jpeg, 0.0)
    y = torch.zeros(1, *SHAPE)
    with pytest.raises(SolverError, match="svd"):
        solver.reconstruct(y, jpeg, prior, sigma=0.0, generators=image_generators(0, ["img"], "s"))
    op = bind("sr4", ["img"])
    with pytest.raises(SolverError, match="y must have shape"):
        solver.reconstruct(torch.zeros(1, 3, 16, 16), op, prior, sigma=0.05, generators=image_generators(0, ["img"], "s"))
    with pytest.raises(SolverError, match="one generator per image"):
        solver.reconstruct(torch.zeros(2, 3, 4, 4), op, prior, sigma=0.05, generators=image_generators(0, ["img"], "s"))
    with pytest.raises(SolverError, match="shape=\\(3, 16, 16\\)"):
        big = operators.build("sr4", shape=(3, 32, 32))
        solver.reconstruct(torch.zeros(1, 3, 8, 8), big, prior, sigma=0.05, generators=image_generators(0, ["img"], "s"))


OFFICIAL_CUTOFF = 3e-2  # DDRM's and DDNM's svd operators: ZERO = 3e-2 on the 1-D singular values


@pytest.mark.parametrize("task", ["gblur", "sr4"])
def test_singular_cutoff_discards_what_the_official_operators_discard(task):
    """`SVD.discarded` of a separable operator is the official 1-D rule, not a cut of the 2-D products."""
    op = bind(task, ["img"])
    official = official_discarded(op, OFFICIAL_CUTOFF)
    assert torch.equal(op.svd.discarded(OFFICIAL_CUTOFF).cpu(), official)
    products_below = op.svd.singulars.reshape(-1) < OFFICIAL_CUTOFF
    if task == "gblur":  # the rules differ on blur: a product can be small with both factors kept
        assert official.sum() > 0 and not torch.equal(official, products_below)
    assert not op.svd.discarded(0.0).any()


@pytest.mark.parametrize("sigma", [0.05, 0.0])
def test_ddrm_with_the_official_cutoff_follows_its_exact_law_on_gblur(prior, sigma):
    """`ddrm.singular_cutoff=3e-2` samples the law of DDRM on the operator with the official zeroed singular
    values (the discarded components are treated as unobserved), by the same acceptance test as the default."""
    op, y = measurement(prior, "gblur", sigma)
    solver = solvers.build("ddrm", singular_cutoff=OFFICIAL_CUTOFF)
    cfg = solver.config
    mean, cov = ddrm_law(prior, "gblur", y, sigma, cfg.steps, cfg.eta, cfg.eta_b, cfg.zero_singular_rtol, OFFICIAL_CUTOFF)
    assert follows_law(law_statistics(draws(solver, prior, "gblur", y, sigma), mean, cov))
    if sigma > 0:  # the option matters: the two laws' means differ by far more than Monte Carlo noise
        default_mean = case("gblur", sigma)[2]
        assert (mean - default_mean).norm() > 10 * (cov.diagonal().sum() / SAMPLES).sqrt()


def test_ddrm_singular_cutoff_is_checked(prior):
    with pytest.raises(SolverError, match="singular_cutoff"):
        solvers.build("ddrm", singular_cutoff=-0.1)


@pytest.mark.parametrize("task", ["sr4", "inpaint"])
def test_ddrm_follows_its_exact_law_on_the_low_variance_prior(task):
    """The law check on a second, different prior (`gaussian:16?variant=lowvar`: a mean that varies over the
    image, λ ∝ (1 + u² + v²)^−1.5, pixel std 0.1), where a bug that only a constant mean or a flatter spectrum
    hides would show."""
    lowvar = load_prior("gaussian:16?variant=lowvar")
    op, y = measurement(lowvar, task, 0.05)
    cfg = solvers.build("ddrm").config
    mean, cov = ddrm_law(lowvar, task, y, 0.05, cfg.steps, cfg.eta, cfg.eta_b, cfg.zero_singular_rtol)
    assert follows_law(law_statistics(draws(solvers.build("ddrm"), lowvar, task, y, 0.05), mean, cov))
