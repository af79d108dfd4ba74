"""`python -m bench run`: the solver x task x σ x image matrix against one prior, resumable.

Each (solver, task, σ, image) is a work unit (`bench.units`) whose row goes to the parquet store of the run
folder (`bench.store`): metrics, timing, network use, memory, versions and status. Units are computed in
batches of consecutive units sharing (solver, task, σ); a batch is committed as one part file, so a killed
run loses at most the batch in flight and a re-run skips what is done.

Randomness: image b's measurement noise comes from `image_generators(seed, ids, "noise")`, its solver draws
from the "solver" stream and its operator (inpainting mask) from `op.for_images(ids, seed)`: a unit's result
does not depend on its batch, its rank or the units before it.

Unit rows (table `units`): the key fields solver, task, sigma, prior, dataset, image_id, seed, key; status
(ok, unsupported, failed, diverged) and error (the reason or the exception text); psnr, ssim, lpips (NaN below
32x32 pixels, which LPIPS' AlexNet cannot take) and consistency (`bench.metrics`); nfe (the prior network's
calls, a batched call counted once); own_nfe, own_networks and own_network_s (the calls, names and forward
seconds per image of the solver's own networks: DDC's φ, PnP-ADMM's DnCNN, CDDB's bridge); wall_s and network_s
(the batch's solver time and time inside the prior's network, forward and backward, divided by batch_size; CUDA
is synchronised around them; metrics and trace bookkeeping are not counted); peak_memory_bytes (CUDA max_memory_allocated during the solve, or on CPU the solve's peak of malloc'd
memory in use above its start, sampled every 2 ms); warmup (True for a process' first batch of a solver, whose time includes one-off start-up costs);
device, rank (the torchrun process that computed it), dtype, solver_version, solver_config, torch_version, bench_version, git_commit ("+dirty" when the
tracked files differ from the commit).

Also written: reconstructions, clean references and measurements (shown as A⁺y) as PNG under
images/<solver>/<task>/<σ>/<image_id>.png, images/reference/ and images/measurement/<task>/<σ>/; per-step
traces (table `traces`: key, step, t, kurtosis, residual) of the Fisher excess kurtosis of ε̂ over all of an
image's elements (0 for Gaussian noise) and the measurement residual ‖A(x̂₀) − y‖ of the step's Tweedie
estimate; and FID/KID (table `sets`) of each (solver, task, σ) set once its units are all done, computed
from the saved PNGs against the references (NaN with a note below 4 images).

Under torchrun (environment RANK, WORLD_SIZE) unit i belongs to rank i % WORLD_SIZE; each rank writes its own
parts and rank 0 computes the set metrics and prints the summary once all ranks are finished. The end of a
run merges the parts into one per table (`ResultStore.consolidate`), so later reads stay fast.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["RunError", "RunSettings", "add_run_parser", "fisher_kurtosis", "format_summary", "run", "summarize"]

DEFAULT_PRIOR = "natural64"
DEFAULT_DATASET = "skimage-natural"
DEFAULT_SOLVERS = "dps,ddnm"
DEFAULT_SIGMA = "0.05"  # the DDC paper's main noise level, on the [0, 1] pixel scale
DEFAULT_BATCH_SIZE = 8  # the default dataset's 5 photos in one call: on a CPU a batch costs little more than 1
# LPIPS' AlexNet trunk pools its input down five times: smaller images leave nothing to compare.
LPIPS_MIN_SIZE = 32
# FID/KID need a few images per set (the KID subsets hold n // 2 of them; see bench.metrics.fid_kid).
SET_METRIC_MIN_IMAGES = 4
# Keys the --config file may hold; the command line overrides each of them.
_CONFIG_KEYS = (
    "solvers",
    "tasks",
    "sigma",
    "prior",
    "dataset",
    "n_images",
    "batch_size",
    "seed",
    "set",
    "out",
    "name",
    "device",
    "dtype",
    "force",
    "budget",
)
# --budget: "paper" runs every solver at its paper's defaults; "quick" lowers the few expensive ones (each
# solver's `quick` options, e.g. DPS 1000 -> 100 steps); "auto" is quick on a CPU and paper on a GPU.
BUDGETS = ("auto", "paper", "quick")


class RunError(ValueError):
    """A run cannot start: the message names the problem and the fix."""


# ----- settings --------------------------------------------------------------------------------------------


@dataclass
class RunSettings:
    """Everything a run needs, as given by the user (names, not objects)."""

    solvers: list[str]
    tasks: list[str]
    sigmas: list[float]
    out: Path
    prior: str = DEFAULT_PRIOR
    dataset: str = DEFAULT_DATASET
    n_images: int | None = None
    batch_size: int = DEFAULT_BATCH_SIZE
    seed: int = 0
    overrides: dict[str, dict[str, str]] = field(default_factory=dict)
    device: str = "auto"
    dtype: str = "fp32"
    force: bool = False
    progress: bool = True
    budget: str = "auto"


def _parse_sigmas(value: Any) -> list[float]:
    items = value if isinstance(value, list | tuple) else str(value).split(",")
    sigmas: list[float] = []
    for item in items:
        text = str(item).strip()
        if not text:
            continue
        try:
            sigma = float(text)
        except ValueError:
            raise RunError(f"--sigma expects numbers separated by commas (e.g. 0,0.05), got {text!r}") from None
        if not math.isfinite(sigma) or sigma < 0:
            raise RunError(f"noise level sigma must be a finite number >= 0 ([0, 1] pixel scale), got {text}")
        if sigma not in sigmas:
            sigmas.append(sigma)
    if not sigmas:
        raise RunError(f"--sigma names no noise level: {value!r}")
    return sigmas


def _parse_names(value: Any) -> list[str]:
    items = value if isinstance(value, list | tuple) else str(value).split(",")
    return [str(item).strip() for item in items if str(item).strip()]


def _resolve_solvers(value: Any) -> list[str]:
    import solvers

    names = _parse_names(value)
    if names == ["all"]:
        return solvers.available()
    if not names:
        raise RunError(f"--solvers names no solver (available: {', '.join(solvers.available())}, all)")
    for name in names:
        solvers.get(name)  # an unknown name raises, with the closest valid one
    return list(dict.fromkeys(names))


def _read_config(path: str | Path) -> dict[str, Any]:
    """The settings of a TOML (.toml) or YAML (.yaml, .yml) experiment file, checked against _CONFIG_KEYS."""
    path = Path(path)
    if not path.is_file():
        raise RunError(f"config file '{path}' does not exist")
    suffix = path.suffix.lower()
    if suffix == ".toml":
        config = _parse_toml(path)
    elif suffix in (".yaml", ".yml"):
        config = _parse_yaml(path)
    else:
        raise RunError(f"config file '{path}' must be TOML (.toml) or YAML (.yaml, .yml)")
    if not isinstance(config, dict):
        raise RunError(f"config file '{path}' must hold a table of settings (key = value), not {type(config).__name__}")
    config = {key.replace("-", "_"): value for key, value in config.items()}
    for key in config:
        if key not in _CONFIG_KEYS:
            from operators import closest

            close = closest(key, _CONFIG_KEYS)
            hint = f"; did you mean '{close}'?" if close else ""
            raise RunError(f"unknown key '{key}' in config file '{path}'{hint} (keys: {', '.join(_CONFIG_KEYS)})")
    return config


def _parse_toml(path: Path) -> Any:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10: the same parser ships as tomli
        try:
            import tomli as tomllib
        except ModuleNotFoundError:
            raise RunError("TOML configs need Python >= 3.11 or the tomli package (`pip install tomli`)") from None
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as error:
        raise RunError(f"config file '{path}' is not valid TOML: {error}") from None


def _parse_yaml(path: Path) -> Any:
    import yaml

    try:
        return yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise RunError(f"config file '{path}' is not valid YAML: {error}") from None


SEED_MAX = 2**63 - 1  # seeds are stored in int64 parquet columns


def _integer(value: Any, name: str, *, minimum: int, maximum: int | None = None) -> int | None:
    """An integer option from the command line or the config file, range-checked; None stays None."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise RunError(f"--{name} (or the config key '{name}') must be an integer, got {value!r}")
    if value < minimum or (maximum is not None and value > maximum):
        bound = f"between {minimum} and {maximum}" if maximum is not None else f">= {minimum}"
        raise RunError(f"--{name} must be {bound}, got {value}")
    return value


