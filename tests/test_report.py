"""`python -m bench report`: tables, figures, grids and the HTML page, from hand-made stores with known values."""

from __future__ import annotations

import hashlib
import io
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from bench.cli import main
from bench.pipeline.store import ResultStore, measurement_path, reconstruction_path
from bench.pipeline.units import image_tag
from bench.report import ReportError, latest_results, render_report
from bench.report.load import load_store, method_labels
from bench.report.swap import MARKER
from bench.report.tables import (
    checks_summary,
    checks_table,
    quality_summary,
    quality_table,
    quality_tables,
    runtime_summary,
    runtime_table,
    to_csv,
    to_html,
    to_latex,
    to_markdown,
)

REPO = Path(__file__).resolve().parents[1]
IDS = ["alpha", "beta", "gamma"]
OFFSETS = [-1.0, 0.0, 1.0]  # per image, times a method's spread: the mean is the base value
JPEG_REASON = "ddrm needs svd, which jpeg10 does not provide"
# method -> (solver, config, {metric: base value}); sr4 and σ = 0.05 get these, other cells are shifted.
METHODS = {
    "pinv": ("pinv", {}, {"psnr": 21.0, "ssim": 0.40, "lpips": 0.50, "fid": 100.0, "kid": 0.30}),
    "ddrm": ("ddrm", {"eta": 0.85, "steps": 20}, {"psnr": 25.0, "ssim": 0.60, "lpips": 0.20, "fid": 50.0, "kid": 0.05}),
    "ddc (steps=5)": (
        "ddc",
        {"network": "x", "steps": 5},
        {"psnr": 23.0, "ssim": 0.70, "lpips": 0.10, "fid": 40.0, "kid": 0.10},
    ),
    "ddc (steps=10)": (
        "ddc",
        {"network": "x", "steps": 10},
        {"psnr": 27.0, "ssim": 0.50, "lpips": 0.30, "fid": 60.0, "kid": 0.20},
    ),
}
TASKS = ["sr4", "jpeg10"]
SIGMAS = [0.0, 0.05]
# The visual checks of `make_store(checks=True)`: a photo's values, but for the failures below (mean over images).
PHOTO_CHECKS = {"blockiness": 1.0, "chroma_ratio": 0.95, "colour_shift": 0.02, "clipping": 0.0}
FAILURES = {
    ("ddc (steps=10)", "sr4", 0.05): {"blockiness": 3.0},  # a mosaic: and the best PSNR of its table
    ("ddc (steps=5)", "jpeg10", 0.05): {"chroma_ratio": 0.2, "colour_shift": 0.3},  # grey
    ("pinv", "jpeg10", 0.0): {"clipping": 0.09},
}


def _png(path: Path, seed: int, size: int = 16) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def _value(base: dict[str, float], metric: str, task: str, sigma: float, offset: float) -> float:
    shift = {"psnr": -2.0, "ssim": -0.05, "lpips": 0.05, "fid": 10.0, "kid": 0.01}[metric]
    value = base[metric] + shift * ((task == "jpeg10") + (sigma == 0.05) - 1)
    spread = {"psnr": 1.0, "ssim": 0.02, "lpips": 0.01}.get(metric, 0.0)
    return value + spread * offset


def _unit(method: str, task: str, sigma: float, image_id: str, **changes: object) -> dict[str, object]:
    solver, config, base = METHODS[method]
    key = hashlib.sha256(json.dumps([solver, config, task, sigma, image_id]).encode()).hexdigest()
    offset = OFFSETS[IDS.index(image_id)]
    row = {
        "solver": solver,
        "task": task,
        "sigma": sigma,
        "prior": "natural64",
        "dataset": "toy",
        "image_id": image_id,
        "seed": 0,
        "key": key,
        "status": "ok",
        "error": None,
        **{m: _value(base, m, task, sigma, offset) for m in ("psnr", "ssim", "lpips")},
        "consistency": 0.01,
        "nfe": int(config.get("steps", 0)),
        "wall_s": 0.5 * (1 + int(config.get("steps", 0))),
        "network_s": 0.4 * int(config.get("steps", 0)),
        "peak_memory_bytes": 2**20 * (1 + int(config.get("steps", 0))),
        "batch_size": 3,
        "warmup": False,
        "device": "cpu",
        "dtype": "fp32",
        "solver_version": 1,
        "solver_config": json.dumps(config, sort_keys=True, separators=(",", ":")),
        "torch_version": "2.0",
        "bench_version": "0.1.0",
        "git_commit": "abc123",
    }
    row.update(changes)
    return row


