"""DPS against the analytic Gaussian prior, whose posterior for a linear operator is known exactly.

DPS is a biased approximate sampler, so its draws are not tested against the posterior's spread; the mean of
256 draws for one y must come closer to the exact posterior mean than the prior mean and the A⁺y baseline do
where DPS at its paper's 1000 steps does. The tests run 100 respaced steps instead of 1000 (each 1000-step case
costs ~15 s of CPU): with the default step-size rule (`zeta_rule="scaled"`) the 100-step figures track the
1000-step ones, which are noted beside them.
"""

from __future__ import annotations

from fractions import Fraction

import pytest
import torch
from gaussian_cases import DRAWS, SHAPE, posterior_error, problem, repeated_solve, seeded_generators

import operators
import solvers
from bench.priors import load_prior
from bench.priors.gaussian import GaussianPrior
from solvers.base import SolverError
from solvers.dps import guidance_scales, residual_norm_gradient

STEPS = 100


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


def _draws(prior, task: str, y: torch.Tensor, sigma: float, n: int = DRAWS, **config) -> torch.Tensor:
    """n DPS draws for the same y in one batch (the same inpainting mask for all: one image id)."""
    return repeated_solve(solvers.build("dps", steps=STEPS, **config), prior, task, y, sigma, n)


# (task, sigma, baseline, bound): the squared distance of the mean of 256 draws to the exact posterior mean,
# relative to that of the prior mean (= 1), must be below bound * (error of the baseline), where baseline
# "both" is min(prior mean, A⁺y) and "prior" the prior mean alone. Measured (truth seed 1), 100 steps with the
# defaults / 1000 steps (the paper's) / 100 steps with the old constant ζ on the uniform skip:
#   sr4 σ=0      0.009 / 0.012 / 0.040  (A⁺y 0.099)     sr4 σ=0.05      0.104 / 0.105 / 0.017  (A⁺y 0.185)
#   sr8 σ=0      0.016 / 0.022 / 0.024  (A⁺y 0.128)     sr8 σ=0.05      0.118 / 0.130 / 0.012  (A⁺y 0.186)
#   gblur σ=0    0.561 / 0.495 / 0.673  (A⁺y 0.515)     gblur σ=0.05    0.029 / 0.028 / 0.217  (A⁺y 2.69)
#   inpaint σ=0  0.512 / 0.400 / 0.119  (A⁺y 0.777)     inpaint σ=0.05  0.545 / 0.464 / 0.129  (A⁺y 0.769)
#   denoise σ=0.05  0.049 / 0.046 / 0.027  (A⁺y 0.046)
# The old 100-step sampler kept a tenth of the guidance and so fitted the noise in y less than the paper's
# DPS does: on this prior that lowered some errors, but it was not DPS; the bounds are now set from figures
# that the 1000-step sampler shares. Noise-free gblur: A⁺y inverts the float32 measurement almost exactly,
# so DPS beats only the prior mean. Denoising at σ = 0.05: DPS at its paper ζ fits y about as closely as
# y itself (1000 steps: 0.046 against A⁺y = y's 0.046), so only the prior mean is a baseline there.
# Noise-free denoising is not tested: A⁺y = y is the posterior mean itself.
CASES = [
    ("sr4", 0.0, "both", 0.2),
    ("sr4", 0.05, "both", 0.75),
    ("sr8", 0.0, "both", 0.25),
    ("sr8", 0.05, "both", 0.8),
    ("gblur", 0.0, "prior", 0.7),
    ("gblur", 0.05, "both", 0.06),
    ("inpaint", 0.0, "both", 0.8),
    ("inpaint", 0.05, "both", 0.85),
    ("denoise", 0.05, "prior", 0.1),
]


