"""Quality and runtime tables: pure functions from the store's DataFrames to Markdown, LaTeX, HTML and CSV.

A table is first built as a grid of `Cell`s (value text, best/second mark, footnote, visual-check flags), then
rendered by one function per format, so bold, underline, footnotes and flags land on the same cells in every
format.

The quality of one noise level is shown as one table per task (rows: methods, columns: that task's metrics,
`quality_tables`), narrow enough for a laptop screen; `quality_table` is the same numbers in the papers' wide
layout (column groups task × metric), for LaTeX and CSV. The visual checks (the metrics declared with a `flag`:
blockiness, colour loss, clipping) get their own table (`checks_table`), and a (method, task, σ) whose images
fail one gets a flagged quality cell with the reason in a numbered footnote.
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from bench import metrics
from bench.report.load import GROUP, finite, sigma_label, sort_tasks

__all__ = [
    "CHECKS",
    "FLAG",
    "METRICS",
    "Cell",
    "Metric",
    "Table",
    "checks_summary",
    "checks_table",
    "quality_summary",
    "quality_table",
    "quality_tables",
    "runtime_summary",
    "runtime_table",
    "to_csv",
    "to_html",
    "to_latex",
    "to_markdown",
]

# Two-sided 95% intervals.
CONFIDENCE = 0.95
# FID of a few images is dominated by its bias (it falls as the set grows) and KID by its variance: below this
# many images a set metric is shown with a footnote and left out of the best / second marking. The DDC paper
# scores 1,000 images; clean-fid's documentation warns against small sets.
SET_METRIC_MIN_IMAGES = 50
UNSUPPORTED, UNFINISHED, UNAVAILABLE = "–", "…", "n/a"


@dataclass(frozen=True)
class Metric:
    column: str
    name: str
    higher_is_better: bool
    decimals: int
    per_image: bool  # False: a set metric (FID/KID), one value per (method, task, σ)
    optional: bool = False  # a column only where the run scored it (`bench run --metrics`)

    @property
    def header(self) -> str:
        return f"{self.name}{'↑' if self.higher_is_better else '↓'}"


# The quality table's columns, from the metric declarations (bench.metrics): a metric that is not scored
# by default gets a column only where the run scored it.
METRICS = tuple(
    Metric(m.column, m.label, m.higher_is_better, m.decimals, m.scope == "image", optional=not m.default)
    for m in metrics.specs()
    if m.in_quality_table
)
#: The visual checks: per-image metrics declared with a flag (threshold and reason), in registry order.
CHECKS = tuple(m for m in metrics.specs("image") if m.flag is not None)
#: The mark of a flagged cell; its footnotes are numbered (notes are lettered).
FLAG = "⚑"


@dataclass
class Cell:
    """One table cell: `text` is what is shown (and marked), `extra` follows it unmarked (a ± interval)."""

    text: str
    mark: str | None = None  # "best" or "second"
    extra: str = ""
    note: str | None = None  # footnote text
    value: float | str | None = None  # what the CSV holds
    flags: list[str] = field(default_factory=list)  # failed visual checks: ⚑ and a numbered footnote each


@dataclass
class Table:
    caption: str
    header: list[str]  # one per column; the first columns are row labels
    rows: list[list[Cell]]
    groups: list[tuple[str, int]] = field(default_factory=list)  # (label, span) over the columns after `lead`
    lead: int = 1  # label columns (left-aligned)
    legend: list[str] = field(default_factory=list)
    csv_header: list[str] | None = None
    csv_rows: list[list[object]] | None = None


# ----- quality ---------------------------------------------------------------------------------------------


def quality_summary(units: pd.DataFrame, sets: pd.DataFrame, groups: pd.DataFrame, ci: bool = False) -> pd.DataFrame:
    """Long table, one row per (method, task, σ, metric): mean, 95% half-width, n, state and note.

    Per-image metrics are means over the group's ok images (pandas' mean; NaN values are skipped); diverged
    images are left out, with a note. The interval is Student's t: t(0.975, n − 1) · s / √n with the sample
    standard deviation s (ddof = 1), since groups hold few images; NaN below 2 images. FID and KID are
    metrics of the whole set, so they get no interval. States: ok, unsupported, incomplete.
    """
    ok = units[units["status"] == "ok"]
    groups = groups[groups["method"].isin(set(units["method"]))]
    # an optional metric the run did not select (all NaN, or a store from before its column) gets no column
    scored = [m for m in METRICS if not m.optional or (m.column in ok and ok[m.column].notna().any())]
    columns = [m.column for m in scored if m.per_image]
    stats = ok.groupby(GROUP)[columns].agg(["mean", "std", "count"])
    rows = []
    set_rows = sets.set_index(GROUP) if not sets.empty else None
    for group in groups.itertuples(index=False):
        index = (group.method, group.task, group.sigma)
        for metric in scored:
            row = {"method": group.method, "task": group.task, "sigma": group.sigma, "metric": metric.column}
            row.update(mean=math.nan, half_width=math.nan, n=0, state=group.state, note=None, set_std=math.nan)
            if group.state == "unsupported":
                row["note"] = group.reason if isinstance(group.reason, str) else "not supported"
            elif group.state == "complete" and metric.per_image and index in stats.index:
                mean, std, n = (stats.loc[index, (metric.column, s)] for s in ("mean", "std", "count"))
                row.update(mean=mean, n=int(n), half_width=_half_width(std, int(n)) if ci else math.nan)
                if group.diverged:
                    row["note"] = f"{group.diverged} of {group.diverged + group.ok} images diverged (left out)"
            elif group.state == "complete" and metric.per_image:
                row["note"] = "every image diverged"
            elif group.state == "complete" and set_rows is not None and index in set_rows.index:
                found = set_rows.loc[index]
                row.update(mean=float(found[metric.column]), n=int(found["n_images"]))
                if metric.column == "kid" and "kid_std" in found:
                    row["set_std"] = float(found["kid_std"])
                if not finite(row["mean"]) and isinstance(found["note"], str):
                    row["note"] = found["note"]
            elif group.state == "complete":
                row["note"] = "no FID/KID row in the store for this set"
            rows.append(row)
    return pd.DataFrame(rows, columns=[*GROUP, "metric", "mean", "half_width", "n", "state", "note", "set_std"])


def _half_width(std: float, n: int) -> float:
    if n < 2 or not finite(std):
        return math.nan
    from scipy.special import stdtrit  # imported only for --ci (scipy is slow to import)

    return float(stdtrit(n - 1, 0.5 + CONFIDENCE / 2) * std / math.sqrt(n))


def quality_table(
    summary: pd.DataFrame,
    sigma: float,
    methods: list[str],
    ci: bool = False,
    checks: pd.DataFrame | None = None,
) -> Table:
    """The papers' wide table of one noise level: rows = methods, column groups = tasks × metrics (for LaTeX and
    CSV; the pages show `quality_tables`). `checks`: `checks_summary`, whose failures flag the cells."""
    at = summary[summary["sigma"] == sigma]
    tasks = sort_tasks(list(at["task"].unique()))
    present = set(at["method"])
    methods = [m for m in methods if m in present]
    lookup = {(r.method, r.task, r.metric): r for r in at.itertuples(index=False)}
    shown = [m for m in METRICS if m.column in set(at["metric"])] or list(METRICS[:1])
    marks = _marks(at)
    flags = _flags(checks, sigma)
    rows = []
    csv_rows = []
    for method in methods:
        cells: list[Cell] = [Cell(method, value=method)]
        csv_row: list[object] = [method]
        for task in tasks:
            task_cells = _task_cells(lookup, marks, flags, method, task, shown, ci)
            cells += task_cells
            for metric, cell in zip(shown, task_cells, strict=True):
                csv_row.append(cell.value)
                if ci and metric.per_image:
                    found = lookup.get((method, task, metric.column))
                    csv_row.append(found.half_width if found is not None and finite(found.half_width) else "")
        rows.append(cells)
        csv_rows.append(csv_row)
    csv_header = ["method"]
    for task in tasks:
        for metric in shown:
            csv_header.append(f"{task}_{metric.column}")
            if ci and metric.per_image:
                csv_header.append(f"{task}_{metric.column}_ci95")
    return Table(
        caption=f"Reconstruction quality at σ = {sigma_label(sigma)}",
        header=["method"] + [metric.header for _ in tasks for metric in shown],
        rows=rows,
        groups=[(task, len(shown)) for task in tasks],
        legend=_quality_legend(at, rows, ci),
        csv_header=csv_header,
        csv_rows=csv_rows,
    )


def quality_tables(
    summary: pd.DataFrame,
    sigma: float,
    methods: list[str],
    ci: bool = False,
    checks: pd.DataFrame | None = None,
) -> list[Table]:
    """The quality of one noise level as one table per task (rows = the methods that ran it, in `methods`'
    order; columns = its metrics), each narrow enough for a laptop screen. The same cells, marks and flags as
    `quality_table`; the legend follows the last table."""
    at = summary[summary["sigma"] == sigma]
    present = set(at["method"])
    methods = [m for m in methods if m in present]
    lookup = {(r.method, r.task, r.metric): r for r in at.itertuples(index=False)}
    marks = _marks(at)
    flags = _flags(checks, sigma)
    tables = []
    for task in sort_tasks(list(at["task"].unique())):
        here = at[at["task"] == task]
        shown = [m for m in METRICS if m.column in set(here["metric"])] or list(METRICS[:1])
        rows = []
        for method in methods:
            cells = _task_cells(lookup, marks, flags, method, task, shown, ci)
            if any(cell.text for cell in cells):  # a method that never ran this task at this σ gets no row
                rows.append([Cell(method, value=method), *cells])
        csv_rows = [[cell.value for cell in row] for row in rows]
        tables.append(
            Table(
                caption=f"{task} at σ = {sigma_label(sigma)}",
                header=["method"] + [metric.header for metric in shown],
                rows=rows,
                csv_header=["method"] + [metric.column for metric in shown],
                csv_rows=csv_rows,
            )
        )
    if tables:
        every = [row for table in tables for row in table.rows]
        tables[-1].legend = _quality_legend(at, every, ci, flagged=any(c.flags for row in every for c in row))
    return tables


def _task_cells(
    lookup: dict[tuple[str, str, str], Any],
    marks: dict[tuple[str, str, str], str],
    flags: dict[tuple[str, str], list[str]],
    method: str,
    task: str,
    shown: list[Metric],
    ci: bool,
) -> list[Cell]:
    """A method's cells of one task, marked; the first carries the flags of the (method, task)."""
    cells = []
    for metric in shown:
        cell = _quality_cell(lookup.get((method, task, metric.column)), metric, ci)
        if cell.text == UNSUPPORTED and metric is not shown[0]:
            cell.note = None  # one footnote mark per task group is enough
        cell.mark = marks.get((method, task, metric.column))
        cells.append(cell)
    if cells and cells[0].text not in ("", UNSUPPORTED, UNFINISHED):
        cells[0].flags = list(flags.get((method, task), []))
    return cells


