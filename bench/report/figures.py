"""The report's figures, drawn with matplotlib (Agg) in one style: labelled axes with units, legends outside.

Each function takes DataFrames and a path, writes one PNG and returns a `Figure` record for the page, or None
when the store holds nothing it could show (the caller says why on the page).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench.report.load import GROUP, finite, sigma_label, sort_tasks

__all__ = [
    "Figure",
    "method_colors",
    "kurtosis_figure",
    "kurtosis_stats",
    "noise_figure",
    "quality_runtime_figure",
    "steps_figure",
]

STYLE = {
    "font.family": "DejaVu Sans",  # ships with matplotlib, and has σ, ε and ⁺
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.labelsize": 9,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "legend.frameon": False,
    "legend.fontsize": 8,
    "lines.linewidth": 1.6,
    "lines.markersize": 5,
    "savefig.dpi": 120,
    "savefig.facecolor": "white",
}
PANEL = (2.9, 2.2)  # inches per panel
# inches: room for tick and axis labels around and between panels, and for the title on top
MARGIN = {"left": 0.8, "wgap": 0.85, "hgap": 0.75, "top": 0.55, "bottom": 0.6}
REFERENCE_COLOR = "black"
DASHES = ("-", "--", ":", "-.")
# rows of the noise and steps figures (SSIM is in the tables; a third row of panels doubled the drawing time)
LINE_METRICS = ("psnr", "lpips")
AXIS_LABELS = {
    "psnr": "PSNR (dB)",
    "ssim": "SSIM (unitless, 1 = identical)",
    "lpips": "LPIPS (distance, lower is better)",
}


@dataclass
class Figure:
    path: Path
    title: str
    caption: str


@contextmanager
def _figure(rows: int, cols: int) -> Iterator[tuple[Any, Any]]:
    """A figure of rows × cols panels; `_finish` sizes it and places the legend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with matplotlib.rc_context(STYLE):
        fig = plt.figure(figsize=(PANEL[0] * cols, PANEL[1] * rows))
        axes = fig.subplots(rows, cols, squeeze=False)
        try:
            yield fig, axes
        finally:
            plt.close(fig)


def _finish(fig: Any, axes: Any, title: str) -> None:
    """Fixed margins in inches and one legend outside the panels, on the right (labels deduplicated).

    Fixed margins rather than matplotlib's constrained layout: the layout engine measures every tick label
    and took about half of the drawing time.
    """
    seen: dict[str, Any] = {}
    for ax in axes.flat:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            seen.setdefault(label, handle)
    rows, cols = axes.shape
    legend = 0.7 + 0.065 * max((len(label) for label in seen), default=0) if seen else 0.2
    width = MARGIN["left"] + cols * PANEL[0] + (cols - 1) * MARGIN["wgap"] + legend
    height = MARGIN["top"] + rows * PANEL[1] + (rows - 1) * MARGIN["hgap"] + MARGIN["bottom"]
    fig.set_size_inches(width, height)
    fig.subplots_adjust(
        left=MARGIN["left"] / width,
        right=(width - legend) / width,
        bottom=MARGIN["bottom"] / height,
        top=1 - MARGIN["top"] / height,
        wspace=MARGIN["wgap"] / PANEL[0],
        hspace=MARGIN["hgap"] / PANEL[1],
    )
    if seen:
        anchor = ((width - legend + 0.15) / width, 1 - MARGIN["top"] / height)
        fig.legend(list(seen.values()), list(seen), loc="upper left", bbox_to_anchor=anchor)
    fig.suptitle(title, y=1 - 0.12 / height, va="top")