def settings_from_args(args: argparse.Namespace) -> RunSettings:
    """Merge the command line over the --config file over the defaults, and check names and numbers."""
    import operators
    import solvers

    config = _read_config(args.config) if args.config else {}

    def pick(name: str, default: Any) -> Any:
        value = getattr(args, name)
        return value if value is not None else config.get(name, default)

    config_sets = config.get("set", [])
    if isinstance(config_sets, str) or not all(isinstance(item, str) for item in config_sets):
        raise RunError(f"config key 'set' must be a list of 'solver.option=value' strings, got {config_sets!r}")
    sets = list(config_sets) + list(args.set or [])
    overrides = solvers.parse_overrides(sets)
    solver_names = _resolve_solvers(pick("solvers", DEFAULT_SOLVERS))
    for name in overrides:
        if name not in solver_names:
            raise RunError(f"--set gives options for solver '{name}', which this run does not include")
    tasks_value = pick("tasks", "all")
    tasks = operators.resolve_tasks(",".join(_parse_names(tasks_value)))
    n_images = _integer(pick("n_images", None), "n-images", minimum=1)
    batch_size = _integer(pick("batch_size", DEFAULT_BATCH_SIZE), "batch-size", minimum=1)
    seed = _integer(pick("seed", 0), "seed", minimum=0, maximum=SEED_MAX)
    force = config.get("force", False) if not args.force else True
    if not isinstance(force, bool):
        raise RunError(f"config key 'force' must be true or false, got {force!r}")
    out = pick("out", None)
    if out is None:
        name = pick("name", None) or f"run-{datetime.date.today():%Y%m%d}"
        out = Path("results") / name
    return RunSettings(
        solvers=solver_names,
        tasks=tasks,
        sigmas=_parse_sigmas(pick("sigma", DEFAULT_SIGMA)),
        out=Path(out),
        prior=str(pick("prior", DEFAULT_PRIOR)),
        dataset=str(pick("dataset", DEFAULT_DATASET)),
        n_images=n_images,
        batch_size=batch_size,
        seed=seed,
        overrides=overrides,
        device=str(pick("device", "auto")),
        dtype=str(pick("dtype", "fp32")),
        force=force,
        progress=not args.no_progress,
        budget=_check_budget(pick("budget", "auto")),
    )


