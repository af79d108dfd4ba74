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


# Below this timestep the curves separate: on a linear axis of 0..999 the last 50 steps, where the paper reads its
# figure, are 5% of the width. A symmetric-log axis is linear up to SYMLOG_T and logarithmic above.
SYMLOG_T = 10.0
# The paper's reading of its Fig. 2 (DPS closer to Gaussian than DDNM on super-resolution) is checked over the
# steps with t at most this, where the curves differ.
ORDERING_T = 100
SR_TASKS = ("sr4", "sr8")


def kurtosis_figure(
    stats: pd.DataFrame, pooled: pd.DataFrame, sigma: float, colors: dict[str, Any], path: Path
) -> Figure | None:
    """Excess kurtosis of ε̂ against the timestep, two panels per task: mean line and ±1 std band over images
    (top), and each method's mean minus the reference's at the same t (bottom), on a symmetric-log t axis.

    `stats` and `pooled` come from `kurtosis_stats`; the methods in `pooled` are the reference (black, dashed).
    """
    at = stats[stats["sigma"] == sigma]
    references = set(pooled["method"])
    contenders = at[~at["method"].isin(references)]
    if contenders.empty:
        return None
    tasks = sort_tasks(list(contenders["task"].unique()))
    task_rows, cols = _grid_shape(len(tasks))
    t_max = max(1.0, float(at["t"].max()))
    with _figure(2 * task_rows, cols) as (fig, axes):
        for i, task in enumerate(tasks):
            top, bottom = axes[2 * (i // cols), i % cols], axes[2 * (i // cols) + 1, i % cols]
            here = at[at["task"] == task]
            reference = _reference_curve(here, pooled, references)
            present = set(here["method"])
            for method in [m for m in colors if m in present]:
                is_ref = method in references
                curve = here[here["method"] == method]
                _band(top, curve, method, REFERENCE_COLOR if is_ref else colors[method], is_ref)
                if not is_ref and reference is not None:
                    t = curve["t"].to_numpy(float)
                    gap = curve["mean"].to_numpy(float) - np.interp(t, *reference)
                    bottom.plot(t, gap, color=colors[method], label=method)
            for method in sorted(references - present):
                _band(top, pooled[pooled["method"] == method], method, REFERENCE_COLOR, True)  # pooled over tasks
            for ax in (top, bottom):
                ax.axhline(0.0, color="grey", linewidth=0.8, linestyle=":")
                ax.set_xscale("symlog", linthresh=SYMLOG_T)
                ax.set_xlim(t_max, 0)
                ax.set_xlabel("timestep t (symlog; sampling runs right to left)")
            top.set_title(task)
            bottom.set_title(f"{task}: minus the reference" if reference is not None else f"{task}: no reference")
            if i % cols == 0:
                top.set_ylabel("excess kurtosis of ε pred. (0 = Gaussian)")
                bottom.set_ylabel("difference from uncond")
        for k in range(len(tasks), task_rows * cols):
            axes[2 * (k // cols), k % cols].set_visible(False)
            axes[2 * (k // cols) + 1, k % cols].set_visible(False)
        _finish(fig, axes, f"Excess kurtosis of the ε prediction, σ = {sigma_label(sigma)}")
        _save(fig, path)
    reference_note = (
        "Black dashed: unconditional sampling, the reference (it ignores y, so a panel of a task it did not run "
        "on shows it pooled over the tasks it ran on); the lower panels show each method's mean minus the "
        "reference's at the same timestep (the reference interpolated between its own timesteps)."
        if references
        else "No unconditional (uncond) run is in the store, so there is no reference curve and the lower panels "
        "are empty: add one with `--solvers uncond`."
    )
    caption = (
        "Fisher excess kurtosis of each network evaluation's ε prediction over an image's pixels (0 for "
        f"Gaussian noise), mean over images with a ±1 standard deviation band, against t on a symmetric-log "
        f"axis (linear below t = {SYMLOG_T:g}). {reference_note} {kurtosis_ordering(at)}"
    )
    return Figure(path, f"Kurtosis of the ε prediction against timestep (σ = {sigma_label(sigma)})", caption)


def _reference_curve(here: pd.DataFrame, pooled: pd.DataFrame, references: set[str]) -> tuple[Any, Any] | None:
    """(t ascending, mean) of the reference on this panel: its own run on the task, else pooled over tasks."""
    own = here[here["method"].isin(references)]
    curve = own if not own.empty else pooled
    if curve.empty:
        return None
    mean = curve.groupby("t", observed=True)["mean"].mean().sort_index()
    return mean.index.to_numpy(float), mean.to_numpy(float)


def kurtosis_ordering(at: pd.DataFrame) -> str:
    """Whether the DDC paper's reading of its Fig. 2 (DPS's ε̂ closer to Gaussian than DDNM's on SR) holds in
    this store, as a sentence with the figures: mean |excess kurtosis| over the evaluations with t ≤ ORDERING_T."""
    findings = []
    for task in SR_TASKS:
        late = at[(at["task"] == task) & (at["t"] <= ORDERING_T)]
        closeness = {
            solver: float(late[late["solver"] == solver]["mean"].abs().mean())
            for solver in ("dps", "ddnm")
            if (late["solver"] == solver).any()
        }
        if len(closeness) == 2:
            holds = closeness["dps"] < closeness["ddnm"]
            findings.append(
                f"on {task} it {'reproduces' if holds else 'does not reproduce'} here: mean |excess kurtosis| at "
                f"t ≤ {ORDERING_T} is {closeness['dps']:.3g} for DPS and {closeness['ddnm']:.3g} for DDNM"
            )
    if not findings:
        return (
            "The paper's ordering (DPS closer to Gaussian than DDNM on super-resolution) cannot be checked: the "
            "store lacks DPS or DDNM on sr4/sr8 at this σ."
        )
    return "The paper's ordering (DPS closer to Gaussian than DDNM on super-resolution): " + "; ".join(findings) + "."


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
    # columns given: when every image diverged there are no points, and the frame must still have them
    frame = pd.DataFrame(points, columns=["method", "seconds", "psnr", "lpips"])
    frame = frame.sort_values("method", key=lambda c: c.map(order.index))
    frame = frame[frame["seconds"] > 0]
    if frame.empty:
        return None
    with _figure(1, 2) as (fig, axes):
        for ax, metric in zip(axes.flat, ["lpips", "psnr"], strict=True):
            for row in frame.itertuples(index=False):
                value = getattr(row, metric)
                if finite(value):
                    ax.scatter(row.seconds, value, color=colors[row.method], label=row.method, zorder=3)
            ax.set_xscale("log")
            ax.minorticks_off()  # minor ticks of log axes are slow to draw and add little here
            ax.set_xlabel("seconds per image (s, log scale)")
            ax.set_ylabel(AXIS_LABELS[metric])
        tasks = ", ".join(sort_tasks(list(common)))
        _finish(fig, axes, f"Quality against runtime, σ = {sigma_label(sigma)} (mean over {tasks})")
        for ax, metric in zip(axes.flat, ["lpips", "psnr"], strict=True):  # after _finish: the final axes size
            shown = frame[frame[metric].map(finite)]
            place_labels(ax, shown["seconds"].to_numpy(float), shown[metric].to_numpy(float), list(shown["method"]))
        _save(fig, path)
    caption = (
        f"One point per method: mean seconds per image (warm-up batches left out) against the mean over the "
        f"tasks every method finished ({tasks}) of the per-task mean LPIPS and PSNR."
    )
    return Figure(path, f"Quality against runtime (σ = {sigma_label(sigma)})", caption)


LABEL_FONTSIZE = 7


def place_labels(ax: Any, xs: Any, ys: Any, labels: list[str]) -> list[Any]:
    """Annotate each point with its label where the label overlaps no other label, marker or the axes' edge.

    Greedy, in display units: each label tries offsets around its point in rings of growing radius and takes
    the first free one (a thin leader line joins far ones); when none is free it takes the least overlapped.
    Text extents are measured with the figure's renderer, so the check is exact, not a guess from the length.
    """
    fig = ax.figure
    ax.get_xlim(), ax.get_ylim()  # settles pending autoscaling, so transData maps to the final positions
    renderer = fig.canvas.get_renderer()
    points = ax.transData.transform(np.column_stack([xs, ys])) if len(labels) else np.zeros((0, 2))
    inside = ax.get_window_extent(renderer)
    marker = 4.0 * fig.dpi / 72  # half the marker's width, in pixels
    taken = [(x - marker, y - marker, x + marker, y + marker) for x, y in points]
    placed = []
    for (x, y), label in zip(points, labels, strict=True):
        probe = ax.text(0, 0, label, fontsize=LABEL_FONTSIZE)  # a plain Text is laid out before any draw
        box = probe.get_window_extent(renderer)
        probe.remove()
        w, h, gap = box.width, box.height, 3.0 * fig.dpi / 72
        best, best_overlap = None, math.inf
        for ring in (1.0, 2.0, 3.0, 4.5):
            r = ring * gap
            for dx, dy in (
                (r, r),
                (r, -h - r),
                (-w - r, r),
                (-w - r, -h - r),
                (-w / 2, h / 2 + r),
                (-w / 2, -1.5 * h - r),
                (r + marker, -h / 2),
                (-w - r - marker, -h / 2),
            ):
                rect = (x + dx, y + dy, x + dx + w, y + dy + h)
                overlap = sum(_overlap(rect, other) for other in taken) + _outside(rect, inside)
                if overlap < best_overlap:
                    best, best_overlap = (dx, dy, ring), overlap
                if overlap == 0:
                    break
            if best_overlap == 0:
                break
        dx, dy, ring = best
        taken.append((x + dx, y + dy, x + dx + w, y + dy + h))
        to_points = 72 / fig.dpi
        arrow = {"arrowstyle": "-", "color": "grey", "linewidth": 0.5} if ring > 1.0 else None
        placed.append(
            ax.annotate(
                label,
                ax.transData.inverted().transform((x, y)),
                xytext=(dx * to_points, dy * to_points),
                textcoords="offset points",
                fontsize=LABEL_FONTSIZE,
                va="bottom",
                ha="left",
                arrowprops=arrow,
            )
        )
    return placed


def _overlap(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    width = min(a[2], b[2]) - max(a[0], b[0])
    height = min(a[3], b[3]) - max(a[1], b[1])
    return max(width, 0.0) * max(height, 0.0)


def _outside(rect: tuple[float, ...], box: Any) -> float:
    """Area of `rect` outside the axes box, so labels stay readable within the panel."""
    area = (rect[2] - rect[0]) * (rect[3] - rect[1])
    return area - _overlap(rect, (box.x0, box.y0, box.x1, box.y1))


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
