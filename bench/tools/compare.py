"""`python -m bench compare <before> <after>`: two run folders compared unit by unit.

Units are matched by their key (`bench.pipeline.units.unit_key`, which changes with any change of a unit's definition),
so two folders of the same command on the same code compare row for row. The report lists keys found in one
folder only, columns added or removed, status changes, and per score column how many rows are bit-identical,
within `--atol`, or differ (with the largest difference and where it is). Traces and FID/KID set rows are
compared the same way, by (key, step) and by set key, and each matched unit's PNGs (reconstruction,
reference, measurement) byte by byte. Columns that differ by nature (timings, memory, the
commit, the part file) are not compared. Exit status 0 when every compared value agrees within the tolerance,
1 otherwise; 2 for a folder without results.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench import metrics  # the declarations only: torch-free

if TYPE_CHECKING:  # pandas is imported when the command runs, so `--help` starts fast
    import pandas as pd

# Columns always listed with their counts, even when they agree: every declared metric's, and the traces'.
SCORES = (*(m.column for m in metrics.specs()), "kid_std", "kurtosis", "residual")
# Columns a repeat of the same command is not expected to reproduce.
VOLATILE = {
    "part",
    "wall_s",
    "network_s",
    "own_network_s",
    "peak_memory_bytes",
    "warmup",
    "git_commit",
    "torch_version",
    "bench_version",
    "rank",
}


def _differences(a: pd.Series, b: pd.Series, atol: float) -> dict[str, object]:
    """Counts of bit-identical, close and differing values of two aligned columns (NaN equals NaN)."""
    import numpy as np
    import pandas as pd

    if pd.api.types.is_numeric_dtype(a) and pd.api.types.is_numeric_dtype(b):
        x, y = a.to_numpy(dtype=float), b.to_numpy(dtype=float)
        both_nan = np.isnan(x) & np.isnan(y)
        identical = both_nan | (x == y)
        gap = np.where(both_nan, 0.0, np.abs(x - y))
        gap = np.where(np.isnan(gap), math.inf, gap)
        close = gap <= atol
        worst = int(np.argmax(gap)) if len(gap) else 0
        return {
            "identical": int(identical.sum()),
            "close": int((close & ~identical).sum()),
            "differ": int((~close).sum()),
            "max_abs_diff": float(gap.max()) if len(gap) else 0.0,
            "worst": a.index[worst] if len(gap) and gap.max() > 0 else None,
        }
    missing = a.isna().to_numpy() & b.isna().to_numpy()  # None and NaN both mean "no value"
    same = missing | (a.astype(object).to_numpy() == b.astype(object).to_numpy())
    return {"identical": int(same.sum()), "close": 0, "differ": int((~same).sum()), "max_abs_diff": None, "worst": None}


def compare_tables(
    name: str, before: pd.DataFrame, after: pd.DataFrame, index: list[str], atol: float, columns: list[str] | None
) -> bool:
    """Print the comparison of one table; True when every compared value agrees within `atol`."""
    print(f"== {name}: {len(before)} rows before, {len(after)} after")
    if before.empty and after.empty:
        return True
    added = [c for c in after.columns if c not in before.columns]
    removed = [c for c in before.columns if c not in after.columns]
    if added:
        print(f"   columns added: {', '.join(added)}")
    if removed:
        print(f"   columns removed: {', '.join(removed)}")
    a, b = before.set_index(index).sort_index(), after.set_index(index).sort_index()
    only_before, only_after = a.index.difference(b.index), b.index.difference(a.index)
    if len(only_before) or len(only_after):
        print(f"   rows only before: {len(only_before)}, only after: {len(only_after)}")
    shared = a.index.intersection(b.index)
    print(f"   rows matched: {len(shared)}")
    a, b = a.loc[shared], b.loc[shared]
    compared = columns or [c for c in a.columns if c in b.columns and c not in VOLATILE]
    agree = not (len(only_before) or len(only_after))
    quiet = 0
    for column in [c for c in compared if c in a.columns and c in b.columns]:
        result = _differences(a[column], b[column], atol)
        if result["differ"] or column in SCORES or result["close"]:
            extra = f", max |diff| {result['max_abs_diff']:.3g} at {result['worst']}" if result["max_abs_diff"] else ""
            print(
                f"   {column}: {result['identical']} identical, {result['close']} within {atol:g}, "
                f"{result['differ']} differ{extra}"
            )
        else:
            quiet += 1
        agree = agree and result["differ"] == 0
    if quiet:
        print(f"   {quiet} other columns compared: all identical")
    return agree


def _pixels(path: Path) -> Any:
    import numpy as np
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image, dtype=np.int16)


def compare_images(before: Path, after: Path, units_before: pd.DataFrame, units_after: pd.DataFrame) -> bool:
    """Print how many of the matched units' PNGs (reconstruction, reference, measurement) are byte-identical;
    for the others, the largest pixel difference (of 255). True when every PNG one folder has, the other has
    too, byte for byte."""
    from bench.pipeline.store import row_image_paths

    a, b = units_before.set_index("key"), units_after.set_index("key")
    shared = a.index.intersection(b.index)
    counts = {"identical": 0, "differ": 0, "missing": 0}
    worst: tuple[int, str] = (0, "")
    for key in shared:
        if a.loc[key].get("status") != "ok" or b.loc[key].get("status") != "ok":
            continue  # only a finished unit wrote images
        try:
            pairs = list(zip(row_image_paths(before, a.loc[key]), row_image_paths(after, b.loc[key]), strict=True))
        except (TypeError, ValueError):
            continue  # a row that names no image and lacks the fields of the earlier layout (seed, version)
        for one, other in pairs:
            present = [path is not None and path.is_file() for path in (one, other)]
            if not any(present):
                continue  # a unit that wrote no image (failed, unsupported), or no A⁺ to show y with
            if not all(present):
                counts["missing"] += 1
            elif one.read_bytes() == other.read_bytes():
                counts["identical"] += 1
            else:
                counts["differ"] += 1
                x, y = _pixels(one), _pixels(other)
                gap = int(abs(x - y).max()) if x.shape == y.shape else 255
                worst = max(worst, (gap, str(other.relative_to(after))))
    detail = f", largest pixel difference {worst[0]}/255 at {worst[1]}" if counts["differ"] else ""
    print(
        f"== images: {counts['identical']} PNGs identical, {counts['differ']} differ, {counts['missing']} missing{detail}"
    )
    return counts["differ"] == 0 and counts["missing"] == 0


def compare_runs(before: Path, after: Path, atol: float = 1e-6, columns: list[str] | None = None) -> int:
    """Print the comparison of two run folders; 0 when they agree within `atol`, 1 when not, 2 for an empty one."""
    from bench.pipeline.store import ResultStore

    stores = [ResultStore(folder) for folder in (before, after)]
    units = [store.units() for store in stores]
    for folder, table in zip((before, after), units, strict=True):
        if table.empty:
            print(f"{folder} holds no unit rows (no {folder / 'units'}/part-*.parquet)", file=sys.stderr)
            return 2
    ok = compare_tables("units", *units, ["key"], atol, columns)
    traces = [store.traces() for store in stores]
    ok &= compare_tables("traces", *traces, ["key", "step"], atol, None)
    sets = [store.sets() for store in stores]
    ok &= compare_tables("sets", *sets, ["set_key"], atol, None)
    ok &= compare_images(before, after, *units)
    print("agree" if ok else "DIFFER")
    return 0 if ok else 1


def add_compare_parser(commands: Any) -> None:
    """The `compare` subcommand."""
    parser = commands.add_parser(
        "compare", help="compare two run folders unit by unit: keys, statuses, scores (exit 1 when they differ)"
    )
    parser.add_argument("before", type=Path, help="run folder (as `bench run --out` wrote it)")
    parser.add_argument("after", type=Path, help="run folder to compare with it")
    parser.add_argument("--atol", type=float, default=1e-6, help="absolute tolerance of numeric columns (1e-6)")
    parser.add_argument("--columns", help="compare only these unit columns (comma-separated); default: all stable")
    parser.set_defaults(func=_cmd_compare)


def _cmd_compare(args: argparse.Namespace) -> int:
    columns = [c.strip() for c in args.columns.split(",")] if args.columns else None
    return compare_runs(args.before, args.after, args.atol, columns)
