"""CDDB and I²SB: the bridge schedule, exact sampling on a Gaussian case, the data-consistency step, bridges."""

from __future__ import annotations

import json
import math
import types
from pathlib import Path

import numpy as np
import pytest
import torch

import operators
import solvers
from bench.training import TrainConfig
from solvers.cddb import ASSETS, CDDB
from solvers.cddb.network import load_bridge
from solvers.cddb.schedule import BridgeSchedule
from solvers.cddb.train import degraded_image, train_bridge

CPU = types.SimpleNamespace(device=torch.device("cpu"))


def generators(n: int, offset: int = 0) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(offset + i) for i in range(n)]


# ----- the schedule ------------------------------------------------------------------------------------------
def test_schedule_is_i2sb_symmetric_sqrt_linear_betas_with_accumulated_variances():
    schedule = BridgeSchedule(steps=1000, beta_max=0.3)
    half = np.linspace(1e-4**0.5, (0.3 / 1000) ** 0.5, 1000) ** 2
    expected = np.concatenate([half[:500], half[:500][::-1]])
    np.testing.assert_allclose(schedule.betas.numpy(), expected, rtol=1e-12)
    np.testing.assert_allclose(schedule.sigma2.numpy(), np.cumsum(expected), rtol=1e-12)
    np.testing.assert_allclose(schedule.sigma_bar2.numpy(), np.cumsum(expected[::-1])[::-1], rtol=1e-12)
    w0, w1, std = schedule.marginal(torch.tensor([0, 499, 999]))
    assert w0[0] > 0.999 and w1[2] > 0.999  # x₀ at step 0, x₁ at the last step
    assert abs(float(w0[1]) - 0.5) < 0.01 and abs(float(w0[1] + w1[1]) - 1) < 1e-12
    # the bridge's spread peaks in the middle and vanishes at both ends
    assert float(std[1]) > 10 * max(float(std[0]), float(std[2]))


def test_sampling_steps_are_i2sb_space_indices():
    schedule = BridgeSchedule()
    steps = schedule.sampling_steps(100)
    assert len(steps) == 101 and steps[0] == 0 and steps[-1] == 999
    assert steps[50] == 500
    # I²SB accumulates the stride; at NFE 20 that reaches 499.4999… at i = 10, where 10 · 49.95 rounds to 500
    assert schedule.sampling_steps(20)[10] == 499
    assert all(b > a for a, b in zip(steps, steps[1:], strict=False))
    assert schedule.sampling_steps(999) == list(range(1000))
    with pytest.raises(ValueError, match="NFE"):
        schedule.sampling_steps(1000)


def test_marginal_sampler_matches_its_closed_form_by_monte_carlo():
    schedule = BridgeSchedule()
    g = torch.Generator().manual_seed(0)
    x0, x1 = torch.full((20000, 1), -0.5, dtype=torch.float64), torch.full((20000, 1), 0.7, dtype=torch.float64)
    for n in (10, 300, 700):
        steps = torch.full((20000,), n)
        x_n = schedule.sample_marginal(x0, x1, steps, torch.randn(x0.shape, generator=g, dtype=torch.float64))
        s2, sb2 = float(schedule.sigma2[n]), float(schedule.sigma_bar2[n])
        mean = (sb2 * -0.5 + s2 * 0.7) / (s2 + sb2)
        var = s2 * sb2 / (s2 + sb2)
        assert abs(float(x_n.mean()) - mean) < 4 * math.sqrt(var / 20000)
        assert abs(float(x_n.var()) / var - 1) < 0.05


