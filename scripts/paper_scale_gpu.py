"""The DDC paper's scale on one GPU, measured once: run this on a machine with CUDA.

    python scripts/paper_scale_gpu.py --out docs/paper-scale

Five sections, each written to <out>/<section>.json as soon as it is done, then <out>/summary.json and
<out>/tables.md (the tables as Markdown); `--sections checks` runs only the first:

* checks: GPU smoke checks, each "pass", "fail" or "skipped" with its reason (`checks_section`): ADM's attention
  on a fused SDPA kernel, FID's Inception on CUDA against the CPU, float16 with gradients (refused for solvers,
  loss-scaled in training), one unit of every solver on every task, torchrun with one process on the device;
  the script exits 1 when one fails;
* speed: `bench speed` on the 552.8M-parameter ADM-256 architecture with random weights (it costs what the
  checkpoint costs), every solver at its paper step count, batch 1 and 16, in fp32 and in bf16;
* compile: DDC and DDNM in bf16 with torch.compile off and on;
* dps_memory: DPS's peak memory at batch 8 in fp32 and bf16, with gradient checkpointing of the prior off and on;
* precision: how far bf16 moves the reconstructions: DDNM and DDC on 4 photos (scikit-image's bundled ones) with
  the embedded natural64 prior and its shipped φ, PSNR of the bf16 result against the fp32 one and of both
  against the photo.

Solves are timed at --steps-measured steps and extrapolated to the paper's count (see bench/tools/speed.py).
`--dry-run` runs every section at toy sizes on the CPU in a few minutes (the Gaussian prior for the tables, the
tiny ADM for DPS memory in fp32 only, 2 steps): it checks the script, not the GPU; its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

import operators
import solvers
from bench.files import atomic_write_text
from bench.tools import speed


@dataclasses.dataclass(frozen=True)
class Settings:
    prior: str
    device: str
    batch_sizes: tuple[int, ...]
    steps_measured: int | None
    phi_channels: tuple[int, ...]
    dps_prior: str
    dps_batch: int
    dps_dtypes: tuple[str, ...]
    precision_prior: str
    precision_solvers: tuple[str, ...]
    precision_steps: int | None  # None: the solvers' paper step counts
    compile_on: bool  # torch.compile's first graph takes minutes on a CPU: the dry run leaves it out
    attention_prior: str  # the ADM whose attention blocks the checks run under fused kernels only
    check_dtypes: tuple[str, ...]  # precisions of the attention check


def full_settings(args: argparse.Namespace) -> Settings:
    return Settings(
        prior=args.prior,
        device=args.device,
        batch_sizes=(1, 16),
        steps_measured=args.steps_measured,
        phi_channels=speed.PAPER_PHI_CHANNELS,
        dps_prior=args.prior,
        dps_batch=8,
        dps_dtypes=("fp32", "bf16"),
        precision_prior="natural64",
        precision_solvers=("ddnm", "ddc"),
        precision_steps=None,
        compile_on=True,
        attention_prior=args.prior,
        check_dtypes=("fp32", "bf16", "fp16"),
    )


def dry_run_settings(args: argparse.Namespace) -> Settings:
    return Settings(
        prior="gaussian",
        device="cpu",
        batch_sizes=(1, 2),
        steps_measured=2,
        phi_channels=(32, 32),
        dps_prior="adm-random:tiny",
        dps_batch=1,
        dps_dtypes=("fp32",),  # bf16 convolutions without CPU support for them take minutes at 256x256
        precision_prior="natural64",
        precision_solvers=("ddnm",),  # bf16 on a CPU without bf16 units: DDC's φ would take minutes
        precision_steps=2,
        compile_on=False,
        attention_prior="adm-random:tiny",
        check_dtypes=("fp32",),  # the network in bf16 on a CPU without bf16 units takes minutes at 256x256
    )


def write(out: Path, name: str, payload: Any) -> None:
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / name, json.dumps(payload, indent=2) + "\n")


def log(line: str) -> None:
    print(line, flush=True)


def speed_section(settings: Settings) -> dict[str, Any]:
    """Every solver, fp32 and bf16."""
    reports = {}
    for dtype in ("fp32", "bf16"):
        log(f"speed, {dtype}:")
        reports[dtype] = speed.speed_table(
            settings.prior,
            solvers.available(),
            settings.batch_sizes,
            steps_measured=settings.steps_measured,
            device=settings.device,
            dtype=dtype,
            phi_channels=settings.phi_channels,
            progress=log,
        )
    return reports


def compile_section(settings: Settings) -> dict[str, Any]:
    """DDC and DDNM in bf16, compile off and on (the compile time is each row's warmup_s)."""
    reports: dict[str, Any] = {}
    for compiled in (False, True):
        key = "compile_on" if compiled else "compile_off"
        if compiled and not settings.compile_on:
            reports[key] = {"skipped": "dry run: torch.compile's first graph takes minutes on a CPU"}
            continue
        log(f"compile {'on' if compiled else 'off'}:")
        reports[key] = speed.speed_table(
            settings.prior,
            ["ddc", "ddnm"],
            settings.batch_sizes,
            steps_measured=settings.steps_measured,
            device=settings.device,
            dtype="bf16",
            compile=compiled,
            phi_channels=settings.phi_channels,
            progress=log,
        )
    return reports


def dps_memory_section(settings: Settings) -> dict[str, Any]:
    """DPS at one batch size: peak memory in fp32 and bf16, checkpointing off and on."""
    reports = {}
    for dtype in settings.dps_dtypes:
        for checkpointing in (False, True):
            key = f"{dtype}_checkpointing_{'on' if checkpointing else 'off'}"
            log(f"DPS memory, {key}:")
            reports[key] = speed.speed_table(
                settings.dps_prior,
                ["dps"],
                [settings.dps_batch],
                steps_measured=2,
                device=settings.device,
                dtype=dtype,
                checkpointing=checkpointing,
                progress=log,
            )
    return reports


def photos(size: int, count: int = 4) -> torch.Tensor:
    """`count` of scikit-image's bundled colour photos, centre-cropped and resized to size x size, on [-1, 1]."""
    import numpy as np
    from PIL import Image
    from skimage import data

    images = []
    for name in ("astronaut", "coffee", "chelsea", "rocket")[:count]:
        image = Image.fromarray(getattr(data, name)())
        side = min(image.size)
        left, top = (image.width - side) // 2, (image.height - side) // 2
        image = image.crop((left, top, left + side, top + side)).resize((size, size), Image.BICUBIC)
        images.append(torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1))
    return torch.stack(images)