def _set_row(method: str, task: str, sigma: float, keys: list[str]) -> dict[str, object]:
    solver, _, base = METHODS[method]
    return {
        "solver": solver,
        "task": task,
        "sigma": sigma,
        "prior": "natural64",
        "dataset": "toy",
        "seed": 0,
        "set_key": hashlib.sha256("".join(sorted(keys)).encode()).hexdigest(),
        "n_images": 100,  # a set large enough to be ranked (see SET_METRIC_MIN_IMAGES)
        "n_diverged": 0,
        "fid": _value(base, "fid", task, sigma, 0.0),
        "kid": _value(base, "kid", task, sigma, 0.0),
        "kid_std": 0.01,
        "note": None,
    }


def make_store(
    root: Path,
    skip: set[tuple[str, str, float, str]] = frozenset(),
    failed: bool = False,
    methods: tuple[str, ...] = tuple(METHODS),
    sigmas: tuple[float, ...] = tuple(SIGMAS),
    checks: bool = False,
) -> Path:
    """The full hand-made store (or one with the (method, task, σ, image) units in `skip` left out); `checks`:
    with visual-check scores (`PHOTO_CHECKS`, but `FAILURES`, spread over the images around those means)."""
    store = ResultStore(root)
    units, traces, sets = [], [], []
    for method in methods:
        solver = METHODS[method][0]
        for task in TASKS:
            for sigma in sigmas:
                group = []
                for image_id in IDS:
                    if (method, task, sigma, image_id) in skip:
                        continue
                    row = _unit(method, task, sigma, image_id)
                    if checks and row["status"] == "ok":
                        for column, mean in {**PHOTO_CHECKS, **FAILURES.get((method, task, sigma), {})}.items():
                            row[column] = mean * (1 + 0.1 * OFFSETS[IDS.index(image_id)])
                    if solver == "ddrm" and task == "jpeg10":
                        row.update(status="unsupported", error=JPEG_REASON, psnr=math.nan, ssim=math.nan)
                        row.update(lpips=math.nan, wall_s=math.nan, network_s=math.nan, nfe=0)
                    elif failed and method == "pinv" and task == "sr4" and sigma == 0.0 and image_id == "beta":
                        row.update(status="failed", error="RuntimeError: out of memory", psnr=math.nan)
                    group.append(row)
                    folder = root / "images"
                    _png(folder / "reference" / f"{image_id}.png", IDS.index(image_id))
                    _png(measurement_path(folder, task, sigma, row["seed"], image_id), 10 + IDS.index(image_id))
                    if row["status"] == "ok":
                        tag = image_tag(row["solver_version"], row["solver_config"], row["seed"])
                        _png(reconstruction_path(folder, solver, task, sigma, tag, image_id), sum(map(ord, method)))
                    if solver in ("ddc", "ddrm") and row["status"] == "ok":
                        traces += _traces(row, 0.5 if solver == "ddc" else 1.5)
                units += group
                if group and all(r["status"] == "ok" for r in group) and len(group) == len(IDS):
                    sets.append(_set_row(method, task, sigma, [r["key"] for r in group]))
    for sigma in sigmas:  # the unconditional reference: sr4 only, so the other panels use its pooled curve
        for image_id in IDS:
            row = _unit("pinv", "sr4", sigma, image_id, solver="uncond", nfe=5, key=f"uncond-{sigma}-{image_id}")
            units.append(row)
            traces += _traces(row, 0.0)
    stem = store.new_stem()
    store.write_part("traces", traces, stem=stem)
    store.write_part("units", units, stem=stem)
    store.write_part("sets", sets)
    return root


def _traces(unit: dict[str, object], level: float) -> list[dict[str, object]]:
    fields = ("key", "solver", "task", "sigma", "image_id", "seed")
    return [
        {**{f: unit[f] for f in fields}, "step": i, "t": t, "kurtosis": level * i + 0.1, "residual": 1.0 / (i + 1)}
        for i, t in enumerate([800, 600, 400, 200, 0])
    ]


@pytest.fixture(scope="module")
def store_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_store(tmp_path_factory.mktemp("results") / "toy")


@pytest.fixture(scope="module")
def report(store_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return render_report(store_root, tmp_path_factory.mktemp("reports") / "toy")


def _summary(store_root: Path, ci: bool = False) -> tuple[pd.DataFrame, list[str], pd.DataFrame]:
    store = load_store(store_root)
    units = store.units[store.units["solver"] != "uncond"]
    return quality_summary(units, store.sets, store.groups, ci=ci), store.method_order(), units


def _md_cells(markdown: str) -> dict[tuple[str, str], str]:
    """(row label, column header) -> cell text of the first Markdown table in `markdown`."""
    lines = []
    for line in markdown.splitlines():
        if line.startswith("|"):
            lines.append(line)
        elif lines:
            break
    split = [[c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]] for line in lines]
    header, rows = split[0], split[2:]
    return {(row[0], name): cell for row in rows for name, cell in zip(header, row, strict=True)}


