"""ΠGDM's options under measurement noise on real photos: PSNR, consistency, colour saturation, clipped pixels.

    python scripts/pigdm_under_noise.py --task sr4 --sigma 0.05 --n-images 4

Consistency is the RMS of A(x̂) − y (its right value is the noise std 2σ); chroma is the mean distance of a pixel
from its grey value (the photos' own figure is printed beside). The README's "ΠGDM under noise" table comes
from this script.
"""

from __future__ import annotations

import argparse
import time

import torch

import operators
import solvers
from bench.data import load_dataset
from bench.priors import load_prior

VARIANTS = {
    "default": {},
    "likelihood=noiseless": {"likelihood": "noiseless"},
    "eta=0": {"eta": 0.0},
    "official config": {"likelihood": "noiseless", "eta": 0.0, "steps": 50},
}


def psnr(estimate: torch.Tensor, truth: torch.Tensor) -> float:
    return float((10 * torch.log10(4 / (estimate - truth).square().mean((1, 2, 3)))).mean())


def chroma(images: torch.Tensor) -> float:
    return float((images - images.mean(1, keepdim=True)).abs().mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="sr4")
    parser.add_argument("--sigma", type=float, default=0.05)
    parser.add_argument("--n-images", type=int, default=4)
    parser.add_argument("--dataset", default="folder:../shared/data/kodak24")
    parser.add_argument("--prior", default="natural64")
    args = parser.parse_args()
    prior = load_prior(args.prior)
    dataset = load_dataset(
        args.dataset, size=prior.image_shape[1], channels=prior.image_shape[0], n_images=args.n_images
    )
    ids = dataset.ids
    truth = torch.stack([dataset[i][1] for i in range(len(ids))])
    op = operators.build(args.task, shape=prior.image_shape).for_images(ids, seed=0)
    y = op.measure(truth, args.sigma, operators.image_generators(0, ids, "noise"))
    print(
        f"{args.task} σ={args.sigma}: photos' chroma {chroma(truth):.3f}, A⁺y {psnr(op.pinv(y).clamp(-1, 1), truth):.2f} dB"
    )
    for label, options in VARIANTS.items():
        start = time.perf_counter()
        solver = solvers.build("pigdm", **options)
        estimate = solver.reconstruct(
            y, op, prior, sigma=args.sigma, generators=operators.image_generators(0, ids, "s")
        )
        consistency = float((op(estimate) - y).square().mean().sqrt())
        clipped = float((estimate.abs() >= 0.999).float().mean())
        print(
            f"{label:22s} PSNR {psnr(estimate, truth):6.2f}  consistency {consistency:.4f}  chroma {chroma(estimate):.3f}"
            f"  at ±1 {100 * clipped:.1f}%  ({time.perf_counter() - start:.0f} s)",
            flush=True,
        )


if __name__ == "__main__":
    main()