def precision_section(settings: Settings) -> dict[str, Any]:
    """The same solves in fp32 and bf16 (same measurements, same seeds): how far the reconstructions move."""
    from bench import metrics
    from bench.priors import load_prior

    priors = {
        dtype: load_prior(settings.precision_prior, device=settings.device, dtype=dtype) for dtype in ("fp32", "bf16")
    }
    clean = photos(priors["fp32"].image_shape[-1]).to(priors["fp32"].device)
    ids = [f"photo-{i}" for i in range(len(clean))]
    task, sigma = "sr4", 0.05
    op = operators.build(task, shape=priors["fp32"].image_shape).for_images(ids, 0)
    y = op.measure(clean, sigma, operators.image_generators(0, ids, "noise"))
    results: dict[str, Any] = {}
    for name in settings.precision_solvers:
        # DDC's shipped φ was trained at its 5 timesteps only, and 5 steps are cheap: it always runs them.
        shortened = settings.precision_steps if name == "ddnm" else None
        overrides = {"steps": shortened} if shortened else {}
        out = {}
        for dtype, prior in priors.items():
            solver = solvers.build(name, **overrides)
            generators = operators.image_generators(0, ids, "solver", device=prior.device)
            out[dtype] = solver.reconstruct(y, op, prior, sigma=sigma, generators=generators).float()
        results[name] = {
            "steps": solvers.build(name, **overrides).config.steps,
            "psnr_bf16_vs_fp32_db": metrics.psnr(out["bf16"], out["fp32"]).tolist(),
            "psnr_fp32_vs_photo_db": metrics.psnr(out["fp32"], clean).tolist(),
            "psnr_bf16_vs_photo_db": metrics.psnr(out["bf16"], clean).tolist(),
        }
        log(f"precision, {name}: bf16 vs fp32 {results[name]['psnr_bf16_vs_fp32_db']} dB")
    worst = min(min(r["psnr_bf16_vs_fp32_db"]) for r in results.values())
    return {
        "prior": settings.precision_prior,
        "task": task,
        "sigma": sigma,
        "images": len(clean),
        "solvers": results,
        "psnr_bf16_vs_fp32_db": worst,  # the lowest over solvers and photos
    }


# ----- checks: GPU smoke checks ---------------------------------------------------------------------------------
PASS, FAIL, SKIPPED = "pass", "fail", "skipped"
CUDA_ONLY = "CUDA only: on this device the check would prove nothing about the GPU code path"
# Largest |fused - reference| accepted per precision, outputs being O(1): float32 agrees to rounding, the
# 8- and 11-bit mantissas of bfloat16 and float16 to a few of their units.
ATTENTION_TOLERANCE = {"fp32": 1e-3, "bf16": 1e-1, "fp16": 2e-2}
_TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0] if text else ''}"


