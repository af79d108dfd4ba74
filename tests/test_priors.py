"""Tests of bench.priors: the schedule maths, the exact Gaussian prior, NFE/time accounting and the loaders."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import scipy.fft
import torch
from torch import nn

from bench.priors import NATURAL64_DIR, PriorError, available, load_prior, load_unet, parse_spec, save_unet
from bench.priors import base as prior_base
from bench.priors.base import Prior, linear_betas
from bench.priors.gaussian import GaussianPrior, dct_matrix


# ----- helpers --------------------------------------------------------------------------------------
class ConstantVarianceNet(nn.Module):
    """ε = x / 2 and, unless v is None, a constant variance output v (a learned-variance network)."""

    def __init__(self, v: float | None) -> None:
        super().__init__()
        self.v = v
        self.scale = nn.Parameter(torch.tensor(0.5))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if self.v is None:
            return self.scale * x
        return torch.cat([self.scale * x, torch.full_like(x, self.v)], dim=1)


def toy_prior(v: float = 0.0, learned_variance: bool = True, shape=(3, 4, 4)) -> Prior:
    return Prior(
        ConstantVarianceNet(v if learned_variance else None),
        linear_betas(),
        shape,
        kind="toy",
        config={},
        learned_variance=learned_variance,
    )


class DenseOperator:
    """A linear operator given by a matrix, shaped like the project's operators (forward, shapes, linear)."""

    linear = True

    def __init__(self, matrix: torch.Tensor, input_shape: tuple[int, int, int]) -> None:
        self.matrix = matrix
        self.input_shape = input_shape
        self.measurement_shape = (matrix.shape[0],)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) @ self.matrix.to(x.dtype).T


def dense_covariance(prior: GaussianPrior) -> torch.Tensor:
    """Σ built independently of the prior's einsum code: Kronecker products of the colour and DCT matrices."""
    from bench.priors.gaussian import opponent_colour_matrix

    c, h, w = prior.image_shape
    basis = torch.kron(torch.kron(opponent_colour_matrix(c), dct_matrix(h)), dct_matrix(w))
    return basis.T @ torch.diag(prior.eigenvalues.reshape(-1)) @ basis


@pytest.fixture(scope="module")
def small_gaussian() -> GaussianPrior:
    return GaussianPrior(size=4)  # 3 x 4 x 4 = 48 dimensions: Monte-Carlo moments converge quickly


# ----- the DDPM schedule ----------------------------------------------------------------------------
def test_schedule_matches_ddpm_linear_values():
    prior = toy_prior()
    reference = np.cumprod(1.0 - np.linspace(1e-4, 0.02, 1000))
    np.testing.assert_allclose(prior.alphas_cumprod.numpy(), reference, rtol=1e-12)
    assert prior.alphas_cumprod.dtype == torch.float64 and prior.betas.dtype == torch.float64
    assert prior.num_timesteps == 1000
    assert prior.alphas_cumprod[999].item() == pytest.approx(4.0358e-5, rel=1e-4)
    assert prior.alpha_bar(-1).item() == 1.0
    assert prior.alpha_bar(torch.tensor([0, 999])).shape == (2, 1, 1, 1)


def test_q_posterior_matches_ddpm_closed_form_for_single_steps():
    prior = toy_prior()
    t = torch.arange(1, 1000)
    beta = prior.betas[1:]
    ab, ab_prev = prior.alphas_cumprod[1:], prior.alphas_cumprod[:-1]
    post = prior.q_posterior(t, dtype=torch.float64)
    # DDPM (Ho et al. 2020) Eq. 7.
    torch.testing.assert_close(post.coef_x0.flatten(), beta * ab_prev.sqrt() / (1 - ab))
    torch.testing.assert_close(post.coef_xt.flatten(), (1 - beta).sqrt() * (1 - ab_prev) / (1 - ab))
    torch.testing.assert_close(post.variance.flatten(), beta * (1 - ab_prev) / (1 - ab))
    torch.testing.assert_close(post.beta.flatten(), beta)


def test_q_posterior_respaced_steps_preserve_the_marginals():
    # x_t ~ q(x_t | x0) followed by x_s ~ q(x_s | x_t, x0) must give q(x_s | x0) for any t > s.
    prior = toy_prior()
    t = torch.tensor([999, 800, 600, 37, 1, 0])
    s = torch.tensor([800, 600, 37, 0, -1, -1])
    post = prior.q_posterior(t, s, dtype=torch.float64)
    ab_t, ab_s = prior.alpha_bar(t, torch.float64), prior.alpha_bar(s, torch.float64)
    torch.testing.assert_close(post.coef_x0 + post.coef_xt * ab_t.sqrt(), ab_s.sqrt())
    torch.testing.assert_close(post.coef_xt**2 * (1 - ab_t) + post.variance, 1 - ab_s)
    torch.testing.assert_close(post.beta, 1 - ab_t / ab_s)
    # Into the clean image: the mean is x0 itself, no noise, and the log-variance is clipped to β̃_1.
    assert post.variance[-2:].abs().max() == 0 and post.coef_x0[-2:].flatten().tolist() == [1.0, 1.0]
    clipped = prior.q_posterior(1, 0, dtype=torch.float64).variance.log()
    torch.testing.assert_close(post.log_variance[-1], clipped[0])
    with pytest.raises(PriorError, match="t > s"):
        prior.q_posterior(10, 10)


