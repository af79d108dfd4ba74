"""ΠGDM against the exact posteriors of the analytic Gaussian prior, and the pieces of its update.

The whole-sampler law at σ = 0.05 is checked exactly (`pigdm_law`, 256 draws). The posterior tests draw SAMPLES = 64 samples for one y in one batch with STEPS = 25 steps (the default 100
quadruples the runtime without changing what is checked), at σ = 0 and at σ = 0.05 (CASES). ΠGDM is an approximate sampler: its x₀ | x_t model N(x̂₀, r_t² I)
is not the Gaussian prior's, so the tolerances are measured values with headroom, not zeros.
"""

from __future__ import annotations

import math

import pytest
import torch

import operators
import solvers
from bench.priors import load_prior
from solvers.base import SolverError
from solvers.pigdm import _likelihood_direction

SHAPE = (3, 16, 16)
SAMPLES = 64
STEPS = 25


@pytest.fixture(scope="module")
def prior():
    return load_prior("gaussian")


def _generators(n: int, offset: int = 0) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(offset + i) for i in range(n)]


def _posterior_draws(prior, task: str, sigma: float, **overrides):
    """(draws (SAMPLES, C, H, W), exact posterior) for one y measured from a prior sample."""
    op = operators.build(task, shape=SHAPE).for_images(["img"], seed=0)
    x = prior.sample(1, torch.Generator().manual_seed(1))
    y = op.measure(x, sigma, operators.image_generators(0, ["img"], "noise"))
    posterior = prior.posterior(op, y, sigma)
    batch_op = operators.build(task, shape=SHAPE).for_images(["img"] * SAMPLES, seed=0)
    solver = solvers.build("pigdm", steps=STEPS, **overrides)
    draws = solver.reconstruct(
        y.expand(SAMPLES, *y.shape[1:]).clone(), batch_op, prior, sigma=sigma, generators=_generators(SAMPLES)
    )
    return draws, posterior


# (task, σ): bound on the squared-error ratio ‖mean - exact mean‖² / ‖μ - exact mean‖² of the sample mean,
# band for the ratio of the mean per-pixel sample variance to the exact one, and lower bound on the
# correlation of the per-pixel variances (None: the exact variance is nearly uniform, nothing to correlate).
# Measured (64 draws, 25 steps, seeds as below): sr4/0: 0.017, 0.64, 0.78; gblur/0.05: 0.050, 0.61, 0.81;
# inpaint/0.05: 0.26, 0.80, 0.91; denoise/0.05: 0.029, 0.35, 0.19; sr8/0.05: 0.045, 0.66, 0.77.
# ΠGDM under-disperses, most on denoising: the flat-prior r_t² makes the likelihood term dominate, so the
# spread shrinks towards that of y's noise alone.
CASES = {
    ("sr4", 0.0): (0.05, (0.5, 0.8), 0.6),
    ("gblur", 0.05): (0.15, (0.5, 0.8), 0.6),
    ("inpaint", 0.05): (0.45, (0.65, 0.95), 0.8),
    ("denoise", 0.05): (0.08, (0.25, 0.45), None),
    ("sr8", 0.05): (0.12, (0.5, 0.8), 0.6),
}


@pytest.mark.parametrize(("task", "sigma"), list(CASES))
def test_pigdm_matches_exact_gaussian_posterior(prior, task, sigma):
    """Sample mean near the exact posterior mean (far nearer than the prior mean) and a spread of the right size."""
    max_ratio, (low, high), min_correlation = CASES[(task, sigma)]
    draws, posterior = _posterior_draws(prior, task, sigma)
    exact_mean = posterior.mean
    prior_mean = prior.mean.float()[None]
    ratio = float(((draws.mean(0, keepdim=True) - exact_mean) ** 2).sum() / ((prior_mean - exact_mean) ** 2).sum())
    assert ratio < max_ratio, f"{task} σ={sigma}: squared-error ratio {ratio:.4f} (measured bound {max_ratio})"
    variance_ratio = float(draws.var(0).mean() / posterior.std().pow(2).mean())
    assert low < variance_ratio < high, f"{task} σ={sigma}: variance ratio {variance_ratio:.3f}"
    # Per pixel, the spread follows the exact one (inpainting: observed pixels tight, unobserved ones wide).
    correlation = torch.corrcoef(torch.stack([draws.var(0).flatten().double(), posterior.std().pow(2).flatten()]))[0, 1]
    assert min_correlation is None or correlation > min_correlation, (
        f"{task} σ={sigma}: per-pixel variance correlation {float(correlation):.3f}"
    )