def test_posterior_of_the_marginal_is_the_earlier_marginal():
    """x_n ~ q(x_n | x₀, x₁), then x_m ~ p(x_m | x_n, x₀): the result follows q(x_m | x₀, x₁). (I²SB's σ̄ counts
    β_n on both sides, so the two agree to the order of one β over the total, here well under 1%.)"""
    schedule = BridgeSchedule()
    g = torch.Generator().manual_seed(1)
    count = 40000
    x0, x1 = torch.full((count, 1), -0.5, dtype=torch.float64), torch.full((count, 1), 0.7, dtype=torch.float64)
    for m, n in ((100, 600), (400, 500), (0, 300)):
        x_n = schedule.sample_marginal(
            x0, x1, torch.full((count,), n), torch.randn(x0.shape, generator=g, dtype=torch.float64)
        )
        c0, cn, std = schedule.posterior(m, n)
        x_m = c0 * x0 + cn * x_n + std * torch.randn(x0.shape, generator=g, dtype=torch.float64)
        w0, w1, marginal_std = (float(v) for v in schedule.marginal(m))
        if m == 0:  # the last step adds no noise: only the mean is the marginal's
            assert std == 0.0
            assert abs(float(x_m.mean()) - (-0.5 * w0 + 0.7 * w1)) < 0.01
            continue
        assert abs(float(x_m.mean()) - (-0.5 * w0 + 0.7 * w1)) < 4 * marginal_std / math.sqrt(count) + 0.01
        assert abs(float(x_m.std()) / marginal_std - 1) < 0.02


def test_posterior_limit_cases():
    schedule = BridgeSchedule()
    c0, cn, std = schedule.posterior(0, 500)
    assert std == 0.0 and abs(c0 + cn - 1) < 1e-12 and cn < 2e-3  # to step 0: x̂₀ (up to σ_0²/σ_n²), no noise
    c0, cn, std = schedule.posterior(499, 500)
    assert c0 < 0.01 and cn > 0.99 and 0 < std < float(schedule.betas[500]) ** 0.5 * 1.01  # one small step
    with pytest.raises(ValueError):
        schedule.posterior(5, 5)


# ----- exact sampling on a Gaussian case ----------------------------------------------------------------------
SHAPE = (1, 8, 8)


def _gaussian_case():
    """x₀ ~ N(μ, Σ) on 8×8, A = sr4 (a 2×2 measurement), σ = 0: x₁ = A⁺A x₀ = P x₀."""
    d = math.prod(SHAPE)
    g = torch.Generator().manual_seed(3)
    mean = 0.2 * (torch.rand(d, generator=g, dtype=torch.float64) - 0.5)
    basis = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))[0]
    spectrum = 0.012 * torch.logspace(0, -1.5, d, dtype=torch.float64)  # std ≤ 0.11: samples stay inside [-1, 1]
    cov = basis @ torch.diag(spectrum) @ basis.T
    op = operators.build("sr4", shape=SHAPE)
    eye = torch.eye(d, dtype=torch.float64).reshape(d, *SHAPE)
    projection = op.pinv(op(eye)).reshape(d, d).T  # column j = A⁺A e_j
    return mean, cov, op, projection


def _conditional(mean, cov, projection, x1):
    """x₀ | P x₀ = x₁: (m₁ (B, d), C₁ (d, d)) for a projection P."""
    gain = cov @ projection.T @ torch.linalg.pinv(projection @ cov @ projection.T, hermitian=True, rtol=1e-10)
    m1 = mean + (x1 - mean @ projection.T) @ gain.T
    return m1, cov - gain @ projection @ cov


