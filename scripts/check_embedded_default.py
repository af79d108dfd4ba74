"""Does the embedded default show what the DDC paper shows? Every solver on Kodak24 at 64x64, against targets.

    python scripts/check_embedded_default.py --out results/default-kodak24 --docs docs/ddc

Runs (resumably: a re-run computes only what is missing) into one store:
1. pinv, ddnm, ddrm, pigdm, reddiff, dps (quick budget), pnp-admm, ddc and ddc-nolpips on all 24 Kodak photos
   (centre square, bicubic to 64x64; never trained on), tasks sr4, sr8, gblur, inpaint, jpeg10, σ = 0.05;
2. DPS at its paper's 1000 steps on --dps-images photos of sr4, for the speed comparison.
Then scores the targets of the embedded default (issue-style checklist, each PASS or MISS with its figure):
- ddc's consistency ‖A(x̂) − y‖/√m ≤ 0.12 on every task (the noise alone gives 2σ = 0.10);
- ddc's PSNR ≥ A⁺y's on every task, and within 2 dB of the best of DDNM/DDRM on sr4 and gblur;
- ddc has the best LPIPS of all solvers on at least 3 of the 5 tasks; ddc-nolpips has higher PSNR than ddc on
  at least 4 (the paper's trade-off);
- no colour cast: the mean over images of the largest per-channel mean error of ddc's output is no larger
  than A⁺y's (from the stored PNGs);
- ddc takes 5 prior calls and is at least 20x faster per image than DPS-1000.
Writes default-check.md and default-check.json into --docs.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.store import ResultStore  # noqa: E402

TASKS = ("sr4", "sr8", "gblur", "inpaint", "jpeg10")  # the DDC paper's five
SOLVERS = ("pinv", "ddnm", "ddrm", "pigdm", "reddiff", "dps", "pnp-admm", "ddc", "ddc-nolpips")
SIGMA = 0.05


def bench_run(out: Path, *args: str) -> None:
    command = [sys.executable, "-m", "bench", "run", "--dataset", "kodak24", "--out", str(out), "--no-progress"]
    command += ["--sigma", str(SIGMA), *args]
    print("+", " ".join(command[1:]), flush=True)
    subprocess.run(command, cwd=REPO, check=False)  # failed units are rows; the check below reports them


def steps_of(config: str) -> int | None:
    return json.loads(config).get("steps")


def channel_mean_error(out: Path, row) -> float | None:
    """The largest |mean over pixels of (estimate − truth)| over the channels, on [-1, 1], from the PNGs of the
    unit `row` (its own configuration's folder)."""
    from bench.store import reconstruction_path
    from bench.units import image_tag

    images = out / "images"
    tag = image_tag(row.solver_version, row.solver_config, row.seed)
    estimate = reconstruction_path(images, row.solver, row.task, row.sigma, tag, row.image_id)
    reference = images / "reference" / f"{row.image_id}.png"
    if not estimate.is_file() or not reference.is_file():
        return None

    def load(path: Path) -> np.ndarray:
        return np.asarray(Image.open(path).convert("RGB"), dtype=np.float64) / 127.5 - 1.0

    error = load(estimate) - load(reference)
    return float(np.abs(error.reshape(-1, 3).mean(axis=0)).max())


def score(out: Path) -> tuple[dict, pd.DataFrame]:
    units = ResultStore(out).units()
    units = units[(units["sigma"] == SIGMA) & (units["status"] == "ok")].copy()
    units["steps"] = units["solver_config"].map(steps_of)
    main = units[~((units["solver"] == "dps") & (units["steps"] == 1000))]
    means = main.groupby(["solver", "task"])[["psnr", "ssim", "lpips", "consistency"]].mean()
    counts = main.groupby(["solver", "task"]).size()
    cast = {}
    for (solver, task), group in main[main["solver"].isin(["pinv", "ddc", "ddc-nolpips"])].groupby(["solver", "task"]):
        errors = [channel_mean_error(out, row) for row in group.itertuples(index=False)]
        errors = [e for e in errors if e is not None]
        cast[(solver, task)] = float(np.mean(errors)) if errors else float("nan")

    def get(solver: str, task: str, metric: str) -> float:
        return float(means.loc[(solver, task), metric]) if (solver, task) in means.index else float("nan")

    checks: list[dict] = []

    def check(name: str, passed: bool, figure: str) -> None:
        checks.append({"target": name, "pass": bool(passed), "figure": figure})

    for task in TASKS:
        c = get("ddc", task, "consistency")
        check(f"ddc consistency ≤ 0.12 on {task}", c <= 0.12, f"{c:.3f}")
    for task in TASKS:
        d, p = get("ddc", task, "psnr"), get("pinv", task, "psnr")
        check(f"ddc PSNR ≥ A⁺y on {task}", d >= p, f"{d:.2f} vs {p:.2f} dB")
    for task in ("sr4", "gblur"):
        best = max(get("ddnm", task, "psnr"), get("ddrm", task, "psnr"))
        d = get("ddc", task, "psnr")
        check(f"ddc PSNR within 2 dB of the best of DDNM/DDRM on {task}", d >= best - 2.0, f"{d:.2f} vs {best:.2f} dB")
    best_lpips = []
    for task in TASKS:
        rows = {s: get(s, task, "lpips") for s in SOLVERS if (s, task) in means.index}
        winner = min(rows, key=rows.get)
        best_lpips.append(f"{task}: {winner} {rows[winner]:.3f}")
        best_lpips[-1] += "" if winner == "ddc" else f" (ddc {rows.get('ddc', float('nan')):.3f})"
    wins = sum(item.split(":")[1].split()[0] == "ddc" for item in best_lpips)
    check("ddc has the best LPIPS on ≥ 3 of 5 tasks", wins >= 3, f"{wins}/5; " + "; ".join(best_lpips))
    higher = [t for t in TASKS if get("ddc-nolpips", t, "psnr") > get("ddc", t, "psnr")]
    check("ddc-nolpips PSNR > ddc on ≥ 4 of 5 tasks", len(higher) >= 4, f"{len(higher)}/5 ({', '.join(higher)})")
    for task in TASKS:
        d, p = cast.get(("ddc", task), float("nan")), cast.get(("pinv", task), float("nan"))
        check(f"no colour cast on {task} (max channel-mean error ≤ A⁺y's)", d <= p, f"{d:.3f} vs {p:.3f}")
    ddc_rows = units[(units["solver"] == "ddc") & (units["task"] == "sr4") & ~units["warmup"]]
    dps_rows = units[(units["solver"] == "dps") & (units["task"] == "sr4") & (units["steps"] == 1000)]
    # DPS-1000 runs one small batch in its own process, so its only batch is that process' first: a warm-up of
    # a few prior calls against 1000 with a backward pass each, kept rather than leaving no timing at all
    dps_rows = dps_rows[~dps_rows["warmup"]] if (~dps_rows["warmup"]).any() else dps_rows
    nfe = int(units[units["solver"] == "ddc"]["nfe"].max()) if len(ddc_rows) else -1
    ddc_s = float(ddc_rows["wall_s"].mean()) if len(ddc_rows) else float("nan")
    dps_s = float(dps_rows["wall_s"].mean()) if len(dps_rows) else float("nan")
    check("ddc makes 5 prior calls per image", nfe == 5, f"{nfe} per batch")
    check("ddc ≥ 20x faster per image than DPS-1000 (sr4)", dps_s >= 20 * ddc_s, f"{ddc_s:.3f} s vs {dps_s:.2f} s")

    table = means.join(counts.rename("n")).reset_index()
    table["channel_mean_error"] = [
        cast.get((s, t), float("nan")) for s, t in zip(table["solver"], table["task"], strict=True)
    ]
    return {"checks": checks, "ddc_s": ddc_s, "dps1000_s": dps_s}, table


def markdown(result: dict, table: pd.DataFrame) -> str:
    lines = [f"Kodak24 at 64×64, σ = {SIGMA}; cells: PSNR / SSIM / LPIPS / consistency (n images)", ""]
    lines += ["| solver | " + " | ".join(TASKS) + " |", "|---" * (len(TASKS) + 1) + "|"]
    indexed = table.set_index(["solver", "task"])
    for solver in SOLVERS:
        cells = []
        for task in TASKS:
            if (solver, task) not in indexed.index:
                cells.append("–")
                continue
            r = indexed.loc[(solver, task)]
            cells.append(f"{r.psnr:.2f} / {r.ssim:.3f} / {r.lpips:.3f} / {r.consistency:.3f} ({int(r.n)})")
        lines.append(f"| {solver} | " + " | ".join(cells) + " |")
    lines += ["", "| target | result | figure |", "|---|---|---|"]
    for c in result["checks"]:
        lines.append(f"| {c['target']} | {'PASS' if c['pass'] else 'MISS'} | {c['figure']} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "results" / "default-kodak24")
    parser.add_argument("--docs", type=Path, default=None, help="write default-check.md/.json here")
    parser.add_argument("--n-images", type=int, default=24)
    parser.add_argument("--dps-images", type=int, default=2, help="photos for the DPS-1000 timing (sr4)")
    parser.add_argument("--solvers", default=",".join(SOLVERS))
    parser.add_argument("--skip-run", action="store_true", help="only score what the store holds")
    args = parser.parse_args()
    if not args.skip_run:
        bench_run(args.out, "--solvers", args.solvers, "--tasks", ",".join(TASKS), "--n-images", str(args.n_images))
        if args.dps_images:
            bench_run(
                args.out, "--solvers", "dps", "--tasks", "sr4", "--n-images", str(args.dps_images), "--budget", "paper"
            )
    result, table = score(args.out)
    text = markdown(result, table)
    print(text)
    if args.docs:
        args.docs.mkdir(parents=True, exist_ok=True)
        (args.docs / "default-check.md").write_text(text)
        payload = {**result, "table": table.to_dict(orient="records")}
        (args.docs / "default-check.json").write_text(json.dumps(payload, indent=2, default=float) + "\n")


if __name__ == "__main__":
    main()