def _task_cells(markdown: str) -> dict[tuple[str, str, str], str]:
    """(task, row label, column header) -> cell text of the per-task tables under "### <task> at σ = ..." headings."""
    cells = {}
    for block in re.split(r"^#+ ", markdown, flags=re.M)[1:]:
        task = block.split(" at σ", 1)[0]
        if "|" in block:
            cells.update({(task, *key): text for key, text in _md_cells(block).items()})
    return cells


# ----- store reading ---------------------------------------------------------------------------------------


def test_methods_are_labelled_by_the_config_keys_that_differ(store_root: Path) -> None:
    store = load_store(store_root)
    assert store.method_order() == ["uncond", "pinv", "ddrm", "ddc (steps=5)", "ddc (steps=10)"]
    # set rows carry no config: they are matched to their method through the set key
    ddc = store.sets[store.sets["method"] == "ddc (steps=10)"]
    assert set(ddc["fid"]) == {50.0, 60.0, 70.0}  # sr4 at σ = 0, both tasks at the shifted levels


def test_path_values_are_cut_to_the_tails_that_tell_them_apart() -> None:
    rows = [
        _unit("pinv", "sr4", 0.05, "alpha", solver="ddc", solver_config=json.dumps({"network": f"runs/{n}/final"}))
        for n in ("a", "b")
    ]
    methods, _ = method_labels(pd.DataFrame(rows))
    assert list(methods["method"]) == ["ddc (network=a/final)", "ddc (network=b/final)"]


# ----- quality tables --------------------------------------------------------------------------------------


def test_quality_means_equal_pandas_groupby_means(store_root: Path) -> None:
    summary, _, units = _summary(store_root)
    ok = units[units["status"] == "ok"]
    expected = ok.groupby(["method", "task", "sigma"])[["psnr", "ssim", "lpips"]].mean()
    for metric in ("psnr", "ssim", "lpips"):
        got = summary[summary["metric"] == metric].set_index(["method", "task", "sigma"])["mean"].dropna()
        assert len(got) == len(expected)
        pd.testing.assert_series_equal(got.sort_index(), expected[metric].sort_index(), check_names=False)
    fid = summary[(summary["metric"] == "fid") & (summary["method"] == "ddrm") & (summary["task"] == "sr4")]
    assert sorted(fid["mean"]) == [40.0, 50.0]


def test_best_is_bold_and_second_underlined_in_markdown_with_direction(store_root: Path) -> None:
    summary, methods, _ = _summary(store_root)
    cells = _md_cells(to_markdown(quality_table(summary, 0.05, methods)))
    # PSNR: higher is better
    assert cells[("ddc (steps=10)", "sr4 PSNR↑")] == "**27.00**"
    assert cells[("ddrm", "sr4 PSNR↑")] == "<u>25.00</u>"
    assert cells[("pinv", "sr4 PSNR↑")] == "21.00"
    # LPIPS and FID: lower is better
    assert cells[("ddc (steps=5)", "sr4 LPIPS↓")] == "**0.100**"
    assert cells[("ddrm", "sr4 LPIPS↓")] == "<u>0.200</u>"
    assert cells[("ddc (steps=5)", "sr4 FID↓")] == "**40.0**"
    assert cells[("ddrm", "sr4 KID↓")] == "**0.050** ± 0.010"
    assert cells[("ddc (steps=5)", "sr4 SSIM↑")] == "**0.700**"
    # jpeg10 without ddrm (unsupported): ranks among the other three
    assert cells[("ddc (steps=10)", "jpeg10 PSNR↑")] == "**25.00**"
    assert cells[("ddc (steps=5)", "jpeg10 PSNR↑")] == "<u>21.00</u>"
    assert "uncond" not in {row for row, _ in cells}


def test_set_metrics_of_small_sets_carry_a_note_and_are_not_ranked(store_root: Path) -> None:
    from bench.report.tables import SET_METRIC_MIN_IMAGES

    summary, methods, _ = _summary(store_root)
    small = summary.copy()
    small.loc[small["metric"].isin(["fid", "kid"]), "n"] = 6
    table = quality_table(small, 0.05, methods)
    text = to_markdown(table)
    cells = _md_cells(text)
    assert cells[("ddc (steps=5)", "sr4 FID↓")].startswith("40.0<sup>")  # shown, footnoted, not bold
    assert "**" not in cells[("ddrm", "sr4 KID↓")] and "± 0.010" in cells[("ddrm", "sr4 KID↓")]
    assert f"unreliable below {SET_METRIC_MIN_IMAGES} images" in text
    assert cells[("ddc (steps=10)", "sr4 PSNR↑")] == "**27.00**"  # per-image metrics are ranked as before


