"""Read a run folder's parquet store for the report: method labels, completeness and the image folder.

Only pandas and pyarrow are used here, never torch: a report must render on a laptop that holds nothing but
the results. The rows come from `bench.pipeline.store.ResultStore`, the one reader of the parquet parts (the latest row
per unit key, the traces of that computation, hidden temporary files skipped).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from bench.pipeline.store import ORDER_FILE, ResultStore, sigma_label

__all__ = [
    "REFERENCE_SOLVERS",
    "ReportError",
    "Store",
    "latest_results",
    "load_store",
    "method_labels",
    "sigma_label",
    "sort_tasks",
]

#: Solvers that are references, not contenders: kept out of the quality tables, grids and rankings.
REFERENCE_SOLVERS = frozenset({"uncond"})
# The README's order (baselines first, DDC last, as in the paper's tables); unknown names follow, sorted.
SOLVER_ORDER = ("uncond", "pinv", "dps", "ddnm", "ddrm", "pigdm", "reddiff", "pnp-admm", "cddb", "ddc-nolpips", "ddc")
TASK_ORDER = ("sr4", "sr8", "gblur", "inpaint", "jpeg10", "denoise")
# Row fields that, besides the solver config, tell two runs of one solver apart.
IDENTITY_FIELDS = ("prior", "dataset", "seed", "solver_version", "noise", "best_of")
GROUP = ["method", "task", "sigma"]


class ReportError(ValueError):
    """A report cannot be made: the message names the folder and the fix."""


def _order(names: list[str], preferred: tuple[str, ...]) -> list[str]:
    rank = {name: i for i, name in enumerate(preferred)}
    return sorted(dict.fromkeys(names), key=lambda n: (rank.get(n, len(rank)), n))


def sort_tasks(tasks: list[str]) -> list[str]:
    """Tasks in the paper's column order, unknown ones after them."""
    return _order(tasks, TASK_ORDER)


def latest_results(root: str | Path = "results") -> Path:
    """The most recently modified folder under `root` that holds a units/ table."""
    root = Path(root)
    candidates = [p for p in root.glob("*/units") if p.is_dir()] if root.is_dir() else []
    if not candidates:
        raise ReportError(
            f"no results found under '{root}/' (no folder with a units/ table); "
            "run `python -m bench run` first, or pass --results <run folder>"
        )
    # units/ changes whenever a part is committed, so its mtime is the time of the run's last batch
    return max(candidates, key=lambda p: p.stat().st_mtime).parent


@dataclass
class Store:
    """A run folder's tables, each row labelled with its method (solver plus the settings that tell it apart)."""

    root: Path
    units: pd.DataFrame  # one row per unit, with `method`
    traces: pd.DataFrame  # kurtosis traces, with `method`
    sets: pd.DataFrame  # FID/KID rows, with `method`
    methods: pd.DataFrame  # one row per method: method, solver, config (dict), varying (dict)
    groups: pd.DataFrame  # one row per (method, task, sigma) with counts and `state`
    absent: pd.DataFrame  # (solver, task, sigma) combinations with no row at all

    @property
    def images(self) -> Path:
        return self.root / "images"

    def method_order(self) -> list[str]:
        return list(self.methods["method"])

    def complete(self) -> pd.DataFrame:
        """The units of complete groups: what the tables and figures show."""
        done = self.groups.loc[self.groups["state"].isin(["complete", "unsupported"]), GROUP]
        keep = pd.MultiIndex.from_frame(self.units[GROUP]).isin(pd.MultiIndex.from_frame(done))
        return self.units[keep]


def load_store(path: str | Path) -> Store:
    """Read `path`'s store; a missing folder or one without unit rows is a `ReportError`."""
    root = Path(path)
    if root.exists() and not root.is_dir():
        raise ReportError(
            f"--results '{root}' is a file, not a run folder; pass the folder `python -m bench run --out` wrote "
            f"(the one holding units/), e.g. --results {root.parent}"
        )
    if not root.is_dir():
        raise ReportError(
            f"results folder '{root}' does not exist; run `python -m bench run` first, or pass --results <folder>"
        )
    tables = ResultStore(root).tables()  # one snapshot: a merge running meanwhile hides nothing
    units = tables.units
    if units.empty:
        raise ReportError(
            f"results folder '{root}' holds no unit rows (no {root / 'units'}/part-*.parquet); "
            f"run `python -m bench run --out {root}` first"
        )
    _check_unit_columns(units, root)
    methods, units = method_labels(units, asked_order(root))
    traces = _with_methods(tables.traces, units)
    sets = _label_sets(tables.sets, units)
    groups = _group_states(units)
    return Store(root, units, traces, sets, methods, groups, _absent(units))


# Columns every table, figure and grid of the report indexes by. The store demands them of a part only when
# another part has them, so a store of nothing but foreign parts reaches this check.
UNIT_COLUMNS_NEEDED = ("key", "status", "solver", "task", "sigma", "image_id")


