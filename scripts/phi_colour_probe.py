"""Can φ shift an image's colours? Its per-image channel-mean correction against the one that was needed.

    python scripts/phi_colour_probe.py --network bench/assets/ddc-natural64 --task sr4 --t 800

On the first --n-images Kodak photos (64x64, σ = 0.05), from x_t drawn by the forward process at --t, prints:
- the spread over images of the per-channel mean correction that would fix x̂₀'s colours, mean(x̂₀ − x₀);
- the spread of φ's own per-channel mean Δ, and their correlation;
- the spread over images of the per-channel means of φ's last features, before and after its final GroupNorm.
A final GroupNorm with one channel per group (φ's 16-channel top level) leaves exactly zero there, so Δ can
follow a per-image colour shift only through the nonlinearity after it; `train-ddc --output-dc` passes it on.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import operators  # noqa: E402
from bench.data import load_dataset  # noqa: E402
from bench.priors import load_prior  # noqa: E402
from solvers.ddc import load_phi, measurement_to_image  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--network", default="bench/assets/ddc-natural64")
    parser.add_argument("--task", default="sr4")
    parser.add_argument("--t", type=int, default=800)
    parser.add_argument("--n-images", type=int, default=16)
    args = parser.parse_args()
    prior = load_prior("natural64")
    ids, truth = next(load_dataset("kodak24", size=prior.image_shape[1]).batches(args.n_images))
    phi, _ = load_phi(args.network)
    op = operators.build(args.task, shape=prior.image_shape).for_images(ids, 0)
    y = op.measure(truth, 0.05, operators.image_generators(0, ids, "noise"))
    t = torch.full((len(ids),), args.t)
    a = prior.alpha_bar(t)
    x_t = a.sqrt() * truth + (1 - a).sqrt() * torch.randn(truth.shape, generator=torch.Generator().manual_seed(0))
    features = {}
    hook = phi.unet.conv_norm_out.register_forward_hook(lambda m, i, o: features.update(before=i[0], after=o))
    with torch.no_grad():
        x0 = prior.predict(x_t, t).x0.clamp(-1, 1)
        delta = phi(x0, measurement_to_image(y, op), t)
    hook.remove()
    needed, got = (x0 - truth).mean(dim=(2, 3)), delta.mean(dim=(2, 3))
    correlation = [float(torch.corrcoef(torch.stack([needed[:, c], got[:, c]]))[0, 1]) for c in range(needed.shape[1])]
    print(f"{args.network}, {args.task}, t = {args.t}, {len(ids)} photos")
    print("  needed per-channel mean correction, std over images:", [round(v, 3) for v in needed.std(0).tolist()])
    print("  φ's per-channel mean Δ, std over images:           ", [round(v, 3) for v in got.std(0).tolist()])
    print("  correlation per channel:                           ", [round(v, 2) for v in correlation])
    for name in ("before", "after"):
        spread = float(features[name].mean(dim=(2, 3)).std(0).mean())
        print(f"  last features' per-image channel means, std {name} the final GroupNorm: {spread:.2e}")


if __name__ == "__main__":
    main()
