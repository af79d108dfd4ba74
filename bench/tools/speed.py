"""`python -m bench speed`: what each solver costs at its paper step count on one prior and device.

For every solver and batch size: seconds per image, the prior's NFE and the calls of the solver's own
networks (φ, DnCNN, bridges), the share of the time spent inside networks, and the peak memory of one solve
(CUDA `max_memory_allocated` on a GPU, weights included; on the CPU the solve's own peak of heap in use above
its start, sampled).

Timing every step of a 1000-step DPS run on the 552.8M-parameter ADM is hours on a CPU, so a solve may be
measured at fewer steps and extrapolated. Each quantity q (wall time, network time, NFE) of a solver is
linear in its step count S: q(S) = one-off + S · per-step, where the one-off part is what a solve does once
(operator set-up, the final clamp) and the per-step part is a network call plus the update. Two timed solves, of
1 and of N steps, give both parts: per-step = (q(N) − q(1)) / (N − 1), one-off = q(1) − per-step, and
q(S) follows without running S steps. With N = 1 the one-off part cannot be told apart and q(S) = S · q(1),
an upper bound. Every row says how many steps it measured. On a CPU that other work shares, the wall times of
the two solves can differ by more than a step; the CPU seconds of the process (also reported, extrapolated the
same way) are not affected by that. Before timing, one untimed 1-step solve warms up
(allocator, cuDNN autotuning, torch.compile's first graph for that batch shape); its time is reported apart.

The prior is any `load_prior` spec; `adm-random:imagenet256` is the DDC paper's ADM architecture with random
weights, which costs the same as the checkpoint. DDC's φ is built at the paper's size (a UNet2DModel with blocks
128, 128, 256, 256, 512, 512, two layers each, attention at the fifth level: 113.7M parameters) with random
weights unless a trained φ of the prior's size is named. Solvers whose trained weights do not exist at the
prior's size (CDDB's bridges) are reported unsupported with the reason.
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # `bench report` builds the whole CLI and must not import torch
    import torch

# The config field that sets a solver's length, in the order looked for (pinv has none).
STEP_FIELDS = ("steps", "iterations", "nfe")
# The DDC paper's φ widths, for the --phi-channels default without importing torch to build the CLI: the
# same tuple as solvers.ddc.network.PAPER_PHI_CHANNELS (tests/test_speed.py checks).
PAPER_PHI_CHANNELS = (128, 128, 256, 256, 512, 512)
DEFAULT_TASK = "sr4"
DEFAULT_SIGMA = 0.05


@dataclasses.dataclass
class Timing:
    """One timed solve of a batch."""

    wall_s: float
    nfe: int  # the prior's network calls (a call on a batch counts once)
    own_nfe: int  # calls of the solver's own networks
    network_s: float  # seconds inside every network: the prior's forward and backward, the solver's own
    peak_bytes: int
    # CPU seconds of this process (all threads): on a CPU shared with other work the wall time includes the
    # time others held the cores, and CPU time does not.
    cpu_s: float = 0.0


@dataclasses.dataclass
class SpeedRow:
    """A solver at one batch size: the cost of one solve at its full step count (measured or extrapolated)."""

    solver: str
    batch_size: int
    status: str  # "ok", or "unsupported" with the reason
    reason: str | None = None
    steps: int | None = None  # the solver's configured (paper) length; None for step-free solvers
    step_field: str | None = None
    steps_measured: int | None = None  # the longest solve timed; equal to steps when nothing is extrapolated
    extrapolated: bool = False
    seconds_per_image: float | None = None
    seconds_per_solve: float | None = None
    cpu_seconds_per_image: float | None = None
    one_off_s: float | None = None  # per solve (per batch); None where it could not be separated
    per_step_s: float | None = None  # per solve (per batch)
    warmup_s: float | None = None  # the untimed 1-step solve, compile included
    nfe: float | None = None
    own_nfe: float | None = None
    network_share: float | None = None
    peak_memory_bytes: int | None = None

    def note(self) -> str:
        if self.status != "ok":
            return f"unsupported: {self.reason}"
        if self.steps is None or not self.extrapolated:
            return "measured in full"
        separated = "" if self.one_off_s is not None else ", one-off costs not separated"
        unstable = ""
        if self.one_off_s is not None and (self.one_off_s < 0 or (self.per_step_s or 0) <= 0):
            unstable = "; wall times unstable between the two solves (a busy machine?): see CPU s/image"
        return f"measured {self.steps_measured} of {self.steps} {self.step_field}{separated}{unstable}"


# ----- building what is timed ------------------------------------------------------------------------
def step_field(solver_class: type) -> str | None:
    """The config field that sets the solver's length ('steps', 'iterations' or 'nfe'), or None."""
    names = {f.name for f in dataclasses.fields(solver_class.Config)}
    return next((name for name in STEP_FIELDS if name in names), None)


