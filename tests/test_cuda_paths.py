"""CUDA code paths checked on a CPU: the torchrun rank -> device mapping, the float16 refusal of solvers that
backpropagate through the prior, the numerics switches recorded in rows, and float64-free kurtosis."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import stats

import solvers
from bench.cli import main
from bench.pipeline import evaluate
from bench.pipeline.evaluate import _accumulation_dtype, fisher_kurtosis
from bench.pipeline.settings import RunError, resolve_device
from bench.pipeline.store import ResultStore
from solvers.base import SolverError

REPO = Path(__file__).resolve().parents[1]
PRIOR = "gaussian:32"
NUMERICS = ("tf32_matmul", "tf32_cudnn", "float32_matmul_precision", "deterministic", "cudnn_benchmark")


@pytest.fixture(scope="module")
def two_photos(tmp_path_factory) -> Path:
    """Two 32x32 photos (scikit-image's bundled ones): the smallest dataset a run takes."""
    from bench.data.skimage_natural import SKIMAGE_NATURAL_COLOUR, _skimage_data_dir

    folder = tmp_path_factory.mktemp("photos")
    for image_id, file_name in SKIMAGE_NATURAL_COLOUR[:2]:
        with Image.open(_skimage_data_dir() / file_name) as photo:
            photo.convert("RGB").resize((32, 32), Image.Resampling.BICUBIC).save(folder / f"{image_id}.png")
    return folder


def _run_args(photos: Path, out: Path, *extra: str) -> list[str]:
    """A run of two cheap units: pinv on sr4, noiseless, PSNR only."""
    args = ["--prior", PRIOR, "--dataset", f"folder:{photos}", "--solvers", "pinv", "--tasks", "sr4", "--sigma", "0"]
    return [*args, "--metrics", "psnr", "--out", str(out), "--no-progress", *extra]


# ----- torchrun rank -> device -------------------------------------------------------------------------------
TORCHRUN = {"RANK": "1", "LOCAL_RANK": "1", "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2"}


@pytest.mark.parametrize(
    ("requested", "env", "gpus", "expected"),
    [
        ("auto", {}, 0, "cpu"),
        ("auto", {}, 2, "cuda"),  # a plain process keeps the bare name its rows have always recorded
        ("cuda", {}, 1, "cuda"),
        ("cuda:1", {}, 2, "cuda:1"),
        ("cpu", TORCHRUN, 2, "cpu"),  # CPU ranks stay on the CPU
        ("auto", TORCHRUN, 0, "cpu"),
        ("auto", TORCHRUN, 2, "cuda:1"),  # one GPU per rank: cuda:<LOCAL_RANK>
        ("cuda", TORCHRUN, 2, "cuda:1"),
        ("cuda", {**TORCHRUN, "LOCAL_RANK": "0"}, 2, "cuda:0"),
        # one process per node on several nodes: an explicit index shares nothing
        ("cuda:0", {**TORCHRUN, "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1"}, 1, "cuda:0"),
        ("cuda", {"LOCAL_RANK": "0", "WORLD_SIZE": "1"}, 1, "cuda:0"),
    ],
)
def test_device_of_each_process(requested, env, gpus, expected):
    assert resolve_device(requested, env, gpus) == expected


@pytest.mark.parametrize(
    ("requested", "env", "gpus", "message"),
    [
        ("cuda:0", TORCHRUN, 2, "would put all 2 torchrun processes of this node on one GPU; use --device cuda"),
        ("cuda:1", {"WORLD_SIZE": "2", "LOCAL_RANK": "0"}, 2, "use --device cuda"),
        ("cuda", {**TORCHRUN, "LOCAL_RANK": "2", "LOCAL_WORLD_SIZE": "3"}, 2, "--nproc-per-node 2"),
        ("cuda", {}, 0, "CUDA is not available here; use --device cpu"),
        ("cuda:3", {}, 2, "only 2 GPU(s) are visible; use cuda:0 to cuda:1"),
        ("cuda:x", {}, 2, "unknown device 'cuda:x'"),
    ],
)
def test_device_conflicts_name_the_fix(requested, env, gpus, message):
    with pytest.raises(RunError, match=message.replace("(", r"\(").replace(")", r"\)")):
        resolve_device(requested, env, gpus)


@pytest.mark.slow
def test_torchrun_cpu_ranks_record_their_device(tmp_path, two_photos):
    out = tmp_path / "two"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    command += ["-m", "bench", "run", *_run_args(two_photos, out, "--batch-size", "1")]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = ResultStore(out).raw_units()
    assert sorted(rows["rank"]) == [0, 1] and set(rows["device"]) == {"cpu"}


# ----- float16 and gradients through the network -------------------------------------------------------------
def test_float16_flushes_small_gradients_that_bfloat16_keeps():
    # Why the refusal below: a CPU (or GPU) float16 autocast backward underflows where bfloat16 does not.
    layer = torch.nn.Linear(4, 4)
    grads = {}
    for dtype in (torch.float16, torch.bfloat16):
        x = torch.ones(1, 4, requires_grad=True)
        with torch.autocast("cpu", dtype=dtype):
            out = layer(x)
        assert out.dtype == dtype  # CPU autocast computes in float16 on this torch
        (out.float() * 1e-9).sum().backward()
        grads[dtype] = x.grad
    assert torch.count_nonzero(grads[torch.float16]) == 0 and torch.count_nonzero(grads[torch.bfloat16]) == 4


def test_solvers_that_backprop_through_the_prior_refuse_float16():
    refusing = {n for n in solvers.available() if solvers.get(n).backprop_through_network and solvers.get(n).uses_prior}
    assert {"dps", "pigdm"} <= refusing
    for name in solvers.available():
        solver = solvers.build(name)
        reason = solver.precision_mismatch("fp16")
        assert (reason is not None) == (name in refusing), name
        assert solver.precision_mismatch(torch.bfloat16) is None and solver.precision_mismatch("fp32") is None
    assert "use dtype bf16 (--dtype bf16" in solvers.build("dps").precision_mismatch(torch.float16)
    # CDDB-deep backpropagates through its own bridge, which runs in float32 whatever --dtype is
    assert solvers.build("cddb-deep").precision_mismatch("fp16") is None


def test_dps_reconstruct_refuses_a_float16_prior():
    import operators
    from bench.priors import load_prior

    prior = load_prior(PRIOR, dtype="fp16")
    op = operators.build("sr4", shape=prior.image_shape)
    y = op(torch.zeros(1, *prior.image_shape))
    with pytest.raises(SolverError, match="dps backpropagates through the prior's network"):
        solvers.build("dps", steps=2).reconstruct(y, op, prior, sigma=0.0, generators=[torch.Generator()])


def test_run_with_float16_and_dps_stops_before_any_work(tmp_path, two_photos, capsys):
    out = tmp_path / "run"
    argv = ["run", *_run_args(two_photos, out, "--dtype", "fp16")]
    argv[argv.index("pinv")] = "pinv,dps"
    assert main(argv) == 2
    error = capsys.readouterr().err
    assert "dps backpropagates" in error and "or drop dps from --solvers" in error
    assert not (out / "units").exists()


# ----- numerics switches in the rows ---------------------------------------------------------------------------
def test_rows_record_the_process_numerics_and_keys_ignore_them(tmp_path, two_photos, capsys):
    saved = (torch.backends.cudnn.benchmark, torch.get_float32_matmul_precision())
    try:
        torch.backends.cudnn.benchmark = True
        torch.set_float32_matmul_precision("high")
        assert main(["run", *_run_args(two_photos, tmp_path / "flipped")]) == 0
    finally:
        torch.backends.cudnn.benchmark = saved[0]
        torch.set_float32_matmul_precision(saved[1])
    assert main(["run", *_run_args(two_photos, tmp_path / "plain")]) == 0
    capsys.readouterr()
    flipped, plain = ResultStore(tmp_path / "flipped").units(), ResultStore(tmp_path / "plain").units()
    assert set(flipped["cudnn_benchmark"]) == {True} and set(flipped["float32_matmul_precision"]) == {"high"}
    process = {
        "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
        "tf32_cudnn": torch.backends.cudnn.allow_tf32,
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "deterministic": torch.are_deterministic_algorithms_enabled(),
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
    }
    for name in NUMERICS:
        assert plain[name].tolist() == [process[name]] * 2, name
    assert sorted(flipped["key"]) == sorted(plain["key"])  # the switches are recorded, not part of the unit


# ----- kurtosis without float64 ------------------------------------------------------------------------------
def test_accumulation_dtype_is_float64_only_where_the_device_has_it():
    assert _accumulation_dtype("cpu") == _accumulation_dtype(torch.device("cuda:1")) == torch.float64
    assert _accumulation_dtype("mps") == _accumulation_dtype(torch.device("xpu")) == torch.float32


def test_float32_kurtosis_matches_scipy(monkeypatch):
    generator = torch.Generator().manual_seed(0)
    gaussian = 3.0 + 0.5 * torch.randn(2, 3, 64, 64, generator=generator)  # an offset: centring must cancel it
    heavy = torch.distributions.Laplace(1.0, 1.0).sample((2, 3, 64, 64))
    eps = torch.cat([gaussian, heavy])
    expected = stats.kurtosis(eps.reshape(4, -1).numpy().astype(np.float64), axis=1, fisher=True, bias=True)
    monkeypatch.setattr(evaluate, "_accumulation_dtype", lambda device: torch.float32)  # as on MPS
    single = fisher_kurtosis(eps)
    assert single.dtype == torch.float32
    np.testing.assert_allclose(single.numpy(), expected, rtol=0, atol=1e-4)
