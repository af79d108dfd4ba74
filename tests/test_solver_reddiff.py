"""RED-diff against the analytic Gaussian prior, whose posterior for a linear operator is known exactly.

RED-diff is an optimiser, not a sampler: for a Gaussian posterior its target is the posterior mean (= MAP).
Each run sees its own random ε, so the mean of 256 runs for one y must come closer to the exact posterior
mean than the prior mean and the A⁺y baseline (its starting point) do. The paper's 100 steps are used.
"""

from __future__ import annotations

import math

import pytest
import torch
from gaussian_cases import DRAWS, SHAPE, posterior_error, problem, repeated_solve, seeded_generators

import operators
import solvers
from bench.priors import load_prior
from solvers.base import SolverError
from solvers.reddiff import inverse_sqrt_snr, measured_entries


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # 16x16 images are far too small to gain from threads; on a shared machine extra threads only contend.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def prior():
    return load_prior("gaussian")


def _runs(prior, task: str, y: torch.Tensor, sigma: float, n: int = DRAWS, **config) -> torch.Tensor:
    """n RED-diff runs for the same y in one batch (the same inpainting mask for all: one image id)."""
    return repeated_solve(solvers.build("reddiff", **config), prior, task, y, sigma, n)


# (task, sigma, baseline, bound): the squared distance of the mean of 256 runs to the exact posterior mean,
# relative to that of the prior mean (= 1), must be below bound * (error of the baseline), where baseline
# "both" is min(prior mean, A⁺y) and "prior" the prior mean alone. Measured (truth seed 1, paper defaults):
#   sr4 σ=0      0.0085 (A⁺y 0.099)     sr4 σ=0.05      0.097  (A⁺y 0.185)
#   sr8 σ=0      0.017  (A⁺y 0.128)     sr8 σ=0.05      0.087  (A⁺y 0.186)
#   gblur σ=0    0.552  (A⁺y 0.515)     gblur σ=0.05    0.033  (A⁺y 2.69)
#   inpaint σ=0  0.068  (A⁺y 0.777)     inpaint σ=0.05  0.058  (A⁺y 0.770)
#   denoise σ=0.05  0.0475 (A⁺y 0.0456)
# Noise-free gblur: A⁺y inverts the float32 measurement almost exactly, so RED-diff beats only the prior mean.
# Denoising: the regulariser's weight 1/√SNR_t falls to 0.01 at the last steps while the data term pulls μ
# back to y = A⁺y, so RED-diff ends at A⁺y (bound 1.25 x A⁺y's error) and beats only the prior mean.
# One run is far noisier than the mean of runs (Adam's lr 0.5 moves each pixel by up to 0.5 per step): for
# one run the relative error is 1.3 (sr4), 2.9 (gblur), 9.4 (inpaint) at σ = 0.05, 0.4, 0.6, 2.1 with lr 0.1.
CASES = [
    ("sr4", 0.0, "both", 0.2),
    ("sr4", 0.05, "both", 0.75),
    ("sr8", 0.0, "both", 0.25),
    ("sr8", 0.05, "both", 0.7),
    ("gblur", 0.0, "prior", 0.8),
    ("gblur", 0.05, "both", 0.06),
    ("inpaint", 0.0, "both", 0.15),
    ("inpaint", 0.05, "both", 0.15),
    ("denoise", 0.05, "prior", 0.1),
]


@pytest.mark.parametrize(("task", "sigma", "baseline", "bound"), CASES)
def test_reddiff_mean_of_runs_beats_prior_mean_and_pinv(prior, task, sigma, baseline, bound):
    op, _, y = problem(prior, task, sigma)
    error = posterior_error(prior, op, y, sigma)

    runs = _runs(prior, task, y, sigma)
    assert torch.isfinite(runs).all() and runs.abs().max() <= 1.0
    pinv_error = error(solvers.build("pinv").reconstruct(y, op, prior, sigma=sigma, generators=seeded_generators(1)))
    base = min(1.0, pinv_error) if baseline == "both" else 1.0
    assert error(runs.mean(0, keepdim=True)) < bound * base
    if task == "denoise":
        assert error(runs.mean(0, keepdim=True)) < 1.25 * pinv_error


def test_reddiff_jpeg10_noise_free_beats_the_prior_mean(prior):
    """jpeg10 is non-linear (no exact posterior): the mean of 64 runs must be closer to the truth than the
    prior mean. Measured MSE ratio to the prior mean's: 0.41 (the decoded image, where μ starts: 0.39)."""
    _, truth, y = problem(prior, "jpeg10", 0.0)
    runs = _runs(prior, "jpeg10", y, 0.0, n=64)
    assert torch.isfinite(runs).all() and runs.abs().max() <= 1.0
    prior_mse = (prior.mean.float()[None] - truth).square().mean()
    assert (runs.mean(0, keepdim=True) - truth).square().mean() < 0.55 * prior_mse


