"""The store's integrity under clocks that disagree, merges that run while others read, and bad input:
which row wins (bench.pipeline.store's docstring), snapshots, and the run's own checks.

Runs use the analytic Gaussian prior at 3x32x32 and 48x48 crops of scikit-image's bundled photos.
"""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from run_cases import cli, pinv_run

from bench.pipeline import store as store_module
from bench.pipeline.store import ResultStore

PRIOR = "gaussian:32"
HOUR_NS = 3600 * 10**9


@pytest.fixture(scope="module")
def photos(four_photos) -> Path:
    return four_photos


bench = cli


def run_args(out: Path, photos: Path, *extra: str) -> list[str]:
    return pinv_run(out, photos, "--metrics", "psnr,ssim", *extra)


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


def test_without_the_lock_a_reader_whose_part_vanished_reads_again(tmp_path, monkeypatch):
    import contextlib

    import bench.pipeline.store as store_module

    writer = ResultStore(tmp_path)
    for i in range(3):
        stem = writer.new_stem()
        writer.write_part("traces", [{"key": f"k{i}", "step": 0, "kurtosis": 0.0}], stem=stem)
        writer.write_part("units", [row(f"k{i}", "ok")], stem=stem)
    monkeypatch.setattr(ResultStore, "_merge_lock", lambda self, shared: contextlib.nullcontext())
    real_read = store_module._read_parts
    merged = []

    def read_with_a_merge_in_between(paths, *args, **kwargs):
        if not merged:  # the first read: a merge replaces the listed parts before they are opened
            merged.append(None)
            merged[0] = writer.consolidate()
        return real_read(paths, *args, **kwargs)

    monkeypatch.setattr(store_module, "_read_parts", read_with_a_merge_in_between)
    tables = ResultStore(tmp_path).tables()
    assert merged == [6] and len(tables.units) == 3 and set(tables.traces["key"]) == {"k0", "k1", "k2"}
    assert len(writer.parts("units")) == 1


# ----- images keyed by everything that made them ------------------------------------------------------------


def test_two_datasets_in_one_folder_keep_their_own_images(tmp_path, photos, capsys):
    other = tmp_path / "other"
    other.mkdir()
    for path in sorted(photos.glob("*.png")):  # the same file names, other pixels
        with Image.open(path) as image:
            image.transpose(Image.Transpose.ROTATE_90).save(other / path.name)
    out = tmp_path / "run"
    for folder in (photos, other):
        code, _, err = bench(capsys, *run_args(out, photos, "--dataset", f"folder:{folder}", "--metrics", "psnr,ssim"))
        assert code == 0, err
    table = ResultStore(out).units()
    assert len(table) == 8 and table["image_path"].is_unique and table["reference_path"].nunique() == 8
    for row in table.to_dict(orient="records"):
        estimate, reference, _ = store_module.row_image_paths(out, row)
        source = photos if row["dataset"].endswith(str(photos)) else other
        with Image.open(reference) as saved, Image.open(source / f"{row['image_id']}.png") as original:
            expected = original.convert("RGB").resize((32, 32), Image.Resampling.BICUBIC)
            assert saved.size == (32, 32) and estimate.is_file()
            # the reference is this dataset's photo, not the first run's
            assert abs(np.asarray(saved, float) - np.asarray(expected, float)).mean() < 3


# ----- divergence, bad images, moved folders, interrupts ---------------------------------------------------


def test_divergence_is_judged_before_the_clamp(tmp_path, photos, capsys, monkeypatch):
    import solvers

    pinv = solvers.get("pinv")
    real_solve = pinv.solve

    def exploding(self, y, op, prior, **kwargs):
        x = real_solve(self, y, op, prior, **kwargs)
        x[0] = x[0] * 2000.0  # the first image blows up; the clamp would have made it a plausible image
        return x

    monkeypatch.setattr(pinv, "solve", exploding)
    out = tmp_path / "run"
    code, _, err = bench(capsys, *run_args(out, photos, "--batch-size", "4"))
    assert code == 0, err
    table = ResultStore(out).units()
    diverged = table[table["status"] == "diverged"]
    assert len(diverged) == 1 and diverged["psnr"].isna().all()
    assert "before the clamp" in diverged["error"].iloc[0] and "spans [" in diverged["error"].iloc[0]
    assert (table["status"] == "ok").sum() == 3