def _check_budget(value: Any) -> str:
    budget = str(value)
    if budget not in BUDGETS:
        raise RunError(f"--budget must be one of {', '.join(BUDGETS)}, got {budget!r}")
    return budget


def budget_overrides(settings: RunSettings, device_kind: str) -> dict[str, dict[str, str]]:
    """Per-solver options: the budget's (for "quick", each solver's `quick`) under the user's --set options."""
    import solvers

    budget = settings.budget
    if budget == "auto":
        budget = "quick" if device_kind == "cpu" else "paper"
    merged: dict[str, dict[str, str]] = {}
    for name in settings.solvers:
        lowered = solvers.get(name).quick if budget == "quick" else {}
        merged[name] = {**{key: str(value) for key, value in lowered.items()}, **settings.overrides.get(name, {})}
    return merged


def _check_writable(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise RunError(
            f"output folder '{folder}' is not writable ({error.strerror}); choose another with --out"
        ) from None


# ----- small pieces ----------------------------------------------------------------------------------------


def fisher_kurtosis(eps: Any) -> Any:
    """Fisher excess kurtosis m4 / m2² − 3 of each image over all its elements: (B, ...) -> (B,) float64.

    The biased moment estimator (scipy.stats.kurtosis(fisher=True, bias=True)); 0 for Gaussian noise.
    """
    flat = eps.detach().reshape(eps.shape[0], -1).double()
    centred = flat - flat.mean(dim=1, keepdim=True)
    m2 = centred.pow(2).mean(dim=1)
    m4 = centred.pow(4).mean(dim=1)
    return m4 / m2.pow(2) - 3.0


def sigma_label(sigma: float) -> str:
    """σ as a folder name: '0', '0.05'."""
    return f"{sigma:g}"


def _save_png(image: Any, path: Path) -> None:
    """Save one image (C, H, W) in [-1, 1] as an 8-bit PNG, atomically."""
    import io

    import numpy as np
    import torch
    from PIL import Image

    from bench.metrics import to_unit
    from bench.store import atomic_write_bytes

    pixels = (to_unit(image.detach().float().cpu()) * 255.0).round().to(torch.uint8)
    array = pixels.permute(1, 2, 0).numpy()
    picture = Image.fromarray(array[..., 0] if array.shape[2] == 1 else np.ascontiguousarray(array))
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    atomic_write_bytes(path, buffer.getvalue())


def _git_commit() -> str:
    import subprocess

    root = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{commit}+dirty" if dirty else commit


def _peak_rss_bytes() -> int:
    import resource

    # ru_maxrss is in kilobytes on Linux (bytes on macOS).
    scale = 1 if sys.platform == "darwin" else 1024
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * scale


@functools.cache
def _heap_reader():
    """A function giving the bytes glibc's malloc has handed out and not taken back (mallinfo2: uordblks +
    hblkhd), or None where glibc ≥ 2.33 is not there."""
    import ctypes
    import ctypes.util

    class MallInfo2(ctypes.Structure):
        names = ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks")
        _fields_ = [(name, ctypes.c_size_t) for name in (*names, "keepcost")]

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallinfo2 = libc.mallinfo2
    except (OSError, AttributeError):
        return None
    mallinfo2.restype = MallInfo2

    def in_use() -> int:
        info = mallinfo2()
        return int(info.uordblks + info.hblkhd)

    return in_use


class _HeapPeak:
    """The peak of the heap in use above its level at the start, sampled every `interval` seconds by a thread
    while the block runs: this block's own CPU memory, tensors included (torch's CPU allocator takes its memory
    from malloc). The process' maximum RSS (ru_maxrss) only grows and freed memory stays resident, so a warm
    process read 0 from it; where mallinfo2 is missing, that growth is the fallback (a lower bound)."""

    def __init__(self, interval: float = 0.002) -> None:
        self.interval = interval
        self.peak = 0

    def __enter__(self) -> _HeapPeak:
        import threading

        self._in_use = _heap_reader()
        self.start_max = _peak_rss_bytes()
        self.start = self._in_use() if self._in_use else 0
        self.highest = self.start
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True) if self._in_use else None
        if self.thread is not None:
            self.thread.start()
        return self

    def _sample(self) -> None:
        while not self.done.wait(self.interval):
            self.highest = max(self.highest, self._in_use())

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        if self.thread is None:
            self.peak = max(0, _peak_rss_bytes() - self.start_max)
            return
        self.thread.join()
        self.peak = max(0, max(self.highest, self._in_use()) - self.start)


