"""What the store lacks (absent combinations, unfinished groups, failed units) and which code made it."""

from __future__ import annotations

import pandas as pd

from bench.report.load import Store, sigma_label
from bench.report.tables import Cell, Table

__all__ = ["missing_tables", "versions_table", "weights_table"]

SHOWN_IDS = 5  # image ids listed per row before "…"


def _ids(ids: list[str]) -> str:
    ids = sorted(ids)
    return ", ".join(ids[:SHOWN_IDS]) + (f", … ({len(ids)} in all)" if len(ids) > SHOWN_IDS else "")


def _table(caption: str, header: list[str], rows: list[list[object]]) -> Table:
    cells = [[Cell(str(value), value=value) for value in row] for row in rows]
    return Table(caption, header, cells, lead=len(header), csv_header=header, csv_rows=rows)


def missing_tables(store: Store) -> list[Table]:
    """Tables of what is not (yet) in the report; empty when the store is complete."""
    tables = []
    if not store.absent.empty:
        rows = [[r.solver, r.task, sigma_label(r.sigma)] for r in store.absent.itertuples(index=False)]
        tables.append(
            _table(
                "Combinations of the store's solvers, tasks and σ with no unit at all", ["solver", "task", "σ"], rows
            )
        )
    unfinished = store.groups[store.groups["state"] == "incomplete"]
    if not unfinished.empty:
        rows = [
            [
                r.method,
                r.task,
                sigma_label(r.sigma),
                f"{r.ok + r.diverged} of {r.expected}",
                r.failed,
                _ids(r.missing_ids),
            ]
            for r in unfinished.itertuples(index=False)
        ]
        header = ["method", "task", "σ", "images done", "failed", "images without a row"]
        tables.append(_table("Unfinished groups (left out of the tables and figures)", header, rows))
    failed = store.units[store.units["status"] == "failed"]
    if not failed.empty:
        rows = [
            [method, task, sigma_label(sigma), len(group), _ids(list(group["image_id"])), error]
            for (method, task, sigma, error), group in failed.groupby(["method", "task", "sigma", "error"], sort=False)
        ]
        header = ["method", "task", "σ", "failed units", "images", "error"]
        tables.append(_table("Failed units (a re-run of `python -m bench run` retries them)", header, rows))
    lost = _without_png(store)
    if not lost.empty:
        rows = [
            [method, task, sigma_label(sigma), len(group), _ids(list(group["image_id"]))]
            for (method, task, sigma), group in lost.groupby(["method", "task", "sigma"], sort=False)
        ]
        header = ["method", "task", "σ", "units", "images"]
        caption = (
            "Finished units whose reconstruction PNG is gone (grids and FID lack them; a re-run computes them again)"
        )
        tables.append(_table(caption, header, rows))
    return tables


def _without_png(store: Store) -> pd.DataFrame:
    """The ok units of the shown methods whose reconstruction PNG is not on disk (deleted or moved by hand)."""
    from bench.pipeline.store import row_image_paths
    from bench.report.load import REFERENCE_SOLVERS

    ok = store.units[(store.units["status"] == "ok") & ~store.units["solver"].isin(REFERENCE_SOLVERS)]
    if ok.empty:
        return ok
    gone = [not row_image_paths(store.root, row)[0].is_file() for row in ok.to_dict(orient="records")]
    return ok[gone]


def weights_table(units: pd.DataFrame) -> Table | None:
    """The solvers' own networks that made the rows: per solver and weight file, its sha256 and the units; None
    where no row records any (solvers without networks of their own, stores written before the column)."""
    import json

    if "solver_weights" not in units:
        return None
    recorded = units[units["solver_weights"].fillna("").astype(str) != ""]
    if recorded.empty:
        return None
    rows = []
    for (solver, weights), group in recorded.groupby(["solver", "solver_weights"], sort=True):
        for name, digest in _flatten(json.loads(weights)):
            rows.append([solver, name, digest, len(group)])
    return _table("Weights of the solvers' own networks (sha256)", ["solver", "file", "sha256", "units"], rows)


def _flatten(value: object, prefix: str = "") -> list[tuple[str, str]]:
    """(name, value) leaves of a solver's weight record: {"phi_sha256": {"unet/...": "ab.."}} and the like."""
    if isinstance(value, dict):
        return [leaf for key, inner in value.items() for leaf in _flatten(inner, f"{prefix}{key} ")]
    return [(prefix.strip(), str(value))]


def versions_table(units: pd.DataFrame) -> Table:
    """Unit counts per (torch, bench, git commit, device, dtype) found in the rows."""
    fields = ["torch_version", "bench_version", "git_commit", "device", "dtype"]
    present = [f for f in fields if f in units]
    counts = units[present].astype(str).value_counts(sort=False).reset_index(name="units")
    rows = [list(row) for row in counts.itertuples(index=False)]
    header = [f.replace("_", " ") for f in present] + ["units"]
    return _table("Code and hardware that produced the rows", header, rows)