def test_an_unreadable_image_fails_only_its_own_units(tmp_path, photos, capsys):
    folder = tmp_path / "photos"
    shutil.copytree(photos, folder)
    broken = sorted(folder.glob("*.png"))[1]
    broken.write_bytes(broken.read_bytes()[:200])  # truncated after the header
    out = tmp_path / "run"
    code, _, err = bench(capsys, *run_args(out, photos, "--dataset", f"folder:{folder}", "--batch-size", "4"))
    assert code == 1 and "1 unit(s) failed" in err
    table = ResultStore(out).units().set_index("image_id")
    assert table.loc[broken.stem, "status"] == "failed" and broken.name in table.loc[broken.stem, "error"]
    others = table.drop(index=broken.stem)
    assert (others["status"] == "ok").all() and others["error"].isna().all()


def test_a_run_whose_folder_is_moved_stops_and_writes_nothing_at_the_old_path(tmp_path, photos, capsys, monkeypatch):
    import bench.pipeline.run as run_module

    real = run_module.evaluate_batch
    calls = []

    def then_move(context, batch):
        calls.append(len(batch))
        if len(calls) == 2:
            (tmp_path / "run").rename(tmp_path / "moved")
        return real(context, batch)

    monkeypatch.setattr(run_module, "evaluate_batch", then_move)
    code, _, err = bench(capsys, *run_args(tmp_path / "run", photos, "--batch-size", "2"))
    assert code == 2 and "was moved" in err and "--out" in err
    assert not (tmp_path / "run").exists()  # not recreated, half empty, at the old path
    assert len(ResultStore(tmp_path / "moved").units()) == 2  # the first batch is kept where the folder went


@pytest.mark.parametrize("how", ["interrupted", "terminated"])
def test_ctrl_c_and_sigterm_say_in_one_line_what_is_kept(tmp_path, photos, capsys, monkeypatch, how):
    import os
    import signal

    import bench.pipeline.run as run_module

    real = run_module.evaluate_batch
    calls = []

    def stopped(context, batch):
        calls.append(1)
        if len(calls) == 2:
            if how == "terminated":
                os.kill(os.getpid(), signal.SIGTERM)
            raise KeyboardInterrupt
        return real(context, batch)

    monkeypatch.setattr(run_module, "evaluate_batch", stopped)
    out = tmp_path / "run"
    code, _, err = bench(capsys, *run_args(out, photos, "--batch-size", "2"))
    assert code == 130
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines[-1].startswith(f"{how}: 2 finished unit(s) are kept in {out}") and "Traceback" not in err
    assert "Run the same command again to resume" in lines[-1]
    assert signal.getsignal(signal.SIGTERM) is not run_module._on_sigterm  # the handler is put back
    monkeypatch.setattr(run_module, "evaluate_batch", real)
    code, _, err = bench(capsys, *run_args(out, photos, "--batch-size", "2"))
    assert code == 0 and "2 already done" in err


def test_settings_that_can_be_checked_are_checked_before_any_work(tmp_path, photos, capsys):
    out = tmp_path / "run"
    code, _, err = bench(capsys, *run_args(out, photos, "--solvers", "uncond", "--set", "uncond.steps=0"))
    assert code == 2 and "uncond.steps must be an integer >= 1" in err
    assert not (out / "units").exists()
    missing = tmp_path / "no-such-phi"
    code, _, err = bench(capsys, *run_args(out, photos, "--solvers", "ddc", "--set", f"ddc.network={missing}"))
    assert code == 2 and "solver 'ddc' cannot run" in err and str(missing) in err
    assert not (out / "units").exists()
    # a folder the run writes into that is not writable is named before any work
    (out / "units").parent.mkdir(parents=True, exist_ok=True)
    (out / "units").write_text("a file where the units folder should be")
    code, _, err = bench(capsys, *run_args(out, photos))
    assert code == 2 and "folder 'units' of the output folder" in err and "--out" in err
    assert not (out / "images").exists()


