"""Released I²SB / CDDB bridges: importing latest.pt + options.pkl, refusing unsafe or ill-fitting files, the time
input and x₁ convention they were trained with, and their SR degradations as sr4 operator options.

The checkpoints here are written in the official layout (I²SB `Runner.train` and `ckpt_util`) around a small
random ADM, so nothing is downloaded."""

from __future__ import annotations

import argparse
import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import operators
import solvers
from bench.priors.adm import random_adm
from solvers.cddb.network import load_bridge
from solvers.cddb.official import UnsafePickleError, adm_config, import_bridge, read_plain_pickle
from solvers.cddb.schedule import BridgeSchedule

SIZE = 32
# guided-diffusion create_model arguments of a small ADM, as I²SB's *_fixedsigma.pkl holds them
SMALL_ADM = {
    "image_size": SIZE,
    "num_channels": 32,
    "num_res_blocks": 1,
    "channel_mult": "1,2",
    "learn_sigma": False,
    "class_cond": False,
    "use_checkpoint": False,
    "attention_resolutions": "16",
    "num_heads": 4,
    "num_head_channels": 32,
    "num_heads_upsample": -1,
    "use_scale_shift_norm": True,
    "dropout": 0.0,
    "resblock_updown": True,
    "use_fp16": False,
    "use_new_attention_order": False,
    "in_channels": 6,
}


def i2sb_options(corrupt: str = "sr4x-pool", **changes) -> argparse.Namespace:
    """A Namespace like I²SB train.py's options (paths, device and a W&B key included)."""
    values = dict(
        seed=0, name=corrupt, ckpt=None, gpu=None, n_gpu_per_node=1, image_size=SIZE, corrupt=corrupt, t0=1e-4,
        T=1.0, interval=1000, beta_max=0.3, ot_ode=False, clip_denoise=False, cond_x1=True, add_x1_noise=False,
        batch_size=256, microbatch=2, num_itr=1000000, lr=5e-5, lr_gamma=0.99, lr_step=1000, l2_norm=0.0, ema=0.99,
        dataset_dir=Path("/dataset"), log_dir=Path(".log"), log_writer=None, wandb_api_key="not-a-real-key",
        wandb_user=None, device="cuda", distributed=False, use_fp16=False, ckpt_path=Path("results") / corrupt,
        load=None, global_rank=0, local_rank=0, global_size=1,
    )  # fmt: skip
    values.update(changes)
    return argparse.Namespace(**values)


class Image256Net(nn.Module):
    """I²SB's wrapper: the ADM is its one parameterised child, so state keys start with `diffusion_model.`."""

    def __init__(self, adm: nn.Module):
        super().__init__()
        self.diffusion_model = adm


def official_checkpoint(seed: int = 0) -> tuple[dict, list[torch.Tensor]]:
    """latest.pt's dict (net, torch_ema state, AdamW and StepLR states) and the EMA's shadow params."""
    net = Image256Net(random_adm(adm_config(SMALL_ADM, cond_x1=True), seed=seed))
    optimizer = torch.optim.AdamW(net.parameters(), lr=5e-5)
    sched = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1000, gamma=0.99)
    net.diffusion_model(torch.zeros(1, 6, SIZE, SIZE), torch.tensor([1.0])).square().mean().backward()
    optimizer.step()  # so that the optimizer's state holds tensors, as a trained checkpoint's does
    sched.step()
    g = torch.Generator().manual_seed(seed + 1)
    shadow = [p.detach() + 0.1 * torch.randn(p.shape, generator=g) for p in net.parameters()]
    ema = {"decay": 0.99, "num_updates": 7, "shadow_params": shadow, "collected_params": None}
    checkpoint = {"net": net.state_dict(), "ema": ema, "optimizer": optimizer.state_dict(), "sched": sched.state_dict()}
    return checkpoint, shadow


def write_source(folder: Path, checkpoint: dict | None = None, options: object | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint if checkpoint is not None else official_checkpoint()[0], folder / "latest.pt")
    (folder / "options.pkl").write_bytes(pickle.dumps(options if options is not None else i2sb_options()))
    (folder / "adm.pkl").write_bytes(pickle.dumps(SMALL_ADM))
    return folder


@pytest.fixture(scope="module")
def imported(tmp_path_factory) -> tuple[Path, list[torch.Tensor], dict]:
    src = tmp_path_factory.mktemp("src")
    checkpoint, shadow = official_checkpoint()
    write_source(src, checkpoint)
    dest = import_bridge(src, src.parent / "bridge", task="sr4", adm_options=src / "adm.pkl")
    return dest, shadow, checkpoint


