"""The DDC paper's Table 3 on the embedded default: bridges against diffusion solvers, noise-free, Kodak24 at 64×64.

    python scripts/cddb_table.py --out results/table3-kodak24 --docs docs/cddb

Runs (resumably: a re-run computes only what is missing) pinv, ddc, reddiff, pigdm, dps (quick budget, 100
steps), i2sb and cddb on all 24 Kodak photos (centre square, bicubic to 64×64; never trained on) for jpeg10 and
sr4 at σ = 0, the setting in which the DDC paper compares against CDDB. The bridges are the shipped ones
(bench/assets/cddb-<task>-64). Then checks what CDDB must show: it beats A⁺y in PSNR and LPIPS on both tasks, and
its data-consistency step (λ > 0) beats the bridge alone (I²SB, λ = 0) in consistency ‖A(x̂) − y‖/√m.
Writes table3.md and table3.json into --docs.

NFE counts the network calls per batch: the prior's (`nfe`) and the solver's own networks' (`own_nfe`: DDC's φ,
the bridge of i2sb and cddb). Seconds per image are the mean over batches after each solver's first (its
warm-up).
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

TASKS = ("jpeg10", "sr4")
BASELINES = ("pinv", "ddc", "reddiff", "pigdm", "dps")
BRIDGES = ("i2sb", "cddb")
SOLVERS = (*BASELINES, *BRIDGES)


def bench_run(out: Path, solvers: tuple[str, ...], extra: list[str]) -> None:
    command = [sys.executable, "-m", "bench", "run", "--dataset", "kodak24", "--n-images", "24", "--sigma", "0"]
    command += ["--tasks", ",".join(TASKS), "--solvers", ",".join(solvers), "--out", str(out), "--no-progress", *extra]
    print("+", " ".join(command[1:]), flush=True)
    subprocess.run(command, cwd=REPO, check=False)  # failed units are rows; the table shows their count


def table(out: Path) -> pd.DataFrame:
    store = ResultStore(out)
    units = store.units()
    units = units[(units["sigma"] == 0) & (units["solver"].isin(SOLVERS)) & (units["task"].isin(TASKS))]
    ok = units[units["status"] == "ok"]
    grouped = ok.groupby(["task", "solver"])
    result = grouped[["psnr", "ssim", "lpips", "consistency"]].mean()
    result["n"] = grouped.size()
    timed = ok[~ok["warmup"].astype(bool)]
    result["s_per_image"] = timed.groupby(["task", "solver"])["wall_s"].mean()
    result["nfe"] = grouped["nfe"].max().astype(int)
    own = ok["own_nfe"] if "own_nfe" in ok else pd.Series(0, index=ok.index)
    result["own_nfe"] = own.fillna(0).groupby([ok["task"], ok["solver"]]).max().astype(int)
    names = ok["own_networks"] if "own_networks" in ok else pd.Series("", index=ok.index)
    result["own_networks"] = names.fillna("").groupby([ok["task"], ok["solver"]]).max()
    sets = store.sets()
    if not sets.empty:
        sets = sets[(sets["sigma"] == 0)].set_index(["task", "solver"])
        for column in ("fid", "kid", "kid_std"):
            result[column] = sets[column].reindex(result.index)
    return result.reset_index()


def checks(frame: pd.DataFrame) -> list[dict]:
    cell = frame.set_index(["task", "solver"])
    rows = []
    for task in TASKS:

        def get(solver: str, metric: str, task: str = task) -> float:
            return float(cell.loc[(task, solver), metric]) if (task, solver) in cell.index else float("nan")

        rows.append(
            {
                "target": f"cddb PSNR > A⁺y on {task}",
                "pass": get("cddb", "psnr") > get("pinv", "psnr"),
                "figure": f"{get('cddb', 'psnr'):.2f} vs {get('pinv', 'psnr'):.2f} dB",
            }
        )
        rows.append(
            {
                "target": f"cddb LPIPS < A⁺y on {task}",
                "pass": get("cddb", "lpips") < get("pinv", "lpips"),
                "figure": f"{get('cddb', 'lpips'):.3f} vs {get('pinv', 'lpips'):.3f}",
            }
        )
        rows.append(
            {
                "target": f"λ > 0 beats λ = 0 in consistency on {task}",
                "pass": get("cddb", "consistency") < get("i2sb", "consistency"),
                "figure": f"cddb {get('cddb', 'consistency'):.4f} vs i2sb {get('i2sb', 'consistency'):.4f}",
            }
        )
    return rows


def markdown(frame: pd.DataFrame, results: list[dict]) -> str:
    lines = []
    for task in TASKS:
        lines += [
            f"**{task}**, σ = 0, Kodak24 at 64×64",
            "",
            "| solver | PSNR | SSIM | LPIPS | consistency | FID | KID (± std) | s / image | NFE | images |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        part = frame[frame["task"] == task].set_index("solver")
        for solver in SOLVERS:
            if solver not in part.index:
                continue
            r = part.loc[solver]
            fid = f"{r['fid']:.1f}" if "fid" in r and pd.notna(r["fid"]) else "–"
            kid = f"{r['kid']:.3f} ± {r['kid_std']:.3f}" if "kid" in r and pd.notna(r["kid"]) else "–"
            seconds = f"{r['s_per_image']:.3f}" if pd.notna(r["s_per_image"]) else "–"
            prior, own = int(r["nfe"]), int(r["own_nfe"])
            nfe = (
                f"{prior} + {own} {r['own_networks']}"
                if prior and own
                else (f"{own} {r['own_networks']}" if own else f"{prior}")
            )
            lines.append(
                f"| {solver} | {r['psnr']:.2f} | {r['ssim']:.3f} | {r['lpips']:.3f} | {r['consistency']:.4f} | {fid} | "
                f"{kid} | {seconds} | {nfe} | {int(r['n'])} |"
            )
        lines.append("")
    lines += ["| target | result | figure |", "|---|---|---|"]
    lines += [f"| {r['target']} | {'PASS' if r['pass'] else 'MISS'} | {r['figure']} |" for r in results]
    lines.append("")
    lines.append("FID and KID of 24 images at 64×64 rank methods only roughly; read them beside PSNR and LPIPS.")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(REPO / "results" / "table3-kodak24"))
    parser.add_argument("--docs", default=None, help="write table3.md and table3.json here")
    parser.add_argument("--no-run", action="store_true", help="only tabulate what the store holds")
    args = parser.parse_args()
    out = Path(args.out)
    if not args.no_run:
        bench_run(out, BASELINES, [])
        bench_run(out, BRIDGES, [])
    frame = table(out)
    results = checks(frame)
    text = markdown(frame, results)
    print(text)
    if args.docs:
        docs = Path(args.docs)
        docs.mkdir(parents=True, exist_ok=True)
        (docs / "table3.md").write_text(text)
        payload = {"rows": json.loads(frame.to_json(orient="records")), "checks": results}
        (docs / "table3.json").write_text(json.dumps(payload, indent=2) + "\n")


if __name__ == "__main__":
    main()