def _fused_attention(qkv: torch.Tensor, heads: int, reference: torch.Tensor) -> dict[str, Any]:
    """Which fused SDPA kernels take ADM's attention call: each alone, then the two together."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from bench.priors.adm import legacy_qkv_attention

    kernels = {
        "flash": [SDPBackend.FLASH_ATTENTION],
        "efficient": [SDPBackend.EFFICIENT_ATTENTION],
        "fused": [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION],
    }
    results: dict[str, Any] = {}
    for label, chosen in kernels.items():
        try:
            with sdpa_kernel(chosen), torch.no_grad():
                out = legacy_qkv_attention(qkv, heads)
            results[label] = {"ok": True, "max_abs_diff": float((out.float() - reference).abs().max())}
        except RuntimeError as error:  # "No available kernel": the call would fall back to the math kernel
            results[label] = {"ok": False, "error": _first_line(error)}
    return results


def check_fused_attention(settings: Settings, device: torch.device) -> dict[str, Any]:
    """(a) ADM's attention runs on flash / memory-efficient SDPA, the math kernel forbidden, in every precision,
    alone and in every attention block of a whole network; the old 3-D call is tried as the counter-example."""
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from bench.priors import load_prior
    from bench.priors.adm import legacy_qkv_attention_reference

    heads, channels, length = 4, 64, 32 * 32  # ImageNet-256 ADM's first attention: 64-channel heads at 32x32
    qkv = torch.randn(2, 3 * heads * channels, length, generator=torch.Generator().manual_seed(0)).to(device)
    reference = legacy_qkv_attention_reference(qkv, heads).float()
    kernels = {
        dtype: _fused_attention(qkv.to(_TORCH_DTYPES[dtype]), heads, reference) for dtype in settings.check_dtypes
    }
    fused_ok = all(
        k["fused"]["ok"] and k["fused"]["max_abs_diff"] < ATTENTION_TOLERANCE[dtype] for dtype, k in kernels.items()
    )
    prior = load_prior(settings.attention_prior, device=device)
    x = torch.randn(1, *prior.image_shape, generator=torch.Generator().manual_seed(1)).to(device)
    try:
        with sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]), torch.no_grad():
            out = prior.network(x, torch.tensor([500], device=device))
        network = {"ok": bool(torch.isfinite(out).all())}
    except RuntimeError as error:
        network = {"ok": False, "error": _first_line(error)}
    q = qkv[:, : heads * channels].reshape(2 * heads, channels, length).transpose(1, 2).contiguous()
    try:
        with sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]), torch.no_grad():
            F.scaled_dot_product_attention(q, q, q)
        three_d = "accepted"
    except RuntimeError as error:
        three_d = f"rejected ({_first_line(error)})"
    result: dict[str, Any] = {
        "kernels": kernels,
        "network": {"prior": settings.attention_prior, **network},
        "legacy_3d_call_under_fused_kernels": three_d,  # CUDA rejects it: the reason for the 4-D layout
    }
    if device.type != "cuda":
        return {"status": SKIPPED, "reason": CUDA_ONLY + " (CPU's flash kernel takes 3-D inputs too)", **result}
    return {"status": PASS if fused_ok and network["ok"] else FAIL, **result}


def check_inception_devices(settings: Settings, device: torch.device) -> dict[str, Any]:
    """(b) FID's TorchScript Inception: features of the same photos on CUDA and on the CPU, with cuDNN's TF32
    convolutions as the process has them (torch's default: on) and off."""
    if device.type != "cuda":
        return {"status": SKIPPED, "reason": CUDA_ONLY + " (it compares CUDA features with CPU ones)"}
    from bench import weights
    from bench.metrics import inception

    try:
        weights.resolve("inception-fid")
    except weights.WeightsError as error:
        return {"status": SKIPPED, "reason": f"no Inception weights on this machine: {_first_line(error)}"}
    images = photos(128)
    cpu = inception.inception_features(images, "cpu")
    scale = float(abs(cpu).max())
    result: dict[str, Any] = {"images": len(images), "max_abs_feature": scale}
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    try:
        for label, tf32 in (("default", saved), ("tf32_off", (False, False))):
            torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32
            gpu = inception.inception_features(images, device)
            result[label] = {"tf32_cudnn": tf32[0], "tf32_matmul": tf32[1], "max_abs_diff": float(abs(gpu - cpu).max())}
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved
    # float32 on both sides agrees to ~1e-5 relative; TF32 rounds convolution inputs to 10 mantissa bits
    passed = result["tf32_off"]["max_abs_diff"] < 1e-3 * scale and result["default"]["max_abs_diff"] < 1e-2 * scale
    return {"status": PASS if passed else FAIL, **result}


def check_fp16_gradients(settings: Settings, device: torch.device) -> dict[str, Any]:
    """(c) float16 with gradients: solvers that backpropagate through the prior refuse it (naming bf16) before
    any work, and training scales its loss (a tiny network's fp16 steps on the device stay finite)."""
    from bench.priors import load_prior
    from bench.training import TrainConfig, Trainer
    from solvers.base import SolverError

    refused = {
        name: reason for name in solvers.available() if (reason := solvers.build(name).precision_mismatch("fp16"))
    }
    prior = load_prior("gaussian", device=device, dtype="fp16")
    op = operators.build("sr4", shape=prior.image_shape)
    y = op(torch.zeros(1, *prior.image_shape, device=device))
    try:
        solvers.build("dps", steps=2).reconstruct(y, op, prior, sigma=0.0, generators=[torch.Generator(device)])
        dps = "ran: float16 DPS was not refused"
    except SolverError as error:
        dps = f"refused: {error}"
    network = torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.SiLU(), torch.nn.Conv2d(16, 3, 3, padding=1)
    )
    batch = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))

    def loss_fn(net: torch.nn.Module, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return (net(images).float() - images).square().mean()

    config = TrainConfig(steps=3, batch_size=4, warmup_steps=1, device=str(device), amp_dtype="fp16")
    with tempfile.TemporaryDirectory() as folder:
        trainer = Trainer(network, loss_fn, lambda b: batch, torch.Generator(), config, folder)
        losses = [float(trainer.train_step()) for _ in range(config.steps)]
    training = {"scaler_enabled": trainer.scaler.is_enabled(), "scale": trainer.scaler.get_scale(), "losses": losses}
    passed = (
        {"dps", "pigdm"} <= set(refused)
        and dps.startswith("refused") and "bf16" in dps
        and training["scaler_enabled"] and all(math.isfinite(v) for v in losses)
    )  # fmt: skip
    return {"status": PASS if passed else FAIL, "refused": refused, "dps": dps, "training": training}


def check_every_solver(settings: Settings, device: torch.device) -> dict[str, Any]:
    """(d) One unit of every solver on every task (2 steps) on the timed prior: finite, or refused saying why."""
    from bench.priors import load_prior

    prior = load_prior(settings.prior, device=device)
    stand_ins = {
        name: {
            k: n.to(device)
            for k, n in solvers.get(name).stand_in_networks(prior.image_shape, settings.phi_channels).items()
        }
        for name in solvers.available()
    }
    ids = ["check"]
    clean = torch.rand(1, *prior.image_shape, generator=torch.Generator().manual_seed(0)).to(device) * 2 - 1
    tasks: dict[str, dict[str, str]] = {}
    for task in operators.available():
        op = operators.build(task, shape=prior.image_shape).for_images(ids, 0)
        y = op.measure(clean, 0.05, operators.image_generators(0, ids, "noise"))
        tasks[task] = {}
        for name in solvers.available():
            solver = speed.build_solver(name, 2 if speed.step_field(solvers.get(name)) else None, stand_ins[name])
            if reason := solver.missing_weights() or solver.unsupported(op, 0.05):
                tasks[task][name] = f"refused: {reason}"
                continue
            try:
                generators = operators.image_generators(0, ids, "solver", device=device)
                x = solver.reconstruct(y, op, prior, sigma=0.05, generators=generators)
                tasks[task][name] = "ok" if bool(torch.isfinite(x).all()) else "not finite"
            except Exception as error:  # noqa: BLE001 - every solver is tried; the failure is the result
                tasks[task][name] = f"error: {_first_line(error)}"
    bad = [
        f"{task}/{name}"
        for task, row in tasks.items()
        for name, state in row.items()
        if not state.startswith(("ok", "refused"))
    ]
    return {"status": FAIL if bad else PASS, "prior": settings.prior, "size": prior.image_shape[-1], "bad": bad, "tasks": tasks}


def check_torchrun(settings: Settings, device: torch.device) -> dict[str, Any]:
    """(e) `bench run` under torchrun with one process: it exits 0 and its rows name the device the rank
    mapping gives (cuda:<LOCAL_RANK> on a GPU)."""
    import subprocess

    from bench.pipeline.settings import resolve_device
    from bench.pipeline.store import ResultStore

    env_of_rank = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1"}
    expected = resolve_device(settings.device, env_of_rank, torch.cuda.device_count())
    root = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory() as folder:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "1", "-m"]
        command += ["bench", "run", "--prior", "gaussian:32", "--n-images", "1", "--solvers", "pinv", "--tasks"]
        command += ["sr4", "--sigma", "0", "--metrics", "psnr", "--device", settings.device, "--no-progress"]
        command += ["--out", str(Path(folder) / "run")]
        done = subprocess.run(command, cwd=root, capture_output=True, text=True, timeout=300)
        rows = ResultStore(Path(folder) / "run").raw_units() if done.returncode == 0 else None
    devices = sorted(set(rows["device"])) if rows is not None and not rows.empty else []
    result = {"returncode": done.returncode, "expected_device": expected, "devices": devices}
    if done.returncode:
        result["stderr"] = done.stderr[-2000:]
    return {"status": PASS if done.returncode == 0 and devices == [expected] else FAIL, **result}


