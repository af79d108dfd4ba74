"""Where DDC's 5 steps gain or lose quality: x̂₀,y along the sampling trajectory against one-shot corrections.

    python scripts/ddc_trajectory.py --solver ddc --tasks denoise,sr4 --n-images 8 --sigma 0.05

For each task, on the first --n-images Kodak photos (64x64), at each of the sampler's steps (t = 800 ... 0):
- "trajectory": along the sampler's own run, the prior's x̂₀ (clipped, as φ sees it), φ's corrected x̂₀,y, its
  consistency ‖A(x̂₀,y) − y‖/√m (2σ for an estimate that explains y), its colour error (the largest
  per-channel mean error) and φ's correction Δ averaged per channel;
- "one-shot": the same from x_t drawn by the forward process around the true image, i.e. what Alg. 2 trains.
A one-shot column far above the trajectory's at the same t means the trajectory drifted: the step before left
x_t holding another image, which the prior then trusts and φ, trained on true x_t, does not undo.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import operators  # noqa: E402
import solvers  # noqa: E402
from bench import metrics  # noqa: E402
from bench.data import load_dataset  # noqa: E402
from bench.priors import load_prior  # noqa: E402
from solvers.ddc import measurement_to_image  # noqa: E402


def psnr(estimate: torch.Tensor, truth: torch.Tensor) -> float:
    """Mean PSNR in dB over the batch, as the runner scores it."""
    return float(metrics.psnr(estimate, truth).mean())


def consistency(op, estimate: torch.Tensor, y: torch.Tensor) -> float:
    """Mean ‖A(x̂) − y‖/√m over the batch, as the runner scores it (2σ for an estimate that explains y)."""
    return float(metrics.consistency(op, estimate.clamp(-1, 1), y).mean())


def colour_error(estimate: torch.Tensor, truth: torch.Tensor) -> float:
    """Mean over images of the largest |per-channel mean error| (a colour cast shows here first)."""
    return float((estimate - truth).mean(dim=(2, 3)).abs().amax(dim=1).mean())


def channel_mean(delta: torch.Tensor) -> str:
    """φ's correction averaged over images and pixels, per channel."""
    return "(" + ", ".join(f"{v:+.3f}" for v in delta.mean(dim=(0, 2, 3)).tolist()) + ")"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--solver", default="ddc", help="ddc or ddc-nolpips")
    parser.add_argument("--set", action="append", default=[], metavar="OPTION=VALUE", help="solver option")
    parser.add_argument("--tasks", default="sr4,sr8,gblur,inpaint,jpeg10,denoise")
    parser.add_argument("--sigma", type=float, default=0.05)
    parser.add_argument("--n-images", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    prior = load_prior("natural64")
    ids, truth = next(load_dataset("kodak24", size=prior.image_shape[1]).batches(args.n_images))
    overrides = solvers.parse_overrides([f"{args.solver}.{item}" for item in args.set]).get(args.solver, {})
    solver = solvers.build(args.solver, **overrides)
    phi = solver.phi(prior.device)
    generator = torch.Generator().manual_seed(args.seed)
    print(
        "| task | t | trajectory prior x̂₀ | trajectory x̂₀,y | consistency | colour error | Δ channel mean "
        "| one-shot prior x̂₀ | one-shot x̂₀,y | one-shot consistency | one-shot colour error | A⁺y |"
    )
    print("|---" * 12 + "|")
    for task in operators.resolve_tasks(args.tasks):
        op = operators.build(task, shape=prior.image_shape).for_images(ids, args.seed)
        y = op.measure(truth, args.sigma, operators.image_generators(args.seed, ids, "noise"))
        y_image = measurement_to_image(y, op, solver.config.y_to_image)
        along: dict[int, dict[str, float]] = {}

        def record(step, t, x_t, eps, x0, along=along, y_image=y_image, op=op, y=y):
            t_batch = torch.full((len(ids),), t, dtype=torch.long)
            with torch.no_grad():
                prior_x0 = prior.predict(x_t, t_batch).x0
                prior_x0 = prior_x0.clamp(-1, 1) if solver.config.clip_x0 else prior_x0
            along[t] = {
                "prior": psnr(prior_x0, truth),
                "corrected": psnr(x0, truth),
                "consistency": consistency(op, x0, y),
                "colour": colour_error(x0, truth),
                "delta": channel_mean(prior_x0 - x0),
            }

        solver.reconstruct(
            y,
            op,
            prior,
            sigma=args.sigma,
            generators=operators.image_generators(args.seed, ids, "solver"),
            callback=record,
        )
        baseline = psnr(op.pinv(y), truth)
        for t, row in along.items():
            t_batch = torch.full((len(ids),), t, dtype=torch.long)
            a = prior.alpha_bar(t_batch)
            x_t = a.sqrt() * truth + (1 - a).sqrt() * torch.randn(truth.shape, generator=generator)
            with torch.no_grad():
                x0 = prior.predict(x_t, t_batch).x0
                x0 = x0.clamp(-1, 1) if solver.config.clip_x0 else x0
                corrected = x0 - phi(x0, y_image, t_batch)
            print(
                f"| {task} | {t} | {row['prior']:.2f} | {row['corrected']:.2f} | {row['consistency']:.3f} | "
                f"{row['colour']:.3f} | {row['delta']} | {psnr(x0, truth):.2f} | {psnr(corrected, truth):.2f} | "
                f"{consistency(op, corrected, y):.3f} | {colour_error(corrected, truth):.3f} | {baseline:.2f} |"
            )


if __name__ == "__main__":
    main()
