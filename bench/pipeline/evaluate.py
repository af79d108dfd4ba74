"""The computation of a run: one batch of work units solved, scored, saved as PNGs and traced, and the
FID/KID of every finished (solver, task, σ) set.

A batch is consecutive units sharing (solver, task, σ). `evaluate_batch` measures the batch's images, calls
the solver's `reconstruct` with a callback that records each step's trace, times it (CUDA synchronised, trace
bookkeeping taken out), measures its peak memory (`bench.memory`), and returns one unit row per image
(`bench.pipeline.store.UNIT_COLUMNS`) and the trace rows; any exception becomes failed rows and the run goes on.

The measurement is drawn by the run's noise model (`--noise`, `operators.noise`). With `--best-of N` the solver
runs N times on the same y with independent draws (`solver_generators`) and each image keeps the run of least
‖A(x̂) − y‖ (`best_of`); its row names that run (`best_repeat`) and its traces are that run's only, while the
row's time, network calls and memory are those of all N runs: the cost of the result.
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.pipeline.store import SET_COLUMNS, TRACE_COLUMNS, UNIT_COLUMNS, new_row, unit_image_paths

if TYPE_CHECKING:
    from bench.pipeline.settings import RunSettings

__all__ = [
    "DIVERGENCE_BOUND",
    "SET_METRIC_MIN_IMAGES",
    "divergence",
    "RunContext",
    "best_of",
    "evaluate_batch",
    "fisher_kurtosis",
    "selection_residual",
    "set_metrics",
    "solver_generators",
]

# FID/KID need a few images per set (the KID subsets hold n // 2 of them; see bench.metrics.fid_kid).
SET_METRIC_MIN_IMAGES = 4


@dataclass
class RunContext:
    """What every batch needs, built once after all checks (`bench.pipeline.run`)."""

    settings: RunSettings
    prior: Any
    dataset: Any
    index_of: dict[str, int]
    solvers: dict[str, Any]
    solver_configs: dict[str, str]  # each solver's resolved config as canonical JSON, as the rows store it
    solver_weights: dict[str, str]  # each solver's weight hashes as canonical JSON ("" for none): `solver_weights`
    ops: dict[str, Any]
    device: Any
    store: Any
    versions: dict[str, str]
    metrics: tuple[str, ...] = ()  # the selected metrics (`bench.metrics.select`); empty = the defaults
    attempts: dict[str, int] = field(default_factory=dict)  # key -> its next row's `attempt` (bench.pipeline.store)
    warm: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        if not self.metrics:
            from bench.metrics import select

            self.metrics = select(None)


def _accumulation_dtype(device: Any) -> Any:
    """float64 where the device computes it (CPU, CUDA), else float32 (`bench.priors.schedule.widest_float`)."""
    from bench.priors.schedule import widest_float

    return widest_float(device)


def fisher_kurtosis(eps: Any) -> Any:
    """Fisher excess kurtosis m4 / m2² − 3 of each image over all its elements: (B, ...) -> (B,) on eps' device.

    The biased moment estimator (scipy.stats.kurtosis(fisher=True, bias=True)); 0 for Gaussian noise. Computed
    in `_accumulation_dtype` (float64, or float32 where the device lacks float64); the two-pass form (centre
    first, then take powers) keeps float32 within ~1e-5 of float64, where m4 − 4 m3 μ + ... would cancel.
    """
    flat = eps.detach().reshape(eps.shape[0], -1)
    flat = flat.to(_accumulation_dtype(flat.device))
    centred = flat - flat.mean(dim=1, keepdim=True)
    m2 = centred.pow(2).mean(dim=1)
    m4 = centred.pow(4).mean(dim=1)
    return m4 / m2.pow(2) - 3.0


# A solver's raw estimate (before the clamp to [-1, 1]) beyond this magnitude anywhere has diverged: good
# estimates overshoot the image range by a fraction of it (DDNM's range-space correction, a noisy RED-diff
# step); 10 is 4.5 image ranges outside [-1, 1], which no converging solver reaches.
DIVERGENCE_BOUND = 10.0


def divergence(raw: Any) -> list[str | None]:
    """Per image of a raw (B, C, H, W) estimate: why it diverged (non-finite values, or values beyond
    ±DIVERGENCE_BOUND, with the range found), or None."""
    import torch

    flat = raw.reshape(raw.shape[0], -1).float()
    reasons: list[str | None] = []
    for values in flat:
        finite = torch.isfinite(values)
        if not bool(finite.all()):
            reasons.append(f"the estimate holds NaN or Inf values ({int((~finite).sum())} of {values.numel()})")
            continue
        low, high = float(values.min()), float(values.max())
        if max(-low, high) > DIVERGENCE_BOUND:
            reasons.append(
                f"the raw estimate spans [{low:.4g}, {high:.4g}] before the clamp to [-1, 1], beyond "
                f"±{DIVERGENCE_BOUND:g} (bench.pipeline.evaluate.DIVERGENCE_BOUND): the solver diverged"
            )
            continue
        reasons.append(None)
    return reasons


def solver_generators(seed: int, image_ids: list[str], repeat: int, device: Any) -> list[Any]:
    """One generator per image for run `repeat` of a unit: repeat 0 draws from the "solver" stream, as every run
    without --best-of does, so best-of-1 is the plain run and repeat 0 of best-of-N equals it; repeat r > 0 from
    "solver/repeat<r>" (`operators.seeded_generator`: independent of the other repeats and of the batch)."""
    import operators

    stream = "solver" if repeat == 0 else f"solver/repeat{repeat}"
    return operators.image_generators(seed, image_ids, stream, device=device)


def selection_residual(op: Any, y: Any, raw: Any) -> Any:
    """(B,) ‖A(clamp(x̂, −1, 1)) − y‖ per image, the residual of the image a row reports (on the [-1, 1] scale, in
    `_accumulation_dtype`); +inf where the raw estimate diverged (`divergence`), so such a run is never kept
    while another one finished. Uses the measurement only, never the clean image."""
    import torch

    with torch.no_grad():
        safe = torch.nan_to_num(raw, nan=0.0, posinf=1.0, neginf=-1.0).clamp(-1, 1)
        residual = (op(safe) - y).reshape(raw.shape[0], -1).norm(dim=1).to(_accumulation_dtype(raw.device))
    diverged = torch.tensor([reason is not None for reason in divergence(raw)], device=residual.device)
    return torch.where(diverged | ~torch.isfinite(residual), torch.full_like(residual, math.inf), residual)


def best_of(n: int, solve: Any, op: Any, y: Any) -> tuple[Any, list[int]]:
    """Run `solve(repeat)` for repeat = 0 .. n − 1 and keep, per image, the raw estimate (B, C, H, W) of least
    `selection_residual` (ties: the earlier repeat): (estimate, the repeat kept per image).

    The papers' protocol for phase retrieval (DPS, DAPS: "best of 4 runs"), with the selection made by the
    measurement alone, never by the ground truth. n = 1 is one plain run, with no residual computed."""
    import torch

    best = solve(0)
    chosen = [0] * best.shape[0]
    if n == 1:
        return best, chosen
    best = best.detach()
    least = selection_residual(op, y, best)
    kept = torch.zeros(best.shape[0], dtype=torch.long, device=least.device)
    for repeat in range(1, n):
        raw = solve(repeat).detach()
        residual = selection_residual(op, y, raw)
        better = residual < least
        best = torch.where(better.to(raw.device).view(-1, *([1] * (raw.ndim - 1))), raw, best)
        least = torch.where(better, residual, least)
        kept = torch.where(better, torch.full_like(kept, repeat), kept)
    return best, kept.tolist()


def _read_images(context: RunContext, batch: list[Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """The batch's clean images, each read once: ({image id: (C, H, W) in [-1, 1]}, {image id: why it cannot be
    read}), so that an unreadable image fails its own units only."""
    images, bad = {}, {}
    for unit in batch:
        try:
            images[unit.image_id] = context.dataset[context.index_of[unit.image_id]][1]
        except Exception as error:  # noqa: BLE001 - any unreadable image fails its own units, named
            bad[unit.image_id] = f"{type(error).__name__}: {error}"
    return images, bad


def _is_per_image(name: str) -> bool:
    from bench.metrics import spec

    return spec(name).scope == "image"


def _base_row(context: RunContext, unit: Any) -> dict[str, Any]:
    """A unit's row before it is computed: the schema's defaults with the unit's identity filled in."""
    return new_row(
        UNIT_COLUMNS,
        solver=unit.solver,
        task=unit.task,
        sigma=unit.sigma,
        noise=context.settings.noise,
        best_of=context.settings.best_of,
        prior=context.settings.prior,
        dataset=context.dataset.name,
        image_id=unit.image_id,
        seed=context.settings.seed,
        key=unit.key,
        attempt=context.attempts.get(unit.key, 1),
        device=str(context.device),
        rank=context.store.rank,
        dtype=context.settings.dtype,
        compiled=bool(getattr(context.prior, "compiled", False)),
        solver_version=context.solvers[unit.solver].version,
        solver_config=context.solver_configs[unit.solver],
        solver_weights=context.solver_weights[unit.solver],
        **_image_paths(context, unit),
        metrics=",".join(name for name in context.metrics if _is_per_image(name)),
        **context.versions,
    )