CHECKS = (
    ("fused_attention", check_fused_attention),
    ("inception_cuda_vs_cpu", check_inception_devices),
    ("fp16_gradients", check_fp16_gradients),
    ("every_solver_every_task", check_every_solver),
    ("torchrun_one_process", check_torchrun),
)


def checks_section(settings: Settings) -> dict[str, Any]:
    """Every check of `CHECKS` on the device; an exception is that check's failure, the others still run."""
    device = torch.device(settings.device)
    if device.type == "cuda":
        device = torch.device("cuda", torch.cuda.current_device())
    results: dict[str, Any] = {}
    for name, check in CHECKS:
        began = time.perf_counter()
        try:
            results[name] = check(settings, device)
        except Exception as error:  # noqa: BLE001 - a crashed check is a failed one, recorded with its reason
            results[name] = {"status": FAIL, "error": _first_line(error)}
        results[name]["seconds"] = round(time.perf_counter() - began, 2)
        log(
            f"check {name}: {results[name]['status']}"
            + (f" ({results[name]['reason']})" if "reason" in results[name] else "")
        )
    failed = [name for name, result in results.items() if result["status"] == FAIL]
    return {"device": str(device), "failed": failed, "checks": results}


def tables(sections: dict[str, Any]) -> str:
    """Every timing report of the run as Markdown."""
    parts = []
    for section, reports in sections.items():
        if not isinstance(reports, dict):
            continue
        for key, report in reports.items():
            if isinstance(report, dict) and "rows" in report:
                parts += [f"## {section}: {key}", "", speed.format_table(report), ""]
    return "\n".join(parts)


