"""`python -m bench score`: fill in the metrics a run could not compute, from the images it saved.

A unit scored without one of its metrics (its weights were missing on that node, or the metric was added
with `--metrics` after the unit was done) keeps its reconstruction PNG. This module scores such units
again from images/ without solving anything, and writes each changed row as a new part (its traces are
carried over under the same part name, so nothing the report joins on is lost). FID/KID sets whose scoring
failed are computed again from the PNGs too.

Scores filled in here are computed on the saved 8-bit images, where the run scores the float estimate: the
difference is the PNG's rounding (below 0.01 dB PSNR, about 1e-4 in LPIPS). Each such row names the metrics
in its column `metrics_from_png`. Consistency needs the measurement, which is not saved: the run always
scores it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.pipeline.store import ResultStore, failed_rows, latest, next_attempts, row_image_paths

__all__ = ["RescoreResult", "rescore"]


@dataclass
class RescoreResult:
    units: int  # unit rows rewritten with new scores
    scores: int  # scores filled in
    sets: int  # FID/KID sets computed again
    left: list[str]  # what could not be filled, one line each


def _split(text: Any) -> list[str]:
    return [part for part in str(text or "").split(",") if part]


# What a unit row written before the `metrics` column existed was scored with.
_LEGACY_METRICS = "psnr,ssim,lpips,consistency"


def _tried(row: Any) -> list[str]:
    """The per-image metrics the row's run asked for (rows from before the `metrics` column: the fixed set)."""
    asked = row.get("metrics")
    return _split(asked if isinstance(asked, str) else _LEGACY_METRICS)


def _wanted(row: Any, selection: Sequence[str]) -> list[str]:
    """The per-image metrics this ok row lacks: asked for now but never tried, or tried without weights.

    A metric the row's run asked for and left NaN is not defined there (images below its `min_size`)."""
    from bench import metrics

    tried = _tried(row)
    lacking = {part.partition(":")[0].strip() for part in str(row.get("metrics_missing") or "").split(";")}
    wanted = []
    for name in dict.fromkeys([*tried, *selection]):
        spec = metrics.spec(name)
        if spec.scope != "image" or spec.uses_measurement:
            continue
        if name not in tried or name in lacking:
            wanted.append(name)
    return wanted


def _load(path: Path) -> Any:
    from PIL import Image

    from bench.data import pil_to_signed, read_image

    with Image.open(path) as probe:
        channels = 1 if probe.mode in ("L", "I;16", "1") else 3
    return pil_to_signed(read_image(path, channels)).unsqueeze(0)


def rescore(out: str | Path, selection: Sequence[str] = (), device: str = "cpu") -> RescoreResult:
    """Score what is missing in the run folder `out`; `selection`: metrics to add to every ok unit."""
    import pandas as pd

    from bench import metrics
    from bench.weights import WeightsError

    store = ResultStore(out)
    for name in selection:
        metrics.spec(name)
    raw = store.raw_units()
    units = latest(raw, "key")
    attempts = next_attempts(raw, "key")
    updated, left, filled = [], [], 0
    if not units.empty:
        for row in units[units["status"] == "ok"].to_dict(orient="records"):
            wanted = _wanted(row, selection)
            if not wanted:
                continue
            estimate_path, reference_path, _ = row_image_paths(Path(out), row)
            if not (estimate_path.is_file() and reference_path.is_file()):
                left.append(f"{row['solver']}/{row['task']}/{row['image_id']}: no saved image ({estimate_path})")
                continue
            x_hat, x = _load(estimate_path).to(device), _load(reference_path).to(device)
            done, still_missing, undefined = [], [], []
            for name in wanted:
                spec = metrics.spec(name)
                if min(x.shape[-2:]) < spec.min_size:
                    undefined.append(name)  # tried: NaN is its value at this size
                    continue
                try:
                    row[spec.column] = float(spec.fn(x_hat, x)[0])
                    done.append(name)
                except WeightsError as error:
                    still_missing.append(f"{name}: {str(error).splitlines()[0]}")
            if not done and not undefined:
                left.extend(f"{row['solver']}/{row['task']}/{row['image_id']}: {why}" for why in still_missing)
                continue
            filled += len(done)
            row["attempt"] = int(attempts.get(row["key"], 2))  # the rescored row must win over the scored one
            row["metrics"] = ",".join(dict.fromkeys([*_tried(row), *done, *undefined]))
            row["metrics_from_png"] = ",".join(dict.fromkeys([*_split(row.get("metrics_from_png")), *done]))
            row["metrics_missing"] = "; ".join(still_missing)
            updated.append(row)
    if updated:
        _write(store, pd.DataFrame(updated), units, superseded=len(raw) > len(units))
    sets = _rescore_sets(store, device)
    return RescoreResult(units=len(updated), scores=filled, sets=sets, left=left)