# ----- import ------------------------------------------------------------------------------------------------
def test_import_takes_the_ema_weights_in_parameter_order(imported):
    dest, shadow, checkpoint = imported
    network, record = load_bridge(dest)
    state = network.adm.state_dict()
    assert list(state) == [k.removeprefix("diffusion_model.") for k in checkpoint["net"]]
    for (key, value), average in zip(state.items(), shadow, strict=True):
        assert torch.equal(value, average), key
    raw = checkpoint["net"]["diffusion_model.out.2.weight"]
    assert not torch.equal(state["out.2.weight"], raw)  # the EMA, not the raw network
    assert network.adm.config.in_channels == 6 and network.adm.out_channels == 3


def test_the_record_says_what_the_bridge_is_for_and_keeps_no_private_settings(imported):
    dest, _, _ = imported
    record = json.loads((dest / "bridge.json").read_text())
    assert record["official"] is True and record["network"] == "adm" and record["cond_x1"] is True
    assert record["operator"] == operators.build("sr4-pool", shape=(3, SIZE, SIZE)).spec()
    assert record["time_input"] == {"kind": "i2sb", "t0": 1e-4, "T": 1.0, "interval": 1000}
    assert record["x1"] == "nearest-upsample" and record["sigma"] == 0.0 and record["operator_mismatch"] is None
    assert record["schedule"] == {"steps": 1000, "beta_min": 1e-4, "beta_max": 0.3}
    assert len(record["source"]["latest.pt_sha256"]) == 64 and len(record["source"]["options.pkl_sha256"]) == 64
    assert record["source"]["ema"] == {"decay": 0.99, "num_updates": 7}
    text = (dest / "bridge.json").read_text() + (dest / "provenance.json").read_text()
    assert "not-a-real-key" not in text and "/dataset" not in text


def test_the_network_sees_i2sb_time_levels_not_the_step(imported):
    dest, _, _ = imported
    network, _ = load_bridge(dest)
    expected = torch.linspace(1e-4, 1.0, 1000, dtype=torch.float32) * 1000  # I²SB Runner's noise_levels
    assert torch.equal(network.levels, expected)
    assert abs(float(network.levels[0]) - 0.1) < 1e-6 and float(network.levels[-1]) == 1000.0
    x, x1, n = torch.randn(2, 3, SIZE, SIZE), torch.randn(2, 3, SIZE, SIZE), torch.tensor([0, 999])
    direct = network.adm(torch.cat([x, x1], dim=1), expected[n])
    torch.testing.assert_close(network(x, n, x1), direct, rtol=0, atol=0)


# ----- refusals ----------------------------------------------------------------------------------------------
class _RunsACommand:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_that_would_run_code_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "executed"
    src = write_source(tmp_path / "src", options=i2sb_options(load=_RunsACommand(marker)))
    with pytest.raises(UnsafePickleError, match=rf"refused to unpickle {os.system.__module__}\.system"):
        import_bridge(src, tmp_path / "bridge", adm_options=src / "adm.pkl")
    assert not marker.exists() and not (tmp_path / "bridge").exists()
    (tmp_path / "evil.pkl").write_bytes(pickle.dumps({"ok": 1, "bad": _RunsACommand(marker)}))
    with pytest.raises(UnsafePickleError, match="system"):
        read_plain_pickle(tmp_path / "evil.pkl")
    assert not marker.exists()


def test_options_become_plain_values(tmp_path):
    (tmp_path / "o.pkl").write_bytes(pickle.dumps(i2sb_options()))
    options = read_plain_pickle(tmp_path / "o.pkl")
    assert options["dataset_dir"] == "/dataset" and options["ckpt_path"] == "results/sr4x-pool"
    assert options["cond_x1"] is True and options["load"] is None


def _broken(change: str) -> dict:
    checkpoint, _ = official_checkpoint()
    net, shadow = checkpoint["net"], checkpoint["ema"]["shadow_params"]
    if change == "missing":  # a parameter gone from both the network and its EMA
        key = "diffusion_model.out.2.bias"
        index = list(net).index(key)
        del net[key], shadow[index]
    elif change == "unexpected":
        net["diffusion_model.extra.weight"] = torch.zeros(3)
        shadow.append(torch.zeros(3))
    elif change == "count":
        shadow.pop()
    elif change == "order":
        first = next(i for i, t in enumerate(shadow) if t.ndim == 4)
        second = next(i for i, t in enumerate(shadow) if t.ndim == 1)
        shadow[first], shadow[second] = shadow[second], shadow[first]
    elif change == "prefix":
        checkpoint["net"] = {k.removeprefix("diffusion_model."): v for k, v in net.items()}
    elif change == "top-level":
        checkpoint["scaler"] = {}
    return checkpoint


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("missing", "1 missing key"),
        ("unexpected", "1 unexpected key"),
        ("count", "shadow_params has"),
        ("order", r"parameters\(\) order"),
        ("prefix", "prefix"),
        ("top-level", "unexpected top-level keys"),
    ],
)
def test_keys_that_do_not_fit_are_errors(tmp_path, change, message):
    src = write_source(tmp_path / "src", _broken(change))
    with pytest.raises(ValueError, match=message):
        import_bridge(src, tmp_path / "bridge", adm_options=src / "adm.pkl")
    assert not (tmp_path / "bridge").exists()