def test_i2sb_with_the_exact_bridge_samples_the_gaussian_posterior():
    """With the network E[x₀ | x_n, x₁] in closed form, I²SB from x₁ draws x₀ | x₁ = N(m₁, C₁): the mean is exact
    at every NFE (each step is linear in x̂₀), the covariance in the limit of fine steps."""
    mean, cov, op, projection = _gaussian_case()
    schedule = BridgeSchedule()
    d = mean.numel()
    truth = mean + torch.linalg.cholesky(cov) @ torch.randn(
        d, generator=torch.Generator().manual_seed(5), dtype=torch.float64
    )
    y = op(truth.reshape(1, *SHAPE).float())
    m1, c1 = _conditional(mean, cov, projection, op.pinv(y).reshape(1, d).double())

    eye = torch.eye(d, dtype=torch.float64)
    cond_gain = cov @ projection.T @ torch.linalg.pinv(projection @ cov @ projection.T, hermitian=True, rtol=1e-10)

    def exact_bridge(x_n, n, x1):
        step = int(n[0])
        a, b, s = (float(v) for v in schedule.marginal(step))
        flat_x1, flat = x1.reshape(len(x1), d).double(), x_n.reshape(len(x_n), d).double()
        cond_mean = mean + (flat_x1 - mean @ projection.T) @ cond_gain.T  # E[x₀ | x₁]
        gain = a * c1 @ torch.linalg.inv(a * a * c1 + s * s * eye)  # then x_n − b·x₁ = a·x₀ + s·z
        x0 = cond_mean + (flat - b * flat_x1 - a * cond_mean) @ gain.T
        return ((flat - x0) / schedule.sigma(step)).reshape(x_n.shape).to(x_n.dtype)

    count = 500
    solver = solvers.build("i2sb", nfe=500, clip_x0=False)
    solver.bridge_fn = exact_bridge
    samples = solver.reconstruct(y.expand(count, *y.shape[1:]), op, CPU, sigma=0.0, generators=generators(count))
    flat = samples.reshape(count, d).double()
    # mean, in the posterior's own metric on the directions it leaves uncertain: χ²(rank) / count on average
    values, vectors = torch.linalg.eigh(c1)
    free = values > 1e-8 * values.max()
    whitened = (vectors[:, free].T @ (flat.mean(0) - m1[0])) / values[free].sqrt()
    rank = int(free.sum())
    assert rank == d - 4
    assert float(whitened.square().sum()) < 2.0 * rank / count
    # covariance: the total variance and the variance along the largest and a middle direction
    sample_cov = torch.cov(flat.T)
    assert abs(float(sample_cov.trace() / c1.trace()) - 1) < 0.08
    for k in (-1, d // 2):
        direction = vectors[:, k]
        assert abs(float(direction @ sample_cov @ direction) / float(values[k]) - 1) < 0.2
    # and it is not the prior: the measured directions collapse onto x₁, up to the bridge's own spread at step 0
    # (the output is x at step 0, not x̂₀, and σ_0 = √β_0 = 0.01)
    measured = flat @ projection.T - op.pinv(y).reshape(1, d).double()
    assert float(measured.square().mean().sqrt()) < 0.01
    assert float((flat - flat.mean(0)).square().mean().sqrt()) > 10 * float(measured.square().mean().sqrt())


# ----- the solver on real photos ------------------------------------------------------------------------------
def _photos(kodak_photos, n: int = 2, size: int = 64) -> torch.Tensor:
    from PIL import Image

    images = []
    for photo in kodak_photos[:n]:
        image = Image.fromarray(photo).resize((size, size), Image.BICUBIC)
        images.append(torch.from_numpy(np.asarray(image).astype(np.float32) / 127.5 - 1).permute(2, 0, 1))
    return torch.stack(images)


def _blurring_bridge(x_n, n, x1):
    """A poor bridge: its x̂₀ is a blurred x_n, so the bridge alone drifts away from y."""
    blurred = torch.nn.functional.avg_pool2d(x_n, 3, stride=1, padding=1, count_include_pad=False)
    return (x_n - blurred) / BridgeSchedule().sigma(int(n[0])).float()


@pytest.mark.parametrize("task", ["sr4", "jpeg10"])
def test_data_consistency_step_lowers_the_residual_on_photos(kodak_photos, task):
    clean = _photos(kodak_photos)
    op = operators.build(task)
    y = op(clean)

    def final_residual(name: str) -> float:
        solver = solvers.build(name, nfe=20)
        solver.bridge_fn = _blurring_bridge
        x = solver.reconstruct(y, op, CPU, sigma=0.0, generators=generators(2))
        return float((op(x) - y).square().mean().sqrt())

    plain, consistent, deep = final_residual("i2sb"), final_residual("cddb"), final_residual("cddb-deep")
    assert consistent < 0.8 * plain
    assert deep < plain


def test_step_size_zero_is_i2sb_exactly(kodak_photos):
    clean = _photos(kodak_photos)
    op = operators.build("sr4")
    y = op(clean)
    runs = []
    for name, extra in (("i2sb", {}), ("cddb", {"step_size": 0.0})):
        solver = solvers.build(name, nfe=10, **extra)
        solver.bridge_fn = _blurring_bridge
        runs.append(solver.reconstruct(y, op, CPU, sigma=0.0, generators=generators(2)))
    assert torch.equal(runs[0], runs[1])


def test_results_do_not_depend_on_the_batch(kodak_photos):
    clean = _photos(kodak_photos, n=3)
    op = operators.build("jpeg10")
    y = op(clean)
    solver = solvers.build("cddb", nfe=8)
    solver.bridge_fn = _blurring_bridge
    together = solver.reconstruct(y, op, CPU, sigma=0.0, generators=generators(3))
    alone = torch.cat(
        [solver.reconstruct(y[i : i + 1], op, CPU, sigma=0.0, generators=generators(1, offset=i)) for i in range(3)]
    )
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=0)


