"""Command line: `python -m bench <command>`.

Each command lives in its own function; heavy modules are imported inside them so `--help` starts fast.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path

LIST_SECTIONS = ("tasks", "solvers", "priors", "datasets", "metrics")


def _cmd_list(args: argparse.Namespace) -> int:
    from bench.tools import catalogue

    unknown = [name for name in args.what if name not in LIST_SECTIONS]
    if unknown:
        print(
            f"error: bench list has no section {unknown[0]!r} (sections: {', '.join(LIST_SECTIONS)})", file=sys.stderr
        )
        return 2
    sections = [section for section in LIST_SECTIONS if not args.what or section in args.what]
    shipped = catalogue.current()  # what the registries give, without importing them (None: ask them)
    for section in sections:
        if shipped is None:
            print_list_section(section)
        elif section == "datasets":
            _print_rows(section, catalogue.dataset_lines(shipped))
        else:
            print(shipped["list"][section], end="")
    return 0


def print_list_section(section: str, *, plugin_failures: bool = True) -> None:
    """One section of `bench list`, from the registries; `plugin_failures=False` leaves out the plug-ins that
    failed to load (the shipped catalogue describes the built-ins alone)."""
    if section == "tasks":
        import operators

        print("tasks (forward operators; `all` = " + ", ".join(operators.PAPER_TASKS) + "):")
        for task in operators.available():
            origin = _plugin_origin("operators", task)
            try:
                op = operators.build(task, shape=(3, 64, 64))
            except Exception as error:  # noqa: BLE001 - a plug-in's failure is listed, not raised
                print(f"  {task:<9} (does not build at 3x64x64: {type(error).__name__}: {error}){origin}")
                continue
            caps = ", ".join(c.value for c in operators.Cap if c in op.capabilities)
            print(f"  {task:<9} {caps:<48} {operators.describe(task)}{origin}")
        if plugin_failures:
            _list_plugin_failures("operators")
        print("  noise: y = A(x) + n, n ~ N(0, (2 sigma)^2 I) on [-1, 1] images; sigma on the [0, 1] pixel scale")
    elif section == "solvers":
        _list_solvers(plugin_failures)
    else:
        module = {"priors": "bench.priors", "datasets": "bench.data", "metrics": "bench.metrics"}[section]
        _print_rows(section, _registry(module), plugin_failures)


def _print_rows(section: str, rows: list[tuple[str, str]], plugin_failures: bool = True) -> None:
    print(f"\n{section}:")
    for name, description in rows:
        kind = name.partition(":")[0].partition("[")[0]
        print(f"  {name:<34} {description}{_plugin_origin(section, kind) if section == 'priors' else ''}")
    if section == "priors" and plugin_failures:
        _list_plugin_failures("priors")


def _plugin_origin(kind: str, name: str) -> str:
    from bench import plugins

    origin = plugins.origin(kind, name)
    return f" [plug-in from {origin}]" if origin else ""


def _list_plugin_failures(kind: str) -> None:
    """Plug-ins of this kind that failed to load, each with its error (they also warned on stderr)."""
    from bench import plugins

    for failure in plugins.failures(kind):
        print(f"  {failure.name}: NOT LOADED, plug-in {failure.target} from {failure.distribution}: {failure.error}")


def _list_solvers(plugin_failures: bool = True) -> None:
    import dataclasses

    import solvers

    print("\nsolvers (requires: operator capabilities; +noisy: extra needs at sigma > 0):")
    width = max(map(len, solvers.available()))
    for name in solvers.available():
        solver = solvers.build(name)
        needs = ", ".join(sorted(c.value for c in solver.requires))
        noisy = ", ".join(sorted(c.value for c in solver.requires_when_noisy))
        optional = ", ".join(sorted(c.value for c in solver.uses_when_available))
        grad = "; backprops through the network" if solver.backprop_through_network else ""
        grad += "" if solver.uses_prior else "; does not use the diffusion prior"
        print(f"  {name:<{width}}  {solver.summary}{_plugin_origin('solvers', name)}")
        optional = f"; uses where offered: {optional}" if optional else ""
        print(f"  {'':<{width}}  requires: {needs}{f'; +noisy: {noisy}' if noisy else ''}{optional}{grad}")
        defaults = ", ".join(f"{k}={v}" for k, v in dataclasses.asdict(solver.config).items())
        print(f"  {'':<{width}}  defaults: {defaults or '(none)'}")
    if plugin_failures:
        _list_plugin_failures("solvers")


def _cmd_matrix(args: argparse.Namespace) -> int:
    from bench.tools import catalogue

    shipped = catalogue.current()
    if shipped is None:
        from bench.tools.matrix import support_matrix

        print(support_matrix())
    else:
        print(shipped["matrix"])
    return 0


def _cmd_validate(args: argparse.Namespace) -> int:
    import solvers
    from bench.tools.validate import format_report, parse_sets, validate, write_json

    cls = solvers.load_class(args.solver) if ":" in args.solver else solvers.get(args.solver)
    options = parse_sets(args.set, cls.name)
    tasks = args.tasks.split(",") if args.tasks else None
    report = validate(args.solver, options, draws=args.draws, seed=args.seed, tasks=tasks, solver_class=cls)
    print(format_report(report))
    if args.json:
        print(f"report written to {write_json(report, args.json)}")
    return 1 if report.failures() else 0


def _cmd_report(args: argparse.Namespace) -> int:
    from bench.report import latest_results, render_report

    results = args.results or latest_results("results")
    out = render_report(results, args.out, ci=args.ci)
    print(f"report of {results} written to {out} (open {out / 'index.html'})")
    return 0


def _cmd_fetch_weights(args: argparse.Namespace) -> int:
    from bench import weights

    names = args.names or weights.available()
    if args.cache:
        os.environ[weights.CACHE_ENV] = args.cache
    failed = 0
    for name in names:
        try:
            path = weights.resolve(name)
        except weights.WeightsError as error:
            failed += 1
            print(f"error: {error}", file=sys.stderr)
            continue
        print(f"{name:<14} {path}  ({weights.describe(name)})")
    if not failed:
        print(
            f"all {len(names)} weight file(s) are in {weights.cache_dir()}; a node that runs offline needs this folder "
            f"(copy it there, or point ${weights.CACHE_ENV} at a shared copy)"
        )
    return 1 if failed else 0


def _cmd_score(args: argparse.Namespace) -> int:
    from bench.metrics import spec
    from bench.pipeline.rescore import rescore
    from bench.report import latest_results

    results = Path(args.results) if args.results else latest_results("results")
    if not (results / "units").is_dir():
        print(
            f"error: '{results}' holds no run (no units/ folder); pass the folder `bench run --out` wrote",
            file=sys.stderr,
        )
        return 2
    added = [name.strip().lstrip("+") for name in (args.metrics or "").split(",") if name.strip()]
    for name in added:
        spec(name)  # an unknown name is an error with a suggestion
    result = rescore(results, added, device=args.device)
    print(
        f"{results}: {result.scores} score(s) filled in on {result.units} unit(s) from the saved PNGs; "
        f"{result.sets} FID/KID set(s) computed again"
    )
    for line in result.left:
        print(f"  not scored: {line}", file=sys.stderr)
    return 1 if result.left else 0


def _registry(module_name: str) -> list[tuple[str, str]]:
    import importlib

    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name != module_name:
            raise
        return [("(none yet)", f"{module_name} is not part of this version")]
    return [(str(name), str(description)) for name, description in module.available()]


def _train_config(args: argparse.Namespace):
    from bench.training import TrainConfig

    _check_steps(args.steps, getattr(args, "init", None))
    return TrainConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        checkpoint_every=args.checkpoint_every,
        snapshot_steps=tuple(args.snapshot_steps),
        seed=args.seed,
        device=args.device,
        amp_dtype=None if args.amp == "none" else args.amp,
        max_wall_seconds=None if args.max_minutes is None else 60.0 * args.max_minutes,
    )


def _cmd_train_prior(args: argparse.Namespace) -> int:
    from bench.priors.train import train_prior

    final = train_prior(
        args.data,
        args.out,
        size=args.size,
        channels=args.channels,
        config=_train_config(args),
        resume=args.resume,
        workers=args.workers,
    )
    print(f"trained prior written to {final} (load it with --prior diffusers:{final})")
    return 0


def _cmd_train_denoiser(args: argparse.Namespace) -> int:
    import dataclasses

    from solvers.pnp_admm.train import train_denoiser

    config = dataclasses.replace(
        _train_config(args),
        lr_schedule=args.lr_schedule,
        **({} if args.warmup_steps is None else {"warmup_steps": args.warmup_steps}),
    )
    final = train_denoiser(
        args.data,
        args.out,
        size=args.size,
        channels=args.channels,
        config=config,
        resume=args.resume,
        sigma_max=args.sigma_max,
        workers=args.workers,
        init=args.init,
        bn_batches=args.bn_batches,
    )
    print(f"trained denoiser written to {final}")
    return 0


def _cmd_train_ddc(args: argparse.Namespace) -> int:
    import operators
    from solvers.ddc.train import ddc_train_config, train_ddc

    base = _train_config(args)
    config = ddc_train_config(
        steps=base.steps,
        batch_size=base.batch_size,
        lr=base.lr,
        checkpoint_every=base.checkpoint_every,
        snapshot_steps=base.snapshot_steps,
        seed=base.seed,
        device=base.device,
        amp_dtype=base.amp_dtype,
        max_wall_seconds=base.max_wall_seconds,
        **({} if args.warmup_steps is None else {"warmup_steps": args.warmup_steps}),
    )
    final = train_ddc(
        args.prior,
        args.data,
        args.out,
        config=config,
        tasks=_weighted_tasks(operators.resolve_tasks(args.tasks), args.task_weights),
        sigma_max=args.sigma_max,
        use_lpips=not args.no_lpips,
        y_to_image=args.y_to_image,
        inpaint_unobserved=args.inpaint_unobserved,
        clip_x0=not args.no_clip_x0,
        phi_channels=_int_list(args.phi_channels, "--phi-channels"),
        timesteps=args.timesteps,
        timestep_jitter=args.timestep_jitter,
        sampler_steps=args.sampler_steps,
        chain_fraction=args.chain_fraction,
        init=args.init,
        output_dc=args.output_dc,
        resume=args.resume,
        workers=args.workers,
    )
    print(f"trained DDC network written to {final} (use it with --set ddc.network={final})")
    return 0


def _cmd_import_ddc(args: argparse.Namespace) -> int:
    from solvers.ddc.official import import_official

    dest, provenance = import_official(
        args.src, args.dest, variant=args.variant, prior_checkpoint=args.prior_checkpoint, force=args.force
    )
    dropped = ", ".join(f"{k}={v}" for k, v in provenance["dropped_config_fields"].items()) or "none"
    print(f"dropped from config.json (EMA and private fields, not UNet2DModel arguments): {dropped}")
    if not provenance["official_architecture"]:
        print(f"note: not the released architecture ({provenance['parameters']:,} parameters, not 113,676,675)")
    if provenance["prior"]["checkpoint_sha256"] is None:
        print("note: no --prior-checkpoint: the sampler cannot check that the prior holds the ADM weights φ expects")
    print(
        f"imported DDC φ '{args.variant}' to {dest} (clip_x0=false, inpaint_unobserved=noise); run it with "
        f"--prior adm:<256x256_diffusion_uncond.pt> --solvers ddc --set ddc.network={dest}"
    )
    return 0


def _cmd_train_bridge(args: argparse.Namespace) -> int:
    import dataclasses

    from solvers.cddb.train import BRIDGE_OPTIMIZER, train_bridge

    optimizer = {k: v for k, v in BRIDGE_OPTIMIZER.items() if k != "lr"}  # --lr has its own default
    if args.warmup_steps is not None:
        optimizer["warmup_steps"] = args.warmup_steps
    config = dataclasses.replace(_train_config(args), **optimizer)
    final = train_bridge(
        args.task,
        args.data,
        args.out,
        config=config,
        size=args.size,
        channels=args.channels,
        sigma=args.sigma,
        beta_max=args.beta_max,
        block_out_channels=_int_list(args.bridge_channels, "--bridge-channels"),
        cond_x1=args.cond_x1,
        resume=args.resume,
        workers=args.workers,
    )
    print(
        f"trained bridge written to {final} (use it with --set cddb.bridge={final}, or copy it to "
        f"bench/assets/cddb-{args.task}-{args.size})"
    )
    return 0


def _cmd_import_bridge(args: argparse.Namespace) -> int:
    from solvers.cddb.official import import_bridge

    dest = import_bridge(args.src, args.dest, task=args.task, adm_options=args.adm_options)
    print(f"imported bridge written to {dest} (use it with --set cddb.bridge={dest})")
    return 0


def _int_list(text: str, flag: str) -> tuple[int, ...]:
    from bench.pipeline.settings import positive_ints

    try:
        return positive_ints(text, flag)
    except argparse.ArgumentTypeError as error:
        raise SystemExit(f"error: {error}") from None


def _weighted_tasks(tasks: list[str], weights: str | None) -> list[str]:
    """The task list with each task repeated by its whole-number weight (`sr4=2,sr8=2`): the trainer draws one
    entry of the list per batch, so a task listed k times is drawn k times as often as a task listed once."""
    if not weights:
        return tasks
    counts = dict.fromkeys(tasks, 1)
    for item in weights.split(","):
        name, _, value = item.strip().partition("=")
        if name not in counts:
            raise SystemExit(
                f"error: --task-weights names '{name}', which is not in --tasks ({', '.join(tasks)}); "
                "weight only the tasks you train"
            )
        if not value.isdigit() or int(value) < 1:
            raise SystemExit(f"error: --task-weights '{item}': the weight must be a whole number >= 1, e.g. {name}=2")
        counts[name] = int(value)
    return [name for name in tasks for _ in range(counts[name])]


def _check_steps(steps: int, init: str | None) -> None:
    """ValueError for --steps below 1: the trainer would save its random initial weights as the result.

    --steps 0 stays allowed with --init, which saves the given network back (train-denoiser recomputes its
    batch-norm statistics that way)."""
    if steps >= 1 or (steps == 0 and init is not None):
        return
    raise ValueError(
        f"--steps {steps} trains nothing, so the saved network would be its random initialisation; "
        "give --steps 1 or more (--steps 0 only with --init, to save a given network back)"
    )


def _noise_level(text: str) -> float:
    """argparse type of --sigma-max and train-bridge's --sigma: a finite noise std >= 0 on [0, 1] pixels."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(
            f"must be a noise std >= 0 on the [0, 1] pixel scale (e.g. 0.05), got {text!r}"
        )
    return value + 0.0  # -0 becomes 0


