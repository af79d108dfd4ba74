"""The settings of `python -m bench run`: defaults, the --config file, the command line and the budget.

`settings_from_args` merges the command line over a TOML or YAML --config file over the defaults and checks
every name and number, so that a run with bad settings fails before any work with a message naming the fix.
Nothing here computes: `bench.pipeline.run` turns the settings into work units and runs them.
"""

from __future__ import annotations

import argparse
import datetime
import math
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.files import prove_writable

__all__ = [
    "BUDGETS",
    "RunError",
    "RunSettings",
    "add_run_options",
    "budget_overrides",
    "check_writable",
    "resolve_device",
    "settings_from_args",
]

DEFAULT_PRIOR = "natural64"
DEFAULT_DATASET = "skimage-natural"
DEFAULT_SOLVERS = "dps,ddnm"
DEFAULT_SIGMA = "0.05"  # the DDC paper's main noise level, on the [0, 1] pixel scale
DEFAULT_BATCH_SIZE = 8  # the default dataset's 5 photos in one call: on a CPU a batch costs little more than 1
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
    "compile",
    "force",
    "budget",
    "metrics",
    "noise",
    "best_of",
)
# --budget: "paper" runs every solver at its paper's defaults; "quick" lowers the few expensive ones (each
# solver's `quick` options, e.g. DPS 1000 -> 100 steps); "auto" is quick on a CPU and paper on a GPU.
BUDGETS = ("auto", "paper", "quick")


class RunError(ValueError):
    """A run cannot start: the message names the problem and the fix."""


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
    compile: bool = False  # torch.compile the prior's network (a prior runtime option, recorded in its spec)
    force: bool = False
    progress: bool = True
    budget: str = "auto"
    metrics: tuple[str, ...] = ()  # the per-image and per-set metrics to score (`bench.metrics.select`)
    noise: str = "gaussian"  # the measurement noise model (`operators.noise.NOISE_MODELS`)
    best_of: int = 1  # solver runs per unit, of which the one of least ‖A(x̂) − y‖ is kept (`bench.pipeline.evaluate`)


def _parse_sigmas(value: Any) -> list[float]:
    items = value if isinstance(value, list | tuple) else str(value).split(",")
    sigmas: list[float] = []
    for item in items:
        text = str(item).strip()
        if not text:
            continue
        try:
            # + 0.0 turns -0 into 0: equal as numbers, but -0 would name folders and labels "-0"
            sigma = float(text) + 0.0
        except ValueError:
            raise RunError(f"--sigma expects numbers separated by commas (e.g. 0,0.05), got {text!r}") from None
        if not math.isfinite(sigma) or sigma < 0:
            raise RunError(f"noise level sigma must be a finite number >= 0 ([0, 1] pixel scale), got {text}")
        if sigma not in sigmas:
            sigmas.append(sigma)
    if not sigmas:
        raise RunError(f"--sigma names no noise level: {value!r}")
    _warn_large_sigmas(sigmas)
    return sigmas


def _warn_large_sigmas(sigmas: list[float]) -> None:
    """One warning for all noise levels above 1: legal, but on the [0, 1] pixel scale such noise buries the
    image, and the likely intent is a value on the 0-255 scale."""
    large = [sigma for sigma in sigmas if sigma > 1]
    if large:
        listed = ", ".join(f"{sigma:g}" for sigma in large)
        meant = ", ".join(f"{sigma / 255:.4g}" for sigma in large)
        print(
            f"warning: noise level sigma {listed} is above 1; sigma is on the [0, 1] pixel scale (0.05 is 5% of "
            f"the range), so the measurements are mostly noise. If you meant 0-255 pixel values, pass {meant}",
            file=sys.stderr,
        )


def positive_ints(text: str, flag: str) -> tuple[int, ...]:
    """'32,64,128' -> (32, 64, 128) for a command-line option; argparse.ArgumentTypeError naming `flag` if any
    item is not a positive integer (argparse prints it as a usage error when this is an option's `type`)."""
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        values = ()
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(
            f"{flag} takes positive integers separated by commas, e.g. 32,64,128; got {text!r}"
        )
    return values


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
    if path.is_dir():
        raise RunError(f"config file '{path}' is a folder; give the path of a .toml or .yaml file inside it")
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
    for key, value in config.items():
        _check_config_type(key, value, path)
    return config


def _is_text(value: Any) -> bool:
    return isinstance(value, str)


def _is_names(value: Any) -> bool:
    return isinstance(value, str) or (isinstance(value, list) and all(isinstance(item, str) for item in value))


