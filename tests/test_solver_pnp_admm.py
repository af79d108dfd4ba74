"""PnP-ADMM with the Gaussian prior's exact denoiser (its fixed point is the exact posterior mean), the
data step (SVD closed form = conjugate gradients), and the DnCNN loading path with a tiny random network."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

import operators
import solvers
from bench.priors import load_prior
from operators import Cap, Operator
from solvers.base import SolverError
from solvers.pnp_admm import DnCNN, PnPADMM, data_step
from solvers.pnp_admm.train import save_denoiser

SHAPE = (3, 16, 16)
IDS = ["a", "b", "c", "d"]


@pytest.fixture(scope="module")
def prior():
    return load_prior("gaussian")


def exact_denoiser(prior):
    """The Gaussian prior's MMSE (= MAP) denoiser for x + n, n ~ N(0, (2σ_D)² I) on [-1, 1]: per eigen-coefficient
    μ + λ/(λ + (2σ_D)²) (x - μ)."""
    mean, eigenvalues = prior.mean, prior.eigenvalues

    def denoise(x: Tensor, sigma: float) -> Tensor:
        shrink = eigenvalues / (eigenvalues + (2.0 * sigma) ** 2)
        return (mean + prior.from_basis(shrink * prior.to_basis(x.double() - mean))).to(x.dtype)

    return denoise


def _problem(prior, task: str, sigma: float):
    """(op for the 4 images, y, exact posterior means (4, C, H, W), truth)."""
    op = operators.build(task, shape=SHAPE).for_images(IDS, seed=0)
    truth = prior.sample(4, torch.Generator().manual_seed(1))
    y = op.measure(truth, sigma, operators.image_generators(0, IDS, "noise"))
    means = [
        prior.posterior(operators.build(task, shape=SHAPE).for_images([i], seed=0), y[k : k + 1], sigma).mean
        for k, i in enumerate(IDS)
    ]
    return op, y, torch.cat(means), truth


def _generators(n: int) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(i) for i in range(n)]


# Squared error to the exact posterior mean (clamped to [-1, 1], as the output is) relative to the prior
# mean's, after 200 iterations at the default ρ. Measured: sr4/0 1.1e-7, sr4/0.05 1e-13, sr8/0.05 2.7e-8,
# gblur/0.05 9e-14, inpaint/0 1.5e-5, inpaint/0.05 1.9e-5, denoise/0.05 8e-15 (inpainting converges slowest;
# at σ = 0 the 8-bit noise floor of the data term leaves a small gap to the noiseless posterior).
CONVERGED = {
    ("sr4", 0.0): 1e-5,
    ("sr4", 0.05): 1e-6,
    ("sr8", 0.05): 1e-6,
    ("gblur", 0.05): 1e-6,
    ("inpaint", 0.0): 2e-4,
    ("inpaint", 0.05): 2e-4,
    ("denoise", 0.05): 1e-6,
}


@pytest.mark.parametrize(("task", "sigma"), list(CONVERGED))
def test_pnp_admm_fixed_point_is_the_exact_posterior_mean(prior, task, sigma):
    op, y, exact, _ = _problem(prior, task, sigma)
    solver = PnPADMM(denoiser_fn=exact_denoiser(prior), iterations=200)
    estimate = solver.reconstruct(y, op, prior, sigma=sigma, generators=_generators(4))
    target = exact.clamp(-1, 1)
    prior_mean = prior.mean.float()[None]
    ratio = float(((estimate - target) ** 2).sum() / ((prior_mean - target) ** 2).sum())
    assert ratio < CONVERGED[(task, sigma)], f"{task} σ={sigma}: squared-error ratio {ratio:.2e}"


# Default settings (ρ = 8, 10 iterations): error to the truth relative to the better of the prior mean
# and A⁺y. Measured: sr4 0.90, gblur 0.68, inpaint 0.82, denoise 0.79.
@pytest.mark.parametrize(("task", "bound"), [("sr4", 0.95), ("gblur", 0.78), ("inpaint", 0.9), ("denoise", 0.88)])
def test_pnp_admm_defaults_beat_prior_mean_and_pseudo_inverse(prior, task, bound):
    op, y, _, truth = _problem(prior, task, 0.05)
    estimate = PnPADMM(denoiser_fn=exact_denoiser(prior)).reconstruct(y, op, prior, sigma=0.05, generators=_generators(4))
    error = float(((estimate - truth) ** 2).mean())
    baseline = min(float(((prior.mean.float()[None] - truth) ** 2).mean()), float(((op.pinv(y) - truth) ** 2).mean()))
    assert error < bound * baseline, f"{task}: error {error:.4f} vs baseline {baseline:.4f}"


class _WithoutSVD(Operator):
    """The same linear operator offering only forward and adjoint, so the data step must use CG."""

    capabilities = frozenset({Cap.FORWARD, Cap.ADJOINT})

    def __init__(self, inner: Operator):
        super().__init__(inner.input_shape)
        self.inner, self.task = inner, inner.task

    @property
    def measurement_shape(self):
        return self.inner.measurement_shape

    def _forward(self, x):
        return self.inner(x)

    def _adjoint(self, y):
        return self.inner.adjoint(y)


@pytest.mark.parametrize("task", ["gblur", "sr4", "inpaint"])
def test_pnp_admm_conjugate_gradients_equal_svd_closed_form(prior, task):
    op = operators.build(task, shape=SHAPE).for_images(IDS, seed=0)
    y = op.measure(prior.sample(4, torch.Generator().manual_seed(2)), 0.05, operators.image_generators(0, IDS, "n"))
    v = prior.sample(4, torch.Generator().manual_seed(3))
    weight = 8.0 * 0.1**2
    closed = data_step(y, op, v, weight)
    iterative = data_step(y, _WithoutSVD(op), v, weight, cg_iterations=500, cg_tolerance=1e-7)
    torch.testing.assert_close(iterative, closed, rtol=1e-4, atol=1e-4)
    # The closed form solves the normal equations (AᵀA + w I) x = Aᵀy + w v.
    torch.testing.assert_close(
        op.adjoint(op(closed)) + weight * closed, op.adjoint(y) + weight * v, rtol=1e-4, atol=1e-4
    )


def test_pnp_admm_image_result_does_not_depend_on_batch(prior):
    for wrap in (lambda o: o, _WithoutSVD):
        op = wrap(operators.build("inpaint", shape=SHAPE).for_images(IDS, seed=0))
        y = op(prior.sample(4, torch.Generator().manual_seed(4)))
        solver = PnPADMM(denoiser_fn=exact_denoiser(prior))
        batch = solver.reconstruct(y, op, prior, sigma=0.05, generators=_generators(4))
        alone_op = wrap(operators.build("inpaint", shape=SHAPE).for_images(["c"], seed=0))
        alone = solver.reconstruct(y[2:3], alone_op, prior, sigma=0.05, generators=_generators(1))
        torch.testing.assert_close(batch[2:3], alone, rtol=1e-5, atol=1e-5)


def test_pnp_admm_loads_a_saved_dncnn(prior, tmp_path):
    """A tiny random DnCNN saved with save_denoiser is loaded strictly and used as the z-step."""
    torch.manual_seed(0)
    network = DnCNN(channels=3, depth=3, features=8).eval()
    save_denoiser(network, tmp_path, {"note": "random test network"})
    op = operators.build("sr4", shape=SHAPE)
    y = op(prior.sample(2, torch.Generator().manual_seed(5)))
    solver = solvers.build("pnp-admm", denoiser=str(tmp_path), iterations=1)
    estimate = solver.reconstruct(y, op, prior, sigma=0.05, generators=_generators(2))
    # One iteration by hand: x = data step from z = A⁺y, u = 0; z = DnCNN(x).
    with torch.no_grad():
        x = data_step(y, op, op.pinv(y), 8.0 * 0.1**2)
        expected = network(x).clamp(-1, 1)
    torch.testing.assert_close(estimate, expected, rtol=1e-5, atol=1e-5)
    assert len(solver.spec()["denoiser_sha256"]) == 64


def test_pnp_admm_missing_or_broken_denoiser_is_a_clear_error(prior, tmp_path):
    op = operators.build("sr4", shape=SHAPE)
    y = op(prior.sample(1))
    with pytest.raises(SolverError, match="python -m bench train-denoiser"):
        solvers.build("pnp-admm", denoiser=str(tmp_path / "nowhere")).reconstruct(
            y, op, prior, sigma=0.05, generators=_generators(1)
        )
    network = DnCNN(channels=3, depth=3, features=8)
    save_denoiser(network, tmp_path, {})
    from safetensors.torch import load_file, save_file

    state = load_file(tmp_path / "model.safetensors")
    state.pop(next(iter(state)))
    save_file(state, tmp_path / "model.safetensors")
    with pytest.raises(SolverError, match="missing keys"):
        solvers.build("pnp-admm", denoiser=str(tmp_path)).reconstruct(y, op, prior, sigma=0.05, generators=_generators(1))


def test_pnp_admm_declares_needs_and_rejects_bad_configuration():
    solver = solvers.build("pnp-admm")
    assert not solver.backprop_through_network
    assert "adjoint" in solver.unsupported(operators.build("jpeg10", shape=SHAPE), 0.0)
    assert solver.unsupported(operators.build("gblur", shape=SHAPE), 0.05) is None
    with pytest.raises(SolverError, match="rho must be a finite number > 0"):
        solvers.build("pnp-admm", rho=0.0)
    with pytest.raises(SolverError, match="iterations must be a positive integer"):
        solvers.build("pnp-admm", iterations="0")
    with pytest.raises(SolverError, match="did you mean 'rho'"):
        solvers.build("pnp-admm", rh=1.0)
    assert PnPADMM(denoiser_fn=exact_denoiser).spec()["denoiser"] == "callable:exact_denoiser"
