"""`bench validate` against solvers whose verdicts are known: an exact posterior sampler (it must pass every
check), the same sampler reading σ as the noise std instead of 2σ, DDNM sharing one generator across the batch,
a solver touching a capability it does not declare, one miscounting its NFE, and every built-in solver."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import operators
import solvers
from bench.tools.validate import CONVENTION_BAND, format_report, validate
from operators import Cap
from solvers import Solver, SolverConfig, SolverError
from solvers.ddnm import DDNM

REPO = Path(__file__).resolve().parents[1]


@dataclasses.dataclass(frozen=True)
class ExactConfig(SolverConfig):
    noise_scale: float = 2.0  # noise std on [-1, 1] per unit of σ: the project's convention is 2


class ExactPosterior(Solver):
    """One exact draw per image from the Gaussian prior's posterior, each from its own generator."""

    name = "exact-posterior"
    Config = ExactConfig
    requires = frozenset({Cap.FORWARD})
    summary = "exact posterior draws of the Gaussian prior (a reference for bench validate)"

    def nfe(self) -> int:
        return 0

    def solve(self, y, op, prior, *, sigma, generators, callback=None):
        if not hasattr(prior, "covariance"):
            raise SolverError(f"{self.name} needs the analytic Gaussian prior ('gaussian:16')")
        batch, shape = y.shape[0], prior.image_shape
        pixels = math.prod(shape)
        basis = torch.eye(pixels, dtype=torch.float32).reshape(pixels, *shape)
        with torch.no_grad():  # column j of image b's matrix: A_b e_j (masks may differ between images)
            matrices = torch.stack([op.forward(e.expand(batch, *shape)).double().reshape(batch, -1) for e in basis], 2)
        covariance, mean = prior.covariance(), prior.mean.reshape(-1)
        noise_var = (self.config.noise_scale * sigma) ** 2
        draws, cache = [], {}
        for b in range(batch):
            observed = matrices[b].abs().amax(1) > 0
            a = matrices[b][observed]
            key = a.numpy().tobytes()
            if key not in cache:
                cross = covariance @ a.T
                gain = cross @ torch.linalg.pinv(a @ cross + noise_var * torch.eye(a.shape[0]), hermitian=True)
                posterior = covariance - gain @ cross.T
                values, vectors = torch.linalg.eigh(0.5 * (posterior + posterior.T))
                cache[key] = (a, gain, vectors * values.clamp_min(0).sqrt())
            a, gain, factor = cache[key]
            z = torch.randn(pixels, generator=generators[b], dtype=torch.float64)
            y_b = y[b].double().reshape(-1)[observed]
            draws.append(mean + gain @ (y_b - a @ mean) + factor @ z)
        return torch.stack(draws).reshape(batch, *shape).to(prior.device, torch.float32)


class SharedGeneratorDDNM(DDNM):
    """DDNM drawing every image's randomness from generators[0]: image b then depends on the batch."""

    name = "ddnm-shared-generator"

    def solve(self, y, op, prior, *, sigma, generators, callback=None):
        shared = [generators[0]] * len(generators)
        return super().solve(y, op, prior, sigma=sigma, generators=shared, callback=callback)


class UndeclaredAdjoint(ExactPosterior):
    """Declares forward only, then calls the adjoint."""

    name = "undeclared-adjoint"

    def solve(self, y, op, prior, *, sigma, generators, callback=None):
        op.adjoint(y)
        return super().solve(y, op, prior, sigma=sigma, generators=generators, callback=callback)


class MiscountedNFE(ExactPosterior):
    """Declares 3 prior calls per image and makes one."""

    name = "miscounted-nfe"

    def nfe(self) -> int:
        return 3

    def solve(self, y, op, prior, *, sigma, generators, callback=None):
        prior.predict(torch.zeros(y.shape[0], *prior.image_shape, device=prior.device), 500)
        return super().solve(y, op, prior, sigma=sigma, generators=generators, callback=callback)


def failed_checks(report) -> set[str]:
    return {item.split(" ", 1)[0].rstrip(":") for item in report.failures()}


@pytest.fixture(scope="module")
def exact_report():
    return validate("exact-posterior", solver_class=ExactPosterior)