def _is_integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_sigma(value: Any) -> bool:
    def one(item: Any) -> bool:
        return isinstance(item, str) or (isinstance(item, int | float) and not isinstance(item, bool))

    return one(value) or (isinstance(value, list) and all(one(item) for item in value))


# Config key -> (what its value must be, check, an example line). Values of a wrong type otherwise fail later,
# far from the file, as a TypeError inside Path() or int() (`out = 5`).
_CONFIG_TYPES: dict[str, tuple[str, Any, str]] = {
    "solvers": ("a list of solver names or one comma-separated string", _is_names, 'solvers = ["dps", "ddnm"]'),
    "tasks": ("a list of task names or one comma-separated string", _is_names, 'tasks = ["sr4", "inpaint"]'),
    "sigma": ("a number, a list of numbers or a comma-separated string", _is_sigma, "sigma = [0, 0.05]"),
    "prior": ("a prior spec (text)", _is_text, 'prior = "natural64"'),
    "dataset": ("a dataset spec (text)", _is_text, 'dataset = "skimage-natural"'),
    "n_images": ("a whole number", lambda v: v is None or _is_integer(v), "n_images = 5"),
    "batch_size": ("a whole number", _is_integer, "batch_size = 8"),
    "seed": ("a whole number", _is_integer, "seed = 0"),
    "set": (
        "a list of 'solver.option=value' strings",
        lambda v: isinstance(v, list) and all(map(_is_text, v)),
        'set = ["dps.steps=100"]',
    ),
    "out": ("a folder path (text)", _is_text, 'out = "results/mine"'),
    "name": ("a folder name (text)", _is_text, 'name = "mine"'),
    "device": ("a device name (text)", _is_text, 'device = "cuda"'),
    "dtype": ("fp32, bf16 or fp16 (text)", _is_text, 'dtype = "fp32"'),
    "compile": ("true or false", lambda v: isinstance(v, bool), "compile = true"),
    "force": ("true or false", lambda v: isinstance(v, bool), "force = false"),
    "budget": (f"one of {', '.join(BUDGETS)} (text)", _is_text, 'budget = "quick"'),
    "metrics": ("a list of metric names or one comma-separated string", _is_names, 'metrics = ["psnr", "ssim"]'),
    "noise": ("a noise model name: gaussian or poisson (text)", _is_text, 'noise = "poisson"'),
    "best_of": ("a whole number >= 1", _is_integer, "best_of = 4"),
}


def _check_config_type(key: str, value: Any, path: Path) -> None:
    """RunError naming the key, the file, the type expected and an example line, for a value of another type."""
    if key not in _CONFIG_TYPES:
        return  # a key added to _CONFIG_KEYS without a type here is checked where it is used
    expected, check, example = _CONFIG_TYPES[key]
    if not check(value):
        raise RunError(
            f"config key '{key}' must be {expected}, got {value!r} ({type(value).__name__}) in config file "
            f"'{path}'; write it e.g. as {example} (TOML; in YAML '{key}: ...')"
        )


def _parse_toml(path: Path) -> Any:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10: the same parser ships as tomli
        try:
            import tomli as tomllib
        except ModuleNotFoundError:
            raise RunError("TOML configs need Python >= 3.11 or the tomli package (`pip install tomli`)") from None
    try:
        return tomllib.loads(_read_text(path))
    except tomllib.TOMLDecodeError as error:
        raise RunError(f"config file '{path}' is not valid TOML: {error}") from None


def _parse_yaml(path: Path) -> Any:
    import yaml

    try:
        return yaml.safe_load(_read_text(path)) or {}
    except yaml.YAMLError as error:
        raise RunError(f"config file '{path}' is not valid YAML: {error}") from None


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise RunError(
            f"config file '{path}' is not UTF-8 text (byte {error.start}: {error.reason}); save it as UTF-8"
        ) from None
    except OSError as error:
        raise RunError(f"config file '{path}' cannot be read: {error.strerror or error}") from None