def test_best_is_bold_and_second_underlined_in_latex(store_root: Path) -> None:
    summary, methods, _ = _summary(store_root)
    latex = to_latex(quality_table(summary, 0.05, methods))
    rows = {line.split(" & ")[0]: line.split(" & ") for line in latex.splitlines() if " & " in line}
    assert rows["ddc (steps=10)"][1] == "\\textbf{27.00}"
    assert rows["ddrm"][1] == "\\underline{25.00}"
    assert rows["ddc (steps=5)"][3] == "\\textbf{0.100}"
    assert "\\multicolumn{5}{c}{sr4} & \\multicolumn{5}{c}{jpeg10}" in latex
    assert "\\toprule" in latex and "\\midrule" in latex and "\\bottomrule" in latex
    assert "PSNR$\\uparrow$" in latex and "LPIPS$\\downarrow$" in latex


def test_unsupported_pairs_show_a_dash_and_the_reason_in_a_footnote(store_root: Path) -> None:
    summary, methods, _ = _summary(store_root)
    table = quality_table(summary, 0.05, methods)
    markdown = to_markdown(table)
    cells = _md_cells(markdown)
    assert cells[("ddrm", "jpeg10 PSNR↑")] == "–<sup>a</sup>"
    assert all(cells[("ddrm", f"jpeg10 {m}")] == "–" for m in ("SSIM↑", "LPIPS↓", "FID↓", "KID↓"))
    assert f"<sup>a</sup> {JPEG_REASON}" in markdown
    latex = to_latex(table)
    assert "--\\textsuperscript{a}" in latex and "svd, which jpeg10" in latex
    csv = pd.read_csv(io.StringIO(to_csv(table)), index_col="method")
    assert csv.loc["ddrm", "jpeg10_psnr"] == "–"
    assert float(csv.loc["ddrm", "sr4_psnr"]) == pytest.approx(25.0)


def test_latex_escapes_underscores() -> None:
    from bench.report.tables import latex_escape

    assert latex_escape("pnp_admm 5%") == "pnp\\_admm 5\\%"


def test_ci_is_the_student_t_half_width_over_images(store_root: Path) -> None:
    summary, methods, units = _summary(store_root, ci=True)
    psnr = units[(units["method"] == "pinv") & (units["task"] == "sr4") & (units["sigma"] == 0.05)]["psnr"]
    assert len(psnr) == 3
    t_975_df2 = 4.302652729749462  # scipy.stats.t.ppf(0.975, 2): Student's t, not the normal 1.96
    expected = t_975_df2 * psnr.std(ddof=1) / math.sqrt(len(psnr))
    row = summary[(summary["method"] == "pinv") & (summary["task"] == "sr4") & (summary["sigma"] == 0.05)]
    assert row[row["metric"] == "psnr"]["half_width"].item() == pytest.approx(expected)
    assert math.isnan(row[row["metric"] == "fid"]["half_width"].item())  # a set metric: no interval
    cells = _md_cells(to_markdown(quality_table(summary, 0.05, methods, ci=True)))
    assert cells[("pinv", "sr4 PSNR↑")] == f"21.00 ± {expected:.2f}"
    assert cells[("ddc (steps=10)", "sr4 PSNR↑")].startswith("**27.00** ± ")


def test_each_task_gets_a_table_of_its_metrics_with_every_number_of_the_wide_table(store_root: Path) -> None:
    summary, methods, _ = _summary(store_root, ci=True)
    for sigma in SIGMAS:
        wide = quality_table(summary, sigma, methods, ci=True)
        parts = quality_tables(summary, sigma, methods, ci=True)
        assert [t.caption for t in parts] == [f"{task} at σ = {sigma:g}" for task in TASKS]
        for part in parts:
            assert part.header == ["method", "PSNR↑", "SSIM↑", "LPIPS↓", "FID↓", "KID↓"]  # 6 columns, not 11
            assert [row[0].text for row in part.rows] == ["pinv", "ddrm", "ddc (steps=5)", "ddc (steps=10)"]
        # nothing lost: each cell of the wide table is the same cell (text, mark, interval, note) in its task's table
        shown = len(parts[0].header) - 1
        for r, row in enumerate(wide.rows):
            for t, part in enumerate(parts):
                mine = part.rows[r][1:]
                theirs = row[1 + t * shown : 1 + (t + 1) * shown]
                assert [(c.text, c.mark, c.extra, c.note) for c in mine] == [
                    (c.text, c.mark, c.extra, c.note) for c in theirs
                ]
        assert parts[-1].legend == wide.legend and all(not part.legend for part in parts[:-1])