@pytest.mark.slow
def test_an_exact_posterior_sampler_passes_every_check(exact_report):
    report = exact_report
    assert report.failures() == [], format_report(report)
    ran = [c for c in report.cases if c.status == "ok"]
    linear = [t for t in operators.available() if operators.build(t, shape=(3, 16, 16)).linear]
    assert {"sr4", "sr8", "gblur", "inpaint", "denoise"} <= set(linear)
    assert {(c.task, c.sigma) for c in ran} == {(t, s) for t in linear for s in (0.0, 0.05)}
    assert all(c.checks[name].passed for c in ran for name in ("output", "per-image", "determinism", "capabilities"))
    # It samples the posterior exactly, so its figures are the exact sampler's up to Monte-Carlo noise (both N = 8).
    for case in ran:
        pair = case.figures["resid"]
        if case.sigma > 0:
            assert 0.6 < pair["solver"] < 1.7 and 0.6 < pair["exact"] < 1.7, case.task
    assert report.convention.passed is True, report.convention.detail
    low, high = CONVENTION_BAND
    assert low <= report.convention_figures["solver_scale"] <= high
    assert report.convention_figures["J_2sigma"] <= report.convention_figures["limit"]
    jpeg = [c for c in report.cases if c.task == "jpeg10"]
    assert jpeg and all(c.status == "skipped" and "not linear" in c.reason for c in jpeg)


@pytest.mark.slow
def test_reading_sigma_as_the_noise_std_fails_the_noise_convention():
    # gblur and denoise: the tasks whose posterior mean moves most with the noise level
    report = validate("exact-posterior", {"noise_scale": "1"}, solver_class=ExactPosterior, tasks=["gblur", "denoise"])
    assert failed_checks(report) == {"noise-convention"}, format_report(report)
    figures = report.convention_figures
    assert 0.4 < figures["solver_scale"] < CONVENTION_BAND[0]  # it reads noise std σ: half of 2σ
    assert figures["J_2sigma"] > figures["limit"] >= figures["J_best"]
    assert "σ is misread" in report.convention.detail


@pytest.mark.slow
def test_sharing_one_generator_across_the_batch_fails_per_image():
    report = validate("ddnm-shared-generator", {"steps": "10"}, solver_class=SharedGeneratorDDNM, draws=4)
    assert "per-image" in failed_checks(report), format_report(report)
    # Where A is invertible, noise-free DDNM returns A⁺y whatever it draws (denoising; a motion blur whose
    # kernel keeps every frequency at 16×16), so sharing is harmless there; elsewhere it is caught.
    def invertible(task: str) -> bool:
        op = operators.build(task, shape=(3, 16, 16)).for_images(["q"], 0)
        x = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
        return bool(op.supports(Cap.PINV) and torch.allclose(op.pinv(op(x)), x, atol=1e-4))

    shared = [c for c in report.cases if c.status == "ok" and not (c.sigma == 0 and invertible(c.task))]
    assert shared and all(c.checks["per-image"].passed is False for c in shared), format_report(report)
    assert all(c.checks["determinism"].passed for c in report.cases if c.status == "ok")


def test_an_undeclared_capability_and_a_wrong_nfe_are_named():
    report = validate("undeclared-adjoint", solver_class=UndeclaredAdjoint, tasks=["sr4"], draws=4)
    assert failed_checks(report) >= {"capabilities"}
    assert "used adjoint of 'sr4' but declares only forward" in "\n".join(report.failures())
    report = validate("miscounted-nfe", solver_class=MiscountedNFE, sigmas=(0.0,), tasks=["sr4", "denoise"], draws=4)
    assert failed_checks(report) == {"nfe"}, format_report(report)
    assert all(c.checks["nfe"].detail == "declared 3, counted 1" for c in report.cases if c.status == "ok")


# Built-ins that probe `op.supports(...)` declare what they take where it is offered in `uses_when_available`
# (ΠGDM's likelihood step and RED-diff's count of measured entries: svd; PnP-ADMM: pinv and svd), so none is
# undeclared; `UndeclaredAdjoint` above shows that validate names an undeclared use.


def quick_options(name: str) -> dict[str, str]:
    """Fewer steps for the plumbing: the contract does not depend on the step count."""
    fields = {f.name for f in dataclasses.fields(solvers.get(name).Config)}
    options = {key: "10" for key in ("steps", "iterations", "nfe") if key in fields and name not in ("ddc", "ddc-nolpips")}
    # inner loops and particle clouds small too: DAPS's 100 Langevin steps per level, MCGDiff's 64 particles
    options |= {key: value for key, value in (("ode_steps", "2"), ("langevin_steps", "5"), ("particles", "8")) if key in fields}
    return options


