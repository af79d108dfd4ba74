"""The results store of one benchmark run folder: its layout, its row schema, and the one reader of its parts.

Layout under the run folder:

    units/part-<time ns>-r<rank>-<random>.parquet    one row per work unit of one batch (`UNIT_COLUMNS`)
    traces/part-<same stem>.parquet                   per-step traces of that batch, long format (`TRACE_COLUMNS`)
    sets/part-<stem>.parquet                          FID/KID rows of (solver, task, σ) groups (`SET_COLUMNS`)
    images/<solver>/<task>/<σ>/<tag>/<id>.png         reconstructions (`tag`: config, seed, prior, dataset)
    images/reference/<source>/<id>.png                clean references (`source`: the prior and the dataset)
    images/measurement/<task>/<σ>/seed<seed>/<source>/<id>.png   measurements shown as A⁺y
    order.json                                        the --solvers and --tasks order of the last run (the report's order)
    reference/<sha16>.parquet                         the prior's own ε̂ kurtosis on the clean images forward-noised
                                                      (bench.pipeline.reference; not a table of this store)

Every unit row names its own three PNGs (columns `image_path`, `reference_path`, `measurement_path`, relative
to the run folder; `unit_image_paths` makes them), so two runs into one folder with another prior or dataset
never share a file, and readers (report, FID, `bench score`) open the row's own files (`row_image_paths`).
Rows written before those columns use the earlier layout, without `source` and with a tag of config and seed.

Every file is written to a hidden temporary name in its final folder, flushed to disk, then renamed with
`os.replace`, which is atomic: a killed process leaves at most a hidden temporary file, which readers ignore,
never a half-written part. A batch's traces are written before its unit rows, so the unit part is the
commit record of the batch; traces whose unit part is missing (a kill in between) are never read.

Which row of a unit wins when it was computed more than once (a failed unit retried, `--force`, `bench
score`) does not depend on any clock, since the processes of one store may run on machines whose clocks
disagree. Each row carries `attempt`: the writer reads the highest attempt of the key in the store and writes
one more. The reader keeps, per key, the row that is first by (1) done (ok, unsupported, diverged) before
failed: a failure never shadows a result; (2) the higher attempt; (3) the later part name (a nanosecond clock,
used only to break ties between rows no rule tells apart). Rows written before the `attempt` column count as
attempt 1. Sets follow the same rule, a set whose scoring failed counting as failed.

`consolidate()`, run at the end of every run, merges the parts into one per table without the superseded rows
(reading thousands of small parts is slow), so the files themselves never hold a unit twice once a run has
finished. It writes the merged part first and deletes what it replaces after, so a kill during it loses
nothing. A reader that runs during a merge sees a consistent snapshot (`ResultStore.snapshot`): readers share
a file lock (`.merge.lock`) while they list and read, and a merge deletes the parts it replaced only under
that lock alone, so a reader sees the parts, or the parts and the merged part (the same rows), never neither.
Where no lock can be taken, a reader whose listed part vanished lists the folders again and reads anew.

Only pandas and pyarrow are imported, never torch: the report reads results on machines without PyTorch.
"""

from __future__ import annotations

import contextlib
import math
import re
import secrets
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench import metrics
from bench.files import atomic_write_bytes

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "DONE_STATUSES",
    "SET_COLUMNS",
    "STATUSES",
    "TRACE_COLUMNS",
    "UNIT_COLUMNS",
    "Column",
    "ResultStore",
    "atomic_write_bytes",
    "failed_rows",
    "latest",
    "measurement_path",
    "next_attempts",
    "new_row",
    "reconstruction_path",
    "row_image_paths",
    "unit_image_paths",
    "sigma_label",
]

UNITS, TRACES, SETS = "units", "traces", "sets"
#: Statuses a unit row can have.
STATUSES = ("ok", "unsupported", "failed", "diverged")
#: A unit with one of these is not computed again unless forced: its result is deterministic. A failed unit
#: (an exception, e.g. out of memory) is retried by the next run.
DONE_STATUSES = frozenset({"ok", "unsupported", "diverged"})


# ----- the row schema --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Column:
    """One column of a store table: its name, its dtype, what it means, and its value before it is known.

    dtype: "float64", "int64", "bool", or "str" for text (pandas' str dtype, object before pandas 3)."""

    name: str
    dtype: str
    meaning: str
    default: Any = None


