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
    "realness_figure",
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

#: The method label of the forward-noised data reference (`bench.pipeline.reference`), with " (<prior>)" where
#: the store holds several priors.
DATA_REFERENCE = "forward-noised data"


def is_data_reference(method: str) -> bool:
    return str(method).startswith(DATA_REFERENCE)


def kurtosis_stats(
    traces: pd.DataFrame, reference: set[str], data_reference: pd.DataFrame | None = None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Mean and std over images of the kurtosis per (method, task, σ, t), and the references pooled per t.

    Unconditional sampling ignores y, so its curve is the same for every task and σ: panels where it did not
    run show its curve pooled over the runs it has. `data_reference` (columns method, image_id, t, kurtosis;
    methods named `DATA_REFERENCE...`) is the forward-noised data reference, which is the same for every task
    and σ by construction.
    """
    keys = ["method", "solver", "task", "sigma", "t"]
    stats = traces.groupby(keys, observed=True)["kurtosis"].agg(["mean", "std"]).reset_index()
    refs = traces[traces["solver"].isin(reference)]
    pooled = refs.groupby(["method", "t"], observed=True)["kurtosis"].agg(["mean", "std"]).reset_index()
    if data_reference is not None and not data_reference.empty:
        data = data_reference.groupby(["method", "t"], observed=True)["kurtosis"].agg(["mean", "std"]).reset_index()
        pooled = pd.concat([pooled, data], ignore_index=True) if not pooled.empty else data
    return stats, pooled


# Below this timestep the curves separate: on a linear axis of 0..999 the last 50 steps, where the paper reads its
# figure, are 5% of the width. A symmetric-log axis is linear up to SYMLOG_T and logarithmic above.
SYMLOG_T = 10.0
# The paper's reading of its Fig. 2 (DPS closer to Gaussian than DDNM on super-resolution) is checked over the
# steps with t at most this, where the curves differ.
ORDERING_T = 100
SR_TASKS = ("sr4", "sr8")
T_AXIS = "timestep t (symlog; sampling runs right to left)"


def kurtosis_figure(
    stats: pd.DataFrame,
    pooled: pd.DataFrame,
    sigma: float,
    colors: dict[str, Any],
    path: Path,
    reference_of: dict[str, str] | None = None,
) -> Figure | None:
    """Excess kurtosis of ε̂ against the timestep, per task: mean over images ± 1 std (top), and each method's
    mean minus the reference's at the same t (bottom, only where a reference exists), on a symmetric-log t axis.

    `stats` and `pooled` come from `kurtosis_stats`; the methods in `pooled` are references (black). Where an
    unconditional run is among them it is the reference of the lower panels (as before the data reference
    existed); else the forward-noised data (`reference_of`: method -> its data reference, where the store holds
    several priors). Methods with at most `SPARSE_T` distinct timesteps on a panel are drawn as markers with
    error bars at their timesteps, joined by a thin dotted line; denser ones as a line with a band.
    """
    at = stats[stats["sigma"] == sigma]
    references = set(pooled["method"])
    data_refs = {m for m in references if is_data_reference(m)}
    solver_refs = references - data_refs
    contenders = at[~at["method"].isin(references)]
    if contenders.empty:
        return None
    tasks = sort_tasks(list(contenders["task"].unique()))
    task_rows, cols = _grid_shape(len(tasks))
    per_task = 2 if references else 1  # no reference: no lower panels, rather than empty ones
    t_max = max(1.0, float(at["t"].max()), float(pooled["t"].max()) if not pooled.empty else 0.0)
    sparse_seen: dict[str, int] = {}
    with _figure(per_task * task_rows, cols) as (fig, axes):
        for i, task in enumerate(tasks):
            top = axes[per_task * (i // cols), i % cols]
            bottom = axes[per_task * (i // cols) + 1, i % cols] if references else None
            here = at[at["task"] == task]
            present = set(here["method"])
            for method in [m for m in colors if m in present]:
                is_ref = method in references
                curve = here[here["method"] == method]
                color = REFERENCE_COLOR if is_ref else colors[method]
                if _sparse(curve):
                    sparse_seen[method] = max(sparse_seen.get(method, 0), curve["t"].nunique())
                _curve(top, curve, method, color, "reference" if is_ref else "method")
                if is_ref or bottom is None:
                    continue
                reference = _reference_curve(here, pooled, _primary(method, solver_refs, data_refs, reference_of))
                if reference is not None:
                    t = curve["t"].to_numpy(float)
                    gap = curve.assign(mean=curve["mean"].to_numpy(float) - np.interp(t, *reference), std=0.0)
                    _curve(bottom, gap, method, color, "method", band=False)
            for method in sorted(solver_refs - present):  # pooled over tasks
                _curve(top, pooled[pooled["method"] == method], method, REFERENCE_COLOR, "reference")
            for method in sorted(data_refs):
                _curve(top, pooled[pooled["method"] == method], method, REFERENCE_COLOR, "data")
            for ax in (top, bottom) if bottom is not None else (top,):
                ax.axhline(0.0, color="grey", linewidth=0.8, linestyle=":")
                ax.set_xscale("symlog", linthresh=SYMLOG_T)
                ax.set_xlim(t_max, 0)
                ax.set_xlabel(T_AXIS)
            top.set_title(task)
            if i % cols == 0:
                top.set_ylabel("excess kurtosis of ε pred. (0 = Gaussian)")
            if bottom is not None:
                bottom.set_title(f"{task}: minus the reference")
                if i % cols == 0:
                    bottom.set_ylabel("minus " + ("uncond" if solver_refs else "forward-noised data"))
        for k in range(len(tasks), task_rows * cols):
            for r in range(per_task):
                axes[per_task * (k // cols) + r, k % cols].set_visible(False)
        _finish(fig, axes, f"Excess kurtosis of the ε prediction, σ = {sigma_label(sigma)}")
        _save(fig, path)
    caption = " ".join(
        part.strip()
        for part in (
            "Fisher excess kurtosis of each network evaluation's ε prediction over an image's pixels (0 for "
            "Gaussian noise), mean over images ± 1 standard deviation, against t on a symmetric-log axis (linear "
            f"below t = {SYMLOG_T:g}).",
            _sparse_note(sparse_seen),
            _reference_note(pooled, solver_refs, data_refs),
            kurtosis_ordering(at),
        )
    )
    return Figure(path, f"Kurtosis of the ε prediction against timestep (σ = {sigma_label(sigma)})", caption)


def _sparse(curve: pd.DataFrame) -> bool:
    from bench.pipeline.reference import SPARSE_T

    return curve["t"].nunique() <= SPARSE_T


def _sparse_note(sparse: dict[str, int]) -> str:
    from bench.pipeline.reference import SPARSE_T

    if not sparse:
        return (
            f"Every method is drawn as a line with a ±1 std band (each evaluated at more than {SPARSE_T} timesteps). "
        )
    listed = ", ".join(f"{m} at {n}" for m, n in sparse.items())
    return (
        f"Methods evaluated at {SPARSE_T} timesteps or fewer ({listed}) are drawn as markers at the timesteps "
        "they evaluated, with ±1 std error bars; the thin dotted line between markers only joins them and is "
        "no measurement. Denser methods are lines with a ±1 std band. "
    )


def _reference_note(pooled: pd.DataFrame, solver_refs: set[str], data_refs: set[str]) -> str:
    data = ""
    if data_refs:
        grid = int(pooled.loc[pooled["method"].isin(data_refs), "t"].nunique())
        data = (
            "Black diamonds (dash-dot): the prior's own ε̂ on the run's clean images forward-noised exactly, "
            f"x_t = √ᾱ_t x + √(1 − ᾱ_t) ε, at {grid} timesteps: a perfect posterior sampler's x_t has the data's "
            "forward marginal, so this is what its ε̂ would look like (`bench run` computes it where no uncond "
            "runs, and keeps it under reference/ in the run folder). "
        )
    if solver_refs:
        return (
            "Black dashed: unconditional sampling, the reference (it ignores y, so a panel of a task it did not "
            "run on shows it pooled over the tasks it ran on); the lower panels show each method's mean minus the "
            "reference's at the same timestep (the reference interpolated between its own timesteps). " + data
        )
    if data_refs:
        return (
            data + "It is the reference: the lower panels show each method's mean minus the reference's at the same "
            "timestep (interpolated between the reference's timesteps where a method's t is not among them)."
        )
    return (
        "No reference: the store has neither an unconditional (uncond) run nor the forward-noised data reference "
        "that `bench run` computes (a store from before it, or BENCH_REFERENCE=0), so the figure has no panels of "
        "differences."
    )


def _primary(method: str, solver_refs: set[str], data_refs: set[str], reference_of: dict[str, str] | None) -> set[str]:
    """The references a method's difference is taken from: uncond where it ran, else its prior's data reference."""
    if solver_refs:
        return solver_refs
    if reference_of and reference_of.get(method) in data_refs:
        return {reference_of[method]}
    return data_refs


def _reference_curve(here: pd.DataFrame, pooled: pd.DataFrame, references: set[str]) -> tuple[Any, Any] | None:
    """(t ascending, mean) of the reference on this panel: its own run on the task, else pooled over tasks."""
    own = here[here["method"].isin(references)]
    curve = own if not own.empty else pooled[pooled["method"].isin(references)]
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


def _curve(ax: Any, curve: pd.DataFrame, label: str, color: Any, kind: str, band: bool = True) -> None:
    """One method's curve. kind: "method", "reference" (a solver run as reference: dashed) or "data" (the
    forward-noised data reference: diamonds). Sparse curves (≤ SPARSE_T timesteps) and the data reference are
    markers at the measured timesteps with ±1 std error bars and a thin connector; others a line and a band."""
    curve = curve.sort_values("t")
    t, mean = curve["t"].to_numpy(float), curve["mean"].to_numpy(float)
    std = np.nan_to_num(curve["std"].to_numpy(float)) if band else None
    if kind == "data" or _sparse(curve):
        marker = {"data": "D", "reference": "s"}.get(kind, "o")
        connector = "-." if kind == "data" else ":"
        # references under the methods: a method's markers stay visible where they meet the reference's
        zorder = 1.8 if kind != "method" else 2.5
        ax.plot(t, mean, color=color, linestyle=connector, linewidth=0.7, alpha=0.6, zorder=zorder)
        ax.errorbar(
            t,
            mean,
            yerr=std if std is not None and std.any() else None,
            color=color,
            marker=marker,
            markersize=3 if kind == "data" else 5,
            linestyle="none",
            elinewidth=0.8,
            capsize=2,
            label=label,
            zorder=zorder,
        )
        return
    ax.plot(t, mean, color=color, label=label, linestyle="--" if kind == "reference" else "-")
    if std is not None:
        ax.fill_between(t, mean - std, mean + std, color=color, alpha=0.15, linewidth=0)


# ----- realness against consistency (the DDC paper's Sec. 3.1) ----------------------------------------------

PAPER_SOLVERS = ("dps", "ddnm", "ddc")
CONSISTENCY_LABEL = "RMS of A(x̂) − y (consistency)"
# The paper's reading as checks (a, b, field, text): a below b in |excess kurtosis| (field "realness"), or a above
# b in SSIM; each made where the store holds both.
READING_CHECKS = (
    ("dps", "ddnm", "realness", "DPS closer to Gaussian than DDNM"),
    ("ddnm", "dps", "ssim", "DDNM's SSIM above DPS's"),
    ("ddc", "ddnm", "realness", "DDC closer to Gaussian than DDNM"),
    ("ddc", "dps", "ssim", "DDC's SSIM above DPS's"),
)
REALNESS_LABEL = f"mean |excess kurtosis| of ε̂, t ≤ {ORDERING_T} (0 = Gaussian)"


def late_closeness(at: pd.DataFrame) -> pd.DataFrame:
    """Per (method, solver, task): the mean over its evaluations with t ≤ ORDERING_T of |mean excess kurtosis
    over images| (`kurtosis_ordering`'s measure), and how many evaluations that is (columns realness, n_t)."""
    late = at[at["t"] <= ORDERING_T].assign(absolute=lambda f: f["mean"].abs())
    grouped = late.groupby(["method", "solver", "task"], observed=True)
    return grouped.agg(realness=("absolute", "mean"), n_t=("t", "nunique")).reset_index()


def realness_figure(
    stats: pd.DataFrame,
    pooled: pd.DataFrame,
    summary: pd.DataFrame,
    units: pd.DataFrame,
    sigma: float,
    colors: dict[str, Any],
    path: Path,
) -> Figure | None:
    """The paper's argument as a scatter, per task: each method's mean |excess kurtosis| over the last steps
    (`late_closeness`) against its mean SSIM (top) and its measurement consistency (bottom, where scored),
    with FID beside a method whose set is large enough to rank (`SET_METRIC_MIN_IMAGES`)."""
    from bench.report.tables import SET_METRIC_MIN_IMAGES

    at = stats[stats["sigma"] == sigma]
    references = set(pooled["method"])
    points = late_closeness(at[~at["method"].isin(references) & at["method"].isin(colors)])
    at_sigma = summary[(summary["sigma"] == sigma) & (summary["state"] == "complete")]
    ssim = at_sigma[at_sigma["metric"] == "ssim"].set_index(["method", "task"])["mean"]
    points = points.assign(
        ssim=[ssim.get((m, t), math.nan) for m, t in zip(points["method"], points["task"], strict=True)]
    )
    points = _finite_rows(points, "ssim")
    if points.empty:
        return None
    ok = units[(units["sigma"] == sigma) & (units["status"] == "ok")]
    if "consistency" in ok:
        consistency = ok.groupby(["method", "task"])["consistency"].mean()
        points["consistency"] = [
            consistency.get((m, t), math.nan) for m, t in zip(points["method"], points["task"], strict=True)
        ]
    else:
        points["consistency"] = math.nan
    fid = at_sigma[(at_sigma["metric"] == "fid") & (at_sigma["n"] >= SET_METRIC_MIN_IMAGES)]
    fid = _finite_rows(fid, "mean").set_index(["method", "task"])["mean"]
    points["label"] = [
        m + (f" · FID {fid[(m, t)]:.3g}" if (m, t) in fid.index else "")
        for m, t in zip(points["method"], points["task"], strict=True)
    ]
    order = list(colors)
    points = points.sort_values("method", key=lambda c: c.map(order.index), kind="stable")
    metrics = ["ssim"] + (["consistency"] if points["consistency"].map(finite).any() else [])
    tasks = sort_tasks(list(points["task"].unique()))
    task_rows, cols = _grid_shape(len(tasks))
    per_task = len(metrics)
    reference_names = sorted(m for m in references if not is_data_reference(m)) or sorted(references)
    panels = []
    with _figure(per_task * task_rows, cols) as (fig, axes):
        for i, task in enumerate(tasks):
            here = points[points["task"] == task]
            reference = _late_reference(at[at["task"] == task], pooled, set(reference_names))
            for r, metric in enumerate(metrics):
                ax = axes[per_task * (i // cols) + r, i % cols]
                shown = _finite_rows(here, metric)
                if shown.empty:  # a metric not scored on this task: no panel rather than an empty one
                    ax.set_visible(False)
                    continue
                for row in shown.itertuples(index=False):
                    ax.scatter(row.realness, getattr(row, metric), color=colors[row.method], label=row.method, zorder=3)
                if reference is not None:
                    label = f"reference ({', '.join(reference_names)})"
                    ax.axvline(reference, color=REFERENCE_COLOR, linestyle="--", linewidth=0.9, label=label)
                ax.set_xlim(left=0.0, right=max([*shown["realness"], reference or 0.0, 1e-3]) * 1.25)
                if metric == "consistency" and (shown[metric] > 0).all() and len(shown) > 1:
                    if shown[metric].max() / shown[metric].min() > 20:
                        ax.set_yscale("log")
                        ax.minorticks_off()
                ax.set_title(task if r == 0 else f"{task}: consistency")
                ax.set_xlabel(REALNESS_LABEL)
                if i % cols == 0:
                    ax.set_ylabel(AXIS_LABELS["ssim"] if metric == "ssim" else CONSISTENCY_LABEL)
                panels.append((ax, shown, metric))
        for k in range(len(tasks), task_rows * cols):
            for r in range(per_task):
                axes[per_task * (k // cols) + r, k % cols].set_visible(False)
        _finish(fig, axes, f"Realness against consistency, σ = {sigma_label(sigma)}")
        for ax, shown, metric in panels:  # after _finish: the final axes size
            place_labels(ax, shown["realness"].to_numpy(float), shown[metric].to_numpy(float), list(shown["label"]))
        _save(fig, path)
    counts = points.groupby("method", sort=False)["n_t"].max()
    window = ", ".join(f"{m} {n}" for m, n in counts.items())
    fid_rows = at_sigma[at_sigma["metric"] == "fid"]
    largest = int(fid_rows["n"].max()) if not fid_rows.empty else 0
    fid_note = f"FID is given beside a method where its set has at least {SET_METRIC_MIN_IMAGES} images" + (
        "." if len(fid) else f" (none here: the largest set has {largest} images)."
    )
    reference_note = (
        f"The dashed black line is the reference's value over the same window ({', '.join(reference_names)})"
        + (
            ": a perfect posterior sampler, whose x_t has the data's forward marginal, would sit on it, not at 0."
            if all(is_data_reference(m) for m in reference_names)
            else "."
        )
        if references
        else "The store has no reference to mark."
    )
    if counts.nunique() > 1:
        reference_note += (
            " Methods with different numbers of evaluations in the window are averaged over different timesteps "
            "(the kurtosis figure shows each at its own)."
        )
    caption = (
        f"One point per method and task: x is the mean over the method's network evaluations with t ≤ "
        f"{ORDERING_T} (the last steps; evaluations in that window: {window}) of its mean excess kurtosis of ε̂ "
        f"over images, in absolute value (0 = Gaussian, as in the kurtosis figure's reading); y is its mean SSIM"
        + (
            " (top) and its mean measurement consistency, the RMS of A(x̂) − y (bottom, lower is more consistent)"
            if "consistency" in metrics
            else ""
        )
        + f". {reference_note} {fid_note} {realness_reading(points)}"
    )
    return Figure(path, f"Realness against consistency (σ = {sigma_label(sigma)})", caption)


def _finite_rows(frame: pd.DataFrame, column: str) -> pd.DataFrame:
    """The rows whose `column` is a finite number (an empty frame keeps its columns)."""
    return frame.loc[np.array([finite(v) for v in frame[column]], dtype=bool)]


def _late_reference(here: pd.DataFrame, pooled: pd.DataFrame, references: set[str]) -> float | None:
    own = here[here["method"].isin(references)]
    curve = own if not own.empty else pooled[pooled["method"].isin(references)]
    late = curve[curve["t"] <= ORDERING_T]
    if late.empty:
        return None
    return float(late.groupby("t")["mean"].mean().abs().mean())


def realness_reading(points: pd.DataFrame) -> str:
    """Where the DDC paper puts DPS, DDNM and DDC (Chen et al. 2024, Fig. 2 and Sec. 3.1) and, per task, whether
    this store agrees, from the numbers: each check between two of them that the store holds both of.

    points: columns method, solver, task, realness (`late_closeness`), ssim. A solver run under several configs
    is represented by its first method in `points`' order.
    """
    paper = (
        "The paper's reading (Chen et al. 2024, Fig. 2, Sec. 3.1): DPS keeps ε̂ near-Gaussian but loses SSIM, "
        "DDNM gains SSIM and moves further from Gaussian, DDC balances the two (closer to Gaussian than DDNM, "
        "higher SSIM than DPS)."
    )
    findings = []
    for task in sort_tasks(list(points["task"].unique())):
        here = points[points["task"] == task]
        first = {s: rows.iloc[0] for s, rows in here.groupby("solver", sort=False) if s in PAPER_SOLVERS}
        checks = []
        for a, b, field, text in READING_CHECKS:
            if a in first and b in first:
                x, y = float(first[a][field]), float(first[b][field])
                holds = x < y if field == "realness" else x > y
                what = "|excess kurtosis|" if field == "realness" else "SSIM"
                checks.append((holds, f"{text} ({what} {x:.3g} vs {y:.3g}): {'yes' if holds else 'no'}"))
        if not checks:
            continue
        held = sum(holds for holds, _ in checks)
        verdict = (
            "agrees"
            if held == len(checks)
            else "does not agree"
            if held == 0
            else f"agrees in {held} of {len(checks)} checks"
        )
        findings.append(f"on {task} this store {verdict}: " + "; ".join(text for _, text in checks))
    if not findings:
        present = sorted(set(points["solver"]) & set(PAPER_SOLVERS))
        return (
            f"{paper} It cannot be checked here: that needs two of DPS, DDNM and DDC at this σ, and the store has "
            f"{', '.join(present) if present else 'none of them'}."
        )
    return f"{paper} Here, " + "; ".join(findings) + "."


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