@pytest.mark.parametrize(("task", "sigma", "baseline", "bound"), CASES)
def test_dps_sample_mean_beats_prior_mean_and_pinv(prior, task, sigma, baseline, bound):
    op, _, y = problem(prior, task, sigma)
    error = posterior_error(prior, op, y, sigma)

    draws = _draws(prior, task, y, sigma)
    assert torch.isfinite(draws).all() and draws.abs().max() <= 1.0
    pinv_error = error(solvers.build("pinv").reconstruct(y, op, prior, sigma=sigma, generators=seeded_generators(1)))
    base = min(1.0, pinv_error) if baseline == "both" else 1.0
    assert error(draws.mean(0, keepdim=True)) < bound * base


def test_dps_jpeg10_runs_and_beats_the_prior_mean(prior):
    """jpeg10 is non-linear (no exact posterior): the mean of 64 noise-free draws must be closer to the truth
    than the prior mean. Measured MSE ratio to the prior mean's: 0.44 (1000 steps: 0.40); the decoded image's
    is 0.39, so DPS roughly matches the decoded image here."""
    _, truth, y = problem(prior, "jpeg10", 0.0)
    draws = _draws(prior, "jpeg10", y, 0.0, n=64)
    assert torch.isfinite(draws).all() and draws.abs().max() <= 1.0
    prior_mse = (prior.mean.float()[None] - truth).square().mean()
    assert (draws.mean(0, keepdim=True) - truth).square().mean() < 0.55 * prior_mse


def test_dps_jpeg10_runs_on_a_noisy_measurement(prior):
    """At σ = 0.05 the guidance fits the noise of y: the mean of 64 draws has 1.18 times the prior mean's MSE
    (1000 steps: 2.17; the decoded image 0.47), so only finite, in-range output is asserted. (The old 100-step
    sampler, a tenth of the guidance, reached 0.53 by fitting y less than DPS does.)"""
    _, _, y = problem(prior, "jpeg10", 0.05)
    draws = _draws(prior, "jpeg10", y, 0.05, n=16)
    assert torch.isfinite(draws).all() and draws.abs().max() <= 1.0


def test_dps_image_result_does_not_depend_on_its_batch(prior):
    ids = ["a", "b", "c", "d"]
    truth = prior.sample(4, generator=torch.Generator().manual_seed(5))
    op = operators.build("inpaint", shape=SHAPE).for_images(ids, seed=0)
    y = op.measure(truth, 0.05, operators.image_generators(0, ids, "noise"))
    solver = solvers.build("dps", steps=20)
    batch = solver.reconstruct(y, op, prior, sigma=0.05, generators=operators.image_generators(0, ids, "sampler"))
    alone_op = operators.build("inpaint", shape=SHAPE).for_images(["c"], seed=0)
    alone = solver.reconstruct(
        y[2:3], alone_op, prior, sigma=0.05, generators=operators.image_generators(0, ["c"], "sampler")
    )
    torch.testing.assert_close(batch[2:3], alone, atol=1e-5, rtol=0)


def test_dps_guidance_is_per_image_and_uses_the_norm_not_its_square(prior):
    """∇||y - A x̂₀|| of image 0 ignores image 1, and is unchanged when image 0's residual is doubled
    (the gradient of the squared norm would double)."""
    op = operators.build("sr4", shape=SHAPE)
    x_t = torch.randn(2, *SHAPE, generator=torch.Generator().manual_seed(0))
    t = 500

    def gradient(y: torch.Tensor) -> torch.Tensor:
        x = x_t.clone().requires_grad_(True)
        return residual_norm_gradient(y, op, x, prior.predict(x, t).x0)

    with torch.no_grad():
        fit = op(prior.predict(x_t, t).x0)
    y = fit + 0.1 * torch.randn(fit.shape, generator=torch.Generator().manual_seed(1))
    reference = gradient(y)
    other_scaled = y.clone()
    other_scaled[1] *= 10.0
    torch.testing.assert_close(gradient(other_scaled)[0], reference[0], atol=1e-6, rtol=1e-5)
    residual_doubled = y.clone()
    residual_doubled[0] = 2.0 * y[0] - fit[0]
    torch.testing.assert_close(gradient(residual_doubled)[0], reference[0], atol=1e-6, rtol=1e-4)
    assert not torch.allclose(reference[0], reference[1])