class _Distributed:
    """Rank and world size from torchrun's environment; a gloo group (for the final barrier) only when there are several."""

    def __init__(self) -> None:
        self.rank = int(os.environ.get("RANK", "0"))
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.group = False
        if self.world_size > 1:
            import torch.distributed as dist

            if not dist.is_initialized():
                # The group only carries the final barrier, so gloo serves CPU and GPU runs alike; ranks may
                # finish hours apart (unsupported pairs cost nothing), hence the long timeout.
                dist.init_process_group("gloo", timeout=datetime.timedelta(days=7))
                self.group = True

    def barrier(self) -> None:
        if self.world_size > 1:
            import torch.distributed as dist

            dist.barrier()

    def close(self) -> None:
        if self.group:
            import torch.distributed as dist

            dist.destroy_process_group()


# ----- the run ---------------------------------------------------------------------------------------------


@dataclass
class _Context:
    """What every batch needs, built once after all checks."""

    settings: RunSettings
    prior: Any
    dataset: Any
    index_of: dict[str, int]
    solvers: dict[str, Any]
    solver_configs: dict[str, str]  # each solver's resolved config as canonical JSON, as the rows store it
    ops: dict[str, Any]
    device: Any
    store: Any
    versions: dict[str, str]
    warm: set[str] = field(default_factory=set)