def test_second_is_marked_only_among_three_methods_and_not_after_a_tie(store_root: Path) -> None:
    summary, methods, _ = _summary(store_root)
    two = summary[summary["method"].isin(["pinv", "ddrm"])]
    cells = _md_cells(to_markdown(quality_tables(two, 0.05, methods)[0]))
    assert cells[("ddrm", "PSNR↑")] == "**25.00**" and cells[("pinv", "PSNR↑")] == "21.00"  # of two: no "second"
    three = summary[summary["method"].isin(["pinv", "ddrm", "ddc (steps=10)"])].copy()
    tied = (three["method"] == "ddc (steps=10)") & (three["task"] == "sr4") & (three["metric"] == "psnr")
    three.loc[tied, "mean"] = 25.0  # ties ddrm for best at σ = 0.05
    cells = _md_cells(to_markdown(quality_tables(three, 0.05, methods)[0]))
    assert cells[("ddrm", "PSNR↑")] == cells[("ddc (steps=10)", "PSNR↑")] == "**25.00**"
    assert cells[("pinv", "PSNR↑")] == "21.00"  # third of three, not "second"
    assert cells[("ddrm", "SSIM↑")] == "**0.600**" and cells[("ddc (steps=10)", "SSIM↑")] == "<u>0.500</u>"


def _checked(tmp_path: Path) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    store = load_store(make_store(tmp_path / "checked", checks=True))
    units = store.units[store.units["solver"] != "uncond"]
    groups = store.groups[store.groups["method"].isin(set(units["method"]))]
    return quality_summary(units, store.sets, groups), checks_summary(units, groups), store.method_order()


def test_visual_checks_are_group_means_and_flag_beyond_their_thresholds(tmp_path: Path) -> None:
    _, checks, methods = _checked(tmp_path)
    found = checks.set_index(["method", "task", "sigma", "metric"])
    assert found.loc[("ddc (steps=10)", "sr4", 0.05, "blockiness"), "mean"] == pytest.approx(3.0)
    assert found.loc[("ddc (steps=10)", "sr4", 0.05, "blockiness"), "n"] == 3
    assert found.loc[("ddc (steps=10)", "sr4", 0.0, "blockiness"), "mean"] == pytest.approx(1.0)
    flagged = {index: flag for index, flag in found["flag"].items() if isinstance(flag, str)}
    assert set(flagged) == {
        ("ddc (steps=10)", "sr4", 0.05, "blockiness"),
        ("ddc (steps=5)", "jpeg10", 0.05, "chroma_ratio"),
        ("ddc (steps=5)", "jpeg10", 0.05, "colour_shift"),
        ("pinv", "jpeg10", 0.0, "clipping"),
    }
    assert "3.0×" in flagged[("ddc (steps=10)", "sr4", 0.05, "blockiness")]
    assert ("ddrm", "jpeg10", 0.05, "blockiness") not in found.index  # unsupported: no images, no check
    table = checks_table(checks, methods)
    assert table is not None and table.header == [
        "method", "task", "σ", "blockiness (⚑ > 1.5)", "chroma ratio (⚑ < 0.5)", "colour shift (⚑ > 0.15)",
        "clipped (⚑ > 0.05)",
    ]  # fmt: skip
    rows = {tuple(c.text for c in row[:3]): [c.text + c.extra for c in row[3:]] for row in table.rows}
    assert rows[("ddc (steps=10)", "sr4", "0.05")] == ["3.00 ⚑", "0.95", "0.020", "0.000"]
    assert rows[("ddc (steps=5)", "jpeg10", "0.05")] == ["1.00", "0.20 ⚑", "0.300 ⚑", "0.000"]
    assert [key[0] for key in rows][::4] == ["pinv", "ddrm", "ddc (steps=5)", "ddc (steps=10)"]  # method order
    csv = pd.read_csv(io.StringIO(to_csv(table)), keep_default_na=False)
    assert set(csv.loc[csv["flagged"] != "", "flagged"]) == {"blockiness", "chroma-ratio,colour-shift", "clipping"}


def test_a_failed_check_flags_the_quality_cell_with_a_numbered_footnote(tmp_path: Path) -> None:
    summary, checks, methods = _checked(tmp_path)
    sr4, jpeg = quality_tables(summary, 0.05, methods, checks=checks)
    markdown = to_markdown(sr4)
    cells = _md_cells(markdown)
    assert cells[("ddc (steps=10)", "PSNR↑")] == "**27.00** ⚑<sup>1</sup>"  # the best PSNR is a mosaic
    assert cells[("ddc (steps=10)", "SSIM↑")] == "0.500" and cells[("ddrm", "PSNR↑")] == "<u>25.00</u>"
    assert "⚑<sup>1</sup> ddc (steps=10) on sr4: blockiness 3.00 > 1.5, a block mosaic" in markdown
    assert "fail a visual check" not in markdown  # the legend follows the last table of the σ
    markdown = to_markdown(jpeg)
    assert _md_cells(markdown)[("ddc (steps=5)", "PSNR↑")] == "<u>21.00</u> ⚑<sup>1,2</sup>"
    assert "⚑<sup>2</sup> ddc (steps=5) on jpeg10: colour shift 0.300 > 0.15" in markdown
    assert "⚑ the method's images fail a visual check" in markdown
    # the unsupported cell footnote keeps its letter; flags are numbered apart from it
    assert _md_cells(markdown)[("ddrm", "PSNR↑")] == "–<sup>a</sup>"
    wide = quality_table(summary, 0.05, methods, checks=checks)
    latex = to_latex(wide)
    assert "\\textbf{27.00}\\textsuperscript{\\textdagger{}3}" in latex  # numbered in reading order
    assert "chroma ratio 0.20 $<$ 0.5" not in latex and "chroma ratio 0.20 \\textless{} 0.5" in latex
    assert '<strong>27.00</strong> <span class="flag">⚑<sup>1</sup></span>' in to_html(sr4)
    unflagged = quality_tables(summary, 0.0, methods, checks=checks)
    assert _md_cells(to_markdown(unflagged[1]))[("pinv", "PSNR↑")] == "21.00 ⚑<sup>1</sup>"  # clipping at σ = 0