def build_solver(name: str, length: int | None, networks: Mapping[str, Any] | None = None):
    """Solver `name` with its length field set to `length` (None: its default), with stand-ins for its own
    networks (`Solver.stand_in_networks`) where given."""
    import solvers

    cls = solvers.get(name)
    field = step_field(cls)
    overrides = {field: length} if field and length is not None else {}
    if networks:
        return cls(cls.Config(**overrides), **networks)
    return solvers.build(name, **overrides)


def time_solve(solver, prior, op, y, generators_fn: Callable[[], list], device: torch.device, sigma: float) -> Timing:
    """One solve of the batch y, synchronised, with its network use and peak memory (measured as the run's rows
    measure it, `bench.memory.PeakMemory`)."""
    import torch

    from bench.memory import PeakMemory, synchronize

    prior.reset_stats()
    solver.reset_network_use()
    meter = PeakMemory(device)
    reconstruct = getattr(solver, "reconstruct", None) or solver.solve
    generators = generators_fn()
    synchronize(device)
    with meter:
        start, cpu_start = time.perf_counter(), time.process_time()
        estimate = reconstruct(y, op, prior, sigma=sigma, generators=generators)
        synchronize(device)
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    if not torch.isfinite(estimate).all():
        raise RuntimeError(f"{solver.name}: the solve returned non-finite values")
    peak = int(meter.peak)
    own = solver.network_use.values()
    stats = prior.stats
    return Timing(
        wall_s=wall,
        nfe=int(stats.nfe),
        own_nfe=sum(use.calls for use in own),
        network_s=stats.forward_seconds + stats.backward_seconds + sum(use.seconds for use in own),
        peak_bytes=peak,
        cpu_s=cpu,
    )


def extrapolate(short: Timing, long: Timing, measured: int, full: int) -> dict[str, float | None]:
    """q(full) from solves of 1 and `measured` steps, each q linear in the step count (module docstring)."""
    fields = ("wall_s", "nfe", "own_nfe", "network_s", "cpu_s")
    if measured == 1:
        values = {f: full * getattr(short, f) for f in fields}
        return {**values, "one_off_s": None, "per_step_s": short.wall_s}
    values = {}
    for f in fields:
        per_step = (getattr(long, f) - getattr(short, f)) / (measured - 1)
        values[f] = getattr(short, f) + (full - 1) * per_step
    per_step_s = (long.wall_s - short.wall_s) / (measured - 1)
    return {**values, "one_off_s": short.wall_s - per_step_s, "per_step_s": per_step_s}


def measure_solver(
    name: str,
    prior,
    task: str,
    batch_size: int,
    *,
    steps_measured: int | None = None,
    sigma: float = DEFAULT_SIGMA,
    networks: Mapping[str, Any] | None = None,
    seed: int = 0,
) -> SpeedRow:
    """Time solver `name` on `task` for one batch (see the module docstring); an unsupported pair is a row too."""
    import torch

    import operators

    device = prior.device
    ids = [f"speed-{i}" for i in range(batch_size)]
    op = operators.build(task, shape=prior.image_shape).for_images(ids, seed)
    full_solver = build_solver(name, None, networks)
    row = SpeedRow(solver=name, batch_size=batch_size, status="ok")
    row.step_field = step_field(type(full_solver))
    row.steps = getattr(full_solver.config, row.step_field) if row.step_field else None
    reason = (
        full_solver.missing_weights()
        or full_solver.unsupported(op, sigma)
        or full_solver.precision_mismatch(getattr(prior, "dtype", None))
    )
    if reason:
        row.status, row.reason = "unsupported", reason
        return row

    clean = torch.rand(batch_size, *prior.image_shape, generator=torch.Generator().manual_seed(seed)) * 2 - 1
    y = op.measure(clean.to(device), sigma, operators.image_generators(seed, ids, "noise"))

    def generators() -> list:
        return operators.image_generators(seed, ids, "solver", device=device)

    def timed(length: int | None) -> Timing:
        return time_solve(build_solver(name, length, networks), prior, op, y, generators, device, sigma)

    warm = timed(1 if row.steps is not None else None)
    row.warmup_s = warm.wall_s
    if row.steps is None or steps_measured is None or steps_measured >= row.steps:
        measured = timed(row.steps)
        row.steps_measured = row.steps
        values = dataclasses.asdict(measured)
        values.update(one_off_s=None, per_step_s=None)
        peak = measured.peak_bytes
    else:
        n = max(1, int(steps_measured))
        short = timed(1)
        long = timed(n) if n > 1 else short
        values = extrapolate(short, long, n, row.steps)
        row.steps_measured, row.extrapolated = n, True
        peak = max(short.peak_bytes, long.peak_bytes)
    row.seconds_per_solve = values["wall_s"]
    row.seconds_per_image = values["wall_s"] / batch_size
    row.cpu_seconds_per_image = values["cpu_s"] / batch_size
    row.one_off_s, row.per_step_s = values["one_off_s"], values["per_step_s"]
    row.nfe, row.own_nfe = values["nfe"], values["own_nfe"]
    share = values["network_s"] / values["wall_s"] if values["wall_s"] > 0 else None
    row.network_share = None if share is None else min(1.0, max(0.0, share))
    row.peak_memory_bytes = peak
    return row