def _check_unit_columns(units: pd.DataFrame, root: Path) -> None:
    """ReportError naming the parts whose unit rows lack a column the report needs, and the fix."""
    lacking = [name for name in UNIT_COLUMNS_NEEDED if name not in units or units[name].isna().all()]
    if not lacking:
        return
    parts = sorted({str(root / "units" / f"{stem}.parquet") for stem in units["part"].astype(str)})
    shown = ", ".join(f"'{p}'" for p in parts[:3]) + (f" and {len(parts) - 3} more" if len(parts) > 3 else "")
    raise ReportError(
        f"the unit rows of '{root}' have no {', '.join(repr(n) for n in lacking)} (parts {shown}); they were not "
        f"written by this harness: move those parts out of '{root / 'units'}' and run `python -m bench run "
        f"--out {root}` again"
    )


def _with_methods(traces: pd.DataFrame, units: pd.DataFrame) -> pd.DataFrame:
    """The trace rows, each with the `method` of its unit."""
    if traces.empty:
        return traces
    method = pd.Series(units["method"].to_numpy(), index=units["key"].to_numpy())
    return traces.assign(method=traces["key"].map(method))


# ----- method labels ---------------------------------------------------------------------------------------


def asked_order(root: Path) -> tuple[str, ...]:
    """The solvers in the order the last run into `root` asked for them (its order file), else ()."""
    try:
        order = json.loads((root / ORDER_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return ()
    solvers = order.get("solvers") if isinstance(order, dict) else None
    return tuple(str(name) for name in solvers) if isinstance(solvers, list) else ()


def method_labels(units: pd.DataFrame, asked: tuple[str, ...] = ()) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Label each unit row with its method; returns (methods, units with a `method` column).

    A solver run under one config is labelled by its name; under several, by its name plus the settings whose
    values differ between them, e.g. "ddc (steps=5)".
    """
    fields = [f for f in ("solver", "solver_config", "solver_weights", *IDENTITY_FIELDS) if f in units]
    # one code per distinct identity: cheaper than merging back on six text columns
    codes = units.groupby(fields, sort=False, dropna=False).ngroup().to_numpy()
    first = ~pd.Series(codes).duplicated().to_numpy()
    distinct = units.loc[first, fields].assign(code=codes[first]).reset_index(drop=True)
    records = []
    for solver, rows in distinct.groupby("solver", sort=False):
        identities = [_identity(row) for row in rows.to_dict("records")]
        varying = _varying_keys(identities)
        shown = {key: _shorten([ident.get(key) for ident in identities]) for key in varying}
        for i, (row, ident) in enumerate(zip(rows.to_dict("records"), identities, strict=True)):
            differing = {key: ident.get(key) for key in varying}
            label = solver
            if varying:
                label += " (" + ", ".join(f"{key}={shown[key][i]}" for key in varying) + ")"
            records.append({**row, "method": label, "config": ident, "varying": differing})
    methods = pd.DataFrame(records)
    labels = methods.set_index("code")["method"].sort_index().to_numpy()
    methods = methods.iloc[_method_sort(methods, asked)].reset_index(drop=True)
    return methods[["method", "solver", "config", "varying"]], units.assign(method=labels[codes])


def _identity(row: dict[str, Any]) -> dict[str, Any]:
    try:
        config = json.loads(row["solver_config"] or "{}")
    except (TypeError, ValueError):
        config = {"config": row["solver_config"]}
    if not isinstance(config, dict):
        config = {"config": config}
    identity = {**config, **{field: row[field] for field in IDENTITY_FIELDS if field in row}}
    weights = row.get("solver_weights")
    if isinstance(weights, str) and weights:  # retrained weights under one config: told apart by a short digest
        identity["weights"] = hashlib.sha256(weights.encode()).hexdigest()[:8]
    return identity


def _varying_keys(identities: list[dict[str, Any]]) -> list[str]:
    keys = sorted({key for ident in identities for key in ident})
    return [key for key in keys if len({json.dumps(ident.get(key), default=str) for ident in identities}) > 1]


def _shorten(values: list[Any]) -> list[str]:
    """Values as label text; paths are cut to the shortest tails that still tell them apart."""
    texts = [_text(value) for value in values]
    if not all("/" in text for text in texts):
        return texts
    parts = [text.rstrip("/").split("/") for text in texts]
    for depth in range(1, max(len(p) for p in parts) + 1):
        tails = ["/".join(p[-depth:]) for p in parts]
        if len(set(tails)) == len(set(texts)):
            return tails
    return texts


def _text(value: Any) -> str:
    if value is None:
        return "unset"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, str):
        return value
    if hasattr(value, "item"):  # numpy scalars from the parquet row
        return _text(value.item())
    return json.dumps(value, separators=(",", ":"))


def _method_sort(methods: pd.DataFrame, asked: tuple[str, ...] = ()) -> list[int]:
    """Rows in the order the run asked for its solvers, then the others in SOLVER_ORDER."""
    preferred = tuple(dict.fromkeys((*asked, *SOLVER_ORDER)))
    rank = {name: i for i, name in enumerate(_order(list(methods["solver"]), preferred))}

    def key(i: int) -> tuple:
        row = methods.iloc[i]
        # numbers sort as numbers, so steps=5 comes before steps=10
        values = tuple(
            (0, float(v), "") if isinstance(v, int | float) and not isinstance(v, bool) else (1, 0.0, _text(v))
            for _, v in sorted(row["varying"].items())
        )
        return (rank[row["solver"]], values)

    return sorted(range(len(methods)), key=key)


# ----- sets (FID/KID) --------------------------------------------------------------------------------------


def _label_sets(sets: pd.DataFrame, units: pd.DataFrame) -> pd.DataFrame:
    """Give each set row the method whose units it was computed from.

    Set rows carry no solver config, but their `set_key` is the sha256 of the group's sorted unit keys (see
    bench.pipeline.run), so recomputing it per (method, task, σ) finds the method even when a solver ran under several
    configs. Rows that match no group (a group re-run with fewer images) fall back to the solver name when
    that solver has one method only.
    """
    if sets.empty:
        return pd.DataFrame(columns=[*GROUP, "fid", "kid", "kid_std", "note", "n_images"])
    hashes = (
        units.groupby(GROUP, sort=False)["key"]
        .apply(lambda keys: hashlib.sha256("".join(sorted(keys)).encode()).hexdigest())
        .rename("set_key")
        .reset_index()
    )
    matched = sets.merge(hashes, on="set_key", how="inner", suffixes=("_set", ""))
    matched = matched.drop(columns=[c for c in matched.columns if c.endswith("_set")])
    rest = sets[~sets["set_key"].isin(matched["set_key"])]
    single = units.groupby("solver")["method"].nunique()
    single = single[single == 1].index
    lookup = units.loc[units["solver"].isin(single), ["solver", "method"]].drop_duplicates()
    rest = rest.merge(lookup, on="solver")
    labelled = pd.concat([matched, rest], ignore_index=True)
    # the latest set row per group wins, as the store keeps the latest unit row per key
    return labelled.sort_values("part").drop_duplicates(GROUP, keep="last").reset_index(drop=True)


# ----- completeness ----------------------------------------------------------------------------------------


def _group_states(units: pd.DataFrame) -> pd.DataFrame:
    """Per (method, task, σ): expected and finished images, and a state (complete/unsupported/incomplete).

    The images a group should hold are those its method ran on anywhere in the store (a run uses one image
    list for all its groups), so a group still in flight, or with failed units, shows as incomplete.
    """
    expected = units.groupby("method")["image_id"].agg(lambda ids: frozenset(ids))
    counts = units.groupby([*GROUP, "status"]).size().unstack("status", fill_value=0)
    counts = counts.reindex(columns=["ok", "unsupported", "failed", "diverged"], fill_value=0).reset_index()
    counts.columns.name = None
    present = units.groupby(GROUP)["image_id"].agg(lambda ids: frozenset(ids)).rename("present").reset_index()
    groups = counts.merge(present, on=GROUP)
    groups["expected"] = groups["method"].map(lambda m: len(expected[m]))
    groups["missing_ids"] = [
        sorted(expected[m] - have) for m, have in zip(groups["method"], groups["present"], strict=True)
    ]
    groups["n_missing"] = groups["missing_ids"].map(len)
    errors = units[units["status"].isin(["failed", "unsupported"])].groupby(GROUP)["error"].first()
    groups = groups.merge(errors.rename("reason").reset_index(), on=GROUP, how="left")
    groups["state"] = "complete"
    groups.loc[(groups["failed"] > 0) | (groups["n_missing"] > 0), "state"] = "incomplete"
    groups.loc[(groups["unsupported"] > 0) & (groups["ok"] == 0) & (groups["failed"] == 0), "state"] = "unsupported"
    return groups.drop(columns=["present"])


def _absent(units: pd.DataFrame) -> pd.DataFrame:
    """(solver, task, σ) combinations of the store's solvers, tasks and noise levels that have no row at all.

    Reference solvers are exempt: unconditional sampling ignores y, so one task's run serves every panel.
    """
    have = set(zip(units["solver"], units["task"], units["sigma"], strict=True))
    solvers = _order([s for s in units["solver"].unique() if s not in REFERENCE_SOLVERS], SOLVER_ORDER)
    rows = [
        {"solver": s, "task": t, "sigma": sigma}
        for s in solvers
        for t in sort_tasks(list(units["task"].unique()))
        for sigma in sorted(units["sigma"].unique())
        if (s, t, sigma) not in have
    ]
    return pd.DataFrame(rows, columns=["solver", "task", "sigma"])


def finite(value: Any) -> bool:
    """True for a real, finite number (NaN, None and text are not)."""
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False
