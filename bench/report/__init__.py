"""`python -m bench report`: render a run folder's results as tables, figures, grids and one HTML page.

Reads only the parquet store and the PNGs (never torch), and writes `reports/<name>/`:

    index.html, report.md                 the whole report (HTML is self-contained, images beside it)
    tables/quality_sigma<σ>.{md,tex,csv}  the paper-style quality table of each noise level
    tables/runtime.{md,tex,csv}           NFE, seconds per image, network share, peak memory
    figures/*.png                         kurtosis of ε̂, quality against runtime, noise and steps studies
    grids/<task>_sigma<σ>.png             ground truth | A⁺y | each method

A re-run replaces the folder as a whole (see `bench.report.swap`).
"""

from __future__ import annotations

from pathlib import Path

from bench.report.load import ReportError, latest_results, load_store
from bench.report.swap import MARKER, replace_folder

__all__ = ["ReportError", "latest_results", "render_report"]


def render_report(results: str | Path, out: str | Path | None = None, ci: bool = False) -> Path:
    """Render the report of run folder `results` into `out` (default reports/<results name>); returns `out`."""
    from bench.report.content import build_report
    from bench.report.html import render_html
    from bench.report.markdown import render_markdown

    store = load_store(results)
    out = Path(out) if out is not None else Path("reports") / store.root.name
    _check_out(out, store.root)

    def write(folder: Path) -> None:
        report = build_report(store, folder, ci=ci)
        (folder / "report.md").write_text(render_markdown(report), encoding="utf-8")
        (folder / "index.html").write_text(render_html(report), encoding="utf-8")

    replace_folder(out, write)
    return out


def _check_out(out: Path, results: Path) -> None:
    """Refuse to replace a folder that is not a report (or that holds the results)."""
    target, source = out.resolve(), results.resolve()
    if target == source or target in source.parents or source in target.parents:
        raise ReportError(f"--out '{out}' overlaps the results folder '{results}'; choose a folder under reports/")
    _check_writable(out.parent)
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / MARKER).exists())):
        raise ReportError(
            f"--out '{out}' exists and is not a report folder (no {MARKER} file), so it is not replaced; "
            "choose another --out or remove it"
        )


def _check_writable(folder: Path) -> None:
    """The report is staged beside its folder: prove a file can be written there before reading anything else."""
    from bench.files import prove_writable

    try:
        prove_writable(folder)
    except OSError as error:
        raise ReportError(
            f"the report cannot be written: folder '{folder}' is not writable ({error.strerror}); "
            "choose another --out"
        ) from None
