"""The posterior-fidelity table and figure of docs/validate.md, from `bench validate --json` reports.

    for s in <solvers>; do python -m bench validate $s --json validate/$s.json; done
    python experiments/posterior-fidelity/summarize.py validate/*.json --figure docs/validate-fidelity.png

One row per solver: whether every contract check passed, the noise-convention verdict, and the medians over
the tasks and σ that ran of the reported figures, each beside the exact posterior sampler's with the same draws
(mean err: distance of the draws' mean from the posterior mean, relative to the prior's; cov tr: the draws'
spread over the posterior's; resid at σ = 0.05: A x̂ − y over the noise std). The figure places each solver by
its mean error against its spread, the exact sampler's medians marking where a faithful sampler sits.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path


def summary(report: dict) -> dict:
    ok = [case for case in report["cases"] if case["status"] == "ok"]

    def median(figure: str, who: str, sigma: float | None = None) -> float | None:
        values = [
            case["figures"][figure][who]
            for case in ok
            if case["figures"].get(figure) and case["figures"][figure][who] is not None
            and (sigma is None or case["sigma"] == sigma)
        ]  # fmt: skip
        return statistics.median(values) if values else None

    contract = all(check["passed"] for case in ok for check in case["checks"].values() if check["passed"] is not None)
    noise = report.get("noise_convention") or {}
    verdict = {True: "✓ pass", False: "✗ FAIL"}.get(noise.get("passed"), "– " + noise.get("detail", "").split(":")[0])
    return {
        "solver": report["solver"],
        "contract": "✓ all" if contract else "✗ " + "; ".join(report.get("failures", [])[:2]),
        "noise": verdict,
        "scale": noise.get("solver_scale"),
        "exact_scale": noise.get("exact_scale"),
        **{f"{f}_{w}": median(f, w) for f in ("mean_err", "cov_tr") for w in ("solver", "exact")},
        "resid_solver": median("resid", "solver", 0.05),
        "resid_exact": median("resid", "exact", 0.05),
        "cases": len(ok),
    }


def cell(value: float | None, exact: float | None) -> str:
    if value is None:
        return "–"
    return f"{value:.2f} ({exact:.2f})" if exact is not None else f"{value:.2f}"


def table(rows: list[dict]) -> str:
    lines = [
        "| solver | cases | contract | noise convention | s*/2σ (exact) | mean err (exact) | cov tr (exact) | resid at σ = 0.05 (exact) |",
        "| --- | --: | --- | --- | --: | --: | --: | --: |",
    ]
    for r in rows:
        lines.append(
            f"| `{r['solver']}` | {r['cases']} | {r['contract']} | {r['noise']} | {cell(r['scale'], r['exact_scale'])} | "
            f"{cell(r['mean_err_solver'], r['mean_err_exact'])} | {cell(r['cov_tr_solver'], r['cov_tr_exact'])} | "
            f"{cell(r['resid_solver'], r['resid_exact'])} |"
        )
    return "\n".join(lines)


def figure(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from bench.report.figures import place_labels

    fig, ax = plt.subplots(figsize=(8.0, 5.5), dpi=120)
    shown = [r for r in rows if r["mean_err_solver"] is not None and r["cov_tr_solver"] is not None]
    x_max = 1.4  # a faithful sampler sits near 1; a method far beyond (unconditional sampling) is marked at the edge
    xs = [min(r["cov_tr_solver"], x_max) for r in shown]
    ys = [r["mean_err_solver"] for r in shown]
    ax.scatter(xs, ys, s=30, color="tab:blue", zorder=3)
    labels = [r["solver"] + (f" (spread {r['cov_tr_solver']:.1f}, off scale)" if r["cov_tr_solver"] > x_max else "")
              for r in shown]  # fmt: skip
    exact = [(r["cov_tr_exact"], r["mean_err_exact"]) for r in rows if r["cov_tr_exact"] is not None]
    if exact:
        x, y = statistics.median(e[0] for e in exact), statistics.median(e[1] for e in exact)
        ax.scatter([x], [y], marker="*", s=160, color="black", zorder=3, label="exact posterior sampler (same draws)")
        ax.legend(loc="lower right", fontsize=8)
    ax.set_xlim(-0.05, x_max + 0.05)
    ax.set_ylim(0, max(ys) * 1.12 if ys else 1)
    place_labels(ax, xs, ys, labels)
    ax.set_xlabel("spread: trace of the draws' covariance / the posterior's (1 = faithful)")
    ax.set_ylabel("mean error / shift of the posterior mean")
    ax.set_title("Posterior fidelity on the Gaussian prior (medians over linear tasks, σ ∈ {0, 0.05})", fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("reports", type=Path, nargs="+", help="bench validate --json files")
    parser.add_argument("--figure", type=Path, help="write the figure here (PNG)")
    args = parser.parse_args()
    rows = [summary(json.loads(path.read_text())) for path in args.reports]
    print(table(rows))
    if args.figure:
        figure(rows, args.figure)
        print(f"\nfigure written to {args.figure}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
