"""Command line: `python -m bench <command>`.

Each command lives in its own function; heavy modules are imported inside them so `--help` starts fast.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence


def _cmd_list(args: argparse.Namespace) -> int:
    import operators

    sections = args.what or ["tasks", "priors", "datasets", "metrics"]
    if "tasks" in sections:
        print("tasks (forward operators; `all` = " + ", ".join(operators.PAPER_TASKS) + "):")
        for task in operators.available():
            op = operators.build(task, shape=(3, 64, 64))
            caps = ", ".join(c.value for c in operators.Cap if c in op.capabilities)
            print(f"  {task:<9} {caps:<48} {operators.describe(task)}")
        print("  noise: y = A(x) + n, n ~ N(0, (2 sigma)^2 I) on [-1, 1] images; sigma on the [0, 1] pixel scale")
    for section, module in (("priors", "bench.priors"), ("datasets", "bench.data"), ("metrics", "bench.metrics")):
        if section not in sections:
            continue
        print(f"\n{section}:")
        for name, description in _registry(module):
            print(f"  {name:<34} {description}")
    return 0


def _registry(module_name: str) -> list[tuple[str, str]]:
    import importlib

    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name != module_name:
            raise
        return [("(none yet)", f"{module_name} is not part of this version")]
    return [(str(name), str(description)) for name, description in module.available()]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmark diffusion-model solvers of image inverse problems on one matrix of tasks.",
    )
    parser.add_argument("--version", action="version", version=_version())
    commands = parser.add_subparsers(dest="command", metavar="<command>")
    commands.required = True

    listing = commands.add_parser("list", help="show the registered tasks, priors, datasets and metrics")
    listing.add_argument(
        "what", nargs="*", choices=["tasks", "priors", "datasets", "metrics"], help="sections to show (default: all)"
    )
    listing.set_defaults(func=_cmd_list)
    return parser


def _version() -> str:
    from bench import __version__

    return f"diffusion-inverse-bench {__version__}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError) as error:
        # Input errors carry a message naming the problem and the fix: show it, not a traceback
        # (BENCH_DEBUG=1 shows the traceback too).
        if os.environ.get("BENCH_DEBUG"):
            raise
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