def test_dps_without_guidance_is_ancestral_sampling(prior):
    """ζ = 0 without clipping is exactly the unconditional DDPM sampler with the same generators and timesteps
    (the unconditional sampler takes the uniform skip)."""
    op = operators.build("sr4", shape=SHAPE)
    y = torch.zeros(2, *op.measurement_shape)
    dps = solvers.build("dps", steps=25, zeta=0.0, clip_x0=False, spacing="uniform").reconstruct(
        y, op, prior, sigma=0.0, generators=seeded_generators(2)
    )
    uncond = solvers.build("uncond", steps=25).reconstruct(y, op, prior, sigma=0.0, generators=seeded_generators(2))
    torch.testing.assert_close(dps, uncond, atol=1e-6, rtol=0)


def test_dps_zeta_defaults_to_the_paper_value_per_task():
    config = solvers.build("dps").config
    assert config.zeta is None and config.steps == 1000
    assert config.zeta_rule == "scaled" and config.spacing == "respace"
    assert config.zeta_for("gblur") == 0.4
    assert config.zeta_for("sr4") == config.zeta_for("jpeg10") == 1.0
    assert solvers.build("dps", zeta="0.3").config.zeta_for("gblur") == 0.3


def test_dps_calls_back_once_per_network_evaluation(prior):
    op = operators.build("denoise", shape=SHAPE)
    y = torch.zeros(1, *SHAPE)
    seen: list[tuple[int, int]] = []

    def callback(*, step, t, x_t, eps, x0):
        assert x_t.shape == eps.shape == x0.shape == (1, *SHAPE)
        assert not (x_t.requires_grad or eps.requires_grad or x0.requires_grad)
        seen.append((step, t))

    prior.reset_stats()
    solvers.build("dps", steps=5).reconstruct(y, op, prior, sigma=0.0, generators=seeded_generators(1), callback=callback)
    # guided-diffusion's space_timesteps(1000, "5"), not the uniform skip [800, 600, 400, 200, 0]
    assert seen == list(enumerate([999, 749, 500, 250, 0])) and prior.stats.nfe == 5
    seen.clear()
    solvers.build("dps", steps=5, spacing="uniform").reconstruct(
        y, op, prior, sigma=0.0, generators=seeded_generators(1), callback=callback
    )
    assert seen == list(enumerate(prior.timesteps(5)))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"zeta": -1.0}, "dps.zeta"),
        ({"zeta": float("nan")}, "dps.zeta"),
        ({"steps": 0}, "dps.steps"),
        ({"zeta_rule": "per-step"}, "dps.zeta_rule"),
        ({"spacing": "trailing"}, "dps.spacing"),
    ],
)
def test_dps_rejects_bad_configuration(options, message):
    with pytest.raises(SolverError, match=message):
        solvers.build("dps", **options)


def test_dps_rejects_a_generator_count_that_does_not_match_the_batch(prior):
    op = operators.build("denoise", shape=SHAPE)
    with pytest.raises(SolverError, match="one generator per image"):
        solvers.build("dps", steps=2).reconstruct(
            torch.zeros(2, *SHAPE), op, prior, sigma=0.0, generators=seeded_generators(1)
        )


# guided-diffusion's space_timesteps(T, str(n)) (guided_diffusion/respace.py, one section), as its own code
# returns them (descending); (1000, 21) differs from Improved DDPM's "linspace" rounding (500 there), and one
# step is {0}.
GUIDED_DIFFUSION_TIMESTEPS = {
    (1000, 1): [0],
    (1000, 5): [999, 749, 500, 250, 0],
    (1000, 10): [999, 888, 777, 666, 555, 444, 333, 222, 111, 0],
    (1000, 21): [999, 949, 899, 849, 799, 749, 699, 649, 599, 549, 499, 450, 400, 350, 300, 250, 200, 150, 100, 50, 0],
    (100, 7): [99, 82, 66, 50, 33, 16, 0],
}


