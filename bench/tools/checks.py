"""The command line of an experiment's check script: read a run folder, test its targets, print them as a
Markdown table (PASS/MISS with the figure), optionally write them as JSON, exit 1 when one is missed.

A check function takes the run folder and returns rows {"target": str, "pass": bool, "figure": str}; it reads
the store through `bench.pipeline.store.ResultStore` (experiments/*/check.py).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.files import atomic_write_json

Check = Callable[[Path], list[dict[str, Any]]]


def run_checks(checks: Check, description: str, default_folder: str, argv: list[str] | None = None) -> int:
    """Parse `results [--json FILE]`, run `checks` on the folder, print the table; the exit code says it all."""
    parser = argparse.ArgumentParser(description=description.split("\n\n")[0])
    parser.add_argument("results", type=Path, help=f"the run folder (default config: {default_folder})")
    parser.add_argument("--json", type=Path, help="also write the checks to this JSON file")
    args = parser.parse_args(argv)
    return report_checks(checks(args.results), args.json)


def report_checks(rows: list[dict[str, Any]], json_path: Path | None = None) -> int:
    """Print the rows as a Markdown table (PASS/MISS with the figure), write them as JSON where asked; the exit
    code: 0 when every target is met."""
    print("| target | result | figure |\n|---|---|---|")
    for row in rows:
        print(f"| {row['target']} | {'PASS' if row['pass'] else 'MISS'} | {row['figure']} |")
    if json_path:
        atomic_write_json(json_path, {"checks": rows})
    return 0 if all(row["pass"] for row in rows) else 1
