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
from bench.report.status import missing_tables, versions_table, weights_table
from bench.report.tables import (
    Table,
    checks_summary,
    checks_table,
    quality_summary,
    quality_table,
    quality_tables,
    runtime_summary,
    runtime_table,
    to_csv,
    to_latex,
    to_markdown,
)

__all__ = ["Report", "Section", "build_report"]


@dataclass
class Section:
    """A table with its downloadable files (format -> path relative to the report folder). `parts`: the tables
    the pages show instead of `table` (the quality of one σ, one table per task; `table` is the wide one)."""

    table: Table
    files: dict[str, Path] = field(default_factory=dict)
    parts: list[Table] = field(default_factory=list)


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
    checks: Section | None = None  # the visual checks (blockiness, colour loss, clipping); None without values
    weights: Table | None = None  # the solvers' own networks' sha256 (DDC's φ, PnP-ADMM's DnCNN, CDDB's bridge)


def build_report(store: Store, folder: Path, ci: bool = False) -> Report:
    """Write tables, figures and grids under `folder` and return what the pages show."""
    contenders = store.units[~store.units["solver"].isin(REFERENCE_SOLVERS)]
    groups = store.groups[store.groups["method"].isin(set(contenders["method"]))]
    summary = quality_summary(contenders, store.sets, groups, ci=ci)
    checks = checks_summary(contenders, groups)
    methods = store.method_order()
    quality = []
    for sigma in sorted(summary["sigma"].unique()):
        table = quality_table(summary, sigma, methods, ci=ci, checks=checks)
        parts = quality_tables(summary, sigma, methods, ci=ci, checks=checks)
        quality.append(_write_table(table, folder, f"quality_sigma{sigma_label(sigma)}", parts))
    visual = checks_table(checks, methods)
    checks_section = _write_table(visual, folder, "visual_checks") if visual is not None else None
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
        checks=checks_section,
        weights=weights_table(store.units),
    )


def _write_table(table: Table, folder: Path, stem: str, parts: list[Table] | None = None) -> Section:
    """Markdown (of `parts` where given, each under its caption), LaTeX and CSV (of `table`) under tables/."""

    def markdown(table: Table) -> str:
        if not parts:
            return to_markdown(table)
        return "\n".join(f"### {part.caption}\n\n{to_markdown(part)}" for part in parts)

    files = {}
    for fmt, render in (("md", markdown), ("tex", to_latex), ("csv", to_csv)):
        path = folder / "tables" / f"{stem}.{fmt}"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(render(table), encoding="utf-8")
        files[fmt] = path.relative_to(folder)
    return Section(table, files, list(parts or []))


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
        data_reference, reference_of = _data_reference(store)
        stats, pooled = fig.kurtosis_stats(traces, set(REFERENCE_SOLVERS), data_reference)
        for sigma in sorted(traces["sigma"].unique()):
            path = out / f"kurtosis_sigma{sigma_label(sigma)}.png"
            drawn.append(fig.kurtosis_figure(stats, pooled, sigma, colors, path, reference_of))
        for sigma in sorted(traces["sigma"].unique()):
            path = out / f"realness_sigma{sigma_label(sigma)}.png"
            made = fig.realness_figure(stats, pooled, summary, contenders, sigma, contender_colors, path)
            if made is None:
                notes.append(
                    f"No realness-against-consistency figure at σ = {sigma_label(sigma)}: no method with traces "
                    "finished a task there."
                )
            drawn.append(made)
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


def _data_reference(store: Store) -> tuple[pd.DataFrame | None, dict[str, str]]:
    """The forward-noised data reference rows of the store's (prior, dataset) pairs (`bench.pipeline.reference`),
    with column `method` (`fig.DATA_REFERENCE`, plus the prior where the store holds several), and each
    method's reference by its prior; (None, {}) when the run folder has none."""
    from bench.pipeline.reference import read_references

    rows = read_references(store.root)
    if rows.empty or not {"prior", "dataset"} <= set(store.units.columns):
        return None, {}
    pairs = set(zip(store.units["prior"], store.units["dataset"], strict=True))
    rows = rows[[(p, d) in pairs for p, d in zip(rows["prior"], rows["dataset"], strict=True)]]
    if rows.empty:
        return None, {}
    priors = sorted(map(str, rows["prior"].unique()))
    label = {p: fig.DATA_REFERENCE if len(priors) == 1 else f"{fig.DATA_REFERENCE} ({p})" for p in priors}
    rows = rows.assign(method=rows["prior"].astype(str).map(label))
    prior_of = store.units.drop_duplicates("method").set_index("method")["prior"].astype(str)
    return rows, {method: label[p] for method, p in prior_of.items() if p in label}


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
