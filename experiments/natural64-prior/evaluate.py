"""Evidence of a prior's quality, on held-out photos.

    python experiments/natural64-prior/evaluate.py --prior natural64 --heldout kodak24 \
        --samples final=samples_ddpm1000.npz --samples step2000=samples_ddpm1000_step2000.npz \
        --grid ddpm1000=samples_ddpm1000.npz --grid ddim50=samples_ddim50.npz --out docs/natural64

1. Tweedie denoiser: PSNR of x̂₀(x_t, t) against the clean crop at t = 50, 200, 500, beside the PSNR of the
   rescaled noisy input x_t / √ᾱ_t (what the network was given).
2. KID (mean ± std) and FID of each sample set against as many held-out crops, drawn at random scales
   like the training crops (so the reference matches the distribution the prior was trained on).
3. An 8×8 grid of the first 64 samples of each --grid set, as PNG.
Prints a Markdown table and writes `evaluation.json` beside the grids.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from bench.data import RandomCrops, load_dataset
from bench.metrics import psnr
from bench.metrics.inception import fid_kid
from bench.priors import load_prior


def heldout_crops(spec: str, size: int, n: int, seed: int = 2024) -> torch.Tensor:
    dataset = load_dataset(spec, size=size)  # resolves the folder and checks it exists
    crops = RandomCrops(dataset.root, size, seed=seed)
    return torch.cat([crops.batch(min(100, n - i)) for i in range(0, n, 100)])


def tweedie_table(prior, clean: torch.Tensor, steps=(50, 200, 500), seed: int = 0) -> list[dict]:
    rows = []
    generator = torch.Generator().manual_seed(seed)
    for t in steps:
        noise = torch.randn(clean.shape, generator=generator)
        a = prior.alpha_bar(t)
        x_t = a.sqrt() * clean + (1 - a).sqrt() * noise
        with torch.no_grad():
            x0 = torch.cat([prior.x0(x_t[i : i + 32], t) for i in range(0, len(x_t), 32)]).clamp(-1, 1)
        rows.append(
            {
                "t": t,
                "noise_std_0_1": float(((1 - a) / a).sqrt()) / 2,
                "psnr_noisy_input": psnr((x_t / a.sqrt()).clamp(-1, 1), clean).mean().item(),
                "psnr_tweedie": psnr(x0, clean).mean().item(),
            }
        )
    return rows


def save_grid(samples: np.ndarray, path: Path, columns: int = 8) -> None:
    tiles = samples[: columns * columns]
    n, h, w, c = tiles.shape
    rows = n // columns
    grid = (
        tiles[: rows * columns]
        .reshape(rows, columns, h, w, c)
        .transpose(0, 2, 1, 3, 4)
        .reshape(rows * h, columns * w, c)
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid).save(path)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--prior", default="natural64")
    parser.add_argument("--heldout", default="kodak24")
    parser.add_argument("--samples", action="append", default=[], help="name=file.npz (uint8 N,H,W,C)")
    parser.add_argument("--grid", action="append", default=[], help="name=file.npz")
    parser.add_argument("--n-denoise", type=int, default=96)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    out = Path(args.out)
    torch.manual_seed(0)
    prior = load_prior(args.prior)
    size = prior.image_shape[-1]
    report: dict = {"prior": prior.spec(), "heldout": args.heldout}

    clean = heldout_crops(args.heldout, size, args.n_denoise, seed=7)
    report["tweedie"] = tweedie_table(prior, clean)
    print("| t | noise std (0-1 scale) | PSNR noisy input | PSNR Tweedie x̂₀ |\n|---|---|---|---|")
    for row in report["tweedie"]:
        print(
            f"| {row['t']} | {row['noise_std_0_1']:.3f} | {row['psnr_noisy_input']:.2f} dB | {row['psnr_tweedie']:.2f} dB |"
        )

    report["sets"] = {}
    for item in args.samples:
        name, path = item.split("=", 1)
        samples = np.load(path)["samples"]
        reference = heldout_crops(args.heldout, size, len(samples))
        fake = torch.from_numpy(samples).permute(0, 3, 1, 2).float() / 127.5 - 1
        report["sets"][name] = dataclasses.asdict(fid_kid(fake, reference))
        print(name, report["sets"][name])

    for item in args.grid:
        name, path = item.split("=", 1)
        save_grid(np.load(path)["samples"], out / f"samples_{name}.png")
    out.mkdir(parents=True, exist_ok=True)
    (out / "evaluation.json").write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