def _prepare(settings: RunSettings, rank: int) -> tuple[_Context, list[Any]]:
    import torch

    import bench
    import operators
    import solvers
    from bench.data import load_dataset
    from bench.priors import load_prior
    from bench.store import ResultStore
    from bench.units import enumerate_units

    device = settings.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and "LOCAL_RANK" in os.environ:
        device = f"cuda:{int(os.environ['LOCAL_RANK'])}"  # one GPU per torchrun process
    try:
        kind = torch.device(device).type
    except (RuntimeError, ValueError):
        raise RunError(f"unknown device {device!r}; use cpu, cuda, cuda:<index> or auto") from None
    if kind == "cuda" and not torch.cuda.is_available():
        raise RunError(f"--device {device} asked for, but CUDA is not available here; use --device cpu")
    options = budget_overrides(settings, kind)
    built = {name: solvers.build(name, **options[name]) for name in settings.solvers}
    lowered = {name: options[name] for name in settings.solvers if options[name] != settings.overrides.get(name, {})}
    if lowered and rank == 0:
        listed = "; ".join(f"{name}: {', '.join(f'{k}={v}' for k, v in o.items())}" for name, o in lowered.items())
        print(f"budget quick ({kind}): {listed} (--budget paper for the papers' settings)", file=sys.stderr)
    prior = load_prior(settings.prior, device=device, dtype=settings.dtype)
    for name, solver in built.items():  # a step count the prior cannot serve fails here, not once per unit
        steps = getattr(solver.config, "steps", None)
        if solver.uses_prior and isinstance(steps, int) and steps > prior.num_timesteps:
            raise RunError(
                f"{name}.steps={steps} exceeds the {prior.num_timesteps} timesteps of prior '{settings.prior}'; "
                f"use --set {name}.steps=<1..{prior.num_timesteps}>"
            )
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
    _check_writable(settings.out)
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
    )
    versions = {
        "torch_version": torch.__version__,
        "bench_version": bench.__version__,
        "git_commit": _git_commit(),
    }
    context = _Context(
        settings=settings,
        prior=prior,
        dataset=dataset,
        index_of={image_id: i for i, image_id in enumerate(ids)},
        solvers=built,
        solver_configs={name: _json(spec["config"]) for name, spec in specs.items()},
        ops=ops,
        device=torch.device(device),
        store=ResultStore(settings.out, rank=rank),
        versions=versions,
    )
    return context, units


def _batches(units: list[Any], batch_size: int) -> list[list[Any]]:
    """Consecutive units of the same (solver, task, σ), at most `batch_size` at a time."""
    batches: list[list[Any]] = []
    for unit in units:
        if batches and batches[-1][0].group == unit.group and len(batches[-1]) < batch_size:
            batches[-1].append(unit)
        else:
            batches.append([unit])
    return batches


def _base_row(context: _Context, unit: Any) -> dict[str, Any]:
    solver = context.solvers[unit.solver]
    return {
        "solver": unit.solver,
        "task": unit.task,
        "sigma": unit.sigma,
        "prior": context.settings.prior,
        "dataset": context.dataset.name,
        "image_id": unit.image_id,
        "seed": context.settings.seed,
        "key": unit.key,
        "status": "ok",
        "error": None,
        "psnr": math.nan,
        "ssim": math.nan,
        "lpips": math.nan,
        "consistency": math.nan,
        "nfe": 0,
        "own_nfe": 0,
        "own_networks": "",
        "wall_s": math.nan,
        "network_s": math.nan,
        "own_network_s": math.nan,
        "peak_memory_bytes": 0,
        "batch_size": 0,
        "warmup": False,
        "device": str(context.device),
        "rank": context.store.rank,
        "dtype": context.settings.dtype,
        "solver_version": solver.version,
        "solver_config": context.solver_configs[unit.solver],
        **context.versions,
    }


def _json(value: Any) -> str:
    from bench.units import canonical_json

    return canonical_json(value)