@pytest.mark.parametrize(("T", "n"), list(GUIDED_DIFFUSION_TIMESTEPS))
def test_respace_timesteps_are_guided_diffusions(T, n):
    assert GaussianPrior(size=2, num_timesteps=T).timesteps(n, "respace") == GUIDED_DIFFUSION_TIMESTEPS[(T, n)]


@pytest.mark.parametrize("n", [100, 250, 1000])
def test_respace_timesteps_round_the_even_stride(n):
    """For 100, 250 and 1000 of 1000 steps, i (T - 1) / (n - 1) is never a half, so guided-diffusion's set is
    the exact rational stride rounded: 999, 989, ..., 10, 0 for 100 steps; every timestep for 1000."""
    T = 1000
    expected = [round(Fraction(i * (T - 1), n - 1)) for i in range(n)][::-1]
    steps = load_prior("gaussian").timesteps(n, "respace")
    assert steps == expected and len(set(steps)) == n
    if n == 100:
        assert steps[:3] == [999, 989, 979] and steps[-3:] == [20, 10, 0]
    if n == T:
        assert steps == list(range(T - 1, -1, -1)) == load_prior("gaussian").timesteps(T)


def test_scaled_zeta_gives_each_step_the_training_time_it_covers(prior):
    T = prior.num_timesteps
    ts = prior.timesteps(100, "respace")
    scales = guidance_scales(ts, 0.4)
    assert scales == [0.4 * (t - s) for t, s in zip(ts, [*ts[1:], -1], strict=True)]
    assert set(scales[:-1]) == {0.4 * 10, 0.4 * 11} and scales[-1] == 0.4  # the last step 0 -> -1 covers one
    assert sum(scales) == pytest.approx(0.4 * T, rel=1e-12)  # the 1000-step total
    assert guidance_scales(ts, 0.4, "constant") == [0.4] * 100
    # at one step per training timestep the rule is Algorithm 1's constant ζ, bit for bit
    assert guidance_scales(prior.timesteps(T, "respace"), 0.4) == [0.4] * T


def test_dps_at_every_timestep_is_unchanged_by_the_rule_and_the_spacing(prior):
    """steps = T: the defaults (scaled ζ, respaced timesteps) give exactly the old 1000-step sampler."""
    op = operators.build("gblur", shape=SHAPE)
    truth = prior.sample(2, generator=torch.Generator().manual_seed(3))
    y = op.measure(truth, 0.05, operators.image_generators(0, ["a", "b"], "noise"))
    T = prior.num_timesteps
    new = solvers.build("dps", steps=T).reconstruct(y, op, prior, sigma=0.05, generators=seeded_generators(2))
    old = solvers.build("dps", steps=T, zeta_rule="constant", spacing="uniform").reconstruct(
        y, op, prior, sigma=0.05, generators=seeded_generators(2)
    )
    assert torch.equal(new, old)


@pytest.mark.slow
@pytest.mark.parametrize("task", ["sr4", "gblur"])
def test_dps_at_100_steps_tracks_dps_at_1000(prior, task):
    """The error of the mean of 256 draws at 100 steps (defaults) lies within 25% of the 1000-step one; with
    the old constant ζ on the uniform skip it is more than 50% off (measured: sr4 0.104 and 0.017 against
    0.105, gblur 0.029 and 0.217 against 0.028; σ = 0.05)."""
    op, _, y = problem(prior, task, 0.05)
    error = posterior_error(prior, op, y, 0.05)

    def draws_error(**config) -> float:
        return error(repeated_solve(solvers.build("dps", **config), prior, task, y, 0.05).mean(0, keepdim=True))

    reference = draws_error(steps=1000)
    assert abs(draws_error(steps=STEPS) - reference) < 0.25 * reference
    assert abs(draws_error(steps=STEPS, zeta_rule="constant", spacing="uniform") - reference) > 0.5 * reference