def _run_name(name: Any) -> str:
    """A run name is one folder under results/, never a path: --out takes paths."""
    text = str(name)
    if not text or text in (".", "..") or "/" in text or "\\" in text or Path(text).is_absolute():
        raise RunError(
            f"--name {text!r} is not a plain folder name (it would write outside results/); "
            "use a name such as 'mine', or --out <path> to choose any folder"
        )
    return text


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
    config = _read_config(args.config) if args.config else {}

    def pick(name: str, default: Any) -> Any:
        value = getattr(args, name)
        return value if value is not None else config.get(name, default)

    # What needs no registry is checked before torch is imported: a mistyped number or name fails at once.
    sigmas = _parse_sigmas(pick("sigma", DEFAULT_SIGMA))
    n_images = _integer(pick("n_images", None), "n-images", minimum=1)
    batch_size = _integer(pick("batch_size", DEFAULT_BATCH_SIZE), "batch-size", minimum=1)
    seed = _integer(pick("seed", 0), "seed", minimum=0, maximum=SEED_MAX)
    best_of = _integer(pick("best_of", 1), "best-of", minimum=1)
    _check_names_early(pick)
    import operators
    import solvers

    sets = list(config.get("set", [])) + list(args.set or [])  # config values are type-checked by _read_config
    overrides = solvers.parse_overrides(sets)
    solver_names = _resolve_solvers(pick("solvers", DEFAULT_SOLVERS))
    for name in overrides:
        if name not in solver_names:
            raise RunError(f"--set gives options for solver '{name}', which this run does not include")
    tasks_value = pick("tasks", "all")
    tasks = operators.resolve_tasks(",".join(_parse_names(tasks_value)))
    force = config.get("force", False) if not args.force else True
    compile_network = config.get("compile", False) if not args.compile else True
    out = pick("out", None)
    if out is None:
        name = pick("name", None)
        out = Path("results") / (_run_name(name) if name is not None else f"run-{datetime.date.today():%Y%m%d}")
    return RunSettings(
        solvers=solver_names,
        tasks=tasks,
        sigmas=sigmas,
        out=Path(out),
        prior=str(pick("prior", DEFAULT_PRIOR)),
        dataset=str(pick("dataset", DEFAULT_DATASET)),
        n_images=n_images,
        batch_size=batch_size,
        seed=seed,
        overrides=overrides,
        device=str(pick("device", "auto")),
        dtype=str(pick("dtype", "fp32")),
        compile=compile_network,
        force=force,
        progress=not args.no_progress,
        budget=_check_budget(pick("budget", "auto")),
        metrics=_select_metrics(pick("metrics", None)),
        noise=_check_noise(pick("noise", "gaussian")),
        best_of=best_of,
    )


def _check_names_early(pick: Callable[[str, Any], Any]) -> None:
    """Solver and task names checked before the registries (and torch) are imported, against the shipped
    catalogue where it is current (`bench.tools.catalogue`); the registries check them again, as always."""
    from bench.tools import catalogue

    shipped = catalogue.current()
    if shipped is not None:
        message = catalogue.unknown_run_name(
            shipped, _parse_names(pick("solvers", DEFAULT_SOLVERS)), _parse_names(pick("tasks", "all"))
        )
        if message:
            raise RunError(message)


def _check_noise(value: Any) -> str:
    """The name of a noise model (`operators.noise.NOISE_MODELS`); RunError with the closest name otherwise."""
    import operators

    try:
        return operators.noise_model(str(value)).name
    except operators.OperatorError as error:
        raise RunError(f"--noise (or the config key 'noise'): {error}") from None


def _select_metrics(value: Any) -> tuple[str, ...]:
    from bench import metrics

    try:
        return metrics.select(value)
    except metrics.MetricError as error:
        raise RunError(str(error)) from None


def _device_index(requested: str) -> tuple[str, int | None]:
    """'cuda:1' -> ('cuda', 1), 'cpu' -> ('cpu', None); RunError naming the valid forms for anything else."""
    kind, _, index = requested.partition(":")
    if not kind or (index and not index.isdigit()):
        raise RunError(f"unknown device {requested!r}; use cpu, cuda, cuda:<index> or auto")
    return kind, int(index) if index else None


