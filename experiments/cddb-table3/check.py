"""What CDDB must show in docs/cddb/table3.md: it beats A⁺y in PSNR and LPIPS on jpeg10 and sr4 at σ = 0, and its
data-consistency step (λ > 0) beats the bridge alone (I²SB, λ = 0) in consistency ‖A(x̂) − y‖/√m.

    python experiments/cddb-table3/check.py results/table3-kodak24 [--json checks.json]

Prints one PASS or MISS row per target with its figure; exit status 1 when a target misses or its cell is not in
the store. The table itself is `python -m bench report --results results/table3-kodak24`.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

from bench.pipeline.store import ResultStore
from bench.tools.checks import run_checks

TASKS = ("jpeg10", "sr4")
METRICS = ("psnr", "lpips", "consistency")
CONFIG = Path(__file__).resolve().parent / "config.toml"


def checks(results: Path) -> list[dict]:
    units = ResultStore(results).units()
    if units.empty:
        raise SystemExit(f"{results} holds no unit rows; run `python -m bench run --config {CONFIG}` first")
    ok = units[(units["status"] == "ok") & (units["sigma"] == 0)]
    means = ok.groupby(["task", "solver"])[list(METRICS)].mean()

    def get(task: str, solver: str, metric: str) -> float:
        return float(means.loc[(task, solver), metric]) if (task, solver) in means.index else math.nan

    rows = []
    for task in TASKS:
        cddb, pinv, i2sb = ({m: get(task, s, m) for m in METRICS} for s in ("cddb", "pinv", "i2sb"))
        rows += [
            {"target": f"cddb PSNR > A⁺y on {task}", "pass": cddb["psnr"] > pinv["psnr"],
             "figure": f"{cddb['psnr']:.2f} vs {pinv['psnr']:.2f} dB"},
            {"target": f"cddb LPIPS < A⁺y on {task}", "pass": cddb["lpips"] < pinv["lpips"],
             "figure": f"{cddb['lpips']:.3f} vs {pinv['lpips']:.3f}"},
            {"target": f"λ > 0 beats λ = 0 in consistency on {task}",
             "pass": cddb["consistency"] < i2sb["consistency"],
             "figure": f"cddb {cddb['consistency']:.4f} vs i2sb {i2sb['consistency']:.4f}"},
        ]  # fmt: skip
    return rows


if __name__ == "__main__":
    sys.exit(run_checks(checks, __doc__, "results/table3-kodak24"))