def test_a_checkpoint_that_needs_full_unpickling_is_refused(tmp_path):
    checkpoint, _ = official_checkpoint()
    checkpoint["sched"] = argparse.Namespace(step=1)  # not loadable under weights_only
    src = write_source(tmp_path / "src", checkpoint)
    with pytest.raises(ValueError, match="weights_only"):
        import_bridge(src, tmp_path / "bridge", adm_options=src / "adm.pkl")


def test_other_tasks_and_samplers_are_refused(tmp_path):
    for options, message in (
        (i2sb_options("blur-gauss"), "blur-gauss"),
        (i2sb_options(ot_ode=True), "ot_ode"),
        (i2sb_options("sr4x-pool"), "--task jpeg10"),
    ):
        src = write_source(tmp_path / "src", options=options)
        with pytest.raises(ValueError, match=message):
            import_bridge(src, tmp_path / "bridge", task="jpeg10", adm_options=src / "adm.pkl")


# ----- sampling ----------------------------------------------------------------------------------------------
def test_one_cddb_step_is_the_official_update(imported):
    """NFE 1 from step 999 to 0: x₁ = nearest-upsampled y, x̂₀ = clip(x₁ − σ₉₉₉·net([x₁, x₁], t = 1000)), then the
    posterior mean c₀·x̂₀ + c_n·x₁ (no noise at m = 0) and the data-consistency step −c₀·λ∇‖y − A x̂₀‖² (CDDB's
    dds_sampling: `xt - mu_x0 * step_size * norm_grad`, λ = 1 for SR)."""
    dest, _, _ = imported
    op = operators.build("sr4-pool", shape=(3, SIZE, SIZE))
    x = torch.rand(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0)) * 2 - 1
    y = op(x)
    solver = solvers.build("cddb", bridge=str(dest), nfe=1)
    assert solver.unsupported(op, 0.0) is None
    cpu = type("P", (), {"device": torch.device("cpu")})()
    out = solver.reconstruct(y, op, cpu, sigma=0.0, generators=[torch.Generator().manual_seed(0)])

    network, _ = load_bridge(dest)
    x1 = y.repeat_interleave(4, dim=2).repeat_interleave(4, dim=3)
    with torch.no_grad():
        x0 = x1 - float(BridgeSchedule().sigma(999)) * network.adm(torch.cat([x1, x1], 1), torch.tensor([1000.0]))
    x0 = x0.clamp(-1, 1).requires_grad_(True)
    (gradient,) = torch.autograd.grad((y - op(x0)).square().sum(), x0)
    c0, cn, std = BridgeSchedule().posterior(0, 999)
    assert std == 0.0
    expected = (c0 * x0.detach() + cn * x1 - c0 * 1.0 * gradient).clamp(-1, 1)  # reconstruct clamps the output
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_the_solver_refuses_our_operators_and_their_jpeg(imported, tmp_path):
    dest, _, _ = imported
    solver = solvers.build("cddb", bridge=str(dest), nfe=1)
    reason = solver.unsupported(operators.build("sr4", shape=(3, SIZE, SIZE)), 0.0)
    assert "released bridge" in reason and "trained for sr4-pool, not sr4" in reason
    assert "'pool' (bridge) vs 'bicubic-keys-a-0.5-antialiased'" in reason
    assert "σ = 0" in solver.unsupported(operators.build("sr4-pool", shape=(3, SIZE, SIZE)), 0.05)

    src = write_source(tmp_path / "jpeg", options=i2sb_options("jpeg-10"))
    jpeg = import_bridge(src, tmp_path / "jpeg-bridge", task="jpeg10", adm_options=src / "adm.pkl")
    reason = solvers.build("cddb", bridge=str(jpeg)).unsupported(operators.build("jpeg10", shape=(3, SIZE, SIZE)), 0.0)
    assert "Pillow-exact jpeg10" in reason and "DDRM-jpeg" in reason


