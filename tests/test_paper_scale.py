"""The paper's 256x256 setting on a CPU: every solver on every task, φ's training, mixed precision around φ,
checkpointed DPS and the GPU script's dry run, all on `adm-random:tiny` (the ImageNet-256 ADM's code path at
GroupNorm's narrowest widths, random weights)."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import operators
import solvers
from bench.priors import load_prior
from solvers.base import SolverError
from solvers.ddc import DDC, load_phi
from solvers.ddc.train import build_phi, ddc_train_config, train_ddc

ROOT = Path(__file__).resolve().parents[1]
SIGMA = 0.05
STEPS = 2
ID = ["paper-scale"]
# A small φ whose attention sits at 32x32, as the paper's sits at 16x16 (at full resolution it would cost seconds).
PHI_CHANNELS = (16, 16, 16, 32, 32)


@pytest.fixture(scope="module")
def prior():
    return load_prior("adm-random:tiny")


@pytest.fixture(scope="module")
def phi():
    return build_phi(256, 3, PHI_CHANNELS).eval().requires_grad_(False)


def plumbing_solver(name: str, phi):
    """Solver `name` at STEPS steps with its inner loops and particle clouds small (this checks the code path at
    256², not the quality), with the small φ where it takes one."""
    cls = solvers.get(name)
    fields = {f.name for f in dataclasses.fields(cls.Config)}
    options = {key: STEPS for key in ("steps", "iterations", "nfe", "ode_steps", "langevin_steps") if key in fields}
    options |= {"particles": 4} if "particles" in fields else {}
    if "phi" in cls.injectable_networks:
        return cls(cls.Config(**{**options, "off_schedule": True}), phi=phi)
    return solvers.build(name, **options)


def measured(task: str):
    op = operators.build(task, shape=(3, 256, 256)).for_images(ID, seed=0)
    x = torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(0)) * 2 - 1
    return op, op.measure(x, SIGMA, operators.image_generators(0, ID, "noise"))


# About 30 s per task on one CPU core: some 25 evaluations of a network at 256x256, backward passes included.
@pytest.mark.slow
@pytest.mark.parametrize("task", operators.available())
def test_every_solver_on_the_task_at_256(task, prior, phi):
    op, y = measured(task)
    assert y.shape[1:] == tuple(op.measurement_shape)
    ran, refused = [], []
    for name in solvers.available():
        solver = plumbing_solver(name, phi)
        reason = solver.unsupported(op, SIGMA)
        generators = operators.image_generators(0, ID, "solver")
        if reason:
            assert isinstance(reason, str) and name in reason
            with pytest.raises(SolverError):
                solver.reconstruct(y, op, prior, sigma=SIGMA, generators=generators)
            refused.append(name)
            continue
        prior.reset_stats()
        solver.reset_network_use()
        x = solver.reconstruct(y, op, prior, sigma=SIGMA, generators=generators)
        assert x.shape == (1, 3, 256, 256), name
        assert torch.isfinite(x).all() and x.abs().max() <= 1, name
        calls = prior.stats.nfe + sum(use.calls for use in solver.network_use.values())
        assert (calls > 0) == (name != "pinv"), (name, calls)
        ran.append(name)
    # CDDB's bridges exist at 64x64 only: at 256 every bridge method refuses, saying why.
    assert {"cddb", "i2sb", "cddb-deep"} <= set(refused)
    assert {"uncond", "dps"} <= set(ran)  # they need only the forward operator and its gradient
    if task in (*operators.PAPER_TASKS, "denoise"):  # the tasks DDC's shipped φ was trained for
        assert {"pinv", "pigdm", "reddiff", "ddc", "ddc-nolpips"} <= set(ran)
        assert ("ddnm" in ran) == (task != "jpeg10")  # DDNM needs the SVD, which JPEG does not have


def test_train_ddc_at_256_on_the_tiny_prior(photo_folder, tmp_path, prior):
    config = ddc_train_config(steps=2, batch_size=1, checkpoint_every=10**6, warmup_steps=1)
    folder = train_ddc(
        "adm-random:tiny",
        photo_folder,
        tmp_path / "phi",
        config=config,
        tasks=("sr4", "inpaint"),
        use_lpips=False,
        phi_channels=PHI_CHANNELS,
        progress=False,
    )
    network, provenance = load_phi(folder)
    assert provenance["steps"] == 2 and provenance["prior"]["kind"] == "adm-random"
    assert network.unet.config.sample_size == 256
    op, y = measured("sr4")
    out = DDC(network=str(folder), steps=STEPS).reconstruct(
        y, op, prior, sigma=SIGMA, generators=operators.image_generators(0, ID, "solver")
    )
    assert out.shape == (1, 3, 256, 256) and torch.isfinite(out).all()


def test_phi_runs_in_the_priors_precision_and_its_correction_in_float32():
    low = load_prior("gaussian", dtype="bf16")  # the Gaussian prior: bf16 convolutions are slow on CPUs
    seen = []

    def probe(x0, y_image, t):
        seen.append((torch.is_autocast_enabled("cpu"), x0.dtype))
        return torch.full_like(x0, 0.5).to(torch.bfloat16)  # a low-precision Δ, as a network under autocast gives

    op = operators.build("sr4", shape=low.image_shape).for_images(ID, seed=0)
    y = op.measure(torch.zeros(1, *low.image_shape), SIGMA, operators.image_generators(0, ID, "noise"))
    x = DDC(DDC.Config(steps=1), phi=probe).reconstruct(
        y, op, low, sigma=SIGMA, generators=operators.image_generators(0, ID, "solver")
    )
    assert seen == [(True, torch.float32)] and x.dtype == torch.float32
    assert not torch.is_autocast_enabled("cpu")


def test_checkpointed_dps_gives_the_same_reconstruction(prior):
    checkpointed = load_prior("adm-random:tiny", checkpointing=True)
    op, y = measured("sr4")
    results = []
    for model in (prior, checkpointed):
        solver = solvers.build("dps", steps=STEPS)
        results.append(solver.reconstruct(y, op, model, sigma=SIGMA, generators=operators.image_generators(0, ID, "s")))
    assert checkpointed.gradient_checkpointing and not prior.gradient_checkpointing
    torch.testing.assert_close(results[1], results[0], rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_gpu_script_dry_run_writes_every_section(tmp_path):
    """About 50 s on one CPU core, most of it DPS through the tiny ADM at 256x256 and the checks' torchrun."""
    out = tmp_path / "paper-scale"
    command = [sys.executable, str(ROOT / "scripts" / "paper_scale_gpu.py"), "--dry-run", "--out", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["dry_run"] is True and summary["device"].startswith("CPU")
    assert set(summary["sections"]) == {"checks", "speed", "compile", "dps_memory", "precision"}
    checks = json.loads((out / "checks.json").read_text())
    statuses = {name: check["status"] for name, check in checks["checks"].items()}
    # On a CPU the checks that prove a CUDA path are skipped with their reason; the others run for real.
    assert statuses == {
        "fused_attention": "skipped",
        "inception_cuda_vs_cpu": "skipped",
        "fp16_gradients": "pass",
        "every_solver_every_task": "pass",
        "torchrun_one_process": "pass",
    } and checks["failed"] == []
    attention = checks["checks"]["fused_attention"]
    assert "CUDA only" in attention["reason"] and attention["network"]["ok"]  # the code path ran nonetheless
    assert attention["kernels"]["fp32"]["fused"]["ok"]
    assert {"dps", "pigdm"} <= set(checks["checks"]["fp16_gradients"]["refused"])
    assert checks["checks"]["torchrun_one_process"]["devices"] == ["cpu"]
    speed = json.loads((out / "speed.json").read_text())
    assert {r["solver"] for r in speed["fp32"]["rows"]} == set(solvers.available())
    precision = json.loads((out / "precision.json").read_text())
    assert precision["images"] == 4 and precision["psnr_bf16_vs_fp32_db"] > 20
    memory = json.loads((out / "dps_memory.json").read_text())
    peaks = {key: report["rows"][0]["peak_memory_bytes"] for key, report in memory.items()}
    # Checkpointing keeps block inputs instead of every activation: DPS's backward needs less memory.
    assert peaks["fp32_checkpointing_on"] < peaks["fp32_checkpointing_off"]
    assert "## speed: fp32" in (out / "tables.md").read_text()