def test_the_report_shows_visual_checks_only_where_the_store_has_them(tmp_path: Path, report: Path) -> None:
    assert "Visual checks" not in (report / "report.md").read_text(encoding="utf-8")  # a store from before them
    assert not (report / "tables" / "visual_checks.md").exists()
    out = render_report(make_store(tmp_path / "results" / "checked", checks=True), tmp_path / "report")
    markdown = (out / "report.md").read_text(encoding="utf-8")
    assert "### Visual checks" in markdown and "| ddc (steps=10) | sr4 | 0.05 | 3.00 ⚑ |" in markdown
    for fmt in ("md", "tex", "csv"):
        assert (out / "tables" / f"visual_checks.{fmt}").is_file()
    cells = _task_cells(markdown.split("## Quality")[1].split("### Visual checks")[0])
    assert cells[("sr4", "ddc (steps=10)", "PSNR↑")] == "**27.00** ⚑<sup>1</sup>"
    page = (out / "index.html").read_text(encoding="utf-8")
    assert '<div class="tables">' in page and "Visual checks</caption>" in page and "⚑" in page


def test_runtime_leaves_out_warmup_batches_when_others_exist() -> None:
    rows = [
        _unit("ddrm", "sr4", 0.05, i, warmup=i == "alpha", wall_s=100.0 if i == "alpha" else 2.0, network_s=1.5)
        for i in IDS
    ]
    rows += [_unit("pinv", "sr4", 0.05, i, warmup=True, wall_s=0.25) for i in IDS]  # warm-up only: kept
    _, units = method_labels(pd.DataFrame(rows))
    summary = runtime_summary(units).set_index("method")
    assert summary.loc["ddrm", "seconds"] == pytest.approx(2.0)
    assert summary.loc["ddrm", "nfe"] == 20
    assert summary.loc["ddrm", "network_share"] == pytest.approx(1.5 / 2.0)
    assert summary.loc["pinv", "seconds"] == pytest.approx(0.25)
    cells = _md_cells(to_markdown(runtime_table(runtime_summary(units), ["pinv", "ddrm"])))
    assert cells[("ddrm", "s / image")] == "2.00"
    assert cells[("ddrm", "peak memory (MiB)")] == "21"


def test_runtime_rows_split_by_device_and_dtype_only_where_runs_differ() -> None:
    rows = [_unit("ddrm", "sr4", 0.05, i) for i in IDS]
    rows += [_unit("ddrm", "jpeg10", 0.05, i, device="cuda:0", dtype="bf16", wall_s=0.5) for i in IDS]
    _, units = method_labels(pd.DataFrame(rows))
    table = runtime_table(runtime_summary(units), ["ddrm"])
    assert table.header[:3] == ["method", "device", "dtype"]
    assert [[c.text for c in row[:4]] for row in table.rows] == [
        ["ddrm", "cpu", "fp32", "20"],
        ["ddrm", "cuda:0", "bf16", "20"],
    ]
    single = runtime_table(runtime_summary(units[units["device"] == "cpu"]), ["ddrm"])
    assert single.header[:3] == ["method", "prior NFE", "other networks"]


# ----- the rendered report ---------------------------------------------------------------------------------


def test_every_figure_table_and_grid_is_written(report: Path) -> None:
    expected = [
        "index.html",
        "report.md",
        "tables/runtime.md",
        "tables/runtime.tex",
        "tables/runtime.csv",
        "figures/noise.png",
        "figures/steps.png",
    ]
    for sigma in ("0", "0.05"):
        expected += [f"tables/quality_sigma{sigma}.{fmt}" for fmt in ("md", "tex", "csv")]
        expected += [f"figures/kurtosis_sigma{sigma}.png", f"figures/quality_runtime_sigma{sigma}.png"]
        expected += [f"grids/{task}_sigma{sigma}.png" for task in TASKS]
    for name in expected:
        path = report / name
        assert path.is_file() and path.stat().st_size > 0, name
    for png in report.glob("*/*.png"):
        with Image.open(png) as image:
            assert image.width > 100 and image.height > 100
            colours = image.convert("RGB").getcolors(maxcolors=1 << 16)  # None: more colours than that
            assert colours is None or len(colours) > 2, png


