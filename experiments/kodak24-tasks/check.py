"""The Kodak24 table of docs/tasks.md: every solver on each task it supports, and its targets.

    python experiments/kodak24-tasks/check.py results/kodak24-tasks results/kodak24-paper-tasks [--json FILE]

Prints, per task, one row per solver: images, PSNR, SSIM, LPIPS, consistency (its right value is the noise std
2σ = 0.1), seconds per image and network calls per image (NFE), means over the photos. The targets: DiffPIR and
DAPS above A⁺y in PSNR on every task they share with it, compared on the photos both ran (A⁺y does not exist
for phase retrieval: the row says so). Exit status 1 when a target is missed or a store is empty.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from bench.pipeline.store import ResultStore
from bench.tools.checks import report_checks

COLUMNS = {"psnr": "PSNR", "ssim": "SSIM", "lpips": "LPIPS", "consistency": "consistency", "wall_s": "s/image", "nfe": "NFE"}
DECIMALS = {"psnr": 2, "wall_s": 2, "nfe": 0}  # the others 3


def table(units: pd.DataFrame) -> str:
    """Markdown: per task, solvers in the order they were run, mean of each column over the photos."""
    lines = []
    for task, rows in units.groupby("task", sort=False):
        lines += [f"\n**{task}**\n", "| solver | images | " + " | ".join(COLUMNS.values()) + " |",
                  "|---|--:|" + "--:|" * len(COLUMNS)]  # fmt: skip
        for solver, group in rows.groupby("solver", sort=False):
            cells = [f"{group[c].mean():.{DECIMALS.get(c, 3)}f}" for c in COLUMNS]
            lines.append(f"| {solver} | {len(group)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def targets(units: pd.DataFrame) -> list[dict]:
    """DiffPIR and DAPS against A⁺y in PSNR, each pair compared on the photos both have."""
    rows = []
    for solver in ("diffpir", "daps"):
        for task in units.loc[units["solver"] == solver, "task"].unique():
            mine = units[(units["solver"] == solver) & (units["task"] == task)].set_index("image_id")["psnr"]
            floor = units[(units["solver"] == "pinv") & (units["task"] == task)].set_index("image_id")["psnr"]
            if floor.empty:
                rows.append({"target": f"{solver} above A⁺y on {task}", "pass": True,
                             "figure": f"{mine.mean():.2f} dB; no A⁺y on {task} (not linear)"})  # fmt: skip
                continue
            shared = mine.index.intersection(floor.index)
            a, b = mine[shared].mean(), floor[shared].mean()
            rows.append({"target": f"{solver} above A⁺y on {task}", "pass": bool(a > b),
                         "figure": f"{a:.2f} dB against {b:.2f} dB on the same {len(shared)} photos"})  # fmt: skip
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", type=Path, nargs="+", help="run folders (configs: config.toml, paper.toml)")
    parser.add_argument("--json", type=Path, help="also write the targets to this JSON file")
    args = parser.parse_args()
    stores = [ResultStore(folder).units() for folder in args.results]
    units = pd.concat([s for s in stores if not s.empty], ignore_index=True) if any(len(s) for s in stores) else None
    if units is None:
        print("no unit rows in the stores; run the configs of experiments/kodak24-tasks/ first")
        return 1
    # a unit computed in two of the folders (a resumed run into another folder) counts once: keys are content hashes
    units = units[units["status"] == "ok"].drop_duplicates("key", keep="last")
    # a solver whose math changed since a folder was written (its version) counts with its latest version on each
    # task; a (solver, task) with only earlier versions is named, so that the table can say why that is right
    latest = units.groupby(["solver", "task"])["solver_version"].transform("max")
    if (dropped := units[units["solver_version"] != latest]).size:
        print(f"left out: {len(dropped)} unit(s) of earlier solver versions ({', '.join(sorted(set(dropped['solver'])))})")
    units = units[units["solver_version"] == latest]
    # one config per (solver, task): the one most photos ran with (the quick budget), not mixed with a side run of
    # the same store (DPS at 1000 steps on 2 photos, ddc-default-check's dps1000.toml)
    counts = units.groupby(["solver", "task", "solver_config"])["key"].transform("size")
    widest = units.assign(count=counts).groupby(["solver", "task"])["count"].transform("max")
    if (other := units[counts != widest]).size:
        print(f"left out: {len(other)} unit(s) of side configs ({', '.join(sorted(set(other['solver'])))})")
    units = units[counts == widest]
    newest = units.groupby("solver")["solver_version"].transform("max")
    for (solver, task, version), _ in units[units["solver_version"] < newest].groupby(["solver", "task", "solver_version"]):
        print(f"note: {solver} on {task} is from version {version}")
    print(table(units))
    print()
    return report_checks(targets(units), args.json)


if __name__ == "__main__":
    sys.exit(main())