def _sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _run_batch(context: _Context, batch: list[Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Compute one batch: (unit rows, trace rows). Exceptions become failed rows; the run goes on."""
    import torch

    import operators
    from bench import metrics

    first = batch[0]
    solver, op = context.solvers[first.solver], context.ops[first.task]
    rows = [_base_row(context, unit) for unit in batch]
    reason = solver.unsupported(op, first.sigma)
    if reason:
        for row in rows:
            row.update(status="unsupported", error=reason)
        return rows, []

    settings, device, prior = context.settings, context.device, context.prior
    ids = [unit.image_id for unit in batch]
    traces: list[dict[str, Any]] = []
    try:
        clean = torch.stack([context.dataset[context.index_of[i]][1] for i in ids]).to(device)
        bound = op.for_images(ids, settings.seed)
        y = bound.measure(clean, first.sigma, operators.image_generators(settings.seed, ids, "noise"))
        generators = operators.image_generators(settings.seed, ids, "solver", device=device)
        steps: list[tuple[int, int, Any, Any]] = []
        tracing = [0.0]  # seconds spent in the trace callback, taken out of the solver's wall time

        def record(*, step: int, t: int, x_t: Any, eps: Any, x0: Any) -> None:
            _sync(device)
            began = time.perf_counter()
            with torch.no_grad():
                residual = (bound(x0.detach()) - y).reshape(len(ids), -1).norm(dim=1)
                steps.append((step, int(t), fisher_kurtosis(eps), residual.double()))
            _sync(device)
            tracing[0] += time.perf_counter() - began

        prior.reset_stats()
        solver.reset_network_use()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        heap = _HeapPeak() if device.type != "cuda" else contextlib.nullcontext()
        _sync(device)
        with heap:
            start = time.perf_counter()
            estimate = solver.reconstruct(y, bound, prior, sigma=first.sigma, generators=generators, callback=record)
            _sync(device)
            wall = time.perf_counter() - start - tracing[0]
        if device.type == "cuda":
            peak = int(torch.cuda.max_memory_allocated(device))
        else:
            peak = heap.peak  # the solve's own peak of CPU heap in use
        stats = prior.stats
        own = solver.network_use
        estimate = estimate.detach()
        finite = torch.isfinite(estimate.reshape(len(ids), -1)).all(dim=1).tolist()
        safe = torch.nan_to_num(estimate, nan=0.0, posinf=1.0, neginf=-1.0)
        scores = {
            "psnr": metrics.psnr(safe, clean),
            "ssim": metrics.ssim(safe, clean),
            "consistency": metrics.consistency(bound, safe, y),
        }
        if min(clean.shape[-2:]) >= LPIPS_MIN_SIZE:
            scores["lpips"] = metrics.lpips(safe, clean)
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
            )
            if not finite[b]:
                row.update(status="diverged", error="the estimate holds NaN or Inf values")
                continue
            row.update({name: float(values[b]) for name, values in scores.items()})
        _save_images(context, batch, clean, bound, y, estimate, finite)
        if steps:
            # one transfer for the whole trajectory rather than one per value
            kurtosis = torch.stack([k for _, _, k, _ in steps]).cpu().tolist()
            residual = torch.stack([r for _, _, _, r in steps]).cpu().tolist()
            for i, (step, t, _, _) in enumerate(steps):
                for b, unit in enumerate(batch):
                    traces.append(
                        {
                            "key": unit.key,
                            "solver": unit.solver,
                            "task": unit.task,
                            "sigma": unit.sigma,
                            "image_id": unit.image_id,
                            "seed": settings.seed,
                            "step": step,
                            "t": t,
                            "kurtosis": kurtosis[i][b],
                            "residual": residual[i][b],
                        }
                    )
    except Exception as error:  # noqa: BLE001 - any failure of one batch is recorded and the run goes on
        text = f"{type(error).__name__}: {error}"
        for row in rows:
            row.update(status="failed", error=text)
        return rows, []
    return rows, traces


def _save_images(
    context: _Context, batch: list[Any], clean: Any, bound: Any, y: Any, estimate: Any, finite: list[bool]
) -> None:
    import operators

    images = context.settings.out / "images"
    first = batch[0]
    sigma = sigma_label(first.sigma)
    shown = bound.pinv(y) if bound.supports(operators.Cap.PINV) else None
    folder = images / first.solver / first.task / sigma / _image_tag(context, first.solver)
    for b, unit in enumerate(batch):
        if finite[b]:
            _save_png(estimate[b], folder / f"{unit.image_id}.png")
        reference = images / "reference" / f"{unit.image_id}.png"
        if not reference.exists():
            _save_png(clean[b], reference)
        if shown is not None:  # the measurement depends on the seed (noise, masks) only: one folder per seed
            measurement = measurement_path(images, unit.task, first.sigma, context.settings.seed, unit.image_id)
            if not measurement.exists():
                _save_png(shown[b], measurement)


def _image_tag(context: _Context, solver: str) -> str:
    from bench.units import image_tag

    return image_tag(context.solvers[solver].version, context.solver_configs[solver], context.settings.seed)


def reconstruction_path(images: Path, solver: str, task: str, sigma: float, tag: str, image_id: str) -> Path:
    """Where a unit's reconstruction PNG is (`tag`: `bench.units.image_tag` of its config and seed)."""
    return images / solver / task / sigma_label(sigma) / tag / f"{image_id}.png"


def measurement_path(images: Path, task: str, sigma: float, seed: int, image_id: str) -> Path:
    """Where the measurement of an image, shown as A⁺y, is for one seed."""
    return images / "measurement" / task / sigma_label(sigma) / f"seed{int(seed)}" / f"{image_id}.png"


def _set_metrics(context: _Context, units: list[Any]) -> None:
    """FID/KID of every complete (solver, task, σ) group whose set of keys has no row yet (or all, if forced)."""
    import hashlib

    import torch

    from bench import metrics
    from bench.data import pil_to_signed, read_image

    statuses = context.store.statuses()
    known = set() if context.settings.force else set(context.store.sets().get("set_key", []))
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
        row: dict[str, Any] = {
            "solver": solver,
            "task": task,
            "sigma": sigma,
            "prior": context.settings.prior,
            "dataset": context.dataset.name,
            "seed": context.settings.seed,
            "set_key": set_key,
            "n_images": len(ok),
            "n_diverged": len(members) - len(ok),
            "fid": math.nan,
            "kid": math.nan,
            "kid_std": math.nan,
            "note": None,
            **context.versions,
        }
        if len(ok) < len(members):
            row["note"] = f"{len(members) - len(ok)} diverged images left out"
        if len(ok) < SET_METRIC_MIN_IMAGES:
            short = f"FID/KID need at least {SET_METRIC_MIN_IMAGES} finished images, this set has {len(ok)}"
            row["note"] = "; ".join(filter(None, [short, row["note"]]))
        else:
            folder = context.settings.out / "images"
            channels = context.dataset.channels

            def load(path: Path, channels: int = channels) -> Any:
                return pil_to_signed(read_image(path, channels))

            ids = tuple(u.image_id for u in ok)
            try:
                tag = _image_tag(context, solver)
                estimates = torch.stack([load(reconstruction_path(folder, solver, task, sigma, tag, i)) for i in ids])
                if ids not in reference_features:  # the same clean set serves every group: one Inception pass
                    references = torch.stack([load(folder / "reference" / f"{i}.png") for i in ids])
                    reference_features[ids] = metrics.inception_features(references, context.device)
                features = metrics.inception_features(estimates, context.device)
                scores = metrics.fid_kid(features, reference_features[ids], seed=context.settings.seed)
                row.update(fid=scores.fid, kid=scores.kid, kid_std=scores.kid_std)
            except Exception as error:  # noqa: BLE001 - a set metric failure must not lose the run's results
                row["note"] = f"failed: {type(error).__name__}: {error}"
        rows.append(row)
    context.store.write_part("sets", rows)


# ----- summary ---------------------------------------------------------------------------------------------


def summarize(table: Any) -> Any:
    """Per (solver, task, σ): unit counts by status and the mean PSNR, SSIM, LPIPS over ok units."""
    import pandas as pd

    from bench.store import STATUSES

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

    from bench.units import shard

    dist = _Distributed()
    try:
        context, units = _prepare(settings, dist.rank)
        mine = shard(units, dist.rank, dist.world_size)
        done = set() if settings.force else context.store.done_keys()
        pending = [unit for unit in mine if unit.key not in done]
        if dist.rank == 0:
            skipped = len(mine) - len(pending)
            print(
                f"{len(units)} units ({len(settings.solvers)} solvers x {len(settings.tasks)} tasks x "
                f"{len(settings.sigmas)} sigma x {len(context.dataset)} images) -> {settings.out}"
                + (f"; {skipped} already done" if skipped else ""),
                file=sys.stderr,
            )
        bar = tqdm(total=len(pending), unit="img", disable=not settings.progress or dist.rank != 0, file=sys.stderr)
        for batch in _batches(pending, settings.batch_size):
            first = batch[0]
            bar.set_description(f"{first.solver}/{first.task}/σ={sigma_label(first.sigma)}")
            rows, traces = _run_batch(context, batch)
            stem = context.store.new_stem()
            # traces first: the unit part commits the batch (see bench.store)
            context.store.write_part("traces", traces, stem=stem)
            context.store.write_part("units", rows, stem=stem)
            bar.update(len(batch))
        bar.close()
        dist.barrier()
        if dist.rank != 0:
            return None
        _set_metrics(context, units)
        context.store.consolidate()  # one part per table: later reads (resume, report) stay fast
        keys = {unit.key for unit in units}
        table = context.store.units()
        table = table[table["key"].isin(keys)] if not table.empty else table
        summary = summarize(table)
        print(format_summary(summary))
        failed = int(summary["failed"].sum()) if len(summary) else 0
        if failed:
            print(f"{failed} unit(s) failed; a re-run retries them:", file=sys.stderr)
            print("\n".join(failure_report(table)), file=sys.stderr)
        return summary
    finally:
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


def _cmd_run(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    summary = run(settings)  # it prints each failure's reason
    failed = int(summary["failed"].sum()) if summary is not None and len(summary) else 0
    return 1 if failed else 0


def add_run_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register `run` on the CLI's subcommands. Options default to None so that --config values can fill them."""
    parser = subparsers.add_parser(
        "run",
        help="run solvers x tasks x noise levels x images against one prior (resumable)",
        description="Run every (solver, task, sigma, image) unit, skipping those already done in --out.",
    )
    parser.add_argument("--solvers", help=f"comma-separated solver names, or all (default: {DEFAULT_SOLVERS})")
    parser.add_argument("--tasks", help="comma-separated tasks, or all = the paper's five (default: all)")
    parser.add_argument(
        "--sigma", help=f"noise levels on the [0, 1] pixel scale, e.g. 0,0.05 (default: {DEFAULT_SIGMA})"
    )
    parser.add_argument("--prior", help=f"prior spec (default: {DEFAULT_PRIOR}; see `bench list priors`)")
    parser.add_argument("--dataset", help=f"dataset spec (default: {DEFAULT_DATASET}; see `bench list datasets`)")
    parser.add_argument("--n-images", type=int, help="use the first N images of the dataset (default: all)")
    parser.add_argument("--batch-size", type=int, help=f"images per solver call (default: {DEFAULT_BATCH_SIZE})")
    parser.add_argument("--seed", type=int, help="seed of masks, noise and solver randomness (default: 0)")
    parser.add_argument(
        "--set", action="append", metavar="SOLVER.OPTION=VALUE", help="override a solver option (repeatable)"
    )
    parser.add_argument("--out", help="run folder (default: results/<--name or run-YYYYMMDD>)")
    parser.add_argument("--name", help="name of the run folder under results/")
    parser.add_argument("--device", help="cpu, cuda or auto (default: auto = cuda when available)")
    parser.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], help="network dtype (default: fp32)")
    parser.add_argument("--force", action="store_true", default=None, help="recompute units already done")
    parser.add_argument(
        "--budget",
        choices=BUDGETS,
        help="paper: every solver at its paper's settings; quick: fewer steps for the slow ones (DPS 100); "
        "auto (default): quick on a CPU, paper on a GPU",
    )
    parser.add_argument("--config", help="TOML or YAML file with any of these options; the command line overrides it")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=_cmd_run)
    return parser