def _save(fig: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")


def _hide_unused(axes: Any, used: int) -> None:
    for ax in list(axes.flat)[used:]:
        ax.set_visible(False)


def _grid_shape(n: int, max_cols: int = 3) -> tuple[int, int]:
    cols = min(n, max_cols)
    return math.ceil(n / cols), cols


def method_colors(methods: list[str]) -> dict[str, Any]:
    """A fixed colour per method, in table order, shared by every figure."""
    import matplotlib

    palette = list(matplotlib.colormaps["tab10"].colors) + list(matplotlib.colormaps["Dark2"].colors)
    return {method: palette[i % len(palette)] for i, method in enumerate(methods)}


# ----- kurtosis (the DDC paper's Fig. 2) -------------------------------------------------------------------


def kurtosis_stats(traces: pd.DataFrame, reference: set[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Mean and std over images of the kurtosis per (method, task, σ, t), and the reference pooled per t.

    Unconditional sampling ignores y, so its curve is the same for every task and σ: panels where it did not
    run show its curve pooled over the runs it has.
    """
    keys = ["method", "solver", "task", "sigma", "t"]
    stats = traces.groupby(keys, observed=True)["kurtosis"].agg(["mean", "std"]).reset_index()
    refs = traces[traces["solver"].isin(reference)]
    pooled = refs.groupby(["method", "t"], observed=True)["kurtosis"].agg(["mean", "std"]).reset_index()
    return stats, pooled


def kurtosis_figure(
    stats: pd.DataFrame, pooled: pd.DataFrame, sigma: float, colors: dict[str, Any], path: Path
) -> Figure | None:
    """Excess kurtosis of ε̂ against the timestep, one panel per task: mean line and ±1 std band over images.

    `stats` and `pooled` come from `kurtosis_stats`; the methods in `pooled` are the reference (black, dashed).
    """
    at = stats[stats["sigma"] == sigma]
    references = set(pooled["method"])
    contenders = at[~at["method"].isin(references)]
    if contenders.empty:
        return None
    tasks = sort_tasks(list(contenders["task"].unique()))
    rows, cols = _grid_shape(len(tasks))
    with _figure(rows, cols) as (fig, axes):
        for i, (ax, task) in enumerate(zip(axes.flat, tasks, strict=False)):
            here = at[at["task"] == task]
            present = set(here["method"])
            for method in [m for m in colors if m in present]:
                is_ref = method in references
                _band(ax, here[here["method"] == method], method, REFERENCE_COLOR if is_ref else colors[method], is_ref)
            for method in sorted(references - present):
                _band(ax, pooled[pooled["method"] == method], method, REFERENCE_COLOR, True)  # pooled over tasks
            ax.axhline(0.0, color="grey", linewidth=0.8, linestyle=":")
            ax.set_title(task)
            ax.set_xlabel("timestep t (sampling runs right to left)")
            if i % cols == 0:
                ax.set_ylabel("excess kurtosis of ε pred. (0 = Gaussian)")
            ax.set_xlim(max(1.0, float(at["t"].max())), 0)
        _hide_unused(axes, len(tasks))
        _finish(fig, axes, f"Excess kurtosis of the ε prediction, σ = {sigma_label(sigma)}")
        _save(fig, path)
    reference = (
        "Black dashed: unconditional sampling, the reference (it ignores y, so a panel of a task it did not run "
        "on shows it pooled over the tasks it ran on)."
        if references
        else "No unconditional (uncond) run is in the store, so there is no reference curve: add one with "
        "`--solvers uncond`."
    )
    caption = (
        "Fisher excess kurtosis of each network evaluation's ε prediction over an image's pixels (0 for "
        f"Gaussian noise), mean over images with a ±1 standard deviation band. {reference}"
    )
    return Figure(path, f"Kurtosis of the ε prediction against timestep (σ = {sigma_label(sigma)})", caption)


def _band(ax: Any, curve: pd.DataFrame, label: str, color: Any, reference: bool) -> None:
    # the statistics come grouped with t last, so each curve is already sorted by t
    t, mean = curve["t"].to_numpy(float), curve["mean"].to_numpy(float)
    std = np.nan_to_num(curve["std"].to_numpy(float))
    ax.plot(t, mean, color=color, label=label, linestyle="--" if reference else "-")
    ax.fill_between(t, mean - std, mean + std, color=color, alpha=0.15, linewidth=0)


# ----- quality against runtime -----------------------------------------------------------------------------


def quality_runtime_figure(
    units: pd.DataFrame, groups: pd.DataFrame, sigma: float, colors: dict[str, Any], path: Path
) -> Figure | None:
    """LPIPS and PSNR against log seconds per image, one point per method, over the tasks all of them finished.

    Comparing means over different task sets would mix task difficulty into the ranking, so only tasks that
    every plotted method completed count; each task weighs equally.
    """
    done = groups[(groups["sigma"] == sigma) & (groups["state"] == "complete") & groups["method"].isin(colors)]
    if done["method"].nunique() < 1:
        return None
    tasks_of = done.groupby("method")["task"].agg(set)
    common = set.intersection(*tasks_of)
    if not common:
        return None
    ok = units[(units["sigma"] == sigma) & (units["status"] == "ok") & units["task"].isin(common)]
    ok = ok[ok["method"].isin(tasks_of.index)]
    points = []
    for method, rows in ok.groupby("method"):
        timed = rows[~rows["warmup"]] if (~rows["warmup"]).any() else rows
        per_task = rows.groupby("task")[["psnr", "lpips"]].mean().mean()
        points.append({"method": method, "seconds": timed["wall_s"].mean(), **per_task.to_dict()})
    order = list(colors)
    frame = pd.DataFrame(points).sort_values("method", key=lambda c: c.map(order.index))
    frame = frame[frame["seconds"] > 0]
    if frame.empty:
        return None
    with _figure(1, 2) as (fig, axes):
        for ax, metric in zip(axes.flat, ["lpips", "psnr"], strict=True):
            for row in frame.itertuples(index=False):
                value = getattr(row, metric)
                if finite(value):
                    ax.scatter(row.seconds, value, color=colors[row.method], label=row.method, zorder=3)
                    ax.annotate(row.method, (row.seconds, value), textcoords="offset points", xytext=(4, 3), fontsize=7)
            ax.set_xscale("log")
            ax.minorticks_off()  # minor ticks of log axes are slow to draw and add little here
            ax.set_xlabel("seconds per image (s, log scale)")
            ax.set_ylabel(AXIS_LABELS[metric])
        tasks = ", ".join(sort_tasks(list(common)))
        _finish(fig, axes, f"Quality against runtime, σ = {sigma_label(sigma)} (mean over {tasks})")
        _save(fig, path)
    caption = (
        f"One point per method: mean seconds per image (warm-up batches left out) against the mean over the "
        f"tasks every method finished ({tasks}) of the per-task mean LPIPS and PSNR."
    )
    return Figure(path, f"Quality against runtime (σ = {sigma_label(sigma)})", caption)


# ----- noise robustness and steps ablation -----------------------------------------------------------------


def _metric_lines(
    data: pd.DataFrame, x: str, xlabel: str, colors: dict[str, Any], path: Path, title: str, log_x: bool
) -> None:
    """Panels rows = metrics, columns = tasks; one line per `line` value (columns: line, color_of, task, x, ...)."""
    tasks = sort_tasks(list(data["task"].unique()))
    metrics = [m for m in LINE_METRICS if data[m].map(finite).any()]
    with _figure(len(metrics), len(tasks)) as (fig, axes):
        for r, metric in enumerate(metrics):
            for c, task in enumerate(tasks):
                ax = axes[r][c]
                here = data[data["task"] == task]
                used: dict[str, int] = {}  # lines of one colour (one family at several σ) differ in dash
                for line, rows in here.groupby("line", sort=False):
                    rows = rows.sort_values(x)
                    color = rows["color_of"].iloc[0]
                    dash = DASHES[used.get(color, 0) % len(DASHES)]
                    used[color] = used.get(color, 0) + 1
                    ax.plot(rows[x], rows[metric], marker="o", color=colors[color], linestyle=dash, label=line)
                if log_x:
                    ax.set_xscale("log", base=2)
                    ax.minorticks_off()
                    ticks = sorted(data[x].unique())
                    ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
                ax.set_title(task if r == 0 else "")
                if r == len(metrics) - 1:
                    ax.set_xlabel(xlabel)
                if c == 0:
                    ax.set_ylabel(AXIS_LABELS[metric])
        _finish(fig, axes, title)
        _save(fig, path)


def _wide(summary: pd.DataFrame) -> pd.DataFrame:
    """Complete per-image metric means as columns psnr, ssim, lpips per (method, task, σ)."""
    kept = summary[(summary["state"] == "complete") & summary["metric"].isin(list(AXIS_LABELS))]
    return kept.pivot_table(index=GROUP, columns="metric", values="mean").reset_index()


def noise_figure(summary: pd.DataFrame, colors: dict[str, Any], path: Path) -> Figure | None:
    """Metrics against σ, for the methods that ran at two noise levels or more."""
    wide = _wide(summary)
    if wide.empty or wide["sigma"].nunique() < 2:
        return None
    counts = wide.groupby(["method", "task"])["sigma"].transform("nunique")
    wide = wide[counts >= 2].copy()
    if wide.empty:
        return None
    for metric in AXIS_LABELS:
        if metric not in wide:
            wide[metric] = math.nan
    order = {m: i for i, m in enumerate(colors)}
    wide = wide.sort_values("method", key=lambda c: c.map(order))
    wide["line"] = wide["method"]
    wide["color_of"] = wide["method"]
    _metric_lines(wide, "sigma", "noise level σ ([0, 1] pixel scale)", colors, path, "Noise robustness", False)
    return Figure(path, "Noise robustness", "Mean metrics against the measurement noise σ, per task.")


def steps_figure(summary: pd.DataFrame, methods: pd.DataFrame, colors: dict[str, Any], path: Path) -> Figure | None:
    """Metrics against the solver's `steps` setting, for solvers run with two step counts or more."""
    wide = _wide(summary)
    steps = {}
    family = {}
    for row in methods.itertuples(index=False):
        value = row.config.get("steps")
        if "steps" in row.varying and finite(value):
            steps[row.method] = float(value)
            others = {k: v for k, v in row.varying.items() if k != "steps"}
            family[row.method] = row.solver + (
                " (" + ", ".join(f"{k}={v}" for k, v in sorted(others.items())) + ")" if others else ""
            )
    wide = wide[wide["method"].isin(steps)].copy()
    if wide.empty:
        return None
    wide["steps"] = wide["method"].map(steps)
    several_sigma = wide["sigma"].nunique() > 1
    wide["line"] = [
        family[m] + (f", σ={sigma_label(s)}" if several_sigma else "")
        for m, s in zip(wide["method"], wide["sigma"], strict=True)
    ]
    wide = wide[wide.groupby(["line", "task"])["steps"].transform("nunique") >= 2]
    if wide.empty:
        return None
    # the line takes the colour of its family's first method
    first = wide.groupby("line")["method"].transform(lambda ms: min(ms, key=list(colors).index))
    wide["color_of"] = first
    for metric in AXIS_LABELS:
        if metric not in wide:
            wide[metric] = math.nan
    _metric_lines(wide, "steps", "sampling steps (log scale)", colors, path, "Steps ablation", True)
    return Figure(path, "Steps ablation", "Mean metrics against the number of sampling steps (the `steps` setting).")
