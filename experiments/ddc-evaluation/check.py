"""Does the store of the DDC evaluation hold every part of docs/ddc/evaluation.md, and what do they show?

    python experiments/ddc-evaluation/check.py results/ddc-kodak24 [--replicate-net DIR --pinv-net DIR]

Checks that each part (the main rows at σ = 0 and 0.05, the steps ablation, φ's two inputs when their networks
are named, DPS and the unconditional reference) has its photos on every task, and prints the figures the page's
text quotes: PSNR of ddc per step count (mean over tasks, σ = 0.05), and ddc's NFE and speed beside DPS on sr4.
Exit status 1 when a part is missing. The quality and runtime tables are `python -m bench report --results <store>`
(one row per configuration, so each step count and each φ is a row of its own).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bench.pipeline.store import ResultStore

TASKS = ("sr4", "sr8", "gblur", "inpaint", "jpeg10", "denoise")
ABLATION_STEPS = (1, 2, 3, 5, 10, 20)  # DDC paper Fig. 7


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", type=Path, help="the run folder (default config: results/ddc-kodak24)")
    parser.add_argument("--replicate-net", help="the φ trained with y replicated (the equal-budget input check)")
    parser.add_argument("--pinv-net", help="the φ trained with A⁺y as its measurement input")
    args = parser.parse_args()
    units = ResultStore(args.results).units()
    if units.empty:
        print(f"{args.results} holds no unit rows; run the commands of experiments/ddc-evaluation/README.md")
        return 1
    units = units[units["status"] == "ok"].copy()
    config = units["solver_config"].map(json.loads)
    for key in ("steps", "network", "y_to_image"):
        units[key] = config.map(lambda c, key=key: c.get(key))
    ddc = units["solver"] == "ddc"
    default_net = units["network"].isin(["natural64", "natural64-nolpips"])
    parts = {
        **{f"{s} at σ = {sigma:g}": (units["solver"] == s) & (units["sigma"] == sigma)
           & (default_net | (s == "pinv")) & ((units["steps"] == 5) | (s == "pinv"))
           for s in ("pinv", "ddc", "ddc-nolpips") for sigma in (0.0, 0.05)},
        **{f"ddc, {n} steps": ddc & (units["steps"] == n) & (units["network"] == "natural64")
           & (units["sigma"] == 0.05) for n in ABLATION_STEPS},
        **{f"φ input {mode} ({net})": ddc & (units["network"] == net) & (units["sigma"] == 0.05)
           for mode, net in (("replicated", args.replicate_net), ("A⁺y", args.pinv_net)) if net},
    }  # fmt: skip
    missing = []
    for label, mask in parts.items():
        tasks = set(units.loc[mask, "task"])
        if tasks != set(TASKS):
            missing.append(f"{label}: no rows for {', '.join(t for t in TASKS if t not in tasks)}")
    for solver in ("dps", "uncond"):
        if not ((units["solver"] == solver) & (units["task"] == "sr4")).any():
            missing.append(f"{solver}: no rows on sr4")

    ablation = [
        f"{n}: {units.loc[mask, 'psnr'].mean():.2f} dB"
        for n in ABLATION_STEPS
        if (mask := parts[f"ddc, {n} steps"]).any()
    ]
    print("ddc PSNR by steps (σ = 0.05, mean over tasks): " + ", ".join(ablation))
    sr4 = (units["task"] == "sr4") & (units["sigma"] == 0.05)
    for label, mask in (("ddc (5 steps)", parts["ddc at σ = 0.05"]), ("dps", units["solver"] == "dps")):
        picked = units[mask & sr4]
        steady = picked[~picked["warmup"]] if (~picked["warmup"]).any() else picked
        if len(picked):
            print(
                f"{label} on sr4: NFE {int(picked['nfe'].median())}, {steady['wall_s'].mean():.3g} s / image "
                f"({len(picked)} images, {', '.join(sorted(picked['device'].unique()))})"
            )
    for line in missing:
        print(f"MISSING {line}")
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
