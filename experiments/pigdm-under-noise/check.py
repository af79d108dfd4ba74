"""ΠGDM's options under measurement noise: PSNR, consistency, colour saturation and clipped pixels per variant.

    python experiments/pigdm-under-noise/check.py results/pigdm-under-noise [--task sr4 --sigma 0.05]

One line per ΠGDM configuration in the store (named by the options that differ from the defaults), beside A⁺y.
Consistency is the mean ‖A(x̂) − y‖/√m (its right value is the noise std 2σ); chroma is the mean distance of a
pixel from its grey value, on [-1, 1], and "at ±1" the share of pixels at 0 or 255, both from the stored PNGs
(the photos' own chroma is printed first).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

import solvers
from bench.pipeline.store import ResultStore, row_image_paths


def load(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.float64) / 127.5 - 1.0


def chroma(image: np.ndarray) -> float:
    return float(np.abs(image - image.mean(axis=2, keepdims=True)).mean())


def label(config: str, defaults: dict) -> str:
    changed = {k: v for k, v in json.loads(config).items() if defaults.get(k) != v}
    return ", ".join(f"{k}={v}" for k, v in sorted(changed.items())) or "default"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", type=Path, help="the run folder (default config: results/pigdm-under-noise)")
    parser.add_argument("--task", default="sr4")
    parser.add_argument("--sigma", type=float, default=0.05)
    args = parser.parse_args()
    units = ResultStore(args.results).units()
    units = units[(units["status"] == "ok") & (units["task"] == args.task) & (units["sigma"] == args.sigma)]
    if units.empty:
        print(f"{args.results} holds no finished {args.task} units at σ = {args.sigma}; see README.md for the runs")
        return 1
    rows = units.to_dict("records")
    photos = [load(row_image_paths(args.results, row)[1]) for row in rows if row["solver"] == "pinv"]
    pinv = units[units["solver"] == "pinv"]
    print(
        f"{args.task} σ={args.sigma}: photos' chroma {np.mean([chroma(p) for p in photos]):.3f}, "
        f"A⁺y {pinv['psnr'].mean():.2f} dB"
    )
    defaults = json.loads(json.dumps(dataclasses.asdict(solvers.build("pigdm").config)))
    for config, group in units[units["solver"] == "pigdm"].groupby("solver_config", sort=False):
        images = [load(row_image_paths(args.results, row)[0]) for row in group.to_dict("records")]
        clipped = np.mean([(np.abs(image) >= 0.999).mean() for image in images])
        print(
            f"{label(config, defaults):34s} PSNR {group['psnr'].mean():6.2f}  consistency "
            f"{group['consistency'].mean():.4f}  chroma {np.mean([chroma(i) for i in images]):.3f}  "
            f"at ±1 {100 * clipped:.1f}%  ({len(group)} images)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
