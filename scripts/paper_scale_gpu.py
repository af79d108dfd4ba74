"""The DDC paper's scale on one GPU, measured once: run this on a machine with CUDA.

    python scripts/paper_scale_gpu.py --out docs/paper-scale

Four sections, each written to <out>/<section>.json as soon as it is done, then <out>/summary.json and
<out>/tables.md (the tables as Markdown):

* speed: `bench speed` on the 552.8M-parameter ADM-256 architecture with random weights (it costs what the
  checkpoint costs), every solver at its paper step count, batch 1 and 16, in fp32 and in bf16;
* compile: DDC and DDNM in bf16 with torch.compile off and on;
* dps_memory: DPS's peak memory at batch 8 in fp32 and bf16, with gradient checkpointing of the prior off and on;
* precision: how far bf16 moves the reconstructions: DDNM and DDC on 4 photos (scikit-image's bundled ones) with
  the embedded natural64 prior and its shipped φ, PSNR of the bf16 result against the fp32 one and of both
  against the photo.

Solves are timed at --steps-measured steps and extrapolated to the paper's count (see bench/speed.py).
`--dry-run` runs every section at toy sizes on the CPU in a few minutes (the Gaussian prior for the tables, the
tiny ADM for DPS memory in fp32 only, 2 steps): it checks the script, not the GPU; its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import operators  # noqa: E402
import solvers  # noqa: E402
from bench import speed  # noqa: E402
from bench.files import atomic_write_text  # noqa: E402


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/paper-scale", help="folder for the JSON files (default: %(default)s)")
    parser.add_argument("--prior", default="adm-random:imagenet256", help="prior timed (default: %(default)s)")
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    parser.add_argument(
        "--steps-measured", type=int, default=10, help="steps timed per solve before extrapolating (default 10)"
    )
    parser.add_argument("--dry-run", action="store_true", help="every section at toy sizes on the CPU")
    args = parser.parse_args(argv)
    if not args.dry_run and args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("CUDA is not available here; run on a GPU machine, or pass --dry-run to check the script")
    settings = dry_run_settings(args) if args.dry_run else full_settings(args)
    out = Path(args.out)
    started = time.perf_counter()
    sections: dict[str, Any] = {}
    for name, run in (
        ("speed", speed_section),
        ("compile", compile_section),
        ("dps_memory", dps_memory_section),
        ("precision", precision_section),
    ):
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
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