def _add_training_options(
    parser: argparse.ArgumentParser, *, steps: int, batch_size: int, lr: float, size: int | None
) -> None:
    parser.add_argument("--data", required=True, help="folder of training photos (never the evaluation set)")
    parser.add_argument("--out", required=True, help="output folder (checkpoints under train/, result in final/)")
    if size is not None:  # None: the image size and channels are the prior's
        parser.add_argument("--size", type=int, default=size, help="crop size in pixels (default: %(default)s)")
        parser.add_argument("--channels", type=int, choices=[1, 3], default=3)
    parser.add_argument("--steps", type=int, default=steps, help="total optimisation steps (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=batch_size, help="(default: %(default)s)")
    parser.add_argument("--lr", type=float, default=lr, help="AdamW learning rate (default: %(default)s)")
    parser.add_argument("--checkpoint-every", type=int, default=1000, help="steps between checkpoints")
    parser.add_argument("--snapshot-steps", type=int, nargs="*", default=[], help="also save the EMA at these steps")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--amp", choices=["none", "bf16", "fp16"], default="none", help="mixed precision on GPUs")
    parser.add_argument("--workers", type=int, default=0, help="data-loading processes (resume is exact only with 0)")
    parser.add_argument("--max-minutes", type=float, default=None, help="stop (with a checkpoint) after this long")
    parser.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmark diffusion-model solvers of image inverse problems on one matrix of tasks.",
    )
    parser.add_argument("--version", action="version", version=_version())
    commands = parser.add_subparsers(dest="command", metavar="<command>")
    commands.required = True

    listing = commands.add_parser("list", help="show the registered tasks, priors, datasets and metrics")
    # Checked in _cmd_list: argparse of Python 3.11 tests an empty nargs="*" list against `choices` and fails.
    listing.add_argument(
        "what", nargs="*", default=[], help=f"sections to show: {', '.join(LIST_SECTIONS)} (default: all)"
    )
    listing.set_defaults(func=_cmd_list)

    try:
        from bench.pipeline.run import add_run_parser  # the run command defines its own options
    except ModuleNotFoundError as error:
        if error.name != "bench.pipeline.run":
            raise
    else:
        add_run_parser(commands)

    from bench.tools.speed import add_speed_parser

    add_speed_parser(commands)

    from bench.tools.compare import add_compare_parser
    from bench.tools.export import add_export_parser

    add_compare_parser(commands)
    add_export_parser(commands)

    matrix = commands.add_parser("matrix", help="print the solver x task support table (Markdown)")
    matrix.set_defaults(func=_cmd_matrix)

    check = commands.add_parser(
        "validate", help="check a solver against the contract and the exact posteriors of the Gaussian prior"
    )
    check.add_argument("solver", help="a solver name (see `bench list solvers`) or package.module:Class")
    check.add_argument("--set", action="append", default=[], metavar="SOLVER.OPTION=VALUE", help="solver option")
    check.add_argument("--json", metavar="FILE", help="also write the report as JSON")
    check.add_argument("--draws", type=int, default=16, help="solver draws per measurement (default: %(default)s)")
    check.add_argument("--seed", type=int, default=0, help="seed of the truths, noise and generators")
    check.add_argument("--tasks", help="comma-separated tasks (default: every task; 'all' = the paper's five)")
    check.set_defaults(func=_cmd_validate)

    report = commands.add_parser("report", help="render a run's tables, figures and image grids (HTML, Markdown)")
    report.add_argument("--results", help="run folder (default: the most recently modified one under results/)")
    report.add_argument("--out", help="report folder, replaced as a whole (default: reports/<run folder name>)")
    report.add_argument("--ci", action="store_true", help="add 95%% confidence intervals over images to the tables")
    report.set_defaults(func=_cmd_report)

    fetch = commands.add_parser(
        "fetch-weights",
        help="fetch and convert the metric networks (LPIPS, FID Inception) into the bench cache ahead of an offline run",
    )
    fetch.add_argument("names", nargs="*", help="weights to fetch (default: all; see bench.weights.available())")
    fetch.add_argument("--cache", help="cache folder (default: $BENCH_CACHE or ~/.cache/diffusion-inverse-bench)")
    fetch.set_defaults(func=_cmd_fetch_weights)

    score = commands.add_parser(
        "score", help="fill in a run's missing metrics (and failed FID/KID sets) from its saved images, no solving"
    )
    score.add_argument("--results", help="run folder (default: the most recently modified one under results/)")
    score.add_argument("--metrics", help="per-image metrics to add to every unit, comma-separated, e.g. lpips-vgg")
    score.add_argument("--device", default="cpu", help="device for the metric networks (default: cpu)")
    score.set_defaults(func=_cmd_score)

    train = commands.add_parser("train-prior", help="train a diffusion prior (a diffusers UNet2DModel) on photos")
    _add_training_options(train, steps=100_000, batch_size=32, lr=2e-4, size=64)
    train.set_defaults(func=_cmd_train_prior)

    denoiser = commands.add_parser("train-denoiser", help="train a DnCNN Gaussian denoiser (for PnP-ADMM) on photos")
    _add_training_options(denoiser, steps=20_000, batch_size=64, lr=1e-3, size=40)
    denoiser.add_argument(
        "--sigma-max", type=_noise_level, default=55 / 255, help="noise levels drawn from [0, this] on the [0, 1] scale"
    )
    denoiser.add_argument("--init", default=None, help="start from the DnCNN in this folder (e.g. bench/assets/dncnn)")
    denoiser.add_argument(
        "--bn-batches",
        type=int,
        default=32,
        help="training batches over which the saved EMA's batch-norm statistics are recomputed (default: %(default)s)",
    )
    denoiser.add_argument("--warmup-steps", type=int, default=None, help="linear learning-rate warm-up (default: 500)")
    denoiser.add_argument(
        "--lr-schedule", choices=["constant", "cosine"], default="constant", help="after warm-up (default: constant)"
    )
    denoiser.set_defaults(func=_cmd_train_denoiser)

    bridge = commands.add_parser("train-bridge", help="train an I²SB bridge network for one task (for CDDB) on photos")
    _add_training_options(bridge, steps=20_000, batch_size=16, lr=3e-4, size=64)
    bridge.add_argument("--task", required=True, help="the one task this bridge inverts (e.g. jpeg10, sr4)")
    bridge.add_argument(
        "--sigma",
        type=float,
        default=0.0,
        help="measurement noise std on [0, 1] (default 0: the DDC paper's CDDB setting)",
    )
    bridge.add_argument("--beta-max", type=float, default=0.3, help="the bridge's β_max (I²SB: 0.3 for SR and JPEG)")
    bridge.add_argument("--bridge-channels", default="32,64,128,128", help="UNet block widths (default: %(default)s)")
    bridge.add_argument("--cond-x1", action="store_true", help="also give the network x₁ = A⁺y (I²SB --cond-x1)")
    bridge.add_argument("--warmup-steps", type=int, default=None, help="linear learning-rate warm-up (default: 200)")
    bridge.set_defaults(func=_cmd_train_bridge)

    imported = commands.add_parser(
        "import-bridge", help="import a released I²SB / CDDB bridge (latest.pt + options.pkl) as a bridge folder"
    )
    imported.add_argument("src", help="the folder holding latest.pt and options.pkl")
    imported.add_argument("dest", help="the bridge folder to write (replaced whole)")
    imported.add_argument(
        "--task",
        choices=["sr4", "sr4-pool", "sr4-ddrm", "jpeg10"],
        help="check that the bridge is for this task (sr4: either x4 degradation)",
    )
    imported.add_argument(
        "--adm-options",
        default=None,
        help="I²SB's data/256x256_diffusion_*_fixedsigma.pkl (the ADM's create_model arguments); default: its values",
    )
    imported.set_defaults(func=_cmd_import_bridge)

    ddc = commands.add_parser("train-ddc", help="train DDC's data-consistency network (Algorithm 2) on photos")
    _add_training_options(ddc, steps=160_000, batch_size=8, lr=1e-4, size=None)
    ddc.add_argument("--prior", default="natural64", help="the frozen prior whose x̂₀ is corrected")
    ddc.add_argument("--tasks", default="sr4,sr8,gblur,inpaint,jpeg10,denoise", help="one drawn per batch")
    ddc.add_argument(
        "--task-weights",
        default=None,
        help="draw some tasks more often: 'sr4=2,sr8=2' draws each of them twice as often as a task left out "
        "(whole numbers; recorded in the provenance's task list)",
    )
    ddc.add_argument("--sigma-max", type=_noise_level, default=0.05, help="y noise std u*2*sigma_max, u ~ U(0, 1)")
    ddc.add_argument("--no-lpips", action="store_true", help="train the paper's 'DDC w/o LPIPS' variant")
    # Literal choices, so that --help needs no torch (tests/test_ddc.py checks them against solvers.ddc's).
    ddc.add_argument(
        "--y-to-image",
        choices=["replicate", "pinv", "pinv-if-smaller"],
        default="replicate",
        help="how y reaches image size for φ: nearest replication (official), A⁺y, or A⁺y only where y is "
        "smaller than the image (no block mosaic on SR; docs/ddc/natural64.md)",
    )
    ddc.add_argument(
        "--inpaint-unobserved",
        choices=["zero", "mean"],
        default="zero",
        help="what φ sees in pixels y does not observe: zero (as Operator.measure leaves them) or the observed "
        "pixels' channel means (no grey inpainting; docs/ddc/natural64.md)",
    )
    ddc.add_argument(
        "--no-clip-x0",
        action="store_true",
        help="give φ the prior's x̂₀ unclipped, as the official code does (default: clipped to [-1, 1])",
    )
    ddc.add_argument(
        "--warmup-steps", type=int, default=None, help="linear learning-rate warm-up before the cosine (default: 1000)"
    )
    ddc.add_argument(
        "--phi-channels",
        default="32,64,128,128",
        help="φ's UNet block widths, one per resolution level (default: %(default)s)",
    )
    ddc.add_argument(
        "--timesteps",
        choices=["uniform", "sampler"],
        default="uniform",
        help="t ~ U{0..T-1} as the paper's Alg. 2 (uniform), or only the sampler's timesteps (sampler)",
    )
    ddc.add_argument("--timestep-jitter", type=int, default=0, help="with --timesteps sampler: t moved by up to ±this")
    ddc.add_argument("--sampler-steps", type=int, default=5, help="the sampler whose timesteps are trained (default 5)")
    ddc.add_argument(
        "--chain-fraction",
        type=float,
        default=0.0,
        help="share of batches whose x_t comes from running the sampler with the current φ (default 0: Alg. 2)",
    )
    ddc.add_argument("--init", default=None, help="start from the φ weights in this folder (e.g. a shipped asset)")
    ddc.add_argument(
        "--output-dc",
        action="store_true",
        help="let the per-image channel means through φ's last normalisation, so Δ can shift colours (see DeltaNetwork)",
    )
    ddc.set_defaults(func=_cmd_train_ddc)

    imported = commands.add_parser(
        "import-ddc", help="import the DDC authors' released φ (diffusers folder) as a φ folder with provenance"
    )
    imported.add_argument("src", help="the authors' folder: config.json + diffusion_pytorch_model.safetensors")
    imported.add_argument("dest", help="the φ folder to write (pass it with --set ddc.network=DEST)")
    imported.add_argument("--variant", choices=["standard", "wolpips"], default="standard", help="which release")
    imported.add_argument(
        "--prior-checkpoint", help="your 256x256_diffusion_uncond.pt: its sha256 is recorded and checked at run time"
    )
    imported.add_argument("--force", action="store_true", help="replace DEST if it exists")
    imported.set_defaults(func=_cmd_import_ddc)
    return parser


def _version() -> str:
    from bench import __version__

    return f"diffusion-inverse-bench {__version__}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, FileExistsError) as error:
        # Input errors carry a message naming the problem and the fix: show it, not a traceback
        # (BENCH_DEBUG=1 shows the traceback too).
        if os.environ.get("BENCH_DEBUG"):
            raise
        print(f"error: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        if os.environ.get("BENCH_DEBUG"):
            raise
        import errno

        if error.errno in (errno.ENOSPC, errno.EDQUOT):
            where = f" writing {error.filename}" if error.filename else ""
            print(
                f"error: the disk is full{where}. Every unit written before this point is kept (writes are atomic); "
                "free some space and run the same command again: it resumes where it stopped.",
                file=sys.stderr,
            )
        else:
            print(f"error: {error}", file=sys.stderr)
        return 3


if __name__ == "__main__":
    raise SystemExit(main())