def test_default_step_sizes_are_the_ddc_papers():
    solver = solvers.build("cddb")
    assert solver.step_size("sr4") == 1.0 and solver.step_size("jpeg10") == 0.5
    assert solvers.build("cddb", step_size="0.25").step_size("sr4") == 0.25
    assert solvers.build("i2sb").step_size("jpeg10") == 0.0
    with pytest.raises(solvers.SolverError, match="nfe"):
        solvers.build("cddb", nfe="0")


# ----- bridges: training, saving, finding and refusing ----------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_bridge(photo_folder, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bridge")
    config = TrainConfig(steps=3, batch_size=2, lr=1e-3, warmup_steps=1, checkpoint_every=2, ema_decay=0.9)
    return train_bridge("sr4", photo_folder, out, config=config, size=32, block_out_channels=(8, 16), progress=False)


def test_train_bridge_writes_a_strictly_loadable_bridge_with_its_record(tiny_bridge):
    network, record = load_bridge(tiny_bridge)
    assert record["task"] == "sr4" and record["image_shape"] == [3, 32, 32] and record["sigma"] == 0.0
    assert record["schedule"] == {"steps": 1000, "beta_min": 1e-4, "beta_max": 0.3}
    provenance = json.loads((tiny_bridge / "provenance.json").read_text())
    assert provenance["steps"] == 3 and provenance["bridge"] == record
    x = torch.zeros(1, 3, 32, 32)
    assert network(x, torch.tensor([5]), x).shape == (1, 3, 32, 32)


