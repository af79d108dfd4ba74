"""The posterior-fidelity table and figure of docs/validate.md, from `bench validate --json` reports.

    for s in <solvers>; do python -m bench validate $s --tasks sr4,gblur,inpaint --json validate/$s.json; done
    python experiments/posterior-fidelity/summarize.py validate/*.json --figure docs/validate-fidelity.png

One row per solver: its network calls per draw, whether every contract check passed, the noise-convention
verdict, and the medians over the tasks and σ that ran of the reported figures, each beside the exact posterior
sampler's with the same draws (mean err: distance of the draws' mean from the posterior mean, relative to the
prior's; cov tr: the draws' spread over the posterior's; W2: Wasserstein-2 distance from the posterior of the
Gaussian fitted to the draws along the posterior's axes, relative to the posterior's spread; resid at σ = 0.05:
A x̂ − y over the noise std). The figure has one panel per (task, σ): each solver's W2 against its network calls
per draw, the exact sampler's W2 (the Monte-Carlo floor of 16 draws) dashed.
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
        **{f"{f}_{w}": median(f, w) for f in ("mean_err", "cov_tr", "w2") for w in ("solver", "exact")},
        "nfe": statistics.median([case["nfe"] for case in ok if case.get("nfe") is not None] or [0]),
        "per_case": {(case["task"], case["sigma"]): (case.get("nfe") or 0, (case["figures"].get("w2") or {}).get("solver"),
                                                     (case["figures"].get("w2") or {}).get("exact")) for case in ok},
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
        "| solver | NFE | cases | contract | noise convention | s*/2σ (exact) | mean err (exact) | cov tr (exact) | W2 (exact) | resid at σ = 0.05 (exact) |",
        "| --- | --: | --: | --- | --- | --: | --: | --: | --: | --: |",
    ]
    for r in rows:
        lines.append(
            f"| `{r['solver']}` | {r['nfe']:g} | {r['cases']} | {r['contract']} | {r['noise']} | {cell(r['scale'], r['exact_scale'])} | "
            f"{cell(r['mean_err_solver'], r['mean_err_exact'])} | {cell(r['cov_tr_solver'], r['cov_tr_exact'])} | "
            f"{cell(r['w2_solver'], r['w2_exact'])} | "
            f"{cell(r['resid_solver'], r['resid_exact'])} |"
        )
    return "\n".join(lines)


def figure(rows: list[dict], path: Path) -> None:
    """One panel per (task, σ): each solver's W2 to the exact posterior against its network calls per draw, the
    exact sampler's W2 with the same draws (the Monte-Carlo floor) dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from bench.report.figures import place_labels

    cases = sorted({case for r in rows for case in r["per_case"]}, key=lambda c: (TASK_ORDER.index(c[0])
                   if c[0] in TASK_ORDER else 99, c[1]))  # fmt: skip
    cols = 2
    fig, axes = plt.subplots((len(cases) + cols - 1) // cols, cols, figsize=(11, 3.6 * ((len(cases) + 1) // cols)),
                             dpi=110, squeeze=False)  # fmt: skip
    for ax, case in zip(axes.flat, cases, strict=False):
        points = [(r["solver"], *r["per_case"][case]) for r in rows if case in r["per_case"]]
        points = [p for p in points if p[2] is not None]
        xs = [max(nfe, 1) for _, nfe, _, _ in points]  # no network call (A⁺y) is drawn at 1
        ys = [w2 for _, _, w2, _ in points]
        ax.scatter(xs, ys, s=25, color="tab:blue", zorder=3)
        floor = statistics.median(e for *_, e in points if e is not None)
        ax.axhline(floor, color="black", linestyle="--", linewidth=1, label=f"exact sampler, same draws ({floor:.2f})")
        ax.set_xscale("log")
        ax.set_ylim(0, max(ys) * 1.15)
        ax.set_title(f"{case[0]}, σ = {case[1]:g}", fontsize=9)
        ax.set_xlabel("network calls per draw (log; A⁺y drawn at 1)", fontsize=8)
        ax.set_ylabel("W2 to the posterior / √tr Σ", fontsize=8)
        ax.grid(alpha=0.3)
        ax.legend(loc="upper right", fontsize=7)
        place_labels(ax, xs, ys, [p[0] for p in points])
    for ax in list(axes.flat)[len(cases):]:
        ax.set_visible(False)
    fig.suptitle("Posterior fidelity on the Gaussian prior: distance to the exact posterior against cost", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)


TASK_ORDER = ("sr4", "sr8", "gblur", "inpaint", "jpeg10", "denoise")


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
