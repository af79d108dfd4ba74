"""Train the embedded `natural64` prior on one GPU within a time budget, then draw the samples its evidence needs.

    python scripts/natural64_gpu.py --data <photos> --out <dir> --train-minutes 5.5 --deadline-minutes 9

Writes into --out: the final prior as a diffusers folder packed into `final.tar` (split into 15 MB parts so
each part travels), and uint8 sample arrays: `samples_ddim50.npz` (64 DDIM-50 samples),
`samples_ddpm1000.npz` (DDPM-1000 samples of the final prior) and `samples_ddpm1000_step2000.npz` (the same
for the EMA snapshot at step 2000). FID/KID against held-out photos are computed from these afterwards.
Sampling jobs that would not finish before --deadline-minutes are skipped and say so.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tarfile
import time
from pathlib import Path

import numpy as np
import torch

from bench.priors.train import linear_alphas_cumprod, train_prior
from bench.sampling import ddim_sample, ddpm_sample
from bench.training import TrainConfig
from operators import image_generators


def to_uint8(x: torch.Tensor) -> np.ndarray:
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def load_eps_fn(folder: Path, device: str, amp: bool):
    from diffusers import UNet2DModel

    unet = UNet2DModel.from_pretrained(folder / "unet").to(device).eval()

    def eps_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16, enabled=amp):
            return unet(x, t).sample.float()

    return eps_fn


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--train-minutes", type=float, default=5.5)
    parser.add_argument("--deadline-minutes", type=float, default=9.0)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--workers", type=int, default=12)
    parser.add_argument("--n-samples", type=int, default=1000)
    parser.add_argument("--snapshot-step", type=int, default=2000)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dry-run", action="store_true", help="a 20-step schedule for sampling: checks plumbing only")
    parser.add_argument("--data-note", default="{}", help="JSON merged into the provenance's data record")
    args = parser.parse_args()
    started = time.perf_counter()
    deadline = started + 60 * args.deadline_minutes
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    amp = args.device.startswith("cuda")
    if amp:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True

    run_dir = Path("/tmp/natural64-run") if amp else out / "run"
    config = TrainConfig(
        steps=1_000_000,
        batch_size=args.batch_size,
        lr=args.lr,
        checkpoint_every=5000,
        snapshot_steps=(args.snapshot_step,),
        device=args.device,
        amp_dtype="bf16" if amp else None,
        max_wall_seconds=60 * args.train_minutes,
    )
    final = train_prior(
        args.data,
        run_dir,
        config=config,
        workers=args.workers,
        progress=False,
        data_note=json.loads(args.data_note),
    )
    print(
        f"trained in {time.perf_counter() - started:.0f}s",
        json.loads((final / "provenance.json").read_text())["steps"],
        "steps",
        flush=True,
    )
    with tarfile.open(run_dir / "final.tar", "w") as tar:
        tar.add(final, arcname="final")
    subprocess.run(["split", "-b", "15M", "-d", str(run_dir / "final.tar"), str(out / "final.tar.part")], check=True)

    alphas_cumprod = linear_alphas_cumprod().double()
    if args.dry_run:
        alphas_cumprod = alphas_cumprod[:20]
    jobs = [
        ("samples_ddim50.npz", final, "ddim", 64),
        ("samples_ddpm1000.npz", final, "ddpm", args.n_samples),
        (
            f"samples_ddpm1000_step{args.snapshot_step}.npz",
            run_dir / f"ema-step{args.snapshot_step:07d}",
            "ddpm",
            args.n_samples,
        ),
    ]
    seconds_per_ddpm_sample = None
    for name, folder, sampler, n in jobs:
        if not folder.exists():
            print(f"skip {name}: {folder} was not written (training ended before that step)", flush=True)
            continue
        if (
            seconds_per_ddpm_sample
            and sampler == "ddpm"
            and time.perf_counter() + n * seconds_per_ddpm_sample > deadline
        ):
            print(f"skip {name}: would not finish before the deadline", flush=True)
            continue
        eps_fn = load_eps_fn(folder, args.device, amp)
        generators = image_generators(0, [f"sample-{i}" for i in range(n)], "prior-sample", device=args.device)
        begin = time.perf_counter()
        if sampler == "ddim":
            x = ddim_sample(
                eps_fn, alphas_cumprod, (3, 64, 64), generators, steps=min(50, len(alphas_cumprod)), device=args.device
            )
        else:
            x = ddpm_sample(eps_fn, alphas_cumprod, (3, 64, 64), generators, device=args.device)
        elapsed = time.perf_counter() - begin
        if sampler == "ddpm":
            seconds_per_ddpm_sample = elapsed / n
        np.savez_compressed(out / name, samples=to_uint8(x))
        print(f"{name}: {n} samples in {elapsed:.1f}s", flush=True)
    print(f"total {time.perf_counter() - started:.0f}s", flush=True)


if __name__ == "__main__":
    main()