def test_html_references_only_files_that_exist(report: Path) -> None:
    page = (report / "index.html").read_text(encoding="utf-8")
    targets = re.findall(r'(?:src|href)="([^"]*)"', page)
    assert any(t.endswith(".png") for t in targets)
    ids = set(re.findall(r'id="([^"]+)"', page))
    for target in targets:
        if target.startswith("#"):
            assert target[1:] in ids, target
        elif not target.startswith("data:"):
            assert "://" not in target and not target.startswith("/"), target
            assert (report / target).is_file(), target
    assert "<link" not in page and "<script" not in page  # nothing fetched from elsewhere
    for text in ("Quality", "Runtime", "Missing and failed", "natural64", "toy", "abc123", "<strong>27.00</strong>"):
        assert text in page


def test_markdown_report_links_exist_and_says_the_store_is_complete(report: Path) -> None:
    markdown = (report / "report.md").read_text(encoding="utf-8")
    for target in re.findall(r"\]\(([^)]+)\)", markdown):
        assert (report / target).is_file(), target
    assert "Every (solver, task, σ) combination in the store is complete." in markdown


def test_rerendering_replaces_the_folder_and_refuses_foreign_folders(store_root: Path, tmp_path: Path) -> None:
    small = make_store(tmp_path / "results" / "small", methods=("pinv",), sigmas=(0.05,))
    report = render_report(small, tmp_path / "reports" / "small")
    (report / "stale.txt").write_text("from an older report")
    render_report(small, report)
    assert not (report / "stale.txt").exists() and (report / MARKER).is_file()
    assert (report / "index.html").is_file()
    assert sorted(p.name for p in report.parent.iterdir()) == ["small"]  # no staging or retired folder left
    foreign = tmp_path / "notes"
    foreign.mkdir()
    (foreign / "mine.txt").write_text("keep me")
    with pytest.raises(ReportError, match="not a report folder"):
        render_report(store_root, foreign)
    assert (foreign / "mine.txt").read_text() == "keep me"
    with pytest.raises(ReportError, match="overlaps the results folder"):
        render_report(store_root, store_root / "report")


def test_a_failed_render_leaves_the_old_report_in_place(store_root: Path, report: Path, monkeypatch) -> None:
    import bench.report.content

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("drawing failed")

    monkeypatch.setattr(bench.report.content, "build_report", broken)
    before = sorted(p.name for p in report.parent.iterdir())
    with pytest.raises(RuntimeError, match="drawing failed"):
        render_report(store_root, report)
    assert (report / "index.html").is_file()
    assert sorted(p.name for p in report.parent.iterdir()) == before


def test_the_reader_keeps_the_latest_row_per_key_like_result_store(tmp_path: Path) -> None:
    root = tmp_path / "retried"
    store = ResultStore(root)
    first = [_unit("pinv", "sr4", 0.05, i, status="failed", error="boom", psnr=math.nan) for i in IDS]
    stem = store.new_stem()
    store.write_part("traces", _traces(_unit("pinv", "sr4", 0.05, "gamma"), 9.0), stem=stem)  # superseded below
    store.write_part("units", first, stem=stem)
    stem = store.new_stem()  # the retry of beta and gamma
    store.write_part("traces", _traces(_unit("pinv", "sr4", 0.05, "beta"), 1.0), stem=stem)
    retried = [_unit("pinv", "sr4", 0.05, i, psnr=psnr) for i, psnr in (("beta", 30.0), ("gamma", 31.0))]
    store.write_part("units", retried, stem=stem)
    store.write_part("traces", _traces(_unit("pinv", "sr4", 0.05, "alpha"), 1.0))  # a batch killed before its units
    loaded = load_store(root)
    expected = store.units()
    assert list(loaded.units["key"]) == list(expected["key"])
    assert list(loaded.units["status"]) == list(expected["status"]) == ["failed", "ok", "ok"]
    assert loaded.units["psnr"].tolist()[1:] == [30.0, 31.0]
    traces = store.traces()
    assert len(loaded.traces) == len(traces) == 5 and set(loaded.traces["image_id"]) == {"beta"}