_NAN = math.nan
_VERSIONS = (
    Column("torch_version", "str", "torch.__version__ of the process that wrote the row"),
    Column("bench_version", "str", "bench.__version__"),
    Column("git_commit", "str", 'the code\'s commit, "+dirty" when tracked files differ from it; "unknown" off git'),
    # The process' numerics switches (`bench.pipeline.run.numerics_flags`): on a GPU they change results and speed
    # (TF32 rounds float32 matmuls to 10 mantissa bits), so rows say which were on. Not part of unit keys, like
    # the versions above. None in rows written before they were recorded.
    Column("tf32_matmul", "bool", "torch.backends.cuda.matmul.allow_tf32: CUDA float32 matmuls in TF32"),
    Column("tf32_cudnn", "bool", "torch.backends.cudnn.allow_tf32: cuDNN float32 convolutions in TF32"),
    Column("float32_matmul_precision", "str", "torch.get_float32_matmul_precision(): highest, high or medium"),
    Column("deterministic", "bool", "torch.are_deterministic_algorithms_enabled()"),
    Column("cudnn_benchmark", "bool", "torch.backends.cudnn.benchmark: cuDNN picks convolution kernels by timing"),
)
#: Table `units`: one row per (solver, task, σ, image) work unit, in column order.
UNIT_COLUMNS = (
    Column("solver", "str", "solver name as registered (`solvers.available()`)"),
    Column("task", "str", "task name (`operators.available()`)"),
    Column("sigma", "float64", "measurement noise σ on the [0, 1] pixel scale (std 2σ on [-1, 1])"),
    Column(
        "noise",
        "str",
        "the noise model (`--noise`, `operators.noise`): gaussian, or poisson with σ its std at mid-grey",
        "gaussian",
    ),
    Column("prior", "str", "the prior's spec as given on the command line"),
    Column("dataset", "str", "the dataset's name"),
    Column("image_id", "str", "the image's id within the dataset"),
    Column("seed", "int64", "seed of masks, measurement noise and solver draws"),
    Column("key", "str", "SHA-256 of the unit's definition (`bench.pipeline.units.unit_key`); one latest row per key"),
    Column("status", "str", "ok, unsupported, failed or diverged (`STATUSES`)", "ok"),
    Column("attempt", "int64", "the how-many-th computation of this key in this folder; decides which row wins", 1),
    Column("error", "str", "why the unit is not ok (the reason or the exception text); None when ok"),
    # one column per per-image metric, as bench.metrics declares them (NaN where not scored)
    *(Column(m.column, "float64", f"{m.description}; NaN where not scored", _NAN) for m in metrics.specs("image")),
    Column("metrics", "str", "the per-image metrics the run asked for, comma-separated (`--metrics`)", ""),
    Column("metrics_missing", "str", "metrics not scored for lack of weights, with why; `bench score` fills them", ""),
    Column("metrics_from_png", "str", "metrics `bench score` filled in later from the saved 8-bit PNGs", ""),
    Column("nfe", "int64", "calls of the prior's network, a batched call counted once", 0),
    Column("own_nfe", "int64", "calls of the solver's own networks (DDC's φ, PnP-ADMM's DnCNN, CDDB's bridge)", 0),
    Column("own_networks", "str", "names of those networks, comma-separated", ""),
    Column("wall_s", "float64", "the batch's solver seconds divided by its batch size", _NAN),
    Column("network_s", "float64", "seconds in the prior's network (forward and backward) per image", _NAN),
    Column("own_network_s", "float64", "seconds in the solver's own networks' forward passes per image", _NAN),
    Column("peak_memory_bytes", "int64", "the solve's peak memory: CUDA allocator peak, or CPU heap above start", 0),
    Column("batch_size", "int64", "images in the batch that computed the unit", 0),
    Column("warmup", "bool", "the process' first batch of this solver (its time includes start-up costs)", False),
    Column("device", "str", "the torch device that computed the unit"),
    Column("rank", "int64", "the torchrun process that computed the unit", 0),
    Column("dtype", "str", "network dtype: fp32, bf16 or fp16"),
    Column(
        "compiled", "bool", "the prior's network ran under torch.compile (--compile or the spec's ?compile=1)", False
    ),
    Column("image_path", "str", "the reconstruction's PNG, relative to the run folder (`unit_image_paths`)"),
    Column("reference_path", "str", "the clean image's PNG, relative to the run folder"),
    Column("measurement_path", "str", "the measurement's PNG (A⁺y), relative to the run folder; None without A⁺"),
    Column("solver_version", "int64", "the solver's `version` (bumped when its math changes)"),
    Column("solver_config", "str", "the solver's resolved config as canonical JSON"),
    Column(
        "solver_weights",
        "str",
        "sha256 of the solver's own weight files (DDC's φ, PnP-ADMM's DnCNN, CDDB's bridge) as canonical JSON, "
        "the part of its spec beyond the config; empty where it has none",
        "",
    ),
    Column("best_of", "int64", "solver runs of which the row keeps the one of least ‖A(x̂) − y‖ (`--best-of`)", 1),
    Column("best_repeat", "int64", "which of those runs (0 .. best_of − 1) the row keeps; the traces are its", 0),
    *_VERSIONS,
)
# Unit columns added after stores existed: rows written before them read as their default (`_backfill`).
_ADDED_UNIT_COLUMNS = ("noise", "best_of", "best_repeat", "solver_weights")
#: Table `traces`: one row per (unit, step) of the computation that gave the unit's latest row.
TRACE_COLUMNS = (
    Column("key", "str", "the unit's key"),
    Column("solver", "str", "solver name"),
    Column("task", "str", "task name"),
    Column("sigma", "float64", "noise level σ on the [0, 1] scale"),
    Column("image_id", "str", "the image's id"),
    Column("seed", "int64", "the run's seed"),
    Column("step", "int64", "index of the network evaluation within the solve"),
    Column("t", "int64", "the timestep (or bridge step) of that evaluation"),
    Column("kurtosis", "float64", "Fisher excess kurtosis of ε̂ over the image's elements (0 for Gaussian noise)"),
    Column("residual", "float64", "‖A(x̂₀) − y‖ of the step's Tweedie estimate"),
)
#: Table `sets`: FID/KID of each complete (solver, task, σ) set of units.
SET_COLUMNS = (
    Column("solver", "str", "solver name"),
    Column("task", "str", "task name"),
    Column("sigma", "float64", "noise level σ on the [0, 1] scale"),
    Column("prior", "str", "the prior's spec"),
    Column("dataset", "str", "the dataset's name"),
    Column("seed", "int64", "the run's seed"),
    Column("set_key", "str", "SHA-256 of the set's sorted unit keys"),
    Column("n_images", "int64", "finished (ok) images the scores were computed on", 0),
    Column("n_diverged", "int64", "diverged images left out", 0),
    Column("fid", "float64", "FID against the clean references; NaN below 4 images", _NAN),
    Column("kid", "float64", "KID (mean over subsets)", _NAN),
    Column("kid_std", "float64", "KID's standard deviation over subsets", _NAN),
    Column("note", "str", "why a score is missing or what was left out; None when nothing was"),
    Column("attempt", "int64", "the how-many-th scoring of this set in this folder; decides which row wins", 1),
    *_VERSIONS,
)