def test_a_deleted_png_is_computed_again_by_the_next_run(tmp_path, photos, capsys):
    out = tmp_path / "run"
    assert bench(capsys, *run_args(out, photos))[0] == 0
    row = ResultStore(out).units().iloc[0].to_dict()
    png = store_module.row_image_paths(out, row)[0]
    png.unlink()
    code, _, err = bench(capsys, "report", "--results", str(out), "--out", str(tmp_path / "report"))
    assert code == 0, err
    page = (tmp_path / "report" / "report.md").read_text()
    assert "reconstruction PNG is gone" in page and row["image_id"] in page  # the report says so
    code, _, err = bench(capsys, *run_args(out, photos))
    assert code == 0 and "3 already done" in err and png.is_file()


def test_a_report_whose_folder_cannot_be_written_says_so_before_reading(tmp_path, photos, capsys):
    out = tmp_path / "run"
    assert bench(capsys, *run_args(out, photos))[0] == 0
    blocker = tmp_path / "reports"
    blocker.write_text("a file where the reports folder should be")
    code, _, err = bench(capsys, "report", "--results", str(out), "--out", str(blocker / "mine"))
    assert code == 2 and f"folder '{blocker}' is not writable" in err and "--out" in err and ".tmp" not in err


def test_a_run_names_its_report_command_and_other_settings_in_its_folder(tmp_path, photos, capsys):
    out = tmp_path / "run"
    code, _, err = bench(capsys, *run_args(out, photos))
    assert code == 0 and f"report: python -m bench report --results {out}" in err and "other settings" not in err
    code, _, err = bench(capsys, *run_args(out, photos, "--tasks", "sr8"))
    assert code == 0 and f"note: {out} also holds 4 unit(s) of other settings" in err


def test_a_row_without_a_measurement_png_has_no_measurement_path(tmp_path):
    """Tasks without A⁺ (phase retrieval) save no measurement: the grid must say so, not show another image."""
    row = {"image_path": "images/x/a.png", "reference_path": "images/reference/s/a.png", "measurement_path": None}
    estimate, reference, measurement = store_module.row_image_paths(tmp_path, row)
    assert estimate == tmp_path / "images/x/a.png" and reference == tmp_path / "images/reference/s/a.png"
    assert measurement is None


def test_retrained_weights_under_one_name_get_new_units_pngs_and_report_rows(tmp_path, photos, capsys):
    """A φ retrained into the same folder changes no option, yet its results are new: new keys (the spec holds
    the weights' sha256), their own PNG folder (the old rows' images stay theirs), the `solver_weights` column,
    and two methods in the report, told apart by a digest of the weights."""
    import torch

    from bench.report.load import method_labels
    from solvers.ddc.train import build_phi, save_phi

    folder = tmp_path / "phi"
    provenance = {"y_to_image": "replicate", "clip_x0": True}
    out = tmp_path / "run"
    args = run_args(out, photos, "--solvers", "ddc", "--set", f"ddc.network={folder}")
    for shift in (0.0, 1e-3):  # the second φ: other weights, same folder, same options
        network = build_phi(32, 3, (8, 16))
        with torch.no_grad():
            for parameter in network.parameters():
                parameter.add_(shift)
        if folder.exists():
            shutil.rmtree(folder)
        save_phi(network, folder, provenance)
        code, _, err = bench(capsys, *args)
        assert code == 0, err
    table = ResultStore(out).units()
    assert len(table) == 8 and set(table["status"]) == {"ok"}
    assert table["key"].is_unique and table["image_path"].is_unique
    assert table["solver_weights"].nunique() == 2 and "phi_sha256" in table["solver_weights"].iloc[0]
    assert table["solver_config"].nunique() == 1
    for row in table.to_dict(orient="records"):
        assert store_module.row_image_paths(out, row)[0].is_file()
    methods, _ = method_labels(table)
    assert len(methods) == 2 and all(label.startswith("ddc (weights=") for label in methods["method"])
    code, _, err = bench(capsys, "report", "--results", str(out), "--out", str(tmp_path / "report"))
    assert code == 0, err
    page = (tmp_path / "report" / "report.md").read_text(encoding="utf-8")
    for weights in table["solver_weights"].unique():
        digest = json.loads(weights)["phi_sha256"]["unet/diffusion_pytorch_model.safetensors"]
        assert digest in page  # the Versions section names both networks
    # a solver with no weights of its own keeps the paths and column it had
    code, _, err = bench(capsys, *run_args(tmp_path / "plain", photos))
    assert code == 0, err
    assert set(ResultStore(tmp_path / "plain").units()["solver_weights"]) == {""}
