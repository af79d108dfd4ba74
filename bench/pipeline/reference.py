"""The kurtosis figure's reference without an extra solver: the prior's ε̂ on the run's clean images, forward-noised.

At timestep t a perfect posterior sampler's x_t has the data's forward marginal, x_t = √ᾱ_t x + √(1 − ᾱ_t) ε
with x a clean image and ε ~ N(0, I). So the excess kurtosis of the prior's ε̂(x_t, t) on exactly such x_t is
what the kurtosis figure should compare a solver's trajectory with: no measurement, no sampler, only the prior
and the data. `compute_reference` evaluates it on a fixed grid of timesteps (`reference_grid`: 20 evenly spaced,
a few small ones where the figure's symmetric-log axis is widest, and every t of the run's solvers that
evaluate few timesteps, so that their difference from the reference is measured, not interpolated), batched
over (image, t) pairs: about 25 network evaluations per image.

The end of `bench run` calls `reference_pass` when the run recorded traces and has no `uncond` (whose curve
is then the reference, as before). The result is one parquet file per spec (the prior's spec, image shape,
dataset, image ids, seed and grid), `<run>/reference/<sha>.parquet`, written atomically; a rerun with the
same spec reuses it without a network call. `BENCH_REFERENCE=0` switches the pass off.

Noise: image b's ε at timestep t comes from `operators.image_generators(seed, ids, "reference/t<t>")`, one
stream per (image, t), so a value depends neither on the batch nor on the rest of the grid: two grids agree
where they overlap.

The report reads the files with `read_references`, which imports pandas and pyarrow only (never torch).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "ENV_SWITCH",
    "FOLDER",
    "SPARSE_T",
    "ReferenceResult",
    "compute_reference",
    "enabled",
    "read_references",
    "reference_grid",
    "reference_pass",
    "reference_path",
    "run_reference_pass",
    "reference_spec",
]

#: The run folder's subfolder of reference files.
FOLDER = "reference"
#: `BENCH_REFERENCE=0` (or false, no, off) skips the pass (to time a run without it, say).
ENV_SWITCH = "BENCH_REFERENCE"
#: Bumped when what the pass computes changes, so that files of the old meaning are not reused.
VERSION = 1
#: Evenly spaced timesteps of the grid (`prior.timesteps(GRID_STEPS, "linspace")`: T − 1 down to 0).
GRID_STEPS = 20
#: Small timesteps added to the grid: on the figure's symmetric-log axis the even grid leaves t < 53 empty,
#: and the curves separate there (the figure's reading uses t ≤ 100).
SMALL_T = (1, 2, 5, 10, 20, 30)
#: A solver that evaluates at most this many distinct timesteps is sparse: the figures draw it as markers at
#: its measured points, and the grid takes its timesteps (a dense solver's are interpolated between grid points).
SPARSE_T = 20
#: The grid stops taking sparse solvers' timesteps beyond this many timesteps in all (its cost bound).
MAX_GRID = 40

COLUMNS = ("prior", "dataset", "image_id", "seed", "t", "kurtosis", "spec")
_METADATA_KEY = b"bench.reference.spec"


def enabled(environ: Any = None) -> bool:
    """False when `BENCH_REFERENCE` says off (0, false, no, off)."""
    value = (os.environ if environ is None else environ).get(ENV_SWITCH, "1")
    return str(value).strip().lower() not in ("0", "false", "no", "off")


def reference_grid(num_timesteps: int, linspace: list[int], solver_timesteps: dict[str, set[int]]) -> list[int]:
    """The grid, descending: `linspace` (the prior's `timesteps(GRID_STEPS, "linspace")`), `SMALL_T`, and the
    timesteps of each sparse solver (at most `SPARSE_T` distinct, fewest first) while the grid stays within
    `MAX_GRID`."""
    grid = {int(t) for t in linspace} | {t for t in SMALL_T if t < num_timesteps}
    for _, steps in sorted(solver_timesteps.items(), key=lambda item: (len(item[1]), item[0])):
        if len(steps) > SPARSE_T:
            continue
        merged = grid | {int(t) for t in steps if 0 <= int(t) < num_timesteps}
        if len(merged) > MAX_GRID:
            break
        grid = merged
    return sorted(grid, reverse=True)


def reference_spec(
    *,
    prior_spec: dict[str, Any],
    prior_name: str,
    image_shape: tuple[int, ...],
    dataset: str,
    image_ids: list[str],
    seed: int,
    grid: list[int],
) -> dict[str, Any]:
    """What a reference file's values depend on; its SHA-256 names the file."""
    return {
        "version": VERSION,
        "what": "Fisher excess kurtosis of the prior's eps prediction at x_t = sqrt(ab_t) x + sqrt(1 - ab_t) eps",
        "prior": prior_spec,
        "prior_name": prior_name,
        "image_shape": [int(s) for s in image_shape],
        "dataset": dataset,
        "image_ids": [str(i) for i in image_ids],
        "seed": int(seed),
        "grid": [int(t) for t in grid],
        "noise": "operators.image_generators(seed, ids, 'reference/t<t>')",
    }


def _sha(spec: dict[str, Any]) -> str:
    from bench.pipeline.units import canonical_json

    return hashlib.sha256(canonical_json(spec).encode()).hexdigest()


def reference_path(root: str | Path, spec: dict[str, Any]) -> Path:
    """`<root>/reference/<first 16 hex characters of the spec's SHA-256>.parquet`."""
    return Path(root) / FOLDER / f"{_sha(spec)[:16]}.parquet"


def compute_reference(
    prior: Any, images: Any, image_ids: list[str], grid: list[int], seed: int, batch_size: int
) -> tuple[list[float], list[tuple[str, int]]]:
    """Excess kurtosis of ε̂(x_t, t) for every (image, t) of `image_ids` × `grid`: (values, (image id, t) pairs).

    images: (N, C, H, W) clean images on the prior's device, the [-1, 1] scale. x_t = √ᾱ_t x + √(1 − ᾱ_t) ε,
    ε from the (image, t) pair's own generator; the pairs go through the network `batch_size` at a time, so
    the pass costs ⌈N · len(grid) / batch_size⌉ network calls (`prior.stats.nfe` counts them).
    """
    import torch

    import operators
    from bench.pipeline.evaluate import fisher_kurtosis

    device = prior.device
    pairs = [(b, int(t)) for t in grid for b in range(len(image_ids))]
    values: list[float] = []
    shape = tuple(images.shape[1:])
    for start in range(0, len(pairs), max(1, int(batch_size))):
        chunk = pairs[start : start + max(1, int(batch_size))]
        generators = [operators.image_generators(seed, [image_ids[b]], f"reference/t{t}", device)[0] for b, t in chunk]
        eps = operators.randn_per_image(shape, generators, dtype=torch.float32, device=device)
        x = images[[b for b, _ in chunk]].to(device=device, dtype=torch.float32)
        steps = torch.tensor([t for _, t in chunk], dtype=torch.long, device=device)
        alpha_bar = prior.alpha_bar(steps, dtype=torch.float32)
        x_t = alpha_bar.sqrt() * x + (1.0 - alpha_bar).sqrt() * eps
        with torch.no_grad():
            prediction = prior.predict(x_t, steps)
        values += fisher_kurtosis(prediction.eps).cpu().tolist()
    return values, [(image_ids[b], t) for b, t in pairs]


@dataclass
class ReferenceResult:
    path: Path
    computed: bool  # False: an earlier run's file was reused
    nfe: int = 0
    seconds: float = 0.0
    images: int = 0
    timesteps: int = 0


def _write(path: Path, spec: dict[str, Any], rows: dict[str, list[Any]]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from bench.files import atomic_write_bytes

    table = pa.table(rows).replace_schema_metadata({_METADATA_KEY: json.dumps(spec).encode()})
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def _readable(path: Path) -> bool:
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path).metadata.num_rows > 0
    except Exception:  # noqa: BLE001 - a damaged file is computed again and replaced
        return False


def reference_pass(context: Any, units: list[Any]) -> ReferenceResult | None:
    """The run's reference, computed once per spec (see the module docstring); None when the run needs none
    (`uncond` runs, no traces, the switch is off) or has no readable image. Prints one line."""
    import torch

    settings = context.settings
    if not enabled() or "uncond" in settings.solvers:
        return None
    keys = {unit.key for unit in units}
    traces = context.store.traces()
    traces = traces[traces["key"].isin(keys)] if not traces.empty else traces
    if traces.empty:
        return None
    solver_timesteps = {str(s): set(map(int, ts)) for s, ts in traces.groupby("solver")["t"].agg(set).items()}
    prior = context.prior
    linspace = prior.timesteps(min(GRID_STEPS, prior.num_timesteps), "linspace")
    grid = reference_grid(prior.num_timesteps, linspace, solver_timesteps)
    images, ids = [], []
    for image_id in context.dataset.ids:
        try:
            images.append(context.dataset[context.index_of[image_id]][1])
            ids.append(image_id)
        except Exception:  # noqa: BLE001 - an unreadable image failed its units already; the rest still count
            continue
    if not ids:
        return None
    spec = reference_spec(
        prior_spec=prior.spec(),
        prior_name=settings.prior,
        image_shape=prior.image_shape,
        dataset=context.dataset.name,
        image_ids=ids,
        seed=settings.seed,
        grid=grid,
    )
    path = reference_path(settings.out, spec)
    if path.is_file() and _readable(path):
        print(f"reference: reused {path} ({len(ids)} images x {len(grid)} timesteps)", file=sys.stderr)
        return ReferenceResult(path, computed=False, images=len(ids), timesteps=len(grid))
    prior.reset_stats()
    began = time.perf_counter()
    clean = torch.stack(images).to(prior.device)
    values, pairs = compute_reference(prior, clean, ids, grid, settings.seed, settings.batch_size)
    seconds = time.perf_counter() - began
    nfe = int(prior.stats.nfe)
    rows = {
        "prior": [settings.prior] * len(pairs),
        "dataset": [context.dataset.name] * len(pairs),
        "image_id": [image_id for image_id, _ in pairs],
        "seed": [int(settings.seed)] * len(pairs),
        "t": [t for _, t in pairs],
        "kurtosis": values,
        "spec": [_sha(spec)] * len(pairs),
    }
    context.store.check_in_place()
    _write(path, spec, rows)
    print(
        f"reference: the prior's ε̂ on the {len(ids)} clean images forward-noised at {len(grid)} timesteps "
        f"({nfe} network calls, {seconds:.1f} s) -> {path}",
        file=sys.stderr,
    )
    return ReferenceResult(path, computed=True, nfe=nfe, seconds=seconds, images=len(ids), timesteps=len(grid))


def run_reference_pass(context: Any, units: list[Any]) -> ReferenceResult | None:
    """`reference_pass`, whose failure is a warning: the run's results stand without the reference."""
    try:
        return reference_pass(context, units)
    except Exception as error:  # noqa: BLE001 - the figure then says it has no reference
        print(f"warning: no kurtosis reference computed: {type(error).__name__}: {error}", file=sys.stderr)
        return None


def read_references(root: str | Path) -> Any:
    """Every reference row under `<root>/reference/` (columns `COLUMNS`), one per (prior, dataset, image, seed,
    t): files of different grids agree where they overlap. Empty (with the columns) when there is none;
    unreadable files are skipped. Imports pandas and pyarrow only."""
    import pandas as pd
    import pyarrow.parquet as pq

    folder = Path(root) / FOLDER
    frames = []
    if folder.is_dir():
        for path in sorted(folder.glob("*.parquet")):
            if path.name.startswith("."):
                continue
            try:
                frame = pq.read_table(path).to_pandas()
            except Exception:  # noqa: BLE001 - a damaged file is left out; the next run replaces it
                continue
            if set(COLUMNS) <= set(frame.columns):
                frames.append(frame[list(COLUMNS)])
    if not frames:
        return pd.DataFrame(columns=list(COLUMNS))
    rows = pd.concat(frames, ignore_index=True)
    return rows.drop_duplicates(["prior", "dataset", "image_id", "seed", "t"], keep="last").reset_index(drop=True)