def evaluate_batch(context: RunContext, batch: list[Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Compute one batch: (unit rows, trace rows). Exceptions become failed rows; the run goes on."""
    import torch

    import operators
    from bench.memory import PeakMemory, synchronize
    from bench.metrics.images import score_images

    first = batch[0]
    solver, op = context.solvers[first.solver], context.ops[first.task]
    rows = [_base_row(context, unit) for unit in batch]
    reason = solver.unsupported(op, first.sigma) or solver.noise_unsupported(context.settings.noise, first.sigma)
    if reason:
        for row in rows:
            row.update(status="unsupported", error=reason)
        return rows, []

    images, unreadable = _read_images(context, batch)
    all_rows = rows
    if unreadable:  # a bad image fails its own units only: the rest of the batch is computed without it
        for row in rows:
            if row["image_id"] in unreadable:
                row.update(status="failed", error=unreadable[row["image_id"]])
        kept = [b for b, unit in enumerate(batch) if unit.image_id not in unreadable]
        batch, rows = [batch[b] for b in kept], [rows[b] for b in kept]
        if not batch:
            return all_rows, []

    settings, device, prior = context.settings, context.device, context.prior
    ids = [unit.image_id for unit in batch]
    traces: list[dict[str, Any]] = []
    try:
        clean = torch.stack([images[i] for i in ids]).to(device)
        bound = op.for_images(ids, settings.seed)
        noise = operators.noise_model(settings.noise)
        y = bound.measure(clean, first.sigma, operators.image_generators(settings.seed, ids, "noise"), noise=noise)
        runs: list[list[tuple[int, int, Any, Any]]] = []  # each repeat's steps (`--best-of`; one run without it)
        tracing = [0.0]  # seconds spent in the trace callback, taken out of the solver's wall time

        def record(*, step: int, t: int, x_t: Any, eps: Any, x0: Any) -> None:
            synchronize(device)
            began = time.perf_counter()
            with torch.no_grad():
                residual = (bound(x0.detach()) - y).reshape(len(ids), -1).norm(dim=1)
                runs[-1].append((step, int(t), fisher_kurtosis(eps), residual.to(_accumulation_dtype(device))))
            synchronize(device)
            tracing[0] += time.perf_counter() - began

        def solve(repeat: int) -> Any:
            runs.append([])
            generators = solver_generators(settings.seed, ids, repeat, device)
            sigma = noise.solver_sigma(first.sigma)
            return solver.reconstruct(y, bound, prior, sigma=sigma, generators=generators, callback=record, clamp=False)

        prior.reset_stats()
        solver.reset_network_use()
        synchronize(device)
        with PeakMemory(device) as memory:
            start = time.perf_counter()
            estimate, chosen = best_of(settings.best_of, solve, bound, y)
            synchronize(device)
            wall = time.perf_counter() - start - tracing[0]
        peak = memory.peak
        stats = prior.stats
        own = solver.network_use
        raw = estimate.detach()
        diverged = divergence(raw)  # judged before the clamp, which would hide it
        finite = [reason is None for reason in diverged]
        estimate = raw.clamp(-1, 1)
        safe = torch.nan_to_num(estimate, nan=0.0, posinf=1.0, neginf=-1.0)
        scores, missing = score_images(context.metrics, safe, clean, op=bound, y=y)
        missed = "; ".join(f"{name}: {why}" for name, why in missing.items())
        warmup = first.solver not in context.warm
        context.warm.add(first.solver)
        for b, row in enumerate(rows):
            row.update(
                nfe=int(stats.nfe),
                own_nfe=sum(use.calls for use in own.values()),
                own_networks=",".join(sorted(own)),
                wall_s=wall / len(ids),
                network_s=(stats.forward_seconds + stats.backward_seconds) / len(ids),
                own_network_s=sum(use.seconds for use in own.values()) / len(ids),
                peak_memory_bytes=peak,
                batch_size=len(ids),
                warmup=warmup,
                best_repeat=chosen[b],
            )
            if diverged[b] is not None:
                row.update(status="diverged", error=diverged[b])
                continue
            row.update({name: float(values[b]) for name, values in scores.items()})
            if missed:  # images and the other scores are kept; `bench score` fills these in later
                row["metrics_missing"] = missed
        _save_images(context, batch, clean, bound, y, estimate, finite)
        for repeat, steps in enumerate(runs):  # each image's traces are those of the run it keeps
            if not steps or repeat not in chosen:
                continue
            # one transfer for the whole trajectory rather than one per value
            kurtosis = torch.stack([k for _, _, k, _ in steps]).cpu().tolist()
            residual = torch.stack([r for _, _, _, r in steps]).cpu().tolist()
            for i, (step, t, _, _) in enumerate(steps):
                for b, unit in enumerate(batch):
                    if chosen[b] != repeat:
                        continue
                    traces.append(
                        new_row(
                            TRACE_COLUMNS,
                            key=unit.key,
                            solver=unit.solver,
                            task=unit.task,
                            sigma=unit.sigma,
                            image_id=unit.image_id,
                            seed=settings.seed,
                            step=step,
                            t=t,
                            kurtosis=kurtosis[i][b],
                            residual=residual[i][b],
                        )
                    )
    except Exception as error:  # noqa: BLE001 - any failure of one batch is recorded and the run goes on
        text = f"{type(error).__name__}: {error}"
        for row in rows:
            row.update(status="failed", error=text)
        return all_rows, []
    return all_rows, traces  # `rows` are the readable images' dicts within `all_rows`, updated in place


def _save_images(
    context: RunContext, batch: list[Any], clean: Any, bound: Any, y: Any, estimate: Any, finite: list[bool]
) -> None:
    import operators

    context.store.check_in_place()  # writing into a moved folder's old path would recreate it, half empty
    root = context.settings.out
    shown = bound.pinv(y) if bound.supports(operators.Cap.PINV) else None
    for b, unit in enumerate(batch):
        paths = _image_paths(context, unit)
        if finite[b]:
            _save_png(estimate[b], root / paths["image_path"])
        reference = root / paths["reference_path"]
        if not reference.exists():
            _save_png(clean[b], reference)
        if shown is not None:  # the measurement depends on the seed (noise, masks), the task and the source
            measurement = root / paths["measurement_path"]
            if not measurement.exists():
                _save_png(shown[b], measurement)


def _image_paths(context: RunContext, unit: Any) -> dict[str, str]:
    """The unit's PNGs relative to the run folder (`bench.pipeline.store.unit_image_paths`); no measurement PNG where the
    operator has no A⁺ to show it with."""
    import operators

    paths = unit_image_paths(
        solver=unit.solver,
        task=unit.task,
        sigma=unit.sigma,
        seed=context.settings.seed,
        image_id=unit.image_id,
        prior=context.settings.prior,
        dataset=context.dataset.name,
        solver_version=context.solvers[unit.solver].version,
        solver_config=context.solver_configs[unit.solver],
        noise=context.settings.noise,
        best_of=context.settings.best_of,
        solver_weights=context.solver_weights[unit.solver],
    )
    if not context.ops[unit.task].supports(operators.Cap.PINV):
        paths["measurement_path"] = None
    return paths


def _save_png(image: Any, path: Path) -> None:
    """Save one image (C, H, W) in [-1, 1] as an 8-bit PNG, atomically."""
    import io

    import numpy as np
    import torch
    from PIL import Image

    from bench.files import atomic_write_bytes
    from bench.metrics.images import to_unit

    pixels = (to_unit(image.detach().float().cpu()) * 255.0).round().to(torch.uint8)
    array = pixels.permute(1, 2, 0).numpy()
    picture = Image.fromarray(array[..., 0] if array.shape[2] == 1 else np.ascontiguousarray(array))
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    atomic_write_bytes(path, buffer.getvalue())


def set_metrics(context: RunContext, units: list[Any]) -> None:
    """FID/KID of every complete (solver, task, σ) group whose set of keys has no row yet (or all, if forced)."""
    import torch

    from bench.data import pil_to_signed, read_image
    from bench.metrics import inception

    if not {"fid", "kid"} & set(context.metrics):
        return
    from bench.pipeline.store import failed_rows, latest, next_attempts

    statuses = context.store.statuses()
    written = context.store.read("sets")
    attempts = next_attempts(written, "set_key")
    known = set()
    if not context.settings.force and not written.empty:
        sets = latest(written, "set_key")  # a set whose scoring failed (no Inception weights, say) is tried again
        known = set(sets.loc[~failed_rows(sets), "set_key"])
    groups: dict[tuple[str, str, float], list[Any]] = {}
    for unit in units:
        groups.setdefault(unit.group, []).append(unit)
    rows = []
    reference_features: dict[tuple[str, ...], Any] = {}
    for (solver, task, sigma), members in groups.items():
        states = [statuses.get(unit.key) for unit in members]
        if any(state not in ("ok", "diverged", "unsupported") for state in states) or "unsupported" in states:
            continue  # incomplete (failed or missing units), or a pair that never runs
        set_key = hashlib.sha256("".join(sorted(unit.key for unit in members)).encode()).hexdigest()
        if set_key in known:
            continue
        ok = [unit for unit, state in zip(members, states, strict=True) if state == "ok"]
        row = new_row(
            SET_COLUMNS,
            solver=solver,
            task=task,
            sigma=sigma,
            prior=context.settings.prior,
            dataset=context.dataset.name,
            seed=context.settings.seed,
            set_key=set_key,
            attempt=attempts.get(set_key, 1),
            n_images=len(ok),
            n_diverged=len(members) - len(ok),
            **context.versions,
        )
        if len(ok) < len(members):
            row["note"] = f"{len(members) - len(ok)} diverged images left out"
        if len(ok) < SET_METRIC_MIN_IMAGES:
            short = f"FID/KID need at least {SET_METRIC_MIN_IMAGES} finished images, this set has {len(ok)}"
            row["note"] = "; ".join(filter(None, [short, row["note"]]))
        else:
            root = context.settings.out
            channels = context.dataset.channels

            def load(path: Path, channels: int = channels) -> Any:
                return pil_to_signed(read_image(path, channels))

            ids = tuple(u.image_id for u in ok)
            paths = [_image_paths(context, u) for u in ok]
            try:
                estimates = torch.stack([load(root / p["image_path"]) for p in paths])
                if ids not in reference_features:  # the same clean set serves every group: one Inception pass
                    references = torch.stack([load(root / p["reference_path"]) for p in paths])
                    reference_features[ids] = inception.inception_features(references, context.device)
                features = inception.inception_features(estimates, context.device)
                scores = inception.fid_kid(features, reference_features[ids], seed=context.settings.seed)
                row.update(fid=scores.fid, kid=scores.kid, kid_std=scores.kid_std)
            except Exception as error:  # noqa: BLE001 - a set metric failure must not lose the run's results
                row["note"] = f"failed: {type(error).__name__}: {error}"
        rows.append(row)
    context.store.write_part("sets", rows)