def _quality_cell(found: object, metric: Metric, ci: bool) -> Cell:
    if found is None:
        return Cell("", value="")  # this method never ran this task at this σ
    # pandas reads a missing note back as NaN, not None
    note = found.note if isinstance(found.note, str) else None
    if found.state == "unsupported":
        return Cell(UNSUPPORTED, note=note, value=UNSUPPORTED)
    if found.state == "incomplete":
        return Cell(UNFINISHED, value="")
    if not finite(found.mean):
        return Cell(UNAVAILABLE, note=note, value="")
    extra = f" ± {found.half_width:.{metric.decimals}f}" if ci and finite(found.half_width) else ""
    if not metric.per_image and note is None and 0 < found.n < SET_METRIC_MIN_IMAGES:
        note = f"FID and KID of {found.n} images: unreliable below {SET_METRIC_MIN_IMAGES} images, so not ranked"
    set_std = getattr(found, "set_std", math.nan)
    if not metric.per_image and finite(set_std):
        extra = f" ± {set_std:.{metric.decimals}f}"  # KID's std over its subsets
    return Cell(f"{found.mean:.{metric.decimals}f}", extra=extra, note=note, value=float(found.mean))


def _marks(at: pd.DataFrame) -> dict[tuple[str, str, str], str]:
    """Best and second-best cell per (task, metric) column, ranked on the shown digits.

    A value's rank is one more than the number of values strictly better than it (ties share a rank). Rank 1 is
    "best" among two values or more; rank 2 is "second" only among three or more (of two, second is the worst),
    so after a tie for best there is no second.
    """
    marks = {}
    for metric in METRICS:
        column = at[(at["metric"] == metric.column) & (at["state"] == "complete")]
        column = column[column["mean"].map(finite).astype(bool)]  # astype: an empty map is object-typed
        if not metric.per_image:
            column = column[column["n"] >= SET_METRIC_MIN_IMAGES]
        for _task, rows in column.groupby("task"):
            if len(rows) < 2:
                continue  # nothing to compare against
            shown = rows["mean"].round(metric.decimals).tolist()
            for method, task, value in zip(rows["method"], rows["task"], shown, strict=True):
                better = sum((other > value) if metric.higher_is_better else (other < value) for other in shown)
                if better == 0 and len(set(shown)) > 1:
                    marks[(method, task, metric.column)] = "best"
                elif better == 1 and len(shown) >= 3:
                    marks[(method, task, metric.column)] = "second"
    return marks