def new_row(columns: Iterable[Column], **values: Any) -> dict[str, Any]:
    """A row of a table with `columns`: each column's default, overridden by `values` (which must be columns)."""
    row = {column.name: column.default for column in columns}
    unknown = set(values) - set(row)
    if unknown:
        raise KeyError(f"not columns of this table: {', '.join(sorted(unknown))}")
    row.update(values)
    return row


# ----- the image layout ------------------------------------------------------------------------------------


def sigma_label(sigma: float) -> str:
    """σ as a folder name: '0', '0.05'."""
    return f"{sigma:g}"


def reconstruction_path(images: Path, solver: str, task: str, sigma: float, tag: str, image_id: str) -> Path:
    """Where a unit's reconstruction PNG is (`tag`: `bench.pipeline.units.image_tag` of its config and seed)."""
    return images / solver / task / sigma_label(sigma) / tag / f"{image_id}.png"


def measurement_path(images: Path, task: str, sigma: float, seed: int, image_id: str) -> Path:
    """Where the measurement of an image, shown as A⁺y, is for one seed."""
    return images / "measurement" / task / sigma_label(sigma) / f"seed{int(seed)}" / f"{image_id}.png"


def image_source(prior: str, dataset: str) -> str:
    """The folder that keeps one (prior, dataset)'s references and measurements apart (12 hex characters): the
    prior sets the image size and channels, the dataset the photos."""
    import hashlib

    return hashlib.sha256(f"{prior}\n{dataset}".encode()).hexdigest()[:12]