def test_a_bridge_with_a_missing_key_is_an_error(tiny_bridge, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    broken = tmp_path / "broken"
    shutil.copytree(tiny_bridge, broken)
    weights = broken / "unet" / "diffusion_pytorch_model.safetensors"
    state = load_file(weights)
    state.pop(next(iter(state)))
    save_file(state, weights)
    with pytest.raises(ValueError, match="missing"):
        load_bridge(broken)


def test_train_bridge_resumes_exactly(photo_folder, tmp_path):
    config = TrainConfig(steps=4, batch_size=2, lr=1e-3, warmup_steps=1, checkpoint_every=2, ema_decay=0.9)
    common = dict(config=config, size=32, block_out_channels=(8, 16), progress=False)
    straight = train_bridge("jpeg10", photo_folder, tmp_path / "a", **common)
    import dataclasses

    train_bridge(
        "jpeg10",
        photo_folder,
        tmp_path / "b",
        **{**common, "config": dataclasses.replace(config, max_wall_seconds=0.0)},
    )
    resumed = train_bridge("jpeg10", photo_folder, tmp_path / "b", resume=True, **common)
    a, _ = load_bridge(straight)
    b, _ = load_bridge(resumed)
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(p, q), name


def test_solver_finds_the_bridge_and_refuses_other_tasks_sizes_and_noise(tiny_bridge):
    solver = solvers.build("cddb", bridge=str(tiny_bridge), nfe=3)
    sr4 = operators.build("sr4", shape=(3, 32, 32))
    assert solver.unsupported(sr4, 0.0) is None
    assert "trained for sr4" in solver.unsupported(operators.build("sr8", shape=(3, 32, 32)), 0.0)
    assert "(3, 32, 32) images" in solver.unsupported(operators.build("sr4", shape=(3, 64, 64)), 0.0)
    assert "σ = 0" in solver.unsupported(sr4, 0.05) and "--sigma 0.05" in solver.unsupported(sr4, 0.05)
    y = sr4(torch.zeros(1, 3, 32, 32))
    assert solver.reconstruct(y, sr4, CPU, sigma=0.0, generators=generators(1)).shape == (1, 3, 32, 32)
    with pytest.raises(solvers.SolverError, match="σ = 0"):
        solver.reconstruct(y, sr4, CPU, sigma=0.05, generators=generators(1))
    missing = solvers.build("cddb").unsupported(operators.build("inpaint"), 0.0)
    assert "train-bridge --task inpaint --size 64" in missing


def test_the_bridge_sees_x1_built_as_the_runner_builds_y(photo_folder):
    op = operators.build("inpaint", shape=(3, 16, 16)).for_images(["a"], seed=0)
    x0 = torch.rand(1, 3, 16, 16) * 2 - 1
    noise = torch.randn(1, *op.measurement_shape, generator=torch.Generator().manual_seed(0))
    reference = op.measure(x0, 0.05, [torch.Generator().manual_seed(0)])
    torch.testing.assert_close(degraded_image(op, x0, 0.05, noise), op.pinv(reference))


# ----- the shipped bridges ---------------------------------------------------------------------------------------
SHIPPED = [task for task in ("jpeg10", "sr4") if (ASSETS / f"cddb-{task}-64" / "bridge.json").is_file()]


@pytest.mark.slow
@pytest.mark.parametrize("task", SHIPPED)
def test_shipped_bridge_learned_its_task_on_held_out_photos(kodak_photos, task):
    """The bridge's one-step estimate (NFE 1, x̂₀ from x₁) is closer to the truth than A⁺y, and with 25 steps the
    data-consistency step (CDDB) explains y better than the bridge alone (I²SB). (At NFE 100 on all 24 photos
    the README's table has CDDB below A⁺y in PSNR and above it in LPIPS: the sampler trades one for the other.)"""
    clean = _photos(kodak_photos, n=4)
    op = operators.build(task)
    y = op(clean)

    def run(name: str, nfe: int) -> torch.Tensor:
        return solvers.build(name, nfe=nfe).reconstruct(y, op, CPU, sigma=0.0, generators=generators(4))

    error = lambda estimate: float((estimate - clean).square().mean())  # noqa: E731
    assert error(run("cddb", 1)) < error(op.pinv(y).clamp(-1, 1))
    residual = lambda estimate: float((op(estimate) - y).square().mean())  # noqa: E731
    assert residual(run("cddb", 25)) < residual(run("i2sb", 25))


def test_bridges_ship_for_jpeg10_and_sr4():
    assert SHIPPED == ["jpeg10", "sr4"], f"bench/assets/cddb-<task>-64 bridges found: {SHIPPED}"
    for task in SHIPPED:
        network, record = load_bridge(ASSETS / f"cddb-{task}-64")
        assert record["task"] == task and record["sigma"] == 0.0
        assert CDDB().unsupported(operators.build(task), 0.0) is None


def test_train_bridge_command_line(photo_folder, tmp_path, capsys):
    from bench.cli import main

    code = main(
        ["train-bridge", "--task", "sr4", "--data", str(photo_folder), "--out", str(tmp_path / "run"), "--size", "32",
         "--steps", "2", "--batch-size", "2", "--bridge-channels", "8,16", "--warmup-steps", "1", "--sigma", "0.05"]
    )  # fmt: skip
    assert code == 0 and "--set cddb.bridge=" in capsys.readouterr().out
    _, record = load_bridge(tmp_path / "run" / "final")
    assert record["sigma"] == 0.05 and record["task"] == "sr4"
    provenance = json.loads((tmp_path / "run" / "final" / "provenance.json").read_text())
    assert provenance["train_config"]["lr_schedule"] == "cosine" and provenance["train_config"]["warmup_steps"] == 1