def _quality_legend(at: pd.DataFrame, rows: list[list[Cell]], ci: bool, flagged: bool | None = None) -> list[str]:
    texts = {cell.text for row in rows for cell in row[1:]}
    counts = at.loc[(at["state"] == "complete") & (at["n"] > 0) & at["metric"].isin(["psnr"]), "n"]
    images = ""
    if len(counts):
        low, high = int(counts.min()), int(counts.max())
        images = f" over {low} images" if low == high else f" over {low}–{high} images"
    legend = [
        f"Mean{images}; ↑ higher is better, ↓ lower is better; best in bold, second underlined (only among three "
        "methods or more, and not after a tie for best)."
    ]
    if flagged is None:
        flagged = any(cell.flags for row in rows for cell in row)
    if flagged:
        legend.append(
            f"{FLAG} the method's images fail a visual check on this task (the footnote names it; see “Visual "
            "checks”): the numbers beside it may reward a failure that PSNR does not see."
        )
    if ci:
        legend.append("± half-width of the 95% Student-t interval over images; FID and KID are set metrics (none).")
    if UNSUPPORTED in texts:
        legend.append(f"{UNSUPPORTED} the solver does not support the task (the reason is in the footnote).")
    if UNFINISHED in texts:
        legend.append(f"{UNFINISHED} not finished: units missing or failed (see “Missing and failed”).")
    if UNAVAILABLE in texts:
        legend.append(f"{UNAVAILABLE} no value (see the footnote, where there is one).")
    kid = at[at["metric"] == "kid"]
    if "set_std" in kid and kid["set_std"].map(finite).any():
        legend.append("KID ± its standard deviation over subsets.")
    return legend