# ----- their degradations as operator options ---------------------------------------------------------------
def _ddrm_srconv_rows(n: int, factor: int) -> np.ndarray:
    """DDRM's SRConv 1-D matrix for its bicubic kernel, from its definition (functions/svd_replacement.py and
    runners/diffusion.py): kernel x = (i − 2f + 0.5)/f, rows centred at f/2 + f·r, edge-repeating reflection."""

    def cubic(x: float, a: float = -0.5) -> float:
        x = abs(x)
        if x <= 1:
            return (a + 2) * x**3 - (a + 3) * x**2 + 1
        return a * x**3 - 5 * a * x**2 + 8 * a * x - 4 * a if x < 2 else 0.0

    kernel = np.array([cubic((i - np.floor(4 * factor / 2) + 0.5) / factor) for i in range(4 * factor)])
    kernel /= kernel.sum()
    rows = np.zeros((n // factor, n))
    half = len(kernel) // 2
    for i in range(factor // 2, n + factor // 2, factor):
        for j in range(i - half, i + half):
            k = -j - 1 if j < 0 else ((n - 1) - (j - n) if j >= n else j)
            rows[i // factor, k] += kernel[j - i + half]
    return rows


@pytest.mark.parametrize("n", [32, 64])
def test_sr4_options_are_i2sb_pool_and_ddrm_bicubic(n):
    x = torch.rand(2, 3, n, n, dtype=torch.float64, generator=torch.Generator().manual_seed(n)) * 2 - 1
    pool = operators.build("sr4", shape=(3, n, n), kernel="pool")
    torch.testing.assert_close(pool(x), x.reshape(2, 3, n // 4, 4, n // 4, 4).mean(dim=(3, 5)))
    bicubic = operators.build("sr4", shape=(3, n, n), kernel="ddrm-bicubic")
    rows = torch.from_numpy(_ddrm_srconv_rows(n, 4))
    torch.testing.assert_close(bicubic(x), rows @ x @ rows.T)
    # DDRM zeroes 1-D singular values below 3e-2 before applying H; none is that small at ×4
    assert float(torch.linalg.svdvals(rows).min()) > 0.3
    assert not torch.allclose(bicubic(x), operators.build("sr4", shape=(3, n, n))(x))  # not our sr4
    with pytest.raises(operators.OperatorError, match="unknown SR kernel"):
        operators.build("sr4", shape=(3, n, n), kernel="lanczos")


def test_command_line_import(tmp_path, capsys):
    from bench.cli import main

    src = write_source(tmp_path / "src")
    dest = tmp_path / "bridge"
    assert main(["import-bridge", str(src), str(dest), "--task", "sr4", "--adm-options", str(src / "adm.pkl")]) == 0
    assert f"--set cddb.bridge={dest}" in capsys.readouterr().out
    (src / "options.pkl").write_bytes(pickle.dumps(i2sb_options(load=_RunsACommand(tmp_path / "executed"))))
    assert main(["import-bridge", str(src), str(tmp_path / "other"), "--adm-options", str(src / "adm.pkl")]) == 2
    assert "refused to unpickle" in capsys.readouterr().err and not (tmp_path / "executed").exists()


def test_bench_run_runs_the_released_bridge_on_its_own_operator_only(imported, tmp_path, capsys):
    """The released x4 bridge was trained on I²SB's pool kernel: `bench run --tasks sr4-pool` runs it (one step),
    while our sr4 (antialiased bicubic) records every unit unsupported, never run on a degradation it never saw."""
    from PIL import Image

    from bench.cli import main
    from bench.pipeline.store import ResultStore

    dest, _, _ = imported
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(2):
        pixels = np.random.default_rng(i).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(photos / f"{i}.png")
    out = tmp_path / "out"
    argv = ["run", "--prior", f"gaussian:{SIZE}", "--dataset", f"folder:{photos}", "--out", str(out)]
    argv += ["--no-progress", "--tasks", "sr4,sr4-pool", "--sigma", "0", "--metrics", "psnr", "--solvers", "cddb"]
    assert main([*argv, "--set", f"cddb.bridge={dest}", "--set", "cddb.nfe=1"]) == 0
    capsys.readouterr()
    table = ResultStore(out).units().set_index(["task", "image_id"]).sort_index()
    assert (table.loc["sr4", "status"] == "unsupported").all()
    assert table.loc["sr4", "error"].str.contains("kernel: 'pool'").all()  # the reason names what differs
    ran = table.loc["sr4-pool"]
    assert (ran["status"] == "ok").all() and ran["psnr"].notna().all() and (ran["own_nfe"] == 1).all()