def test_learned_log_variance_interpolates_between_beta_and_posterior_variance():
    images = torch.zeros(2, 3, 4, 4)
    t = torch.tensor([500, 0])
    reference = toy_prior().q_posterior(t, dtype=torch.float32)
    beta_log = torch.log(linear_betas()[t]).float().reshape(2, 1, 1, 1)
    top = toy_prior(v=1.0).predict(images, t)
    bottom = toy_prior(v=-1.0).predict(images, t)
    middle = toy_prior(v=0.0).predict(images, t)
    torch.testing.assert_close(top.log_variance, beta_log.expand_as(images))
    torch.testing.assert_close(bottom.log_variance, reference.log_variance.expand_as(images))
    torch.testing.assert_close(middle.log_variance, 0.5 * (top.log_variance + bottom.log_variance))
    # t = 0: Improved DDPM clips log β̃_0 (= log 0) to log β̃_1.
    b0, b1 = linear_betas()[:2]
    beta_tilde_1 = b1 * b0 / (1 - (1 - b0) * (1 - b1))  # β_1 (1 - ᾱ_0) / (1 - ᾱ_1)
    torch.testing.assert_close(bottom.log_variance[1], beta_tilde_1.log().float().expand(3, 4, 4))
    torch.testing.assert_close(top.variance_frac, torch.ones_like(images))


def test_timesteps_spacing_rules():
    prior = toy_prior()
    assert prior.timesteps(5) == [800, 600, 400, 200, 0]
    assert prior.timesteps(1000) == list(range(999, -1, -1))
    assert prior.timesteps(5, "linspace") == [999, 749, 500, 250, 0]
    assert prior.timesteps(3) == [666, 333, 0]
    with pytest.raises(PriorError, match="1..1000"):
        prior.timesteps(0)
    with pytest.raises(PriorError, match="spacing"):
        prior.timesteps(5, "trailing")  # type: ignore[arg-type]


def test_prior_predict_checks_its_inputs():
    prior = toy_prior(learned_variance=False)
    x = torch.randn(2, 3, 4, 4)
    torch.testing.assert_close(prior.eps(x, 10), prior.eps(x, torch.tensor([10, 10])))
    torch.testing.assert_close(prior.eps(x, torch.tensor(10)), 0.5 * x)
    for bad_t, message in [
        (1000, "0..999"),
        (-1, "0..999"),
        (torch.tensor([1.0, 2.0]), "integer"),
        (torch.tensor([1, 2, 3]), "shape"),
    ]:
        with pytest.raises(PriorError, match=message):
            prior.eps(x, bad_t)
    with pytest.raises(PriorError, match=r"\(B, 3, 4, 4\)"):
        prior.eps(torch.randn(2, 3, 8, 8), 5)
    assert all(not p.requires_grad for p in prior.network.parameters())
    assert not prior.network.training


def test_prior_x0_is_tweedie_of_eps():
    prior = toy_prior(learned_variance=False)
    x = torch.randn(3, 3, 4, 4, dtype=torch.float64)
    t = torch.tensor([0, 400, 999])
    ab = torch.from_numpy(np.cumprod(1.0 - np.linspace(1e-4, 0.02, 1000))[[0, 400, 999]]).reshape(3, 1, 1, 1)
    pred = prior.predict(x, t)
    assert pred.eps.dtype == torch.float64 and pred.log_variance is None and pred.variance_frac is None
    torch.testing.assert_close(pred.x0, (x - (1 - ab).sqrt() * pred.eps) / ab.sqrt())
    torch.testing.assert_close(prior.eps_from_x0(x, t, pred.x0), pred.eps)


# ----- NFE and time accounting ----------------------------------------------------------------------
class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class _AdvanceClockInBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, clock, seconds):
        ctx.clock, ctx.seconds = clock, seconds
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        ctx.clock.now += ctx.seconds
        return grad, None, None