def unit_image_paths(
    *,
    solver: str,
    task: str,
    sigma: float,
    seed: int,
    image_id: str,
    prior: str,
    dataset: str,
    solver_version: int,
    solver_config: str,
    noise: str = "gaussian",
    best_of: int = 1,
    solver_weights: str = "",
) -> dict[str, str]:
    """A unit's PNGs relative to the run folder: {image_path, reference_path, measurement_path}.

    A noise model other than Gaussian names the σ folder (`0.05-poisson`), since it changes the measurement, and
    a best-of count above 1 and the solver's weight hashes enter the tag, so that retrained weights under one
    config never overwrite the old ones' PNGs; the defaults give the paths made before these options existed."""
    import hashlib

    source = image_source(prior, dataset)
    identity = f"{int(solver_version)}/{solver_config}/{int(seed)}/{source}"
    if int(best_of) != 1:
        identity += f"/best_of={int(best_of)}"
    if solver_weights:
        identity += f"/weights={solver_weights}"
    tag = hashlib.sha256(identity.encode()).hexdigest()[:12]
    name = f"{image_id}.png"
    level = sigma_label(sigma) if noise == "gaussian" else f"{sigma_label(sigma)}-{noise}"
    return {
        "image_path": f"images/{solver}/{task}/{level}/{tag}/{name}",
        "reference_path": f"images/reference/{source}/{name}",
        "measurement_path": f"images/measurement/{task}/{level}/seed{int(seed)}/{source}/{name}",
    }


def row_image_paths(root: Path, row: Mapping[str, Any]) -> tuple[Path, Path, Path | None]:
    """(reconstruction, reference, measurement) PNG paths of a unit row of the store at `root`; the measurement
    is None where the operator has no A⁺ to show it with (nothing was saved).

    The row's own columns where it has them; the earlier layout for rows written before them."""
    own = [row.get(name) for name in ("image_path", "reference_path", "measurement_path")]
    if isinstance(own[0], str) and isinstance(own[1], str):
        return root / own[0], root / own[1], root / own[2] if isinstance(own[2], str) else None
    from bench.pipeline.units import image_tag

    images = root / "images"
    tag = image_tag(row["solver_version"], row["solver_config"], row["seed"])
    return (
        reconstruction_path(images, row["solver"], row["task"], row["sigma"], tag, row["image_id"]),
        images / "reference" / f"{row['image_id']}.png",
        measurement_path(images, row["task"], row["sigma"], row["seed"], row["image_id"]),
    )


# ----- reading -----------------------------------------------------------------------------------------------


class StoreError(ValueError):
    """A part file of the store cannot be used: the message names it and says what to do."""


# The columns every part of each table must have, the one that identifies a row first: a part without them
# cannot be merged with the others, and readers (the report, FID, `bench score`) index rows by them.
_IDENTITY = {
    "units": ("key", "status", "solver", "task", "sigma", "image_id"),
    "traces": ("key", "step"),
    "sets": ("set_key", "solver", "task", "sigma"),
}
# The order the last run into the folder asked for its solvers and tasks ({"solvers": [...], "tasks": [...]}).
ORDER_FILE = "order.json"
_STEM_RANK = re.compile(r"^part-\d+-r(\d+)-")


class _PartVanished(Exception):
    """A listed part was deleted before it was read: a merge replaced it (`ResultStore.snapshot` reads anew)."""


# A reader re-lists this many times while merges keep replacing what it listed before it gives up.
SNAPSHOT_TRIES = 20


