"""Assemble a report: compute the tables, draw the figures and grids into a folder, and describe them.

The returned `Report` holds paths relative to the report folder, so the Markdown and HTML pages built from
it stay valid when the folder is moved into place.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from bench.report import figures as fig
from bench.report.grids import grid_figures
from bench.report.load import REFERENCE_SOLVERS, Store, sigma_label
from bench.report.status import missing_tables, versions_table
from bench.report.tables import (
    Table,
    quality_summary,
    quality_table,
    runtime_summary,
    runtime_table,
    to_csv,
    to_latex,
    to_markdown,
)

__all__ = ["Report", "Section", "build_report"]


@dataclass
class Section:
    """A table with its downloadable files (format -> path relative to the report folder)."""

    table: Table
    files: dict[str, Path] = field(default_factory=dict)


@dataclass
class Report:
    title: str
    store: Path
    generated: str
    facts: dict[str, str]  # prior, dataset, units by status, ...
    quality: list[Section]
    runtime: Section | None
    figures: list[fig.Figure]
    grids: list[fig.Figure]
    notes: list[str]  # figures that could not be drawn, and why
    missing: list[Table]
    versions: Table


def build_report(store: Store, folder: Path, ci: bool = False) -> Report:
    """Write tables, figures and grids under `folder` and return what the pages show."""
    contenders = store.units[~store.units["solver"].isin(REFERENCE_SOLVERS)]
    groups = store.groups[store.groups["method"].isin(set(contenders["method"]))]
    summary = quality_summary(contenders, store.sets, groups, ci=ci)
    methods = store.method_order()
    quality = []
    for sigma in sorted(summary["sigma"].unique()):
        table = quality_table(summary, sigma, methods, ci=ci)
        quality.append(_write_table(table, folder, f"quality_sigma{sigma_label(sigma)}"))
    runtime = runtime_summary(store.units)
    runtime_section = _write_table(runtime_table(runtime, methods), folder, "runtime") if len(runtime) else None
    figures, notes = _figures(store, summary, contenders, folder)
    shown = store.complete()
    shown = shown[~shown["solver"].isin(REFERENCE_SOLVERS)]
    grids = grid_figures(store.images, shown, methods, folder / "grids")
    if not grids:
        notes.append(f"No image grid: no reference PNGs under {store.images / 'reference'} for finished units.")
    return Report(
        title=f"Benchmark report: {store.root.name}",
        store=store.root.resolve(),
        generated=datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        facts=_facts(store.units),
        quality=quality,
        runtime=runtime_section,
        figures=[_relative(f, folder) for f in figures],
        grids=[_relative(g, folder) for g in grids],
        notes=notes,
        missing=missing_tables(store),
        versions=versions_table(store.units),
    )


def _write_table(table: Table, folder: Path, stem: str) -> Section:
    files = {}
    for fmt, render in (("md", to_markdown), ("tex", to_latex), ("csv", to_csv)):
        path = folder / "tables" / f"{stem}.{fmt}"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(render(table), encoding="utf-8")
        files[fmt] = path.relative_to(folder)
    return Section(table, files)


def _figures(
    store: Store, summary: pd.DataFrame, contenders: pd.DataFrame, folder: Path
) -> tuple[list[fig.Figure], list[str]]:
    out = folder / "figures"
    colors = fig.method_colors(store.method_order())
    contender_colors = {m: c for m, c in colors.items() if m in set(contenders["method"])}
    drawn: list[fig.Figure | None] = []
    notes = []
    traces = store.traces
    if traces.empty:
        notes.append("No kurtosis figure: the store has no traces (solvers without network evaluations have none).")
    else:
        stats, pooled = fig.kurtosis_stats(traces, set(REFERENCE_SOLVERS))
        for sigma in sorted(traces["sigma"].unique()):
            path = out / f"kurtosis_sigma{sigma_label(sigma)}.png"
            drawn.append(fig.kurtosis_figure(stats, pooled, sigma, colors, path))
    for sigma in sorted(contenders["sigma"].unique()):
        path = out / f"quality_runtime_sigma{sigma_label(sigma)}.png"
        made = fig.quality_runtime_figure(contenders, store.groups, sigma, contender_colors, path)
        if made is None:
            notes.append(
                f"No quality-against-runtime figure at σ = {sigma_label(sigma)}: no task that every method finished."
            )
        drawn.append(made)
    drawn.append(fig.noise_figure(summary, contender_colors, out / "noise.png"))
    drawn.append(fig.steps_figure(summary, store.methods, contender_colors, out / "steps.png"))
    if drawn[-2] is None:
        notes.append("No noise-robustness figure: no method finished a task at two noise levels or more.")
    if drawn[-1] is None:
        notes.append("No steps-ablation figure: no solver ran with two `steps` settings or more.")
    return [f for f in drawn if f is not None], notes


def _relative(figure: fig.Figure, folder: Path) -> fig.Figure:
    return fig.Figure(figure.path.relative_to(folder), figure.title, figure.caption)


def _facts(units: pd.DataFrame) -> dict[str, str]:
    statuses = units["status"].value_counts()
    return {
        "prior": ", ".join(sorted(map(str, units["prior"].unique()))),
        "dataset": ", ".join(sorted(map(str, units["dataset"].unique()))),
        "images": str(units["image_id"].nunique()),
        "units": f"{len(units)} (" + ", ".join(f"{n} {s}" for s, n in statuses.items()) + ")",
        "noise levels σ": ", ".join(sigma_label(s) for s in sorted(units["sigma"].unique())),
    }