class ClockedNet(nn.Module):
    """ε = 2x; its forward costs 1 s and its backward 10 s of the fake clock."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__()
        self.clock = clock

    def forward(self, x, t):
        self.clock.now += 1.0
        return 2.0 * _AdvanceClockInBackward.apply(x, self.clock, 10.0)


def test_prior_stats_count_calls_and_forward_and_backward_time(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(prior_base, "_clock", clock)
    prior = Prior(ClockedNet(clock), linear_betas(), (1, 4, 4), kind="clocked", config={})
    x = torch.randn(2, 1, 4, 4)
    prior.eps(x, 3)
    prior.x0(x, torch.tensor([1, 2]))
    assert (prior.stats.nfe, prior.stats.forward_seconds, prior.stats.backward_seconds) == (2, 2.0, 0.0)

    x_grad = x.clone().requires_grad_(True)
    eps = prior.eps(x_grad, 500)
    # Backward through something after the network (100 s) must not be counted as the network's.
    loss = _AdvanceClockInBackward.apply(eps, clock, 100.0).square().sum()
    (grad,) = torch.autograd.grad(loss, x_grad)
    torch.testing.assert_close(grad, 8.0 * x)  # d/dx (2x)^2 = 8x: the timing markers leave gradients intact
    assert prior.stats.nfe == 3
    assert prior.stats.forward_seconds == 3.0
    assert prior.stats.backward_seconds == 10.0

    with torch.no_grad():
        prior.eps(x_grad, 500)
    assert prior.stats.backward_seconds == 10.0 and prior.stats.nfe == 4
    prior.reset_stats()
    assert prior.stats.as_dict() == {"nfe": 0, "forward_seconds": 0.0, "backward_seconds": 0.0}


def test_prior_stats_measure_real_backward_time():
    prior = GaussianPrior(size=8)
    x = torch.randn(4, 3, 8, 8, requires_grad=True)
    prior.eps(x, 200).square().sum().backward()
    assert prior.stats.nfe == 1 and prior.stats.forward_seconds > 0 and prior.stats.backward_seconds > 0
    assert x.grad is not None and torch.isfinite(x.grad).all()


# ----- the analytic Gaussian prior -------------------------------------------------------------------
def test_dct_matrix_matches_scipy():
    x = np.random.default_rng(0).standard_normal((7, 5))
    np.testing.assert_allclose(dct_matrix(7).numpy() @ x, scipy.fft.dct(x, axis=0, norm="ortho"), atol=1e-12)


def test_gaussian_basis_is_orthonormal_and_matches_kronecker_covariance(small_gaussian):
    z = torch.randn(5, 3, 4, 4, dtype=torch.float64)
    torch.testing.assert_close(small_gaussian.to_basis(small_gaussian.from_basis(z)), z)
    torch.testing.assert_close(small_gaussian.covariance(), dense_covariance(small_gaussian))


def test_gaussian_samples_have_the_prior_moments(small_gaussian):
    x = small_gaussian.sample(40000, torch.Generator().manual_seed(1)).double().flatten(1)
    mean = small_gaussian.mean.reshape(-1)
    cov = dense_covariance(small_gaussian)
    assert (x.mean(0) - mean).abs().max() < 0.03
    empirical = torch.cov(x.T)
    assert (empirical - cov).norm() / cov.norm() < 0.03


def test_gaussian_default_prior_has_photo_like_pixel_statistics():
    prior = GaussianPrior()
    x = prior.sample(2000, torch.Generator().manual_seed(0))
    assert x.shape == (2000, 3, 16, 16)
    variances = x.var(dim=(0, 2, 3))
    assert ((variances > 0.17) & (variances < 0.24)).all()
    # Neighbouring pixels are strongly correlated, as in photos.
    neighbours = torch.corrcoef(torch.stack([x[:, 0, 8, 8], x[:, 0, 8, 9]]))[0, 1]
    assert neighbours > 0.5


@pytest.mark.parametrize("t", [30, 300, 900])
def test_gaussian_eps_matches_monte_carlo_regression(small_gaussian, t):
    # (ε, x_t) are jointly Gaussian, so E[ε | x_t] is the linear regression of ε on x_t; estimate it from
    # samples and compare it with the prior's denoiser, an affine map whose matrix we read off by probing.
    generator = torch.Generator().manual_seed(t)
    n = 20000
    x0 = small_gaussian.sample(n, generator).double()
    noise = torch.randn(x0.shape, generator=generator, dtype=torch.float64)
    ab = small_gaussian.alphas_cumprod[t]
    x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * noise
    xf, ef = x_t.flatten(1), noise.flatten(1)
    xc, ec = xf - xf.mean(0), ef - ef.mean(0)
    cov_xt = xc.T @ xc / n
    regression = torch.linalg.solve(cov_xt, xc.T @ ec / n).T  # (D, D): ε ≈ R (x_t - mean)

    centre = (ab.sqrt() * small_gaussian.mean).float()[None]
    assert small_gaussian.eps(centre, t).abs().max() < 1e-5  # E[ε | x_t = E x_t] = 0
    probes = centre + torch.eye(48).reshape(48, 3, 4, 4)
    denoiser = small_gaussian.eps(probes, t).double().flatten(1).T  # column j: response to pixel j
    # Compared on whitened inputs: the estimate of R is poor along directions where x_t barely varies, and
    # there the difference hardly changes the prediction. Sampling error is about 1/sqrt(n) per entry.
    assert ((denoiser - regression) @ torch.linalg.cholesky(cov_xt)).abs().max() < 0.04
    # The residual of the exact conditional mean is uncorrelated with x_t.
    residual = ef - small_gaussian.eps(x_t.float(), t).double().flatten(1)
    assert residual.mean(0).abs().max() < 0.03
    assert ((residual - residual.mean(0)).T @ xc / n).abs().max() < 0.03


@pytest.mark.parametrize("t", [0, 250, 999])
def test_gaussian_x0_is_the_exact_conditional_mean(small_gaussian, t):
    ab = small_gaussian.alphas_cumprod[t]
    cov = dense_covariance(small_gaussian)
    mean = small_gaussian.mean.reshape(-1)
    x_t = torch.randn(6, 48, dtype=torch.float64, generator=torch.Generator().manual_seed(t))
    # E[x0 | x_t] = μ + sqrt(ᾱ) Σ (ᾱ Σ + (1 - ᾱ) I)^-1 (x_t - sqrt(ᾱ) μ), solved densely.
    gram = ab * cov + (1 - ab) * torch.eye(48, dtype=torch.float64)
    expected = mean + ab.sqrt() * (cov @ torch.linalg.solve(gram, (x_t - ab.sqrt() * mean).T)).T
    x0 = small_gaussian.x0(x_t.float().reshape(6, 3, 4, 4), t).double().flatten(1)
    # float32 network; at t = 999 the division by sqrt(ᾱ) = 0.006 magnifies its rounding.
    torch.testing.assert_close(x0, expected, atol=2e-4 if t < 999 else 2e-3, rtol=1e-4)


def test_gaussian_batch_of_512_matches_single_rows():
    prior = GaussianPrior()
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(512, 3, 16, 16, generator=generator)
    t = torch.randint(0, 1000, (512,), generator=generator)
    pred = prior.predict(x, t)
    assert pred.eps.shape == (512, 3, 16, 16) and torch.isfinite(pred.x0).all()
    for i in (0, 137, 511):
        torch.testing.assert_close(pred.eps[i : i + 1], prior.eps(x[i : i + 1], int(t[i])), atol=1e-5, rtol=1e-5)
    assert prior.stats.nfe == 4


def test_gaussian_half_precision_network_returns_input_dtype():
    full, half = GaussianPrior(size=8), GaussianPrior(size=8, dtype="bf16")
    x = torch.randn(4, 3, 8, 8)
    eps_half = half.eps(x, 400)
    assert eps_half.dtype == torch.float32 and half.spec()["dtype"] == "bfloat16" and half.spec()["precision"] == "autocast"
    torch.testing.assert_close(eps_half, full.eps(x, 400), atol=0.05, rtol=0.05)


def test_gaussian_posterior_for_denoising_matches_closed_form_and_tweedie():
    prior = GaussianPrior(size=8)
    t = 300
    ab = prior.alphas_cumprod[t]
    # y = x0 + n with (2 sigma)^2 = (1 - ᾱ)/ᾱ is x_t / sqrt(ᾱ): the posterior mean is Tweedie's x0.
    sigma_y = float(((1 - ab) / ab).sqrt() / 2)
    op = DenseOperator(torch.eye(192, dtype=torch.float64), prior.image_shape)
    x_t = torch.randn(3, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    y = (x_t / ab.sqrt()).flatten(1)
    post = prior.posterior(op, y, sigma_y)
    torch.testing.assert_close(post.mean, prior.x0(x_t.float(), t).double(), atol=2e-5, rtol=1e-5)
    # Coefficient-wise in the eigenbasis: mean (λ z_y + s² z_μ)/(λ + s²), variance λ s²/(λ + s²).
    lam, s2 = prior.eigenvalues, (2 * sigma_y) ** 2
    z_y, z_mu = prior.to_basis(y.reshape(3, 3, 8, 8)), prior.to_basis(prior.mean[None])
    torch.testing.assert_close(post.mean, prior.from_basis((lam * z_y + s2 * z_mu) / (lam + s2)))
    from bench.priors.gaussian import opponent_colour_matrix

    basis = torch.kron(torch.kron(opponent_colour_matrix(3), dct_matrix(8)), dct_matrix(8))
    torch.testing.assert_close(post.covariance, basis.T @ torch.diag((lam * s2 / (lam + s2)).reshape(-1)) @ basis)


def test_gaussian_posterior_matches_monte_carlo_for_a_random_operator(small_gaussian):
    generator = torch.Generator().manual_seed(3)
    matrix = torch.randn(20, 48, generator=generator, dtype=torch.float64) / 7
    op = DenseOperator(matrix, small_gaussian.image_shape)
    sigma_y = 0.05
    n = 30000
    x = small_gaussian.sample(n, generator).double().flatten(1)
    y = x @ matrix.T + 2 * sigma_y * torch.randn(n, 20, generator=generator, dtype=torch.float64)
    post = small_gaussian.posterior(op, y, sigma_y)
    residual = x - post.mean.flatten(1)
    yc = y - y.mean(0)
    # The exact posterior mean leaves residuals with zero mean, uncorrelated with y, of covariance Σ_post.
    assert residual.mean(0).abs().max() < 0.02
    assert (residual.T @ yc / n).abs().max() < 0.02
    assert (torch.cov(residual.T) - post.covariance).norm() / post.covariance.norm() < 0.05
    # Posterior draws around one mean have the posterior covariance.
    one = small_gaussian.posterior(op, y[:1].expand(20000, -1), sigma_y)
    draws = one.sample(torch.Generator().manual_seed(4)).flatten(1)
    assert (torch.cov(draws.T) - post.covariance).norm() / post.covariance.norm() < 0.05
    assert one.std().shape == (3, 4, 4)


def test_gaussian_posterior_with_project_operators():
    operators = pytest.importorskip("operators")
    prior = GaussianPrior()
    x = prior.sample(1, torch.Generator().manual_seed(5)).double()
    sr = operators.build("sr4", shape=prior.image_shape)
    torch.testing.assert_close(prior.operator_matrix(sr) @ x.flatten(), sr.forward(x).flatten())
    # Noise-free inpainting: the posterior keeps the observed pixels exactly and is uncertain elsewhere.
    inpaint = operators.build("inpaint", shape=prior.image_shape).for_images(["img0"], seed=0)
    post = prior.posterior(inpaint, inpaint.forward(x), 0.0)
    observed = inpaint.forward(torch.ones_like(x))[0] > 0
    torch.testing.assert_close(post.mean[0][observed], x[0][observed])
    assert post.std()[observed].max() < 1e-5 and post.std()[~observed].min() > 0.05
    with pytest.raises(PriorError, match="not linear"):
        prior.posterior(operators.build("jpeg10", shape=prior.image_shape), x, 0.0)


def test_gaussian_spec_is_json_and_has_no_checkpoint():
    spec = load_prior("gaussian:8?channels=1").spec()
    assert json.loads(json.dumps(spec)) == spec
    assert spec["kind"] == "gaussian" and spec["checkpoint_sha256"] is None
    assert spec["config"]["image_shape"] == [1, 8, 8]


# ----- the spec registry -------------------------------------------------------------------------
def test_load_prior_spec_parsing_and_errors():
    assert parse_spec("adm:/a/b.pt?preset=ffhq256") == ("adm", "/a/b.pt", {"preset": "ffhq256"})
    assert parse_spec("gaussian") == ("gaussian", None, {})
    assert [pattern.split(":")[0].split("[")[0] for pattern, _ in available()] == [
        "natural64",
        "gaussian",
        "diffusers",
        "adm",
        "adm-random",
    ]
    with pytest.raises(PriorError, match="did you mean 'gaussian'"):
        load_prior("gausian")
    with pytest.raises(PriorError, match="did you mean 'channels'"):
        load_prior("gaussian?channel=1")
    with pytest.raises(PriorError, match="integer"):
        load_prior("gaussian:big")
    with pytest.raises(PriorError, match="given twice"):
        load_prior("adm:x.pt?preset=ffhq256", preset="imagenet256-uncond")
    with pytest.raises(PriorError, match="dtype"):
        load_prior("gaussian", dtype="fp8")
    with pytest.raises(PriorError, match="not found"):
        load_prior("adm:/no/such/checkpoint.pt")


def test_natural64_loads_when_shipped_and_explains_when_absent():
    own_format = (NATURAL64_DIR / "model.safetensors").is_file() and (NATURAL64_DIR / "config.json").is_file()
    shipped = own_format or (NATURAL64_DIR / "unet").is_dir()
    if not shipped:
        with pytest.raises(PriorError) as error:
            load_prior("natural64")
        message = str(error.value)
        assert "natural64" in message and "not been trained and shipped" in message
        assert "gaussian" in message and "diffusers:" in message and "adm:" in message
        return
    prior = load_prior("natural64")
    assert prior.kind == "natural64" and prior.image_shape == (3, 64, 64)
    assert len(prior.spec()["checkpoint_sha256"]) == 64
    eps = prior.eps(torch.zeros(1, 3, 64, 64), 500)
    assert eps.shape == (1, 3, 64, 64) and torch.isfinite(eps).all()


# ----- diffusers -------------------------------------------------------------------------------------
def tiny_unet(out_channels: int = 3, seed: int = 0):
    from diffusers import UNet2DModel

    torch.manual_seed(seed)
    unet = UNet2DModel(
        sample_size=8,
        in_channels=3,
        out_channels=out_channels,
        layers_per_block=1,
        block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=4,
        attention_head_dim=8,
    )
    # diffusers zero-initialises some output layers; random weights make the comparisons meaningful.
    with torch.no_grad():
        for parameter in unet.parameters():
            parameter.normal_(0.0, 0.2)
    return unet.eval()


def save_pipeline(folder: Path, unet, **scheduler_options) -> Path:
    from diffusers import DDPMPipeline, DDPMScheduler

    DDPMPipeline(unet=unet, scheduler=DDPMScheduler(**scheduler_options)).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def pipeline_folder(tmp_path_factory) -> tuple[Path, nn.Module]:
    pytest.importorskip("diffusers")
    unet = tiny_unet()
    return save_pipeline(tmp_path_factory.mktemp("pipeline"), unet), unet


def test_diffusers_prior_matches_the_unet(pipeline_folder):
    folder, unet = pipeline_folder
    prior = load_prior(f"diffusers:{folder}")
    assert prior.kind == "diffusers" and prior.image_shape == (3, 8, 8) and not prior.learned_variance
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([10, 900])
    with torch.no_grad():
        expected = unet(x, t).sample
    torch.testing.assert_close(prior.eps(x, t), expected)
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    spec = prior.spec()
    assert spec["checkpoint_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert json.loads(json.dumps(spec)) == spec and str(folder) not in json.dumps(spec)
    np.testing.assert_allclose(prior.alphas_cumprod.numpy(), np.cumprod(1 - np.linspace(1e-4, 0.02, 1000)), rtol=1e-12)
    assert all(not p.requires_grad for p in prior.network.parameters())
    # The same UNet folder on its own finds the scheduler beside it.
    bare = load_prior(f"diffusers:{folder / 'unet'}")
    torch.testing.assert_close(bare.eps(x, t), expected)


def test_diffusers_prior_refuses_missing_or_unexpected_weights(pipeline_folder, tmp_path):
    from safetensors.torch import load_file, save_file

    source, _ = pipeline_folder
    folder = tmp_path / "broken"
    shutil.copytree(source, folder)
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    state = load_file(str(weights))
    dropped = sorted(state)[5]
    del state[dropped]
    state["not_a_layer.weight"] = torch.zeros(3)
    save_file(state, str(weights))
    with pytest.raises(PriorError) as error:
        load_prior(f"diffusers:{folder}")
    assert dropped in str(error.value) and "not_a_layer.weight" in str(error.value)


def test_diffusers_prior_requires_epsilon_prediction(pipeline_folder, tmp_path):
    source, _ = pipeline_folder
    folder = tmp_path / "vpred"
    shutil.copytree(source, folder)
    config_path = folder / "scheduler" / "scheduler_config.json"
    config = json.loads(config_path.read_text())
    config["prediction_type"] = "v_prediction"
    config_path.write_text(json.dumps(config))
    with pytest.raises(PriorError, match="'epsilon'"):
        load_prior(f"diffusers:{folder}")


def test_diffusers_prior_learned_range_variance(tmp_path):
    pytest.importorskip("diffusers")
    unet = tiny_unet(out_channels=6, seed=1)
    folder = save_pipeline(tmp_path / "learned", unet, variance_type="learned_range")
    prior = load_prior(f"diffusers:{folder}")
    assert prior.learned_variance
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([3, 700])
    with torch.no_grad():
        raw = unet(x, t).sample
    pred = prior.predict(x, t)
    torch.testing.assert_close(pred.eps, raw[:, :3])
    frac = (raw[:, 3:] + 1) / 2
    post = prior.q_posterior(t)
    torch.testing.assert_close(pred.log_variance, frac * post.beta.log() + (1 - frac) * post.log_variance)
    # A 6-channel UNet declared as fixed variance is an error, not a silent misreading.
    shutil.copytree(folder, tmp_path / "mislabelled")
    config_path = tmp_path / "mislabelled" / "scheduler" / "scheduler_config.json"
    config_path.write_text(json.dumps({**json.loads(config_path.read_text()), "variance_type": "fixed_small"}))
    with pytest.raises(PriorError, match="learned_range"):
        load_prior(f"diffusers:{tmp_path / 'mislabelled'}")


@pytest.mark.parametrize(
    "options",
    [
        {"beta_schedule": "linear"},
        {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012},
        {"beta_schedule": "squaredcos_cap_v2"},
    ],
)
def test_diffusers_betas_match_ddpm_scheduler(options):
    diffusers = pytest.importorskip("diffusers")
    from bench.priors.hf import betas_from_scheduler_config

    reference = diffusers.DDPMScheduler(**options)
    betas, learned, schedule = betas_from_scheduler_config(dict(reference.config))
    assert not learned and schedule["beta_schedule"] == options["beta_schedule"]
    torch.testing.assert_close(betas.float(), reference.betas, atol=1e-7, rtol=1e-5)


def test_diffusers_hub_id_offline_explains_how_to_download(monkeypatch, tmp_path):
    pytest.importorskip("huggingface_hub")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)  # so that the hub id cannot be mistaken for a local folder
    with pytest.raises(PriorError) as error:
        load_prior("diffusers:no-such-org/no-such-ddpm-model")
    assert "hf download no-such-org/no-such-ddpm-model --local-dir" in str(error.value)


def test_save_unet_round_trip_is_strict(tmp_path):
    pytest.importorskip("diffusers")
    from safetensors.torch import load_file, save_file

    unet = tiny_unet(seed=2)
    folder = save_unet(unet, tmp_path / "own", info={"trained_on": "test"})
    loaded, config = load_unet(folder)
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, torch.tensor([7])).sample, unet(x, torch.tensor([7])).sample)
    assert config["scheduler"]["beta_schedule"] == "linear" and config["info"] == {"trained_on": "test"}
    prior = load_prior(f"diffusers:{folder}")
    assert prior.spec()["checkpoint_sha256"] == hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()

    state = load_file(str(folder / "model.safetensors"))
    dropped = sorted(state)[0]
    save_file({k: v for k, v in state.items() if k != dropped}, str(folder / "model.safetensors"))
    with pytest.raises(PriorError, match=f"missing keys: {dropped}"):
        load_unet(folder)
    save_file({**state, "extra.bias": torch.zeros(1)}, str(folder / "model.safetensors"))
    with pytest.raises(PriorError, match="unexpected keys: extra.bias"):
        load_unet(folder)
    with pytest.raises(PriorError, match="'epsilon'"):
        save_unet(unet, tmp_path / "other", scheduler={"prediction_type": "sample"})


# ----- ADM -----------------------------------------------------------------------------------------
def test_adm_prior_round_trip(tmp_path):
    adm = pytest.importorskip("bench.priors.adm")
    from bench.priors.adm_prior import load_adm_prior

    config = adm.ADMConfig(
        image_size=16,
        model_channels=32,
        num_res_blocks=1,
        attention_resolutions=(8,),
        channel_mult=(1, 2),
        num_head_channels=32,
    )
    torch.manual_seed(0)
    network = adm.ADMUNet(config)
    with torch.no_grad():
        for parameter in network.parameters():
            parameter.normal_(0.0, 0.05)  # the output layer starts at zero; random weights make outputs informative
    path = tmp_path / "tiny_adm.pt"
    torch.save(network.state_dict(), path)
    prior = load_adm_prior(path, config)
    assert prior.kind == "adm" and prior.learned_variance and prior.image_shape == (3, 16, 16)
    x = torch.randn(2, 3, 16, 16)
    t = torch.tensor([0, 999])
    with torch.no_grad():
        raw = network.eval()(x, t)
    pred = prior.predict(x, t)
    torch.testing.assert_close(pred.eps, raw[:, :3])
    frac = (raw[:, 3:] + 1) / 2
    post = prior.q_posterior(t)
    torch.testing.assert_close(pred.log_variance, frac * post.beta.log() + (1 - frac) * post.log_variance)
    assert prior.spec()["checkpoint_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert prior.spec()["config"]["schedule"]["beta_end"] == 0.02
    # Through the spec: the named preset's architecture does not match the tiny checkpoint.
    with pytest.raises(ValueError, match="missing key"):
        load_prior(f"adm:{path}?preset=ffhq256")
    with pytest.raises(ValueError, match="ffhq256"):
        load_prior(f"adm:{path}", preset="ffhq")


@pytest.mark.parametrize("layout", ["save_unet", "pipeline"])
def test_natural64_reads_either_shipping_layout(monkeypatch, tmp_path, layout):
    pytest.importorskip("diffusers")
    import bench.priors

    unet = tiny_unet(seed=3)
    folder = tmp_path / "natural64"
    if layout == "save_unet":
        save_unet(unet, folder)
    else:
        save_pipeline(folder, unet)
    monkeypatch.setattr(bench.priors, "NATURAL64_DIR", folder)
    prior = load_prior("natural64")
    assert prior.kind == "natural64" and prior.spec()["kind"] == "natural64"
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(prior.eps(x, 250), unet(x, torch.tensor([250])).sample)


# ----- mixed precision and runtime options -------------------------------------------------------------
def small_adm_prior(**kwargs) -> Prior:
    """A random 32x32 ADM (two levels, attention at 16x16) as a prior: the ADM code path at test speed."""
    from bench.priors.adm import ADMConfig, random_adm

    config = ADMConfig(
        image_size=32, model_channels=32, num_res_blocks=1, attention_resolutions=(16,), channel_mult=(1, 2),
        num_head_channels=16,
    )  # fmt: skip
    network = random_adm(config, seed=7)
    return Prior(
        network, linear_betas(), (3, 32, 32), kind="adm-random", config={"test": 1}, learned_variance=True, **kwargs
    )


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_low_precision_runs_the_network_under_autocast_and_the_schedule_in_float32(dtype):
    full, low = small_adm_prior(), small_adm_prior(dtype=dtype)
    assert all(p.dtype == torch.float32 for p in low.network.parameters())  # weights are never cast
    inside: list[torch.dtype] = []
    low.network.input_blocks[1].register_forward_hook(lambda module, args, out: inside.append(out.dtype))
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([30, 950])
    with torch.no_grad():
        reference, mixed = full.predict(x, t), low.predict(x, t)
    assert inside == [low.dtype]  # the convolutions ran in low precision
    assert mixed.eps.dtype == mixed.x0.dtype == mixed.log_variance.dtype == torch.float32
    error = (mixed.eps - reference.eps).abs().max() / reference.eps.abs().max()
    assert 0 < error < 0.05
    # x̂₀ is the float32 formula applied to the network's ε̂: no low-precision rounding after the network,
    # where 1/√ᾱ (≈ 160 at t = 950) would amplify it.
    torch.testing.assert_close(mixed.x0, full.x0_from_eps(x, t, mixed.eps), rtol=0, atol=0)
    assert low.spec()["dtype"] != full.spec()["dtype"]


def test_network_precision_is_the_context_the_network_runs_in():
    assert not torch.is_autocast_enabled("cpu")
    with small_adm_prior(dtype="bf16").network_precision():
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    with small_adm_prior().network_precision():
        assert not torch.is_autocast_enabled("cpu")


def test_channels_last_gives_the_same_eps_and_is_recorded_in_the_spec():
    plain, nhwc = small_adm_prior(), small_adm_prior().configure(channels_last=True)
    assert nhwc.network.input_blocks[0][0].weight.is_contiguous(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(nhwc.eps(x, 400), plain.eps(x, 400), rtol=1e-5, atol=1e-5)
    assert nhwc.spec()["channels_last"] is True and "channels_last" not in plain.spec()


def test_checkpointing_leaves_prior_gradients_unchanged():
    plain, checkpointed = small_adm_prior(), small_adm_prior().configure(checkpointing=True)
    assert checkpointed.gradient_checkpointing and not plain.gradient_checkpointing
    assert checkpointed.spec() == plain.spec()  # same arithmetic, so the same results

    def gradient(prior):
        x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2)).requires_grad_(True)
        prior.predict(x, 600).x0.square().sum().backward()
        return x.grad

    torch.testing.assert_close(gradient(checkpointed), gradient(plain), rtol=1e-5, atol=1e-6)
    assert checkpointed.stats.backward_seconds > 0


def test_runtime_options_from_spec_or_keyword_agree_and_bad_values_are_clear():
    assert load_prior("adm-random:tiny?compile=1").spec()["compile"] is True
    assert load_prior("adm-random:tiny", compile=True).spec()["compile"] is True
    assert "compile" not in load_prior("adm-random:tiny", compile=False).spec()
    assert load_prior("adm-random:tiny?compile=true", compile=True).compiled
    with pytest.raises(PriorError, match="given twice"):
        load_prior("adm-random:tiny?compile=1", compile=False)
    with pytest.raises(PriorError, match="must be 1 or 0"):
        load_prior("gaussian?channels_last=maybe")
    with pytest.raises(PriorError, match="no gradient checkpointing"):
        load_prior("gaussian", checkpointing=True)
    assert load_prior("adm-random:tiny?checkpointing=1").gradient_checkpointing


def test_adm_random_spec_names_architecture_seed_and_attention():
    prior = load_prior("adm-random:tiny?seed=3&attention=legacy")
    spec = prior.spec()
    assert spec["kind"] == "adm-random" and spec["checkpoint_sha256"] is None
    assert spec["config"]["weights"] == "random (seed 3)" and spec["config"]["attention"] == "legacy"
    assert prior.image_shape == (3, 256, 256) and prior.learned_variance
    assert "attention" not in load_prior("adm-random:tiny").spec()["config"]
    with pytest.raises(PriorError, match="available: imagenet256"):
        load_prior("adm-random:imagenet512")
    with pytest.raises(PriorError, match="needs an architecture"):
        load_prior("adm-random")
    with pytest.raises(PriorError, match="seed"):
        load_prior("adm-random:tiny?seed=-1")
    with pytest.raises(PriorError, match="unknown attention"):
        load_prior("adm-random:tiny?attention=flash")


@pytest.mark.slow
def test_compiled_network_gives_the_same_eps():
    """torch.compile through inductor: seconds with a warm compile cache, minutes on a cold one (one CPU core)."""
    eager, compiled = small_adm_prior(), small_adm_prior().configure(compile=True)
    state = compiled.network.state_dict()
    assert list(state) == list(eager.network.state_dict())  # compiled in place: checkpoint keys unchanged
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        reference = eager.eps(x, 250)
        try:
            out = compiled.eps(x, 250)
        except Exception as error:  # inductor needs a C++ compiler; its failures come in many types
            pytest.skip(f"torch.compile is unavailable here: {type(error).__name__}: {str(error)[:200]}")
    torch.testing.assert_close(out, reference, rtol=1e-4, atol=1e-4)
    assert compiled.spec()["compile"] is True and compiled.stats.nfe == 1