def _read_parts(
    paths: Iterable[Path], identity: str | tuple[str, ...] | None = None, *, vanished_ok: bool = True
) -> pd.DataFrame:
    """The rows of these part files in order, each with column `part` (its file's stem, categorical).

    pyarrow reads the files and concatenates them once: pandas' reader costs several milliseconds per file,
    and a run writes one part per batch (2,500 parts for 10,000 units at batch size 4). Whole files are read:
    selecting columns by name cost more than it saved.

    `identity`: the table's required columns (`_IDENTITY`), the identifying one first. A part without the
    identifying column, without a required column the other parts have, or whose column types conflict with
    the other parts' is a `StoreError` naming that file.
    """
    import numpy as np
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    required = (identity,) if isinstance(identity, str) else tuple(identity or ())
    tables, stems, read = [], [], []
    for path in paths:
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            if not vanished_ok:
                raise _PartVanished(str(path)) from None
            continue  # removed by a concurrent consolidate(): its rows live on in the merged part
        try:
            table = pq.ParquetFile(pa.BufferReader(data)).read(use_threads=False)
        except (pa.ArrowException, OSError) as error:
            raise StoreError(
                f"result part '{path}' is not a readable parquet file ({error}); move it out of "
                f"'{path.parent}' and re-run: the units it held are computed again"
            ) from None
        if required and table.num_rows and required[0] not in table.column_names:
            raise StoreError(
                f"result part '{path}' has no '{required[0]}' column, so its rows cannot be told apart; it was not "
                f"written by this harness: move it out of '{path.parent}'"
            )
        if table.num_rows:
            tables.append(table)
            stems.append(path.stem)
            read.append(path)
    if not tables:
        return pd.DataFrame()
    _check_required(tables, read, required)
    try:
        # "permissive": a column that is all None in one part (null type) takes the type of the other parts
        frame = pa.concat_tables(tables, promote_options="permissive").to_pandas()
    except (pa.ArrowTypeError, pa.ArrowInvalid) as error:
        raise _type_conflict(tables, read, error) from None
    codes = np.repeat(np.arange(len(stems)), [t.num_rows for t in tables])
    frame["part"] = pd.Categorical.from_codes(codes, categories=stems)  # a code per row, not a string
    return frame


def _backfill(frame: pd.DataFrame, kind: str) -> pd.DataFrame:
    """Unit rows written before a column of `_ADDED_UNIT_COLUMNS` existed, read beside rows that have it, take
    its default instead of null: they were Gaussian, best-of-1 runs. A table none of whose parts has the column
    is left without it, like every column a hand-made store leaves out (`_check_required`)."""
    if kind != UNITS or frame.empty:
        return frame
    for column in UNIT_COLUMNS:
        if column.name in _ADDED_UNIT_COLUMNS and column.name in frame and frame[column.name].isna().any():
            values = frame[column.name].astype(object).fillna(column.default)
            frame[column.name] = values.astype("int64") if column.dtype == "int64" else values
    return frame


def _check_required(tables: list[Any], paths: list[Path], required: tuple[str, ...]) -> None:
    """StoreError naming the first part that lacks a required column which another part of the table has.

    Only columns some part has are demanded: stores made by hand (tests, other tools) may leave out what no
    reader of theirs needs, but a part unlike its siblings (e.g. one holding only `key`) would be merged and
    break every reader later, with no file left to blame.
    """
    present = {name for table in tables for name in table.column_names}
    wanted = [name for name in required if name in present]
    for table, path in zip(tables, paths, strict=True):
        lacking = [name for name in wanted if name not in table.column_names]
        if lacking:
            names = ", ".join(f"'{name}'" for name in lacking)
            raise StoreError(
                f"result part '{path}' has no {names} column{'s' if len(lacking) > 1 else ''}, which the other "
                f"parts have; it was not written by this harness or is damaged: move it out of '{path.parent}' "
                "and re-run: the units it held are computed again"
            )


def _type_conflict(tables: list[Any], paths: list[Path], error: Exception) -> StoreError:
    """The StoreError for parts whose column types cannot be merged, naming the part that differs.

    Each column's reference type is the one most parts have (the first part's on a tie); the first part whose
    type cannot be promoted to it (e.g. `psnr` written as text) is named.
    """
    import collections

    import pyarrow as pa

    names = dict.fromkeys(name for table in tables for name in table.column_names)
    for name in names:
        typed = [
            (table.schema.field(name).type, path)
            for table, path in zip(tables, paths, strict=True)
            if name in table.column_names and not pa.types.is_null(table.schema.field(name).type)
        ]
        if not typed:
            continue
        common = collections.Counter(str(kind) for kind, _ in typed).most_common(1)[0][0]
        reference = next(kind for kind, _ in typed if str(kind) == common)
        for kind, path in typed:
            try:
                pa.unify_schemas(
                    [pa.schema([(name, reference)]), pa.schema([(name, kind)])], promote_options="permissive"
                )
            except (pa.ArrowTypeError, pa.ArrowInvalid):
                return StoreError(
                    f"result part '{path}' holds column '{name}' as {kind}, but the other parts hold it as "
                    f"{reference}; it was not written by this harness or was edited: move it out of "
                    f"'{path.parent}' and re-run: the units it held are computed again"
                )
    return StoreError(
        f"the parts under '{paths[0].parent}' cannot be merged ({error}); move the parts written by other tools "
        "out of that folder and re-run"
    )