def test_pigdm_jpeg10_beats_prior_mean_and_keeps_up_with_the_decoded_image(prior):
    """No SVD: the pseudo-inverse form. On 4 clipped prior samples × 32 draws at σ = 0 (measured: sample-mean
    MSE 0.057, decoded image 0.058, prior mean 0.137)."""
    op = operators.build("jpeg10", shape=SHAPE)
    truth = prior.sample(4, torch.Generator().manual_seed(1)).clamp(-1, 1)
    y = op.measure(truth, 0.0, operators.image_generators(0, list("abcd"), "noise"))
    reps = 32
    draws = solvers.build("pigdm", steps=STEPS).reconstruct(
        y.repeat_interleave(reps, 0), op, prior, sigma=0.0, generators=_generators(4 * reps)
    )
    mean = draws.reshape(4, reps, *SHAPE).mean(1)
    error = float(((mean - truth) ** 2).mean())
    assert error < 0.5 * float(((prior.mean.float()[None] - truth) ** 2).mean())
    assert error < 1.1 * float(((y - truth) ** 2).mean())


def test_pigdm_flat_variance_is_the_reference_update(prior):
    """With x0_variance='flat' at σ = 0 one step is DDIM(x̂₀, ε̂) + √ᾱ_s √ᾱ_t w (∂x̂₀/∂x_t)ᵀ (A⁺y - A⁺A x̂₀)."""
    op = operators.build("sr4", shape=SHAPE)
    y = op(prior.sample(2, torch.Generator().manual_seed(3)))
    seen = {}
    weight, eta = 0.7, 0.5

    def record(*, step, t, x_t, eps, x0):
        seen[step] = x_t.clone()

    solver = solvers.build("pigdm", steps=2, guidance_weight=weight, eta=eta)
    solver.reconstruct(y, op, prior, sigma=0.0, generators=_generators(2, 10), callback=record)
    t, s = prior.timesteps(2)
    replay = _generators(2, 10)
    x_t = torch.stack([torch.randn(SHAPE, generator=g) for g in replay])
    noise = torch.stack([torch.randn(SHAPE, generator=g) for g in replay])
    torch.testing.assert_close(seen[0], x_t)
    ab_t, ab_s = float(prior.alphas_cumprod[t]), float(prior.alphas_cumprod[s])
    x = x_t.clone().requires_grad_(True)
    prediction = prior.predict(x, t)
    residual = (op.pinv(y) - op.pinv(op(prediction.x0))).detach()
    (vjp,) = torch.autograd.grad((residual * prediction.x0).sum(), x)
    c1 = eta * math.sqrt((1 - ab_t / ab_s) * (1 - ab_s) / (1 - ab_t))
    c2 = math.sqrt(1 - ab_s - c1**2)
    expected = (
        math.sqrt(ab_s) * prediction.x0.detach()
        + c1 * noise
        + c2 * prediction.eps.detach()
        + math.sqrt(ab_s) * math.sqrt(ab_t) * weight * vjp
    )
    torch.testing.assert_close(seen[1], expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("task", ["gblur", "inpaint"])
def test_pigdm_noisy_direction_equals_dense_formula(prior, task):
    """Aᵀ (r² A Aᵀ + s_y² I)⁻¹ (y - A x̂₀) through the SVD equals the dense-matrix computation."""
    op = operators.build(task, shape=SHAPE).for_images(["img"], seed=0)
    matrix = prior.operator_matrix(op)
    x0 = prior.sample(1, torch.Generator().manual_seed(5))
    y = op.measure(prior.sample(1, torch.Generator().manual_seed(6)), 0.05, operators.image_generators(0, ["i"], "n"))
    r2, noise_std = 0.3, 0.1
    direction = _likelihood_direction(y, op, x0, r2, noise_std, None)
    observed = matrix.abs().amax(dim=1) > 0  # inpainting's unobserved rows are zero, not measurements
    a = matrix[observed]
    residual = y.double().flatten()[observed] - a @ x0.double().flatten()
    dense = a.T @ torch.linalg.solve(r2 * a @ a.T + noise_std**2 * torch.eye(a.shape[0], dtype=torch.float64), residual)
    torch.testing.assert_close(direction.double().flatten(), dense, rtol=1e-4, atol=1e-5)


def test_pigdm_image_result_does_not_depend_on_batch(prior):
    ids = ["a", "b", "c", "d"]
    op = operators.build("inpaint", shape=SHAPE).for_images(ids, seed=0)
    y = op.measure(prior.sample(4, torch.Generator().manual_seed(2)), 0.05, operators.image_generators(0, ids, "noise"))
    solver = solvers.build("pigdm", steps=10)
    batch = solver.reconstruct(y, op, prior, sigma=0.05, generators=operators.image_generators(0, ids, "sampler"))
    alone = solver.reconstruct(
        y[2:3],
        operators.build("inpaint", shape=SHAPE).for_images(["c"], seed=0),
        prior,
        sigma=0.05,
        generators=operators.image_generators(0, ["c"], "sampler"),
    )
    torch.testing.assert_close(batch[2:3], alone, rtol=1e-5, atol=1e-5)


def test_pigdm_noiseless_likelihood_is_the_public_update_at_every_sigma(prior):
    """likelihood="noiseless" (the public code) ignores σ in the guidance: at σ = 0.05 it takes exactly the steps
    of σ = 0 on the same y; the paper's likelihood does not."""
    op = operators.build("sr4", shape=SHAPE).for_images(["a"], seed=0)
    y = op.measure(
        prior.sample(1, torch.Generator().manual_seed(3)), 0.05, operators.image_generators(0, ["a"], "noise")
    )

    def run(sigma: float, likelihood: str) -> torch.Tensor:
        solver = solvers.build("pigdm", steps=8, likelihood=likelihood)
        return solver.reconstruct(y, op, prior, sigma=sigma, generators=_generators(1))

    torch.testing.assert_close(run(0.05, "noiseless"), run(0.0, "paper"), rtol=0, atol=0)
    assert not torch.equal(run(0.05, "paper"), run(0.0, "paper"))
    with pytest.raises(SolverError, match="likelihood"):
        solvers.build("pigdm", likelihood="public")


def test_pigdm_runs_everywhere_and_declares_its_needs():
    solver = solvers.build("pigdm")
    assert solver.backprop_through_network
    for task in operators.available():
        op = operators.build(task, shape=SHAPE)
        if op.supports(operators.Cap.PINV):  # the vector-Jacobian step uses A⁺
            assert solver.unsupported(op, 0.05) is None, task
        else:  # phase retrieval: A⁺ is not defined, and the reason says so
            assert "A⁺ is not defined" in solver.unsupported(op, 0.05), task


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("steps", 0, "positive integer"),
        ("eta", 1.5, "in \\[0, 1\\]"),
        ("guidance_weight", float("nan"), "finite"),
        ("x0_variance", "flatt", "available: flat, paper"),
    ],
)
def test_pigdm_rejects_bad_configuration(option, value, message):
    with pytest.raises(SolverError, match=message):
        solvers.build("pigdm", **{option: value})


