"""DDC's block mosaic (sr4, sr8) and grey inpainting, before and after the φ fine-tune of docs/ddc/natural64.md.

    python experiments/ddc-blocks-grey/check.py BEFORE AFTER [--grid docs/ddc/blocks-grey.png] [--json FILE]

BEFORE and AFTER are stores of `before.toml` and `after.toml` (the same command with the φ networks trained on the
official input conventions and with the default ones fine-tuned from them). Prints, per solver and task, the means over the photos of PSNR, SSIM, LPIPS, consistency and the
visual checks (blockiness, chroma ratio, colour shift, clipping), before → after, then the targets:
- no task loses more than 0.2 dB of PSNR;
- blockiness at most 1.5 (the report's flag) on sr4 and sr8;
- chroma ratio at least 0.5 and colour shift at most 0.15 (the report's flags) on inpaint.
Each pair is compared on the photos both stores hold. `--grid` writes the before/after picture: per row one photo,
columns truth, A⁺y, before and after, for sr4 and inpaint. Exit status 1 when a target misses.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from bench import metrics
from bench.pipeline.store import ResultStore, row_image_paths
from bench.tools.checks import report_checks

COLUMNS = ("psnr", "ssim", "lpips", "consistency", "blockiness", "chroma_ratio", "colour_shift", "clipping")
TASKS = ("sr4", "sr8", "gblur", "inpaint", "jpeg10")
SOLVERS = ("ddc", "ddc-nolpips")
MAX_PSNR_LOSS = 0.2
# the report's flags, as the metrics declare them (bench/metrics/blocks.py and colour.py)
BLOCKINESS_FLAG, CHROMA_FLAG, SHIFT_FLAG = (
    metrics.spec(name).flag[1] for name in ("blockiness", "chroma-ratio", "colour-shift")
)


def paired(before: pd.DataFrame, after: pd.DataFrame) -> pd.DataFrame:
    """One row per (solver, task, image) that both stores hold, columns `<metric>_before` and `<metric>_after`."""
    keys = ["solver", "task", "image_id"]

    def ok(units: pd.DataFrame) -> pd.DataFrame:
        return units[(units["status"] == "ok") & units["solver"].isin(SOLVERS) & units["task"].isin(TASKS)]

    return ok(before)[[*keys, *COLUMNS]].merge(ok(after)[[*keys, *COLUMNS]], on=keys, suffixes=("_before", "_after"))


def table(pairs: pd.DataFrame) -> str:
    lines = ["| solver | task | images | " + " | ".join(COLUMNS) + " |", "|---|---|--:|" + "---|" * len(COLUMNS)]
    for (solver, task), group in pairs.groupby(["solver", "task"], sort=False):
        cells = []
        for column in COLUMNS:
            digits = 2 if column in ("psnr", "blockiness") else 3
            old, new = group[f"{column}_before"].mean(), group[f"{column}_after"].mean()
            cells.append("n/a" if np.isnan(old) else f"{old:.{digits}f} → {new:.{digits}f}")
        lines.append(f"| {solver} | {task} | {len(group)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def targets(pairs: pd.DataFrame) -> list[dict]:
    checks = []
    for (solver, task), group in pairs.groupby(["solver", "task"], sort=False):
        old, new = group["psnr_before"].mean(), group["psnr_after"].mean()
        checks.append({
            "target": f"{solver} loses at most {MAX_PSNR_LOSS} dB PSNR on {task}",
            "pass": bool(new >= old - MAX_PSNR_LOSS), "figure": f"{old:.2f} → {new:.2f} dB ({new - old:+.2f})",
        })  # fmt: skip
        if task in ("sr4", "sr8"):
            value = group["blockiness_after"].mean()
            checks.append({"target": f"{solver} blockiness ≤ {BLOCKINESS_FLAG} on {task}",
                           "pass": bool(value <= BLOCKINESS_FLAG),
                           "figure": f"{group['blockiness_before'].mean():.2f} → {value:.2f}"})  # fmt: skip
        if task == "inpaint":
            chroma, shift = group["chroma_ratio_after"].mean(), group["colour_shift_after"].mean()
            checks.append({"target": f"{solver} chroma ratio ≥ {CHROMA_FLAG} on inpaint",
                           "pass": bool(chroma >= CHROMA_FLAG),
                           "figure": f"{group['chroma_ratio_before'].mean():.2f} → {chroma:.2f}"})  # fmt: skip
            checks.append({"target": f"{solver} colour shift ≤ {SHIFT_FLAG} on inpaint",
                           "pass": bool(shift <= SHIFT_FLAG),
                           "figure": f"{group['colour_shift_before'].mean():.3f} → {shift:.3f}"})  # fmt: skip
    return checks


def grid(before: Path, after: Path, units_before: pd.DataFrame, units_after: pd.DataFrame, out: Path,
         solver: str = "ddc", tasks: tuple[str, ...] = ("sr4", "inpaint"), n_images: int = 4) -> None:  # fmt: skip
    """Rows: per task, the first n_images photos both stores hold; columns truth | A⁺y | before | after."""
    rows = []
    for task in tasks:
        old = units_before[(units_before["solver"] == solver) & (units_before["task"] == task)]
        new = units_after[(units_after["solver"] == solver) & (units_after["task"] == task)].set_index("image_id")
        for _, row in old[old["image_id"].isin(new.index)].sort_values("image_id").head(n_images).iterrows():
            estimate, truth, measured = row_image_paths(before, row.to_dict())
            fixed, _, _ = row_image_paths(after, {**new.loc[row["image_id"]].to_dict(), "image_id": row["image_id"]})
            tiles = [truth, measured, estimate, fixed]
            rows.append(np.concatenate([_tile(path) for path in tiles], axis=1))
    if not rows:
        raise SystemExit(f"no {solver} units for {', '.join(tasks)} in both stores")
    picture = np.concatenate(rows, axis=0)
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(picture).resize((picture.shape[1] * 2, picture.shape[0] * 2), Image.NEAREST).save(out)


def _tile(path: Path | None, pad: int = 2) -> np.ndarray:
    image = (
        np.asarray(Image.open(path).convert("RGB"))
        if path is not None and path.is_file()
        else np.zeros((64, 64, 3), np.uint8)
    )
    return np.pad(image, ((pad, pad), (pad, pad), (0, 0)), constant_values=255)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    parser.add_argument("--grid", type=Path, help="write the before/after picture here")
    parser.add_argument("--json", type=Path, help="write the table and the targets here")
    args = parser.parse_args(argv)
    units_before, units_after = ResultStore(args.before).units(), ResultStore(args.after).units()
    pairs = paired(units_before, units_after)
    if pairs.empty:
        print(f"no DDC units in both {args.before} and {args.after}", file=sys.stderr)
        return 1
    print(table(pairs))
    checks = targets(pairs)
    if args.grid:
        grid(args.before, args.after, units_before, units_after, args.grid)
        print(f"grid: {args.grid}")
    return report_checks(checks, args.json)


if __name__ == "__main__":
    sys.exit(main())
