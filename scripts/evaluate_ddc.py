"""Evidence for DDC on the embedded prior: quality, the steps ablation, φ's input choice and speed.

    python scripts/evaluate_ddc.py --replicate-net runs/ddc-natural64/ema-step1000 \
        --pinv-net runs/ddc-natural64-pinv/ema-step1000 --out results/ddc-kodak24 --docs docs/ddc

Every number comes from `python -m bench run` into one store (resumable: a re-run only computes what is
missing), on the 24 Kodak photos (centre square, bicubic to 64x64; never trained on):
1. pinv (the A⁺y baseline), ddc and ddc-nolpips on six tasks at σ = 0 and 0.05;
2. the steps ablation: ddc with 1, 2, 3, 5, 10, 20 steps at σ = 0.05;
3. φ's measurement input, nearest-neighbour replication against A⁺y: two networks trained alike for the same
   number of steps (--replicate-net, --pinv-net), at σ = 0.05;
4. speed: DPS on 16 photos (sr4, σ = 0.05; --dps-budget quick = 100 steps, paper = 1000) beside ddc;
5. unconditional sampling on 8 photos, the reference of the report's kurtosis figure.
Render the store with `python -m bench report --results <out>`.
Writes evaluation.md (Markdown tables) and evaluation.json into --docs.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.store import ResultStore  # noqa: E402

TASKS = "sr4,sr8,gblur,inpaint,jpeg10,denoise"
ABLATION_STEPS = (1, 2, 3, 5, 10, 20)  # DDC paper Fig. 7
METRICS = ("psnr", "ssim", "lpips")


def bench_run(out: Path, *args: str) -> None:
    command = [sys.executable, "-m", "bench", "run", "--dataset", "kodak24", "--out", str(out), "--no-progress"]
    command += list(args)
    print("+", " ".join(command[1:]), flush=True)
    subprocess.run(command, cwd=REPO, check=True)


def run_all(out: Path, replicate_net: str | None, pinv_net: str | None, dps_budget: str) -> None:
    bench_run(out, "--solvers", "pinv,ddc,ddc-nolpips", "--tasks", TASKS, "--sigma", "0,0.05")
    for steps in ABLATION_STEPS:
        off = [] if steps == 5 else ["--set", "ddc.off_schedule=true"]  # the shipped φ is trained at 5 steps
        bench_run(out, "--solvers", "ddc", "--tasks", TASKS, "--sigma", "0.05", "--set", f"ddc.steps={steps}", *off)
    if replicate_net and pinv_net:
        for network, mode in ((replicate_net, "replicate"), (pinv_net, "pinv")):
            sets = ["--set", f"ddc.network={network}", "--set", f"ddc.y_to_image={mode}"]
            bench_run(out, "--solvers", "ddc", "--tasks", TASKS, "--sigma", "0.05", *sets)
    bench_run(out, "--solvers", "dps", "--tasks", "sr4", "--sigma", "0.05", "--n-images", "16", "--budget", dps_budget)
    # the Gaussian reference of the report's kurtosis figure (it ignores y, so one task is enough)
    bench_run(out, "--solvers", "uncond", "--tasks", "sr4", "--sigma", "0.05", "--n-images", "8")


def load_units(out: Path) -> pd.DataFrame:
    units = ResultStore(out).units()
    units = units[units["status"] == "ok"].copy()
    config = units["solver_config"].map(json.loads)
    for key in ("steps", "network", "y_to_image"):
        units[key] = config.map(lambda c, key=key: c.get(key))
    return units


def quality_table(units: pd.DataFrame, sigma: float, rows: dict[str, pd.Series]) -> pd.DataFrame:
    """Mean PSNR / SSIM / LPIPS per (row label, task) at one σ; `rows` maps labels to row masks."""
    frames = []
    for label, mask in rows.items():
        picked = units[mask & (units["sigma"] == sigma)]
        means = picked.groupby("task")[list(METRICS)].mean()
        means.insert(0, "n", picked.groupby("task").size())
        frames.append(means.assign(method=label).reset_index())
    return pd.concat(frames, ignore_index=True)


def markdown(table: pd.DataFrame, tasks: list[str]) -> str:
    """Methods as rows, tasks as columns, each cell 'PSNR / SSIM / LPIPS'."""
    lines = ["| method | " + " | ".join(tasks) + " |", "|---" * (len(tasks) + 1) + "|"]
    for method, group in table.groupby("method", sort=False):
        cells = []
        by_task = group.set_index("task")
        for task in tasks:
            if task not in by_task.index:
                cells.append("–")
                continue
            r = by_task.loc[task]
            cells.append(f"{r.psnr:.2f} / {r.ssim:.3f} / {r.lpips:.3f}")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def timing_table(units: pd.DataFrame, masks: dict[str, pd.Series]) -> pd.DataFrame:
    """Seconds per image (batches after the first of each process) and network evaluations, on sr4 at σ = 0.05."""
    rows = []
    for label, mask in masks.items():
        picked = units[mask & (units["task"] == "sr4") & (units["sigma"] == 0.05)]
        steady = picked[~picked["warmup"]] if (~picked["warmup"]).any() else picked
        rows.append(
            {
                "method": label,
                "nfe": int(picked["nfe"].median()),
                "seconds_per_image": float(steady["wall_s"].mean()),
                "network_share": float(steady["network_s"].sum() / steady["wall_s"].sum()),
                "psnr": float(picked["psnr"].mean()),
                "lpips": float(picked["lpips"].mean()),
                "n_images": int(len(picked)),
                "device": ",".join(sorted(picked["device"].unique())),
            }
        )
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "results" / "ddc-kodak24")
    parser.add_argument("--docs", type=Path, default=REPO / "docs" / "ddc")
    parser.add_argument("--replicate-net", help="φ trained with y replicated to image size (equal-budget check)")
    parser.add_argument("--pinv-net", help="φ trained with A⁺y as its measurement input (equal-budget check)")
    parser.add_argument("--dps-budget", choices=["quick", "paper"], default="quick")
    parser.add_argument("--summarise-only", action="store_true", help="skip the runs; tabulate the store")
    args = parser.parse_args()
    if not args.summarise_only:
        run_all(args.out, args.replicate_net, args.pinv_net, args.dps_budget)

    units = load_units(args.out)
    tasks = [t for t in TASKS.split(",") if t in set(units["task"])]
    default_ddc = (units["steps"] == 5) & units["network"].isin(["natural64", "natural64-nolpips"])
    main_rows = {
        "A⁺y (pinv)": units["solver"] == "pinv",
        "ddc": (units["solver"] == "ddc") & default_ddc,
        "ddc-nolpips": (units["solver"] == "ddc-nolpips") & default_ddc,
    }
    steps_rows = {
        f"ddc, {n} steps": (units["solver"] == "ddc") & (units["steps"] == n) & (units["network"] == "natural64")
        for n in ABLATION_STEPS
    }
    input_rows = {}
    if args.replicate_net and args.pinv_net:
        input_rows = {
            f"y replicated ({args.replicate_net})": units["network"] == args.replicate_net,
            f"A⁺y ({args.pinv_net})": units["network"] == args.pinv_net,
        }
    speed_rows = {"ddc (5 steps)": main_rows["ddc"], "dps": units["solver"] == "dps"}

    sections, record = [], {}
    for sigma in (0.0, 0.05):
        table = quality_table(units, sigma, main_rows)
        sections.append(f"### σ = {sigma:g} (PSNR dB / SSIM / LPIPS)\n\n" + markdown(table, tasks))
        record[f"quality_sigma_{sigma:g}"] = table.to_dict(orient="records")
    table = quality_table(units, 0.05, steps_rows)
    sections.append("### Steps ablation, σ = 0.05\n\n" + markdown(table, tasks))
    record["steps_ablation"] = table.to_dict(orient="records")
    if input_rows:
        table = quality_table(units, 0.05, input_rows)
        sections.append("### φ's measurement input, σ = 0.05 (equal training)\n\n" + markdown(table, tasks))
        record["y_to_image"] = table.to_dict(orient="records")
    speed = timing_table(units, speed_rows)
    lines = ["| method | NFE | s / image | share in network | PSNR | LPIPS | images | device |", "|---" * 8 + "|"]
    for r in speed.itertuples(index=False):
        lines.append(
            f"| {r.method} | {r.nfe} | {r.seconds_per_image:.3g} | {r.network_share:.0%} | {r.psnr:.2f} | "
            f"{r.lpips:.3f} | {r.n_images} | {r.device} |"
        )
    sections.append("### Speed (sr4, σ = 0.05)\n\n" + "\n".join(lines))
    record["speed"] = speed.to_dict(orient="records")

    args.docs.mkdir(parents=True, exist_ok=True)
    text = "\n\n".join(sections) + "\n"
    (args.docs / "evaluation.md").write_text(text)
    (args.docs / "evaluation.json").write_text(json.dumps(record, indent=2, default=float) + "\n")
    print(text)


if __name__ == "__main__":
    main()