# ----- visual checks ---------------------------------------------------------------------------------------


def checks_summary(units: pd.DataFrame, groups: pd.DataFrame) -> pd.DataFrame:
    """Long table, one row per complete (method, task, σ) and visual check: the mean over its ok images, their
    count, and the check's reason where the mean lies beyond its threshold (`flag`, else None).

    Only checks the store has a column for are listed (a store from before them has none); a group without a
    value (a check not defined for the task, such as blockiness without a block grid) gets NaN and no flag.
    """
    columns = ["method", "task", "sigma", "metric", "mean", "n", "flag"]
    ok = units[units["status"] == "ok"]
    present = [m for m in CHECKS if m.column in ok]
    done = groups[(groups["state"] == "complete") & groups["method"].isin(set(units["method"]))]
    if not present or done.empty:
        return pd.DataFrame(columns=columns)
    stats = ok.groupby(GROUP)[[m.column for m in present]].agg(["mean", "count"])
    rows = []
    for group in done.itertuples(index=False):
        index = (group.method, group.task, group.sigma)
        for check in present:
            mean, n = math.nan, 0
            if index in stats.index:
                mean, n = (
                    float(stats.loc[index, (check.column, "mean")]),
                    int(stats.loc[index, (check.column, "count")]),
                )
            rows.append(
                {"method": group.method, "task": group.task, "sigma": group.sigma, "metric": check.column,
                 "mean": mean, "n": n, "flag": check.flagged(mean) if n else None}
            )  # fmt: skip
    return pd.DataFrame(rows, columns=columns)


