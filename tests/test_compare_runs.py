"""`python -m bench compare`: two run folders compared unit by unit."""

from __future__ import annotations

from pathlib import Path

from bench.cli import main
from bench.pipeline.store import UNIT_COLUMNS, ResultStore, new_row


def compare(argv: list[str]) -> int:
    return main(["compare", *argv])


def write_run(folder: Path, psnr_b: float = 21.0, wall_s: float = 1.0, extra: dict | None = None) -> Path:
    rows = [
        new_row(UNIT_COLUMNS, key="a", solver="pinv", psnr=20.0, wall_s=wall_s, **(extra or {})),
        new_row(UNIT_COLUMNS, key="b", solver="pinv", psnr=psnr_b, status="failed", error="boom"),
    ]
    ResultStore(folder).write_part("units", rows)
    return folder


def test_compare_runs_agrees_on_the_same_rows_whatever_the_timings(tmp_path, capsys):
    before, after = write_run(tmp_path / "before"), write_run(tmp_path / "after", wall_s=5.0)
    assert compare([str(before), str(after)]) == 0
    out = capsys.readouterr().out
    assert "psnr: 2 identical, 0 within 1e-06, 0 differ" in out and out.rstrip().endswith("agree")


def test_compare_runs_reports_a_changed_score_and_honours_the_tolerance(tmp_path, capsys):
    before, after = write_run(tmp_path / "before"), write_run(tmp_path / "after", psnr_b=21.0 + 1e-3)
    assert compare([str(before), str(after)]) == 1
    out = capsys.readouterr().out
    assert "psnr: 1 identical, 0 within 1e-06, 1 differ, max |diff| 0.001 at b" in out and "DIFFER" in out
    assert compare([str(before), str(after), "--atol", "1e-2"]) == 0


def test_compare_runs_compares_only_the_columns_asked_for(tmp_path, capsys):
    before, after = write_run(tmp_path / "before"), write_run(tmp_path / "after", psnr_b=22.0)
    assert compare([str(before), str(after), "--columns", "solver,status"]) == 0
    assert "psnr:" not in capsys.readouterr().out


def test_compare_runs_lists_new_columns_and_missing_keys(tmp_path, capsys):
    before = write_run(tmp_path / "before")
    after = tmp_path / "after"
    ResultStore(after).write_part("units", [{**new_row(UNIT_COLUMNS, key="a", psnr=20.0), "new_metric": 1.0}])
    assert compare([str(before), str(after)]) == 1
    out = capsys.readouterr().out
    assert "columns added: new_metric" in out and "rows only before: 1, only after: 0" in out
    assert compare([str(before), str(tmp_path / "empty")]) == 2
    assert "holds no unit rows" in capsys.readouterr().err


def test_compare_runs_compares_the_pngs_of_matched_units(tmp_path, capsys):
    import numpy as np
    from PIL import Image

    runs = []
    for name, value in (("before", 10), ("after", 10), ("changed", 13)):
        folder = tmp_path / name
        write_run(folder, extra={"image_path": "images/a.png", "reference_path": "images/ref/a.png"})
        for relative, pixel in (("images/a.png", value), ("images/ref/a.png", 0)):
            (folder / relative).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((4, 4, 3), pixel, dtype=np.uint8)).save(folder / relative)
        runs.append(folder)
    before, after, changed = runs
    assert compare([str(before), str(after)]) == 0
    assert "== images: 2 PNGs identical, 0 differ, 0 missing" in capsys.readouterr().out
    assert compare([str(before), str(changed)]) == 1
    assert "1 PNGs identical, 1 differ, 0 missing, largest pixel difference 3/255 at images/a.png" in capsys.readouterr().out
    (after / "images" / "ref" / "a.png").unlink()
    assert compare([str(before), str(after)]) == 1
    assert "1 PNGs identical, 0 differ, 1 missing" in capsys.readouterr().out