def latest(table: pd.DataFrame, key: str) -> pd.DataFrame:
    """One row per `key` of a table read in part order: the winner by the module docstring's rule.

    Done rows beat failed ones, then the higher `attempt`, then the later part; rows of stores written before
    the `attempt` column count as attempt 1, which leaves them in part order as before.
    """
    if table.empty:
        return table
    import numpy as np

    failed = failed_rows(table)
    attempt = table["attempt"].fillna(1).to_numpy() if "attempt" in table else np.ones(len(table))
    position = np.arange(len(table))
    # lexsort sorts by the last key first: done-ness, then attempt, then position in part order
    order = np.lexsort((position, attempt, ~failed))
    winners = table.iloc[order].drop_duplicates(key, keep="last")
    return winners.sort_index(kind="stable").reset_index(drop=True)


def failed_rows(table: pd.DataFrame) -> Any:
    """Per row, a numpy bool array: True where it records a failure (a failed unit, a set whose scoring failed:
    no FID and a note starting "failed:"). Such rows never shadow a result and are tried again."""
    import numpy as np

    if "status" in table:
        return (table["status"] == "failed").to_numpy()
    if "note" in table and "fid" in table:
        return (table["note"].fillna("").astype(str).str.contains("failed:") & table["fid"].isna()).to_numpy()
    return np.zeros(len(table), dtype=bool)


def next_attempts(table: pd.DataFrame, key: str) -> dict[str, int]:
    """key -> the attempt number its next row must carry (one above every row of it in `table`)."""
    if table.empty:
        return {}
    attempt = table["attempt"].fillna(1) if "attempt" in table else None
    if attempt is None:
        counts = table.groupby(key).size()  # rows from before the column: each counts as one computation
        return {k: int(v) + 1 for k, v in counts.items()}
    return {k: int(v) + 1 for k, v in attempt.groupby(table[key]).max().items()}


def _committed_traces(traces: pd.DataFrame, units: pd.DataFrame, superseded: bool) -> pd.DataFrame:
    """The trace rows of the computations that gave `units` (latest unit rows, with `part`).

    A batch's traces share its unit part's name; traces without a unit part are of a batch that was killed
    before committing, or still in flight on another rank. Only when some unit was computed twice
    (`superseded`) is the (key, part) pair checked row by row.
    """
    if traces.empty or units.empty:
        return traces
    committed = set(units["part"].astype(str).unique())
    traces = traces[traces["part"].isin(committed)]
    if superseded:
        wanted = units[["key", "part"]].astype(str)
        traces = traces.astype({"part": str}).merge(wanted, on=["key", "part"])
    return traces.reset_index(drop=True)


def _wall_clock() -> int:
    """The clock of part names (tests replace it to play a machine whose clock is off)."""
    return time.time_ns()


@dataclass
class StoreTables:
    """What a reader needs of a store, read as of one moment (`ResultStore.tables`)."""

    units: pd.DataFrame
    traces: pd.DataFrame
    sets: pd.DataFrame
    raw_units: int  # unit rows in the files, superseded ones included