def _threshold(check: metrics.MetricSpec) -> str:
    direction, threshold, _ = check.flag or ("", math.nan, "")
    return f"{direction} {threshold:g}"


def _flags(checks: pd.DataFrame | None, sigma: float) -> dict[tuple[str, str], list[str]]:
    """(method, task) -> the footnotes of its failed visual checks at `sigma`, in registry order."""
    if checks is None or checks.empty:
        return {}
    by_column = {m.column: m for m in CHECKS}
    failed = checks[(checks["sigma"] == sigma) & checks["flag"].map(lambda f: isinstance(f, str))]
    flags: dict[tuple[str, str], list[str]] = {}
    for row in failed.itertuples(index=False):
        check = by_column[row.metric]
        flags.setdefault((row.method, row.task), []).append(
            f"{row.method} on {row.task}: {check.label} {row.mean:.{check.decimals}f} {_threshold(check)}, {row.flag}"
        )
    return flags


def checks_table(checks: pd.DataFrame, methods: list[str]) -> Table | None:
    """Visual checks: one row per (method, task, σ), one column per check with its flag's threshold; a value
    beyond it is marked ⚑. None when the store has no value of any check."""
    if checks.empty or not checks["mean"].map(finite).any():
        return None
    shown = [m for m in CHECKS if m.column in set(checks["metric"])]
    order = {m: i for i, m in enumerate(methods)}
    task_rank = {t: i for i, t in enumerate(sort_tasks(list(checks["task"].unique())))}
    lookup = {(r.method, r.task, r.sigma, r.metric): r for r in checks.itertuples(index=False)}
    keys = sorted(
        {(r.method, r.task, r.sigma) for r in checks.itertuples(index=False)},
        key=lambda k: (order.get(k[0], len(order)), k[0], task_rank[k[1]], k[2]),
    )
    rows, csv_rows = [], []
    for method, task, sigma in keys:
        cells = [Cell(method, value=method), Cell(task, value=task), Cell(sigma_label(sigma), value=sigma)]
        failed = []
        for check in shown:
            found = lookup.get((method, task, sigma, check.column))
            if found is None or not finite(found.mean):
                cells.append(Cell(UNAVAILABLE, value=""))
                continue
            flagged = isinstance(found.flag, str)
            failed += [check.name] if flagged else []
            cells.append(
                Cell(f"{found.mean:.{check.decimals}f}", extra=f" {FLAG}" if flagged else "", value=float(found.mean))
            )
        rows.append(cells)
        csv_rows.append([*(cell.value for cell in cells), ",".join(failed)])
    legend = [
        f"Mean over the ok images of each (method, task, σ); {FLAG} beyond the threshold in the header, which flags "
        "the method's cells in the quality tables. A photo scores blockiness about 1, chroma ratio 1, colour shift "
        "0 and clipped 0.",
        "blockiness: mean |difference| of neighbouring pixels across the measurement's block grid (an SR factor, "
        "JPEG's 8×8) over that inside the blocks; chroma ratio: the estimate's mean per-pixel std across RGB over "
        "the photo's; colour shift: the largest error of a channel's mean on [-1, 1]; clipped: the share of values "
        "at ±1 beyond the photo's own.",
    ]
    if any(cell.text == UNAVAILABLE for row in rows for cell in row):
        legend.append(
            f"{UNAVAILABLE} not defined: blockiness needs a task with a block grid (sr, jpeg), the chroma ratio a "
            "colour photo; or the run did not score it."
        )
    return Table(
        caption="Visual checks",
        header=["method", "task", "σ", *(f"{check.label} ({FLAG} {_threshold(check)})" for check in shown)],
        rows=rows,
        lead=3,
        legend=legend,
        csv_header=["method", "task", "sigma", *(check.column for check in shown), "flagged"],
        csv_rows=csv_rows,
    )


# ----- runtime ---------------------------------------------------------------------------------------------