def test_reddiff_jpeg10_noisy_runs_finite(prior):
    """Noisy jpeg10 only has to run: a noisy y lies outside the range of the quantising codec, and fitting it
    through the straight-through gradient drives μ's quantised-away frequencies outward without bound. Measured:
    the mean of 64 runs has 1.63 x the prior mean's MSE (the decoded image 0.47 x); with λ = 0, 70% of the
    pixels end clipped at ±1. This is the method on this operator, not a numerical failure."""
    _, _, y = problem(prior, "jpeg10", 0.05)
    runs = _runs(prior, "jpeg10", y, 0.05, n=8)
    assert torch.isfinite(runs).all() and runs.abs().max() <= 1.0


def test_reddiff_image_result_does_not_depend_on_its_batch(prior):
    """Adam's state is elementwise and the loss a sum of per-image losses: image c follows the same path alone."""
    ids = ["a", "b", "c", "d"]
    truth = prior.sample(4, generator=torch.Generator().manual_seed(5))
    op = operators.build("inpaint", shape=SHAPE).for_images(ids, seed=0)
    y = op.measure(truth, 0.05, operators.image_generators(0, ids, "noise"))
    solver = solvers.build("reddiff", steps=20)
    batch = solver.reconstruct(y, op, prior, sigma=0.05, generators=operators.image_generators(0, ids, "sampler"))
    alone_op = operators.build("inpaint", shape=SHAPE).for_images(["c"], seed=0)
    alone = solver.reconstruct(
        y[2:3], alone_op, prior, sigma=0.05, generators=operators.image_generators(0, ["c"], "sampler")
    )
    torch.testing.assert_close(batch[2:3], alone, atol=1e-5, rtol=0)


def test_reddiff_normalisers_follow_the_official_loss(prior):
    """M counts the observed coefficients (inpainting: the kept pixels only), w_t = sqrt((1 - ᾱ_t) / ᾱ_t)."""
    inpaint = operators.build("inpaint", shape=SHAPE).for_images(["x"], seed=0)
    kept = int(inpaint.measure(torch.ones(1, *SHAPE), 0.0, seeded_generators(1)).ne(0).sum())
    assert measured_entries(inpaint) == kept == round(0.08 * 16 * 16) * 3
    assert measured_entries(operators.build("sr4", shape=SHAPE)) == 3 * 4 * 4
    assert measured_entries(operators.build("jpeg10", shape=SHAPE)) == 3 * 16 * 16
    for t in (0, 499, 999):
        alpha_bar = float(prior.alphas_cumprod[t])
        assert float(inverse_sqrt_snr(prior, t)) == pytest.approx(math.sqrt((1 - alpha_bar) / alpha_bar), rel=1e-6)


def test_reddiff_evaluates_the_network_once_per_step_without_backprop(prior):
    op = operators.build("sr4", shape=SHAPE)
    y = torch.zeros(2, *op.measurement_shape)
    seen: list[tuple[int, int]] = []

    def callback(*, step, t, x_t, eps, x0):
        assert x_t.shape == eps.shape == x0.shape == (2, *SHAPE)
        assert not (x_t.requires_grad or eps.requires_grad or x0.requires_grad)
        seen.append((step, t))

    prior.reset_stats()
    solvers.build("reddiff", steps=7).reconstruct(y, op, prior, sigma=0.0, generators=seeded_generators(2), callback=callback)
    assert seen == list(enumerate(prior.timesteps(7)))
    assert prior.stats.nfe == 7 and prior.stats.backward_seconds == 0.0


def test_reddiff_defaults_are_the_ddc_paper_settings():
    config = solvers.build("reddiff").config
    assert (config.steps, config.lr, config.lam) == (100, 0.5, 0.25)


@pytest.mark.parametrize(
    ("options", "message"),
    [({"lr": 0.0}, "reddiff.lr"), ({"lam": -0.1}, "reddiff.lam"), ({"steps": 0}, "reddiff.steps")],
)
def test_reddiff_rejects_bad_configuration(options, message):
    with pytest.raises(SolverError, match=message):
        solvers.build("reddiff", **options)


def test_reddiff_rejects_a_generator_count_that_does_not_match_the_batch(prior):
    op = operators.build("denoise", shape=SHAPE)
    with pytest.raises(SolverError, match="one generator per image"):
        solvers.build("reddiff", steps=2).reconstruct(
            torch.zeros(2, *SHAPE), op, prior, sigma=0.0, generators=seeded_generators(1)
        )


def test_reddiff_output_x0_is_the_last_tweedie_estimate_before_the_last_step():
    prior = load_prior("gaussian")
    op, _, y = problem(prior, "sr4", 0.05)
    seen = []
    official = solvers.build("reddiff", steps=6, output="x0").reconstruct(
        y, op, prior, sigma=0.05, generators=seeded_generators(1), callback=lambda **k: seen.append(k["x0"].clone())
    )
    paper = solvers.build("reddiff", steps=6).reconstruct(y, op, prior, sigma=0.05, generators=seeded_generators(1))
    torch.testing.assert_close(official, seen[-1].clamp(-1, 1), rtol=0, atol=0)
    assert not torch.equal(official, paper)
    with pytest.raises(SolverError, match="output"):
        solvers.build("reddiff", output="last")
