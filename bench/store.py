"""The results store of one benchmark run folder: parquet part files written atomically, read as tables.

Layout under the run folder:

    units/part-<time ns>-r<rank>-<random>.parquet    one row per work unit of one batch
    traces/part-<same stem>.parquet                   per-step kurtosis traces of that batch (long format)
    sets/part-<stem>.parquet                          FID/KID rows of (solver, task, σ) groups
    images/...                                        PNGs (see bench.run)

Every file is written to a hidden temporary name in its final folder, flushed to disk, then renamed with
`os.replace`, which is atomic: a killed process leaves at most a hidden temporary file, which readers ignore,
never a half-written part. A batch's traces are written before its unit rows, so the unit part is the
commit record of the batch; traces whose unit part is missing (a kill in between) are never read.

Part names sort in writing order (they start with a nanosecond clock), so when a unit was computed more than
once (a failed unit retried, or `--force`) the reader keeps its latest row: the tables have one row per key.
`consolidate()`, run at the end of every run, merges the parts into one per table without the superseded rows
(reading thousands of small parts is slow), so the files themselves never hold a unit twice once a run has
finished. `compact()` removes the superseded rows from the parts in place, one atomic file at a time. Both
only delete rows whose replacement is already committed, so a kill during them loses nothing.
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["DONE_STATUSES", "STATUSES", "ResultStore", "atomic_write_bytes"]

UNITS, TRACES, SETS = "units", "traces", "sets"
#: Statuses a unit row can have.
STATUSES = ("ok", "unsupported", "failed", "diverged")
#: A unit with one of these is not computed again unless forced: its result is deterministic. A failed unit
#: (an exception, e.g. out of memory) is retried by the next run.
DONE_STATUSES = frozenset({"ok", "unsupported", "diverged"})


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write `data` to `path` through a temporary file in the same folder and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _read_parts(paths: Iterable[Path]) -> pd.DataFrame:
    """The rows of these part files in order, each with column `part` (its file's stem)."""
    import pandas as pd

    frames = [pd.read_parquet(path).assign(part=path.stem) for path in paths]
    frames = [frame for frame in frames if not frame.empty]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


class ResultStore:
    """The parquet tables of one run folder; `rank` only enters the names of the parts this process writes."""

    def __init__(self, root: str | Path, rank: int = 0) -> None:
        self.root = Path(root)
        self.rank = int(rank)

    # ----- writing -----------------------------------------------------------------------------------
    def new_stem(self) -> str:
        """A fresh part name: sortable by time, unique across processes and ranks."""
        return f"part-{time.time_ns():020d}-r{self.rank:04d}-{secrets.token_hex(4)}"

    def write_part(self, kind: str, rows: Iterable[Mapping[str, Any]], stem: str | None = None) -> Path | None:
        """Write `rows` as one parquet part of table `kind` ('units', 'traces' or 'sets'); None when empty."""
        import io

        import pandas as pd

        rows = list(rows)
        if not rows:
            return None
        buffer = io.BytesIO()
        pd.DataFrame(rows).to_parquet(buffer, index=False)
        path = self.root / kind / f"{stem or self.new_stem()}.parquet"
        atomic_write_bytes(path, buffer.getvalue())
        return path

    # ----- reading -----------------------------------------------------------------------------------
    def parts(self, kind: str) -> list[Path]:
        """The committed part files of table `kind`, in writing order (temporary files are skipped)."""
        folder = self.root / kind
        if not folder.is_dir():
            return []
        return sorted(p for p in folder.glob("part-*.parquet") if p.is_file())

    def _read_all(self, kind: str) -> pd.DataFrame:
        return _read_parts(self.parts(kind))

    def raw_units(self) -> pd.DataFrame:
        """Every unit row ever written, duplicates (retries, --force) included, with the part it came from."""
        return self._read_all(UNITS)

    def units(self) -> pd.DataFrame:
        """One row per unit key: its latest row (see the module docstring), with column `part`."""
        table = self.raw_units()
        if table.empty:
            return table
        return table.drop_duplicates("key", keep="last").reset_index(drop=True)

    def traces(self) -> pd.DataFrame:
        """Trace rows of the computation that gave each unit's latest row (column `part` joins the two)."""
        table = self._read_all(TRACES)
        latest = self.units()
        if table.empty or latest.empty:
            return table
        wanted = set(zip(latest["key"], latest["part"], strict=True))
        keep = [(k, p) in wanted for k, p in zip(table["key"], table["part"], strict=True)]
        return table[keep].reset_index(drop=True)

    def sets(self) -> pd.DataFrame:
        """One row per set (column `set_key`): its latest FID/KID row."""
        table = self._read_all(SETS)
        if table.empty:
            return table
        return table.drop_duplicates("set_key", keep="last").reset_index(drop=True)

    def statuses(self) -> dict[str, str]:
        """key -> latest status."""
        table = self.units()
        if table.empty:
            return {}
        return dict(zip(table["key"], table["status"], strict=True))

    def compact(self) -> int:
        """Drop superseded unit rows, their traces and superseded set rows from the parts; returns rows removed."""
        import pandas as pd

        removed = 0
        latest_units = self.units()
        keep_units = (
            set(zip(latest_units["key"], latest_units["part"], strict=True)) if not latest_units.empty else set()
        )
        latest_sets = self.sets()
        keep_sets = (
            set(zip(latest_sets["set_key"], latest_sets["part"], strict=True)) if not latest_sets.empty else set()
        )
        committed = {path.stem for path in self.parts(UNITS)}
        for kind, column, keep in (
            (UNITS, "key", keep_units),
            (TRACES, "key", keep_units),
            (SETS, "set_key", keep_sets),
        ):
            for path in self.parts(kind):
                if kind == TRACES and path.stem not in committed:
                    continue  # traces of a batch in flight elsewhere (another rank) or orphaned: leave them
                frame = pd.read_parquet(path)
                wanted = [(value, path.stem) in keep for value in frame[column]]
                if all(wanted):
                    continue
                removed += len(wanted) - sum(wanted)
                remaining = frame[wanted]
                if remaining.empty:
                    path.unlink()
                else:
                    import io

                    buffer = io.BytesIO()
                    remaining.to_parquet(buffer, index=False)
                    atomic_write_bytes(path, buffer.getvalue())
        return removed

    def consolidate(self) -> int:
        """Rewrite the committed parts as one part per table, without superseded rows; returns parts removed.

        A run writes one small part per batch and reading thousands of them is slow, so the end of every run
        merges them. The merged parts get a fresh (newest) stem and are written traces, units, then sets;
        only then are the parts they replace deleted. A kill in between leaves rows twice, which readers
        resolve to the identical merged row, and the next consolidation removes. Only the parts listed at the
        start are touched: parts another process commits meanwhile are left as they are.
        """

        unit_parts = self.parts(UNITS)
        committed = {path.stem for path in unit_parts}
        trace_parts = [path for path in self.parts(TRACES) if path.stem in committed]
        set_parts = self.parts(SETS)
        if len(unit_parts) <= 1 and len(set_parts) <= 1:
            return 0

        units = _read_parts(unit_parts)
        units = units.drop_duplicates("key", keep="last") if not units.empty else units
        traces = _read_parts(trace_parts)
        if not traces.empty and not units.empty:
            wanted = set(zip(units["key"], units["part"], strict=True))
            traces = traces[[(k, p) in wanted for k, p in zip(traces["key"], traces["part"], strict=True)]]
        sets = _read_parts(set_parts)
        sets = sets.drop_duplicates("set_key", keep="last") if not sets.empty else sets

        stem = self.new_stem()
        for kind, table in ((TRACES, traces), (UNITS, units), (SETS, sets)):
            if not table.empty:
                self.write_part(kind, table.drop(columns="part").to_dict(orient="records"), stem=stem)
        for path in [*unit_parts, *trace_parts, *set_parts]:
            path.unlink(missing_ok=True)
        return len(unit_parts) + len(trace_parts) + len(set_parts)

    def done_keys(self) -> set[str]:
        """Keys whose latest status is in `DONE_STATUSES` (skipped by a re-run)."""
        return {key for key, status in self.statuses().items() if status in DONE_STATUSES}