def runtime_summary(units: pd.DataFrame) -> pd.DataFrame:
    """Per (method, device, dtype): NFE, seconds per image, network share, peak memory, over tasks and σ.

    Times are means over the units that ran (ok or diverged); warm-up batches (a process' first batch of a
    solver, whose time includes start-up) are left out when the method has other batches. Peak memory is the
    largest over all its units.
    """
    ran = units[units["status"].isin(["ok", "diverged"]) & units["wall_s"].map(finite)]
    rows = []
    for (method, device, dtype), rows_ in ran.groupby(["method", "device", "dtype"], sort=False):
        timed = rows_[~rows_["warmup"]] if (~rows_["warmup"]).any() else rows_
        wall = float(timed["wall_s"].mean())
        own_seconds = timed["own_network_s"] if "own_network_s" in timed else pd.Series(dtype=float)
        own_seconds = float(own_seconds.mean()) if own_seconds.map(finite).any() else 0.0
        network = float(timed["network_s"].mean()) + own_seconds
        own_nfe = rows_["own_nfe"] if "own_nfe" in rows_ else pd.Series(dtype=float)
        names = rows_["own_networks"].dropna() if "own_networks" in rows_ else pd.Series(dtype=str)
        rows.append(
            {
                "method": method,
                "device": device,
                "dtype": dtype,
                "images": len(rows_),
                "nfe": float(rows_["nfe"].mean()),
                "own_nfe": float(own_nfe.mean()) if own_nfe.map(finite).any() else 0.0,
                "own_networks": ",".join(sorted({n for text in names for n in str(text).split(",") if n})),
                "seconds": wall,
                "network_share": network / wall if wall > 0 else math.nan,
                "peak_mib": float(rows_["peak_memory_bytes"].max()) / 2**20,
            }
        )
    columns = ["method", "device", "dtype", "images", "nfe", "own_nfe", "own_networks", "seconds", "network_share"]
    columns.append("peak_mib")
    return pd.DataFrame(rows, columns=columns)


def runtime_table(summary: pd.DataFrame, methods: list[str]) -> Table:
    """The paper's Table 4: one row per method (and per device/dtype where the runs differ)."""
    order = {m: i for i, m in enumerate(methods)}
    summary = summary.sort_values(
        ["method", "device", "dtype"], key=lambda c: c.map(order) if c.name == "method" else c
    )
    split = summary["device"].nunique() > 1 or summary["dtype"].nunique() > 1
    lead = ["method", "device", "dtype"] if split else ["method"]
    header = [*lead, "prior NFE", "other networks", "s / image", "network share", "peak memory (MiB)", "images"]
    rows, csv_rows = [], []
    for row in summary.itertuples(index=False):
        labels = [Cell(str(getattr(row, name)), value=getattr(row, name)) for name in lead]
        values = [
            Cell(_nfe(row.nfe), value=row.nfe),
            Cell(f"{_nfe(row.own_nfe)} ({row.own_networks})" if row.own_nfe else "0", value=row.own_nfe),
            Cell(_seconds(row.seconds), value=row.seconds),
            Cell(
                f"{100 * row.network_share:.0f}%" if finite(row.network_share) else UNAVAILABLE, value=row.network_share
            ),
            Cell(f"{row.peak_mib:.0f}", value=row.peak_mib),
            Cell(str(row.images), value=row.images),
        ]
        rows.append(labels + values)
        csv_rows.append([c.value for c in labels + values])
    cpu = summary["device"].astype(str).str.startswith("cpu").any()
    legend = [
        "prior NFE: evaluations of the prior's network per batch; other networks: calls of the solver's own "
        "networks (DDC's φ, PnP-ADMM's DnCNN, CDDB's bridge) per batch; s / image: solver seconds per image "
        "(metrics not counted), mean over tasks and σ, warm-up batches left out; network share: time inside all "
        "of these networks over solver time.",
        "Peak memory: CUDA max_memory_allocated"
        + ("; on CPU, the solve's peak of heap memory in use above its start (sampled every 2 ms)." if cpu else "."),
    ]
    csv_header = [*lead, "nfe", "own_nfe", "seconds_per_image", "network_share", "peak_memory_mib", "images"]
    return Table(
        "Runtime per method", header, rows, lead=len(lead), legend=legend, csv_header=csv_header, csv_rows=csv_rows
    )


