"""The store's integrity under clocks that disagree, merges that run while others read, and bad input:
which row wins (bench.store's docstring), snapshots, and the run's own checks.

Runs use the analytic Gaussian prior at 3x32x32 and 48x48 crops of scikit-image's bundled photos.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from PIL import Image

from bench import store as store_module
from bench.cli import main
from bench.data import SKIMAGE_NATURAL_COLOUR, _skimage_data_dir
from bench.store import ResultStore

PRIOR = "gaussian:32"
HOUR_NS = 3600 * 10**9


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("photos")
    for image_id, file_name in SKIMAGE_NATURAL_COLOUR[:4]:
        with Image.open(_skimage_data_dir() / file_name) as photo:
            rgb = photo.convert("RGB")
        side = min(rgb.size) // 2
        rgb.crop((0, 0, side, side)).resize((48, 48), Image.Resampling.BICUBIC).save(folder / f"{image_id}.png")
    return folder


def bench(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def run_args(out: Path, photos: Path, *extra: str) -> list[str]:
    return ["run", "--prior", PRIOR, "--dataset", f"folder:{photos}", "--out", str(out), "--no-progress",
            "--solvers", "pinv", "--tasks", "sr4", "--metrics", "psnr,ssim", *extra]  # fmt: skip


def skewed(monkeypatch, offset_ns: int) -> None:
    """Part names from now on come from a clock `offset_ns` off (a machine whose clock is wrong)."""
    real = store_module.time.time_ns
    monkeypatch.setattr(store_module, "_wall_clock", lambda: real() + offset_ns)


def row(key, status, attempt=None, psnr=1.0):
    values = {"key": key, "status": status, "psnr": psnr, "error": None}
    if attempt is not None:
        values["attempt"] = attempt
    return values


# ----- which row wins -----------------------------------------------------------------------------------------


def test_the_winning_row_does_not_depend_on_part_names(tmp_path):
    future = ResultStore(tmp_path, clock=lambda: 2 * 10**18)  # a writer whose clock is far ahead
    past = ResultStore(tmp_path, clock=lambda: 10**18)
    future.write_part("units", [row("a", "failed", 1), row("b", "ok", 1, psnr=10.0)])
    past.write_part("units", [row("a", "ok", 2, psnr=20.0), row("b", "ok", 2, psnr=30.0)])
    latest = past.units().set_index("key")
    assert latest.loc["a", "status"] == "ok" and latest.loc["b", "psnr"] == 30.0  # the higher attempt wins
    # a failure never shadows a result, whatever its attempt and its part's name
    future.write_part("units", [row("b", "failed", 3)])
    assert past.units().set_index("key").loc["b", "psnr"] == 30.0
    # the merge keeps exactly the winners, and so does every later reader
    past.consolidate()
    assert len(past.raw_units()) == 2 and past.units().set_index("key")["psnr"].to_dict() == {"a": 20.0, "b": 30.0}


def test_rows_from_before_the_attempt_column_keep_their_part_order(tmp_path):
    store = ResultStore(tmp_path)
    store.write_part("units", [row("a", "ok", psnr=1.0)])
    store.write_part("units", [row("a", "ok", psnr=2.0)])
    assert store.units()["psnr"].tolist() == [2.0]
    assert store_module.next_attempts(store.raw_units(), "key") == {"a": 3}


def test_a_retry_on_a_machine_whose_clock_is_behind_keeps_its_result(tmp_path, photos, capsys, monkeypatch):
    import solvers

    pinv = solvers.get("pinv")
    real_solve = pinv.solve

    def broken(self, *args, **kwargs):
        raise RuntimeError("simulated out of memory")

    out = tmp_path / "run"
    skewed(monkeypatch, +HOUR_NS)  # the first machine's clock is an hour ahead
    monkeypatch.setattr(pinv, "solve", broken)
    code, _, err = bench(capsys, *run_args(out, photos))
    assert code == 1 and "4 unit(s) failed" in err

    skewed(monkeypatch, 0)  # the retry runs where the clock is right: its part names sort first
    monkeypatch.setattr(pinv, "solve", real_solve)
    code, _, err = bench(capsys, *run_args(out, photos))
    assert code == 0, err
    table = ResultStore(out).units()
    assert (table["status"] == "ok").all() and (table["attempt"] == 2).all()
    assert len(ResultStore(out).raw_units()) == 4  # the merge dropped the failed rows, not the results
    code, _, err = bench(capsys, *run_args(out, photos))
    assert code == 0 and "4 already done" in err


# ----- readers during a merge ---------------------------------------------------------------------------------


def test_a_reader_during_merges_sees_every_unit_with_its_traces(tmp_path):
    writer = ResultStore(tmp_path)
    for i in range(60):  # a run's parts: one per batch
        stem = writer.new_stem()
        writer.write_part("traces", [{"key": f"k{i}", "step": 0, "kurtosis": 0.0}], stem=stem)
        writer.write_part("units", [row(f"k{i}", "ok")], stem=stem)
    stop = threading.Event()

    def merge_again_and_again() -> None:
        attempt = 1
        while not stop.is_set():
            attempt += 1
            for i in range(20):  # a --force run's batches, then its end-of-run merge
                stem = writer.new_stem()
                writer.write_part("traces", [{"key": f"k{i}", "step": 0, "kurtosis": 0.0}], stem=stem)
                writer.write_part("units", [row(f"k{i}", "ok", attempt)], stem=stem)
            writer.consolidate()

    merger = threading.Thread(target=merge_again_and_again)
    merger.start()
    try:
        seen = []
        for _ in range(30):
            tables = ResultStore(tmp_path).tables()
            seen.append((len(tables.units), set(tables.traces["key"]) == {f"k{i}" for i in range(60)}))
    finally:
        stop.set()
        merger.join()
    assert all(n == 60 and traced for n, traced in seen), seen