@pytest.mark.slow
@pytest.mark.parametrize("name", solvers.available())
def test_every_builtin_solver_passes_validate_or_says_why_not(name):
    report = validate(name, quick_options(name), draws=8)
    if report.unsupported:
        assert all(not c.checks for c in report.cases)
        return
    ran = [c for c in report.cases if c.status == "ok"]
    for case in report.cases:
        if case.status == "unsupported":  # no trained weights for 16×16 (bridges), or a capability it lacks
            assert case.reason, case
    assert not failed_checks(report), format_report(report)
    if ran:
        assert report.convention.passed is not False
        assert all(c.checks["nfe"].passed for c in ran if "nfe" in c.checks)


@pytest.mark.slow
def test_the_command_line_exits_1_naming_the_failed_check_and_writes_json(tmp_path):
    module = tmp_path / "halfnoise.py"
    module.write_text(
        "from test_validate import ExactPosterior\n\nclass HalfNoise(ExactPosterior):\n    name = 'half-noise'\n"
    )
    env_path = f"{tmp_path}:{REPO / 'tests'}"
    command = [sys.executable, "-m", "bench", "validate", "halfnoise:HalfNoise", "--set", "half-noise.noise_scale=1"]
    command += ["--tasks", "gblur,denoise"]
    out = tmp_path / "report.json"
    done = subprocess.run(
        [*command, "--json", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": env_path, "OMP_NUM_THREADS": "1"},
        timeout=600,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "FAILED noise-convention" in done.stdout and "σ is misread" in done.stdout
    record = json.loads(out.read_text())
    assert record["solver"] == "half-noise" and record["config"] == {"noise_scale": 1.0}
    assert record["passed"] is False and record["failures"][0].startswith("noise-convention")
    assert record["noise_convention"]["passed"] is False
    bad = subprocess.run(
        [*command[:4], "halfnoise:HalfNoise", "--set", "ddrm.steps=3"],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": env_path},
        timeout=120,
    )
    assert bad.returncode == 2 and "names solver 'ddrm', but validate runs 'half-noise'" in bad.stderr


def test_eigenbasis_w2_is_the_gaussian_w2_when_the_draws_share_the_posteriors_axes():
    """Draws whose covariance is diagonal in the posterior's eigenbasis: the closed form of the Gaussian W2 (scipy's
    matrix square roots) equals the eigenbasis figure; an exact sampler's figure falls as draws grow; a point
    estimate at the mean scores the posterior's whole spread."""
    import numpy as np
    from scipy.linalg import sqrtm

    from bench.tools.validate import eigenbasis_w2

    rng = np.random.default_rng(0)
    basis, _ = np.linalg.qr(rng.normal(size=(4, 4)))
    eigenvalues = np.array([4.0, 1.0, 0.25, 0.04])
    covariance, mean = basis @ np.diag(eigenvalues) @ basis.T, rng.normal(size=4)
    # ±a_i along each axis: the centred draws' covariance is diag(a_i² · 2/(n − 1)) in that basis, exactly
    scales = np.array([1.5, 0.7, 0.9, 0.1])
    draws = np.concatenate([+scales[:, None] * basis.T, -scales[:, None] * basis.T]) + mean + 0.2
    fitted_mean, fitted = draws.mean(0), np.cov(draws, rowvar=False)
    root = sqrtm(covariance).real
    closed = np.sqrt(np.sum((fitted_mean - mean) ** 2) + np.trace(fitted) + np.trace(covariance)
                     - 2 * np.trace(sqrtm(root @ fitted @ root).real))  # fmt: skip
    as_tensor = [torch.from_numpy(a) for a in (draws, mean, covariance)]
    assert eigenbasis_w2(*as_tensor) == pytest.approx(closed, rel=1e-6)
    exact = [np.random.default_rng(1).multivariate_normal(mean, covariance, size=n) for n in (16, 4096)]
    floors = [eigenbasis_w2(torch.from_numpy(x), *as_tensor[1:]) for x in exact]
    assert floors[1] < floors[0] / 4 and floors[1] < 0.05 * np.sqrt(eigenvalues.sum())
    point = torch.from_numpy(np.repeat(mean[None], 8, axis=0))
    assert eigenbasis_w2(point, *as_tensor[1:]) == pytest.approx(np.sqrt(eigenvalues.sum()))  # the whole spread