# ----- the whole table ------------------------------------------------------------------------------
def device_name(device: torch.device) -> str:
    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"CPU: {model}, {torch.get_num_threads()} thread(s)"


def parameter_count(module: Any) -> int:
    import torch

    return sum(p.numel() for p in module.parameters()) if isinstance(module, torch.nn.Module) else 0


def speed_table(
    prior_spec: str,
    solver_names: Sequence[str],
    batch_sizes: Sequence[int] = (1, 16),
    *,
    steps_measured: int | None = None,
    device: str = "cpu",
    dtype: str = "fp32",
    compile: bool = False,
    channels_last: bool = False,
    checkpointing: bool = False,
    task: str = DEFAULT_TASK,
    sigma: float = DEFAULT_SIGMA,
    phi_channels: Sequence[int] = PAPER_PHI_CHANNELS,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Every solver at every batch size on one prior: a JSON-able report with a row per (solver, batch size)."""
    import torch

    import solvers
    from bench.priors import load_prior

    started = time.perf_counter()
    unknown = [name for name in solver_names if name not in solvers.available()]
    if unknown:
        raise ValueError(f"unknown solver(s) {unknown} (available: {', '.join(solvers.available())})")
    if not batch_sizes or min(batch_sizes) < 1:
        raise ValueError(f"batch sizes must be positive integers, got {list(batch_sizes)}")
    if steps_measured is not None and steps_measured < 1:
        raise ValueError(f"--steps-measured must be at least 1, got {steps_measured}")
    load_started = time.perf_counter()
    prior = load_prior(
        prior_spec,
        device=device,
        dtype=dtype,
        compile=compile or None,
        channels_last=channels_last or None,
        checkpointing=checkpointing or None,
    )
    load_s = time.perf_counter() - load_started
    # each solver's own networks as random stand-ins at the paper's size (DDC's φ), built once per solver
    stand_ins: dict[str, dict[str, Any]] = {}
    for name in solver_names:
        stand_ins[name] = {
            key: network.to(prior.device)
            for key, network in solvers.get(name).stand_in_networks(prior.image_shape, phi_channels).items()
        }
        for network in stand_ins[name].values():
            if compile:
                network.compile()
    rows = []
    for name in solver_names:
        for batch in batch_sizes:
            if progress:
                progress(f"{name} at batch {batch} ...")
            rows.append(
                measure_solver(
                    name, prior, task, batch, steps_measured=steps_measured, sigma=sigma, networks=stand_ins[name]
                )
            )
            if progress:
                progress(f"  {format_row(rows[-1])}")
    return {
        "device": device_name(prior.device),
        "torch": torch.__version__,
        "prior": prior_spec,
        "prior_spec": prior.spec(),
        "prior_parameters": parameter_count(prior.network),
        "phi_parameters": parameter_count(next((n["phi"] for n in stand_ins.values() if "phi" in n), None)),
        "dtype": dtype,
        "compile": compile,
        "channels_last": channels_last,
        "checkpointing": checkpointing,
        "task": task,
        "sigma": sigma,
        "steps_measured": steps_measured,
        "peak_memory": "CUDA max_memory_allocated, weights included"
        if prior.device.type == "cuda"
        else "CPU heap in use above the solve's start (sampled), weights excluded",
        "prior_load_s": load_s,
        "wall_s": time.perf_counter() - started,
        "rows": [dataclasses.asdict(row) for row in rows],
    }


# ----- output ------------------------------------------------------------------------------------
HEADER = ("solver", "batch", "steps", "s/image", "CPU s/image", "NFE", "own NFE", "in networks", "peak MiB", "note")


def _cells(row: SpeedRow) -> tuple[str, ...]:
    def number(value: float | None, fmt: str) -> str:
        return "–" if value is None else format(value, fmt)

    peak = None if row.peak_memory_bytes is None else row.peak_memory_bytes / 2**20
    share = None if row.network_share is None else 100 * row.network_share
    return (
        row.solver,
        str(row.batch_size),
        "–" if row.steps is None else str(row.steps),
        number(row.seconds_per_image, ".3g"),
        number(row.cpu_seconds_per_image, ".3g"),
        number(row.nfe, ".0f"),
        number(row.own_nfe, ".0f"),
        "–" if share is None else f"{share:.0f}%",
        number(peak, ".0f"),
        row.note(),
    )


def format_row(row: SpeedRow) -> str:
    return " | ".join(_cells(row))


def format_table(report: dict[str, Any]) -> str:
    """The report as a Markdown table with a heading line naming the device, prior and settings."""
    rows = [SpeedRow(**r) for r in report["rows"]]
    lines = [
        f"{report['device']}; torch {report['torch']}; prior {report['prior']} "
        f"({report['prior_parameters'] / 1e6:.1f}M parameters); dtype {report['dtype']}; "
        f"compile {'on' if report['compile'] else 'off'}; task {report['task']}, σ = {report['sigma']}",
        "",
        "| " + " | ".join(HEADER) + " |",
        "|" + "|".join("---" for _ in HEADER) + "|",
    ]
    lines += ["| " + " | ".join(_cells(row)) + " |" for row in rows]
    lines += ["", f"peak memory: {report['peak_memory']}; total wall time {report['wall_s']:.1f} s"]
    return "\n".join(lines)


def write_json(report: dict[str, Any], path: str | Path) -> Path:
    """Write the report atomically (a reader never sees half a file)."""
    from bench.files import atomic_write_json

    return atomic_write_json(path, report)


# ----- command line ------------------------------------------------------------------------------
def _int_list(text: str, flag: str) -> list[int]:
    from bench.pipeline.settings import positive_ints

    return list(positive_ints(text, flag))


def add_speed_parser(commands: Any) -> None:
    """The `speed` subcommand."""
    parser = commands.add_parser(
        "speed", help="seconds per image, NFE, network share and peak memory of each solver at its paper steps"
    )
    parser.add_argument("--prior", default="adm-random:imagenet256", help="prior spec (default: %(default)s)")
    parser.add_argument("--solvers", default=None, help="comma-separated solver names (default: all)")
    parser.add_argument(
        "--batch-sizes", default=[1, 16], type=lambda t: _int_list(t, "--batch-sizes"), help="e.g. 1,16 (default)"
    )
    parser.add_argument(
        "--steps-measured",
        type=int,
        default=None,
        help="time solves of 1 and N steps and extrapolate to the paper's count (default: time every step)",
    )
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default="fp32", help="the networks' precision")
    parser.add_argument("--compile", action="store_true", help="torch.compile the prior's network and φ")
    parser.add_argument("--channels-last", action="store_true", help="NHWC memory order for the prior's network")
    parser.add_argument(
        "--checkpointing", action="store_true", help="gradient checkpointing of the prior (DPS, ΠGDM memory)"
    )
    parser.add_argument("--task", default=DEFAULT_TASK, help="the operator solved (default: %(default)s)")
    parser.add_argument("--sigma", type=float, default=DEFAULT_SIGMA, help="measurement noise on [0, 1]")
    parser.add_argument(
        "--phi-channels",
        default=",".join(map(str, PAPER_PHI_CHANNELS)),
        help="DDC φ's block widths (default: the paper's 113.7M network)",
    )
    parser.add_argument("--json", default=None, help="also write the report to this JSON file")
    parser.set_defaults(func=_cmd_speed)


def _cmd_speed(args: argparse.Namespace) -> int:
    import torch

    import solvers

    names = [n.strip() for n in args.solvers.split(",") if n.strip()] if args.solvers else solvers.available()
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    report = speed_table(
        args.prior,
        names,
        args.batch_sizes,
        steps_measured=args.steps_measured,
        device=device,
        dtype=args.dtype,
        compile=args.compile,
        channels_last=args.channels_last,
        checkpointing=args.checkpointing,
        task=args.task,
        sigma=args.sigma,
        phi_channels=_int_list(args.phi_channels, "--phi-channels"),
        progress=lambda line: print(line, flush=True),
    )
    print()
    print(format_table(report))
    if args.json:
        print(f"wrote {write_json(report, args.json)}")
    return 0