def test_pigdm_rejects_wrong_generator_count(prior):
    op = operators.build("sr4", shape=SHAPE)
    y = op(prior.sample(2))
    with pytest.raises(SolverError, match="one generator per image"):
        solvers.build("pigdm", steps=2).reconstruct(y, op, prior, sigma=0.0, generators=_generators(1))


# Relative error ‖E[x̂] − exact mean‖ / ‖μ − exact mean‖ at sr4, σ = 0.05 (64 draws, 25 steps), measured:
# photo prior: paper likelihood 0.15, noiseless 0.36; lowvar prior: 0.13 and 3.69. The public (noiseless) update
# pulls A x̂ onto the noisy y; on the low-variance prior that moves the mean further from the posterior's than the
# prior mean is.
NOISY_SR4 = {"gaussian": (0.25, None), "gaussian:16?variant=lowvar": (0.25, 1.5)}


@pytest.mark.parametrize("spec", list(NOISY_SR4))
def test_pigdm_noisy_likelihood_helps_where_the_public_update_fits_the_noise(spec):
    """ΠGDM at sr4, σ = 0.05: the paper's likelihood (s_y = 2σ) brings the sample mean nearer the exact
    posterior mean than the noiseless public update does, and on the low-variance prior the public update
    ends further from it than the prior mean (relative error above 1)."""
    gaussian = load_prior(spec)
    errors = {}
    for likelihood in ("paper", "noiseless"):
        draws, posterior = _posterior_draws(gaussian, "sr4", 0.05, likelihood=likelihood)
        exact, prior_mean = posterior.mean.double(), gaussian.mean.double()[None]
        errors[likelihood] = float((draws.double().mean(0, keepdim=True) - exact).norm() / (prior_mean - exact).norm())
    paper_bound, noiseless_floor = NOISY_SR4[spec]
    assert errors["paper"] < paper_bound
    assert errors["paper"] < errors["noiseless"]
    if noiseless_floor is not None:
        assert errors["noiseless"] > noiseless_floor