def resolve_device(requested: str, env: Mapping[str, str], cuda_count: int) -> str:
    """The device this process computes on, from --device, the environment and the number of visible GPUs.

    Pure (no CUDA call), so that the torchrun mapping is tested on machines without GPUs. 'auto' is 'cuda'
    where a GPU is visible, else 'cpu'. Under torchrun (LOCAL_RANK set) a bare 'cuda' becomes
    cuda:<LOCAL_RANK>, one GPU per process; an explicit 'cuda:<i>' is refused when several processes share
    the node, since they would all compute on GPU i. CPU ranks stay on 'cpu'; outside torchrun 'cuda' stays
    'cuda' (the current GPU). `bench.pipeline.run` then calls torch.cuda.set_device on an indexed CUDA device.
    """
    requested = str(requested).strip().lower()
    if requested == "auto":
        requested = "cuda" if cuda_count > 0 else "cpu"
    kind, index = _device_index(requested)
    if kind != "cuda":
        return requested  # cpu (every rank shares the host), or mps and the like: nothing to map
    if cuda_count < 1:
        raise RunError(f"--device {requested} asked for, but CUDA is not available here; use --device cpu")
    local_processes = int(env.get("LOCAL_WORLD_SIZE", env.get("WORLD_SIZE", "1")))
    if "LOCAL_RANK" in env and index is None:
        index = int(env["LOCAL_RANK"])
        if index >= cuda_count:
            raise RunError(
                f"torchrun process with LOCAL_RANK {index} has no GPU of its own: {cuda_count} visible; "
                f"start at most {cuda_count} processes per node (--nproc-per-node {cuda_count})"
            )
    elif index is not None and local_processes > 1:
        raise RunError(
            f"--device {requested} would put all {local_processes} torchrun processes of this node on one GPU; "
            "use --device cuda (or auto) and each rank takes cuda:<LOCAL_RANK>"
        )
    elif index is None:
        return "cuda"  # a plain process: the current GPU, recorded as 'cuda' as rows always have been
    if index >= cuda_count:
        raise RunError(
            f"--device {requested} asked for, but only {cuda_count} GPU(s) are visible; use cuda:0 to cuda:{cuda_count - 1}"
        )
    return f"cuda:{index}"


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


def check_writable(folder: Path, subfolders: tuple[str, ...] = ()) -> None:
    """Create `folder` if needed and prove a file can be written there and in each of its `subfolders` that
    exists already (a run writes units/, traces/, sets/, images/): RunError naming the folder if not, before
    any work is done."""
    for target in (folder, *(folder / name for name in subfolders)):
        if target != folder and not target.exists():
            continue  # created in `folder`, which is checked
        _refuse_file(target, folder)
        try:
            prove_writable(target)
        except OSError as error:
            where = "output folder" if target == folder else f"folder '{target.name}' of the output folder"
            raise RunError(
                f"{where} '{target}' is not writable ({error.strerror}); fix it, or choose another with --out"
            ) from None


def _refuse_file(target: Path, folder: Path) -> None:
    """RunError when `target`, or a folder it would be made in, is a file: mkdir would say only "File exists"
    or "Not a directory", and the message would call a file "not writable"."""
    blocker = next((p for p in (target, *target.parents) if p.exists() or p.is_symlink()), None)
    if blocker is None or blocker.is_dir():
        return
    if blocker == folder:
        raise RunError(
            f"--out '{folder}' is a file, not a folder; a run writes a folder there (units/, images/, ...): "
            "choose another path with --out"
        )
    if target != folder and blocker == target:
        raise RunError(
            f"folder '{target.name}' of the output folder, '{target}', is a file, not a folder; move the file "
            "away, or choose another folder with --out"
        )
    raise RunError(
        f"--out '{folder}' lies under '{blocker}', which is a file, not a folder; choose another path with --out"
    )


def add_run_options(parser: argparse.ArgumentParser) -> None:
    """The options of `run`. They default to None so that --config values can fill them (`settings_from_args`)."""
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
    parser.add_argument(
        "--compile",
        action="store_true",
        default=None,
        help="torch.compile the prior's network (GPU runs; the first batch pays the compile time)",
    )
    parser.add_argument("--force", action="store_true", default=None, help="recompute units already done")
    parser.add_argument(
        "--budget",
        choices=BUDGETS,
        help="paper: every solver at its paper's settings; quick: fewer steps for the slow ones (DPS 100); "
        "auto (default): quick on a CPU, paper on a GPU",
    )
    parser.add_argument(
        "--metrics",
        help="metrics to score, comma-separated: exactly these, or +name to add to the defaults "
        "(e.g. +lpips-vgg,+ssim-skimage for DPS's and DDC's conventions; see `bench list metrics`); "
        "psnr and consistency are always scored",
    )
    parser.add_argument(
        "--noise",
        help="measurement noise model: gaussian (default; std σ on [0, 1]) or poisson (DPS's shot noise, std σ at "
        "mid-grey); solvers whose data term assumes Gaussian noise are recorded as unsupported under poisson",
    )
    parser.add_argument(
        "--best-of",
        type=int,
        metavar="N",
        help="run each unit's solver N times (independent draws) and keep the run of least ‖A(x̂) − y‖, as the "
        "papers report phase retrieval (best of 4); default 1",
    )
    parser.add_argument("--config", help="TOML or YAML file with any of these options; the command line overrides it")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