def _write(store: ResultStore, rows: Any, units: Any, superseded: bool) -> None:
    """Commit the changed rows as a new part, after their traces re-written under the same part name
    (`bench.pipeline.store` joins a unit row to its traces by key and part); `units`: the latest rows, already read."""
    traces = store.traces(units, superseded=superseded)
    stem = store.new_stem()
    if not traces.empty:
        part_of = dict(zip(rows["key"], rows["part"].astype(str), strict=True))
        same = [part_of.get(key) == str(part) for key, part in zip(traces["key"], traces["part"], strict=True)]
        carried = traces[same]
        if not carried.empty:
            store.write_part("traces", carried.drop(columns="part").to_dict(orient="records"), stem=stem)
    store.write_part("units", rows.drop(columns="part").to_dict(orient="records"), stem=stem)


def _set_members(units: Any, row: dict[str, Any]) -> Any:
    """The unit rows of one set: those whose sorted keys hash to its set_key (one config of the solver)."""
    import hashlib

    candidates = units[
        (units["solver"] == row["solver"])
        & (units["task"] == row["task"])
        & (units["sigma"] == row["sigma"])
        & (units["seed"] == row["seed"])
    ]
    # every field a unit key holds besides (solver, task, σ, seed, image): a set is one value of each
    fields = ("solver_version", "solver_config", "solver_weights", "prior", "dataset", "noise", "best_of")
    identity = [f for f in fields if f in units]
    for _, group in candidates.groupby(identity, sort=False, dropna=False):
        if hashlib.sha256("".join(sorted(group["key"])).encode()).hexdigest() == row["set_key"]:
            return group
    return None


def _rescore_sets(store: ResultStore, device: str) -> int:
    """FID/KID of the sets whose scoring failed (e.g. no Inception weights), from the saved PNGs."""
    import torch

    from bench.metrics import inception

    written = store.read("sets")
    if written.empty:
        return 0
    sets, attempts = latest(written, "set_key"), next_attempts(written, "set_key")
    failed = sets[failed_rows(sets)]
    if failed.empty:
        return 0
    units = store.units()
    rows = []
    for row in failed.to_dict(orient="records"):
        members = _set_members(units, row)
        if members is None:
            continue
        paths, references = [], []
        for unit in members[members["status"] == "ok"].to_dict(orient="records"):
            estimate, reference, _ = row_image_paths(store.root, unit)
            paths.append(estimate)
            references.append(reference)
        if len(paths) != row["n_images"] or not all(p.is_file() for p in [*paths, *references]):
            continue
        estimates = torch.cat([_load(p) for p in paths])
        clean = torch.cat([_load(p) for p in references])
        scores = inception.fid_kid(estimates, clean, device=device, seed=int(row["seed"]))
        note = "; ".join(part for part in str(row["note"]).split("; ") if not part.startswith("failed:"))
        row.update(fid=scores.fid, kid=scores.kid, kid_std=scores.kid_std, note=note or None)
        row["attempt"] = attempts.get(row["set_key"], 2)
        rows.append({k: v for k, v in row.items() if k != "part"})
    store.write_part("sets", rows)
    return len(rows)