def _nfe(value: float) -> str:
    return f"{value:.0f}" if float(value).is_integer() else f"{value:.1f}"


def _seconds(value: float) -> str:
    if not finite(value):
        return UNAVAILABLE
    for limit, digits in ((100, 0), (10, 1), (1, 2)):
        if value >= limit:
            return f"{value:.{digits}f}"
    return f"{value:.3g}"


# ----- rendering -------------------------------------------------------------------------------------------


def _footnotes(table: Table) -> dict[str, str]:
    """Each distinct note -> its letter (a, b, ...), then each distinct flag -> its number, in reading order."""
    letters: dict[str, str] = {}
    for row in table.rows:
        for cell in row:
            if cell.note and cell.note not in letters:
                letters[cell.note] = _letter(len(letters))
    numbers: dict[str, str] = {}
    for row in table.rows:
        for cell in row:
            for flag in cell.flags:
                numbers.setdefault(flag, str(len(numbers) + 1))
    return {**letters, **{flag: number for flag, number in numbers.items() if flag not in letters}}


def _letter(i: int) -> str:
    return chr(ord("a") + i) if i < 26 else _letter(i // 26 - 1) + chr(ord("a") + i % 26)


def _render_cell(cell: Cell, letters: dict[str, str], escape: Callable[[str], str], style: dict[str, str]) -> str:
    text = escape(cell.text)
    if cell.mark:
        text = style[cell.mark].format(text)
    text += escape(cell.extra) if cell.extra else ""
    if cell.note:
        text += style["note"].format(letters[cell.note])
    if cell.flags:
        text += style["flag"].format(",".join(letters[flag] for flag in cell.flags))
    return text


def _footnote_lines(
    table: Table, letters: dict[str, str], escape: Callable[[str], str], style: dict[str, str]
) -> Iterator[tuple[str, str]]:
    """(mark, text) of each footnote: lettered notes, then numbered flags."""
    flags = {flag for row in table.rows for cell in row for flag in cell.flags}
    for text, key in letters.items():
        yield (style["flag" if text in flags else "note"].format(key).strip(), escape(text))


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|")


_MD = {"best": "**{}**", "second": "<u>{}</u>", "note": "<sup>{}</sup>", "flag": f" {FLAG}<sup>{{}}</sup>"}
_TEX = {
    "best": "\\textbf{{{}}}",
    "second": "\\underline{{{}}}",
    "note": "\\textsuperscript{{{}}}",
    "flag": "\\textsuperscript{{\\textdagger{{}}{}}}",
}
_HTML = {
    "best": "<strong>{}</strong>",
    "second": "<u>{}</u>",
    "note": "<sup>{}</sup>",
    "flag": f' <span class="flag">{FLAG}<sup>{{}}</sup></span>',
}


def to_markdown(table: Table) -> str:
    """GitHub Markdown: task groups flattened into the headers ("sr4 PSNR↑"), footnotes and legend below."""
    letters = _footnotes(table)
    header = list(table.header[: table.lead])
    values = table.header[table.lead :]
    spans = [label for label, span in table.groups for _ in range(span)] or [""] * len(values)
    header += [f"{group} {name}".strip() for group, name in zip(spans, values, strict=True)]
    lines = [
        "| " + " | ".join(_md_escape(h) for h in header) + " |",
        "| " + " | ".join(["---"] * table.lead + ["---:"] * len(values)) + " |",
    ]
    for row in table.rows:
        lines.append("| " + " | ".join(_render_cell(c, letters, _md_escape, _MD) for c in row) + " |")
    lines.append("")
    lines += [f"{mark} {text}  " for mark, text in _footnote_lines(table, letters, _md_escape, _MD)]
    lines += [f"{_md_escape(text)}  " for text in table.legend]
    return "\n".join(lines).rstrip() + "\n"


_LATEX_SPECIAL = {
    "\\": "\\textbackslash{}",
    "&": "\\&",
    "%": "\\%",
    "$": "\\$",
    "#": "\\#",
    "_": "\\_",
    "{": "\\{",
    "}": "\\}",
    "~": "\\textasciitilde{}",
    "^": "\\textasciicircum{}",
    "–": "--",
    "…": "\\ldots{}",
    "↑": "$\\uparrow$",
    "↓": "$\\downarrow$",
    "±": "$\\pm$",
    "σ": "$\\sigma$",
    "⁺": "$^+$",
    "⚑": "\\textdagger{}",
    "×": "$\\times$",
    "“": "``",
    "”": "''",
    "<": "\\textless{}",
    ">": "\\textgreater{}",
}


def latex_escape(text: str) -> str:
    """Text for LaTeX: special characters escaped, the symbols used here spelled as LaTeX."""
    return "".join(_LATEX_SPECIAL.get(char, char) for char in str(text))


def to_latex(table: Table) -> str:
    """A booktabs table (needs \\usepackage{booktabs,graphicx}), task groups as \\multicolumn headers."""
    letters = _footnotes(table)
    n = len(table.header)
    spec = "l" * table.lead + "".join(" " + "r" * span for _, span in table.groups) if table.groups else ""
    spec = spec or "l" * table.lead + "r" * (n - table.lead)
    lines = [
        "% requires \\usepackage{booktabs,graphicx}",
        "\\begin{table}[t]",
        "\\centering",
        f"\\caption{{{latex_escape(table.caption)}}}",
        "\\resizebox{\\linewidth}{!}{%",
        f"\\begin{{tabular}}{{{spec}}}",
        "\\toprule",
    ]
    if table.groups:
        heads, rules, start = [], [], table.lead + 1
        for label, span in table.groups:
            heads.append(f"\\multicolumn{{{span}}}{{c}}{{{latex_escape(label)}}}")
            rules.append(f"\\cmidrule(lr){{{start}-{start + span - 1}}}")
            start += span
        lines.append(" & " * table.lead + " & ".join(heads) + " \\\\")
        lines.append(" ".join(rules))
    lines.append(" & ".join(latex_escape(h) for h in table.header) + " \\\\")
    lines.append("\\midrule")
    for row in table.rows:
        lines.append(" & ".join(_render_cell(c, letters, latex_escape, _TEX) for c in row) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}}"]
    notes = [f"{mark} {text}" for mark, text in _footnote_lines(table, letters, latex_escape, _TEX)]
    notes += [latex_escape(text) for text in table.legend]
    if notes:
        lines.append("\\par\\smallskip{\\footnotesize " + " \\\\\n".join(notes) + "\\par}")
    lines.append("\\end{table}")
    return "\n".join(lines) + "\n"