def pigdm_law(prior, op, y: torch.Tensor, sigma: float, steps: int, eta: float, weight: float):
    """Mean (D,) and covariance (D, D) of ΠGDM's output given y at σ > 0 (x0_variance="flat", the paper's
    likelihood), as dense matrices from Algorithm 1 and Eqs. 5-8 alone.

    On a Gaussian prior every step is affine in x_t: x̂₀ = G x_t + c with G = √ᾱ Σ (ᾱ Σ + (1 − ᾱ) I)⁻¹ and
    c = μ − √ᾱ G μ, so ∂x̂₀/∂x_t = G (symmetric), the guidance is G Aᵀ K⁻¹ (y − A x̂₀) with K = r² A Aᵀ + s_y² I, and
    x_s = √ᾱ_s x̂₀|y + c₂ ε̂ + c₁ z carries the law N(m, P) forward exactly."""
    dim = math.prod(SHAPE)
    sigma_matrix, mu = prior.covariance(), prior.mean.reshape(-1)
    A = prior.operator_matrix(op)
    y64, s_y2 = y.double().reshape(-1), (2 * sigma) ** 2
    eye = torch.eye(dim, dtype=torch.float64)
    mean, cov = torch.zeros(dim, dtype=torch.float64), eye.clone()
    ts = prior.timesteps(steps)
    for t, s in zip(ts, [*ts[1:], -1], strict=True):
        ab_t = float(prior.alpha_bar(t, torch.float64))
        ab_s = float(prior.alpha_bar(s, torch.float64))
        G = math.sqrt(ab_t) * sigma_matrix @ torch.linalg.inv(ab_t * sigma_matrix + (1 - ab_t) * eye)
        c = mu - math.sqrt(ab_t) * G @ mu
        r2 = (1 - ab_t) / ab_t
        H = A.T @ torch.linalg.inv(r2 * A @ A.T + s_y2 * torch.eye(A.shape[0], dtype=torch.float64))
        k = weight * (1 - ab_t) / math.sqrt(ab_t)
        guide = eye - k * G @ H @ A  # x̂₀|y = guide (G x + c) + k G H y
        c1 = eta * math.sqrt((1 - ab_t / ab_s) * (1 - ab_s) / (1 - ab_t))
        c2 = math.sqrt(max(1 - ab_s - c1 * c1, 0.0))
        # ε̂ = (x − √ᾱ_t x̂₀) / √(1 − ᾱ_t)
        eps_slope = (eye - math.sqrt(ab_t) * G) / math.sqrt(1 - ab_t)
        eps_offset = -math.sqrt(ab_t) * c / math.sqrt(1 - ab_t)
        slope = math.sqrt(ab_s) * guide @ G + c2 * eps_slope
        offset = math.sqrt(ab_s) * (guide @ c + k * G @ H @ y64) + c2 * eps_offset
        mean = slope @ mean + offset
        cov = slope @ cov @ slope.T + c1 * c1 * eye
    return mean, cov


@pytest.mark.slow
@pytest.mark.parametrize("task", ["sr4", "gblur"])
def test_pigdm_noisy_samples_follow_their_exact_gaussian_law(prior, task):
    """The whole sampler at σ = 0.05 (25 steps, η = 1, w = 1), 256 draws against its law computed densely
    (`pigdm_law`), by DDRM's acceptance test: Monte Carlo mean error, per-pixel variance error, total variance.
    The same test fails when the draws are made with σ read as the noise std (σ/2 here). Measured (mean error,
    variance error, variance ratio): sr4 (1.09, 0.085, 1.002), with σ/2 (2.03, 0.090, 0.968); gblur (1.05, 0.086,
    1.003), with σ/2 (7.63, 0.114, 0.924)."""
    from test_solver_ddrm import follows_law, law_statistics

    draws_n, sigma = 256, 0.05
    op = operators.build(task, shape=SHAPE).for_images(["img"], seed=0)
    x = prior.sample(1, torch.Generator().manual_seed(1))
    y = op.measure(x, sigma, operators.image_generators(0, ["img"], "noise"))
    solver = solvers.build("pigdm", steps=STEPS)
    mean, cov = pigdm_law(prior, op, y, sigma, STEPS, solver.config.eta, solver.config.guidance_weight)
    batch_op = operators.build(task, shape=SHAPE).for_images(["img"] * draws_n, seed=0)
    ys = y.expand(draws_n, *y.shape[1:]).contiguous()

    def draws(told_sigma: float) -> torch.Tensor:
        return solver.solve(ys, batch_op, prior, sigma=told_sigma, generators=_generators(draws_n, 5000)).double()

    assert follows_law(law_statistics(draws(sigma), mean, cov))
    assert not follows_law(law_statistics(draws(sigma / 2), mean, cov))