def test_a_partial_store_renders_what_is_complete_and_lists_the_rest(tmp_path: Path) -> None:
    skip = {("ddrm", "sr4", 0.0, i) for i in IDS}  # never run
    skip |= {("ddc (steps=5)", "sr4", 0.05, "gamma")}  # in flight
    root = make_store(tmp_path / "results" / "partial", skip=skip, failed=True)
    out = render_report(root, tmp_path / "report")
    markdown = (out / "report.md").read_text(encoding="utf-8")
    missing = markdown.split("## Missing and failed")[1]
    assert "| ddrm | sr4 | 0 |" in missing
    assert "| ddc (steps=5) | sr4 | 0.05 | 2 of 3 | 0 | gamma |" in missing
    assert "| pinv | sr4 | 0 | 1 | beta | RuntimeError: out of memory |" in missing
    cells = _task_cells((out / "tables" / "quality_sigma0.05.md").read_text(encoding="utf-8"))
    assert cells[("sr4", "ddc (steps=5)", "PSNR↑")] == "…"
    assert cells[("sr4", "ddc (steps=10)", "PSNR↑")] == "**27.00**"
    assert cells[("sr4", "ddrm", "PSNR↑")] == "<u>25.00</u>"
    cells = _task_cells((out / "tables" / "quality_sigma0.md").read_text(encoding="utf-8"))
    assert cells[("sr4", "pinv", "PSNR↑")] == "…"
    assert ("sr4", "ddrm", "PSNR↑") not in cells and cells[("jpeg10", "ddrm", "PSNR↑")].startswith("–")  # never ran
    wide = pd.read_csv(out / "tables" / "quality_sigma0.csv", index_col="method", keep_default_na=False)
    assert wide.loc["ddrm", "sr4_psnr"] == ""  # the wide CSV keeps the empty cell
    page = (out / "index.html").read_text(encoding="utf-8")
    assert "RuntimeError: out of memory" in page


def test_an_absent_or_empty_store_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ReportError, match="does not exist; run `python -m bench run`"):
        render_report(tmp_path / "nothing", tmp_path / "out")
    (tmp_path / "empty" / "units").mkdir(parents=True)
    with pytest.raises(ReportError, match="holds no unit rows"):
        render_report(tmp_path / "empty", tmp_path / "out")
    assert main(["report", "--results", str(tmp_path / "empty"), "--out", str(tmp_path / "out")]) == 2
    assert "holds no unit rows" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    with pytest.raises(ReportError, match="no results found"):
        latest_results(tmp_path / "nowhere")


def test_latest_results_is_the_most_recently_written_run(tmp_path: Path) -> None:
    import os

    for age, name in enumerate(["new", "old"]):
        (tmp_path / name / "units").mkdir(parents=True)
        os.utime(tmp_path / name / "units", (1e9 - age * 1000, 1e9 - age * 1000))
    (tmp_path / "stray").mkdir()
    assert latest_results(tmp_path) == tmp_path / "new"


def test_the_cli_renders_without_importing_torch(store_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "cli-report"
    code = (
        "import sys\n"
        "import bench.report\n"
        "assert 'torch' not in sys.modules, 'importing bench.report imported torch'\n"
        "from bench.cli import main\n"
        f"assert main(['report', '--results', {str(store_root)!r}, '--out', {str(out)!r}, '--ci']) == 0\n"
        "assert 'torch' not in sys.modules, 'rendering imported torch'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert " ± " in (out / "tables" / "quality_sigma0.05.md").read_text(encoding="utf-8")


CHROMIUM = Path("/usr/bin/chromium")


@pytest.mark.skipif(not CHROMIUM.exists(), reason="headless check needs /usr/bin/chromium (Debian package chromium)")
def test_the_page_renders_in_headless_chromium(report: Path, tmp_path: Path) -> None:
    shot = tmp_path / "page.png"
    script = REPO / "scripts" / "screenshot_report.py"
    done = subprocess.run(
        [sys.executable, str(script), str(report / "index.html"), str(shot), "--window-size", "1200,1600"],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr
    with Image.open(shot) as image:
        assert image.size == (1200, 1600)
        pixels = np.asarray(image.convert("L"), dtype=np.float64)
    # text, tables and figures on a white page: many dark pixels and real variation
    assert pixels.std() > 20 and (pixels < 128).mean() > 0.01


def test_methods_are_listed_in_the_order_the_run_asked_for(tmp_path):
    """`bench run --solvers ddnm,pinv` writes its order; the report lists ddnm first, then the others."""
    import json

    from bench.pipeline.store import ORDER_FILE
    from bench.report.load import asked_order

    assert asked_order(tmp_path) == ()
    (tmp_path / ORDER_FILE).write_text(json.dumps({"solvers": ["ddnm", "pinv"], "tasks": ["sr4"]}))
    assert asked_order(tmp_path) == ("ddnm", "pinv")
    rows = [_unit("pinv", "sr4", 0.05, "alpha", solver=solver) for solver in ("pinv", "dps", "ddnm")]
    methods, _ = method_labels(pd.DataFrame(rows), asked_order(tmp_path))
    assert list(methods["solver"]) == ["ddnm", "pinv", "dps"]