def to_html(table: Table) -> str:
    """An HTML table (two header rows when there are task groups), footnotes and legend below it."""
    letters = _footnotes(table)
    out = ['<div class="table-wrap"><table>', f"<caption>{html.escape(table.caption)}</caption>", "<thead>"]
    if table.groups:
        out.append(
            "<tr>"
            + f'<th colspan="{table.lead}"></th>'
            + "".join(f'<th colspan="{span}" class="group">{html.escape(label)}</th>' for label, span in table.groups)
            + "</tr>"
        )
    left = ' class="label"'
    heads = [f"<th{left if i < table.lead else ''}>{html.escape(h)}</th>" for i, h in enumerate(table.header)]
    out.append("<tr>" + "".join(heads) + "</tr></thead><tbody>")
    for row in table.rows:
        cells = [_render_cell(c, letters, html.escape, _HTML) for c in row]
        out.append(
            "<tr>"
            + "".join(f'<th class="label">{c}</th>' for c in cells[: table.lead])
            + "".join(f"<td>{c}</td>" for c in cells[table.lead :])
            + "</tr>"
        )
    out.append("</tbody></table></div>")
    for mark, text in _footnote_lines(table, letters, html.escape, _HTML):
        out.append(f'<p class="note">{mark} {text}</p>')
    out += [f'<p class="note">{html.escape(text)}</p>' for text in table.legend]
    return "\n".join(out) + "\n"


def to_csv(table: Table) -> str:
    """Full-precision values (not the rounded text); "–" marks unsupported pairs, empty cells have no value."""
    frame = pd.DataFrame(table.csv_rows or [], columns=table.csv_header or table.header, dtype=object)
    return frame.to_csv(index=False)