# The checks first: they take a minute and say whether the hours of timing after them can be trusted.
SECTIONS = {
    "checks": checks_section,
    "speed": speed_section,
    "compile": compile_section,
    "dps_memory": dps_memory_section,
    "precision": precision_section,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/paper-scale", help="folder for the JSON files (default: %(default)s)")
    parser.add_argument("--prior", default="adm-random:imagenet256", help="prior timed (default: %(default)s)")
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    parser.add_argument(
        "--steps-measured", type=int, default=10, help="steps timed per solve before extrapolating (default 10)"
    )
    parser.add_argument("--dry-run", action="store_true", help="every section at toy sizes on the CPU")
    parser.add_argument(
        "--sections", default=",".join(SECTIONS), help="comma-separated sections to run (default: %(default)s)"
    )
    args = parser.parse_args(argv)
    chosen = [name.strip() for name in args.sections.split(",") if name.strip()]
    if not chosen or any(name not in SECTIONS for name in chosen):
        parser.error(f"--sections takes names among {', '.join(SECTIONS)}, got {args.sections!r}")
    if not args.dry_run and args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("CUDA is not available here; run on a GPU machine, or pass --dry-run to check the script")
    settings = dry_run_settings(args) if args.dry_run else full_settings(args)
    out = Path(args.out)
    started = time.perf_counter()
    sections: dict[str, Any] = {}
    for name in chosen:
        run = SECTIONS[name]
        began = time.perf_counter()
        sections[name] = run(settings)
        write(out, f"{name}.json", sections[name])
        log(f"{name}: {time.perf_counter() - began:.0f} s")
    summary = {
        "dry_run": args.dry_run,
        "device": speed.device_name(torch.device(settings.device)),
        "torch": torch.__version__,
        "settings": dataclasses.asdict(settings),
        "sections": sorted(sections),
        "wall_s": time.perf_counter() - started,
    }
    write(out, "summary.json", summary)
    atomic_write_text(out / "tables.md", tables(sections))
    log(f"wrote {out}/ in {summary['wall_s']:.0f} s")
    failed = sections.get("checks", {}).get("failed", [])
    if failed:
        log(f"failed checks: {', '.join(failed)} (see {out}/checks.json)")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