class ResultStore:
    """The parquet tables of one run folder; `rank` only enters the names of the parts this process writes."""

    def __init__(self, root: str | Path, rank: int = 0, clock: Callable[[], int] | None = None) -> None:
        self.root = Path(root)
        self.rank = int(rank)
        self._clock = clock or _wall_clock  # nanoseconds for part names: only ties no rule orders use them
        self._lock_file: Any = None

    # ----- one writer per rank -----------------------------------------------------------------------
    def _lock_path(self, rank: int) -> Path:
        return self.root / f".writer-r{rank:04d}.lock"

    def acquire_writer_lock(self) -> None:
        """Become the only writer of this rank's parts; a second run into the same folder waits here.

        The waiting run then reads the finished units afresh and skips them, so two runs never compute the same
        unit twice. The lock is an OS file lock (flock): a killed run releases it with its process."""
        try:
            import fcntl
        except ImportError:  # no flock on this platform: runs into one folder are not serialised
            return
        self.root.mkdir(parents=True, exist_ok=True)
        handle = open(self._lock_path(self.rank), "a")  # noqa: SIM115 - held until release_writer_lock
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(
                f"another run is writing to {self.root} (rank {self.rank}); waiting for it to finish, then the "
                "units it finished are skipped",
                file=sys.stderr,
            )
            fcntl.flock(handle, fcntl.LOCK_EX)
        self._lock_file = handle
        self._folder_identity = self._identity()

    def _identity(self) -> tuple[int, int] | None:
        try:
            stat = self.root.stat()
        except OSError:
            return None
        return stat.st_dev, stat.st_ino

    def check_in_place(self) -> None:
        """StoreError when the run folder was moved, renamed or deleted since this writer took its lock: writing
        on would start a second, partial store at the old path while the first lives on elsewhere."""
        expected = getattr(self, "_folder_identity", None)
        if expected is None:
            return
        now = self._identity()
        if now != expected:
            what = "was moved away or deleted" if now is None else "was moved or replaced by another folder"
            raise StoreError(
                f"the run folder '{self.root}' {what} while this run was writing to it; the batches finished "
                "before are kept where the folder went. Put it back (or pass its new path with --out) and run "
                "the same command again: it resumes there"
            )

    def release_writer_lock(self) -> None:
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None

    def _writer_idle(self, rank: int) -> bool:
        """True when no process other than this one is writing parts of `rank` (its lock is free or ours)."""
        if rank == self.rank and self._lock_file is not None:
            return True
        try:
            import fcntl
        except ImportError:
            return False
        path = self._lock_path(rank)
        if not path.exists():
            return True
        with open(path, "a") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            fcntl.flock(handle, fcntl.LOCK_UN)
        return True

    @contextlib.contextmanager
    def _merge_lock(self, *, shared: bool) -> Iterator[None]:
        """Readers hold this lock shared while they list and read parts; a merge holds it alone only while it
        deletes the parts it replaced. So no part vanishes under a reader, however often merges run: the reader
        sees the old parts, or the old and the merged ones (which resolve to the same rows), never neither.

        Where the lock cannot be taken (no flock, a read-only folder) readers fall back on re-reading when a
        part vanishes (`snapshot`)."""
        try:
            import fcntl
        except ImportError:
            yield
            return
        path = self.root / ".merge.lock"
        try:
            handle = open(path, "a")  # noqa: SIM115 - closed below
        except OSError:  # a read-only store: nothing in it can be merged meanwhile by this user
            yield
            return
        try:
            fcntl.flock(handle, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
            yield
        finally:
            handle.close()  # closing releases the flock

    def orphan_traces(self) -> list[Path]:
        """Trace parts without a unit part, of ranks no one is writing now: a batch or a merge that was killed
        after its traces were written. Readers already ignore them; `consolidate` deletes them."""
        return self._orphans(self.parts(TRACES), {path.stem for path in self.parts(UNITS)})

    def _orphans(self, trace_parts: list[Path], committed: set[str]) -> list[Path]:
        orphans = []
        for path in trace_parts:
            match = _STEM_RANK.match(path.stem)
            if path.stem not in committed and match and self._writer_idle(int(match.group(1))):
                orphans.append(path)
        return orphans

    # ----- writing -----------------------------------------------------------------------------------
    def new_stem(self) -> str:
        """A fresh part name: sortable by time, unique across processes and ranks."""
        return f"part-{self._clock():020d}-r{self.rank:04d}-{secrets.token_hex(4)}"

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

    def read(self, kind: str) -> pd.DataFrame:
        """Every row of table `kind` ever written, duplicates (retries, --force) included, with column `part`."""
        return self.snapshot(kind)[0]

    def snapshot(self, *kinds: str) -> tuple[pd.DataFrame, ...]:
        """Every row of each table in `kinds`, read as of one moment of the folder, in the order asked.

        A part deleted while it is read (a merge replaced it with its merged part) makes the reader list the
        folders again and read them all anew: the result holds either the parts or the merged part that
        replaced them, never neither, and units and traces come from the same listing."""
        for attempt in range(SNAPSHOT_TRIES):
            with self._merge_lock(shared=True):
                listed = [self.parts(kind) for kind in kinds]
                try:
                    return tuple(
                        _backfill(_read_parts(paths, _IDENTITY.get(kind), vanished_ok=False), kind)
                        for kind, paths in zip(kinds, listed, strict=True)
                    )
                except _PartVanished:
                    pass
            time.sleep(0.01 * (attempt + 1))  # only without the lock (read-only folder, no flock): let a merge end
        raise StoreError(
            f"the parts under '{self.root}' kept being replaced while they were read ({SNAPSHOT_TRIES} tries); "
            "read again once the run writing there has finished"
        )

    def raw_units(self) -> pd.DataFrame:
        """Every unit row ever written, with the part it came from."""
        return self.read(UNITS)

    def units(self) -> pd.DataFrame:
        """One row per unit key: its latest row (see the module docstring), with column `part`."""
        return latest(self.raw_units(), "key")

    def traces(self, units: pd.DataFrame | None = None, *, superseded: bool = True) -> pd.DataFrame:
        """Trace rows of the computation that gave each unit's latest row (column `part` joins the two).

        `units`: the latest unit rows when the caller has them already. `superseded=False` promises that no
        unit was computed twice (as many raw rows as latest ones), which skips the row-by-row check."""
        return _committed_traces(self.read(TRACES), self.units() if units is None else units, superseded)

    def sets(self) -> pd.DataFrame:
        """One row per set (column `set_key`): its latest FID/KID row."""
        return latest(self.read(SETS), "set_key")

    def tables(self) -> StoreTables:
        """The winning unit rows, their traces and the winning set rows, all from one snapshot (`snapshot`)."""
        raw, traces, sets = self.snapshot(UNITS, TRACES, SETS)
        units = latest(raw, "key")
        return StoreTables(
            units=units,
            traces=_committed_traces(traces, units, superseded=len(raw) > len(units)),
            sets=latest(sets, "set_key"),
            raw_units=len(raw),
        )

    def statuses(self) -> dict[str, str]:
        """key -> latest status."""
        table = self.units()
        if table.empty:
            return {}
        return dict(zip(table["key"], table["status"], strict=True))

    def done_keys(self) -> set[str]:
        """Keys whose latest status is in `DONE_STATUSES` (skipped by a re-run)."""
        return {key for key, status in self.statuses().items() if status in DONE_STATUSES}

    def consolidate(self) -> int:
        """Rewrite the committed parts as one part per table, without superseded rows; returns parts removed.

        A run writes one small part per batch and reading thousands of them is slow, so the end of every run
        merges them. The merged parts get a fresh (newest) stem and are written traces, units, then sets;
        only then are the parts they replace deleted. A kill in between leaves rows twice, which readers
        resolve to the identical merged row, and the next consolidation removes. Only the parts listed at the
        start are touched: parts another process commits meanwhile are left as they are. Orphan trace parts
        (`orphan_traces`) are deleted first.
        """
        unit_parts = self.parts(UNITS)
        committed = {path.stem for path in unit_parts}
        all_traces = self.parts(TRACES)
        orphans = self._orphans(all_traces, committed)
        if orphans:
            with self._merge_lock(shared=False):
                for path in orphans:
                    path.unlink(missing_ok=True)
        trace_parts = [path for path in all_traces if path.stem in committed]
        set_parts = self.parts(SETS)
        if len(unit_parts) <= 1 and len(set_parts) <= 1:
            return len(orphans)

        units = latest(_read_parts(unit_parts, _IDENTITY[UNITS]), "key")
        traces = _committed_traces(_read_parts(trace_parts, _IDENTITY[TRACES]), units, superseded=True)
        sets = latest(_read_parts(set_parts, _IDENTITY[SETS]), "set_key")

        stem = self.new_stem()
        for kind, table in ((TRACES, traces), (UNITS, units), (SETS, sets)):
            if not table.empty:
                self.write_part(kind, table.drop(columns="part").to_dict(orient="records"), stem=stem)
        with self._merge_lock(shared=False):  # waits for readers that may have listed these parts
            for path in [*unit_parts, *trace_parts, *set_parts]:
                path.unlink(missing_ok=True)
        return len(orphans) + len(unit_parts) + len(trace_parts) + len(set_parts)
