"""`python -m bench run` end to end on tiny settings: the analytic Gaussian prior at 3x32x32 (the smallest size
LPIPS accepts) and crops of scikit-image's bundled photos."""

from __future__ import annotations

import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from run_cases import write_photo_crops
from scipy import stats

from bench.cli import build_parser, main
from bench.pipeline.evaluate import fisher_kurtosis
from bench.pipeline.settings import settings_from_args
from bench.pipeline.store import SET_COLUMNS, TRACE_COLUMNS, UNIT_COLUMNS, ResultStore, row_image_paths

REPO = Path(__file__).resolve().parents[1]
PRIOR = "gaussian:32"


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    return write_photo_crops(tmp_path_factory.mktemp("photos"), count=5)


def bench_run(capsys, out: Path, photos: Path, *extra: str) -> tuple[int, str, str]:
    argv = ["run", "--prior", PRIOR, "--dataset", f"folder:{photos}", "--out", str(out), "--no-progress", *extra]
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def summary_lines(text: str) -> dict[tuple[str, str, str], list[str]]:
    lines = [line.split() for line in text.strip().splitlines()]
    start = next(i for i, line in enumerate(lines) if line[:3] == ["solver", "task", "sigma"])
    return {tuple(line[:3]): line[3:] for line in lines[start + 1 :]}


def test_fisher_kurtosis_matches_scipy():
    torch.manual_seed(0)
    eps = torch.cat([torch.randn(1, 3, 8, 8), torch.distributions.Laplace(0.0, 1.0).sample((1, 3, 8, 8))])
    expected = stats.kurtosis(eps.reshape(2, -1).numpy().astype(np.float64), axis=1, fisher=True, bias=True)
    assert torch.allclose(fisher_kurtosis(eps), torch.from_numpy(expected), atol=1e-9)


def test_run_records_rows_skips_done_units_and_summary_equals_parquet(tmp_path, photos, capsys):
    out = tmp_path / "run"
    args = ["--solvers", "pinv,ddnm,ddrm", "--tasks", "sr4,jpeg10", "--sigma", "0.05", "--n-images", "3"]
    args += ["--batch-size", "2", "--set", "ddnm.steps=3", "--set", "ddrm.steps=3"]
    code, stdout, _ = bench_run(capsys, out, photos, *args)
    assert code == 0
    store = ResultStore(out)
    table = store.units()
    assert len(table) == len(store.raw_units()) == 3 * 2 * 3  # solvers x tasks x images, no duplicates
    status = table.groupby(["solver", "task"])["status"].agg(set).to_dict()
    assert status[("ddrm", "jpeg10")] == {"unsupported"}
    assert status[("ddnm", "jpeg10")] == {"unsupported"}  # DDNM+ needs an SVD at sigma > 0
    assert all(status[(s, "sr4")] == {"ok"} for s in ("pinv", "ddnm", "ddrm"))
    unsupported = table[table["status"] == "unsupported"]
    assert unsupported["error"].str.contains("svd").all() and unsupported["psnr"].isna().all()
    ok = table[table["status"] == "ok"]
    assert ok[["psnr", "ssim", "lpips", "consistency"]].notna().all().all()
    assert (ok[ok["solver"] == "ddnm"]["nfe"] == 3).all() and (ok[ok["solver"] == "pinv"]["nfe"] == 0).all()
    assert (
        set(table["dtype"]) == {"fp32"} and set(table["device"]) == {"cpu"} and table["git_commit"].str.len().min() > 0
    )

    # images: reconstruction, reference and measurement (A⁺y) of every finished unit
    for row in ok.itertuples():
        saved, reference, measurement = row_image_paths(out, row._asdict())
        assert np.asarray(Image.open(saved)).shape == (32, 32, 3)
        assert reference.is_file() and measurement.is_file()

    # traces: one row per network evaluation and image, with the kurtosis of ε̂ and a residual
    traces = store.traces()
    sampled = ok[ok["solver"] != "pinv"]
    assert len(traces) == sampled["nfe"].sum() == 3 * 6 and set(traces["key"]) == set(sampled["key"])
    assert sorted(set(traces["step"])) == [0, 1, 2] and traces[["kurtosis", "residual"]].notna().all().all()
    assert sorted(set(traces["t"])) == [0, 333, 666]  # 3 uniform steps of the 1000-step schedule

    # the summary printed equals the parquet files as pandas reads them
    direct = pd.concat([pd.read_parquet(p) for p in (out / "units").glob("part-*.parquet")])
    printed = summary_lines(stdout)
    assert len(printed) == 6
    for (solver, task, sigma), group in direct.groupby(["solver", "task", "sigma"]):
        n, n_ok, n_unsupported, n_failed, n_diverged, psnr, ssim, lpips = printed[(solver, task, f"{sigma:g}")]
        good = group[group["status"] == "ok"]
        assert (int(n), int(n_ok), int(n_unsupported)) == (len(group), len(good), len(group) - len(good))
        assert (int(n_failed), int(n_diverged)) == (0, 0)
        if len(good):
            assert float(psnr) == pytest.approx(good["psnr"].mean(), abs=0.006)
            assert float(ssim) == pytest.approx(good["ssim"].mean(), abs=6e-5)
            assert float(lpips) == pytest.approx(good["lpips"].mean(), abs=6e-5)
        else:
            assert psnr == ssim == lpips == "nan"

    # three images per set (pinv on both tasks, ddnm and ddrm on sr4): FID/KID recorded as NaN with the reason
    sets = store.sets()
    assert len(sets) == 4 and sets["fid"].isna().all() and sets["note"].str.contains("at least 4").all()

    # every table has exactly the declared columns, in order, with the declared dtypes
    for written, schema in ((table, UNIT_COLUMNS), (traces, TRACE_COLUMNS), (sets, SET_COLUMNS)):
        assert list(written.columns) == [column.name for column in schema] + ["part"]
        for column in schema:
            values = written[column.name]
            if column.dtype == "str":
                assert pd.api.types.is_string_dtype(values) or values.isna().all(), column.name
            else:
                assert str(values.dtype) == column.dtype, column.name

    # a re-run computes nothing: no new part, no rewritten image
    parts = store.parts("units")
    first = ok[ok["solver"] == "ddnm"].iloc[0]
    png = row_image_paths(out, first)[0]
    mtime = png.stat().st_mtime_ns
    code, again, err = bench_run(capsys, out, photos, *args)
    assert code == 0 and "18 already done" in err
    assert store.parts("units") == parts and png.stat().st_mtime_ns == mtime
    assert summary_lines(again) == printed

    # --force recomputes every unit; after compaction the files themselves hold one row per unit
    code, forced, _ = bench_run(capsys, out, photos, *args, "--force")
    assert code == 0 and len(store.raw_units()) == 18 and store.raw_units()["key"].is_unique
    assert not set(store.raw_units()["part"]) & {p.stem for p in parts}  # the superseded parts are gone
    assert summary_lines(forced) == printed


def test_run_records_divergence_and_failures_and_retries_failed(tmp_path, photos, capsys, monkeypatch):
    import solvers

    pinv = solvers.get("pinv")
    real_solve = pinv.solve

    def broken(self, y, op, prior, **kwargs):
        if op.task == "jpeg10":
            raise RuntimeError("simulated failure")
        x = real_solve(self, y, op, prior, **kwargs)
        x[0] = float("nan")  # the first image of every batch diverges
        return x

    monkeypatch.setattr(pinv, "solve", broken)
    out = tmp_path / "run"
    args = ["--solvers", "pinv", "--tasks", "sr4,jpeg10", "--sigma", "0", "--n-images", "2", "--batch-size", "2"]
    code, stdout, err = bench_run(capsys, out, photos, *args)
    assert code == 1  # a failed unit makes the run exit non-zero, with the reason printed
    assert "2 unit(s) failed" in err and "pinv/jpeg10/σ=0: 2 failed: RuntimeError: simulated failure" in err
    table = ResultStore(out).units().set_index(["task", "image_id"])
    ids = sorted(set(table.index.get_level_values("image_id")))
    first, second = (table.loc[("sr4", i)] for i in ids)
    assert first["status"] == "diverged" and "NaN" in first["error"] and math.isnan(first["psnr"])
    assert second["status"] == "ok" and second["psnr"] > 10
    assert not list((out / "images" / "pinv" / "sr4" / "0").glob(f"*/{ids[0]}.png"))
    failed = table.loc["jpeg10"]
    assert (failed["status"] == "failed").all() and failed["error"].str.contains("simulated failure").all()
    assert summary_lines(stdout)[("pinv", "jpeg10", "0")][:5] == ["2", "0", "0", "2", "0"]

    # the next run retries only the failed units
    monkeypatch.setattr(pinv, "solve", real_solve)
    code, _, err = bench_run(capsys, out, photos, *args)
    assert code == 0 and "2 already done" in err
    table = ResultStore(out).units()
    assert len(table) == 4
    assert table.set_index(["task", "image_id"])["status"].to_dict() == {
        ("sr4", ids[0]): "diverged",
        ("sr4", ids[1]): "ok",
        ("jpeg10", ids[0]): "ok",
        ("jpeg10", ids[1]): "ok",
    }


def few_photos(photos: Path, folder: Path, count: int) -> Path:
    folder.mkdir()
    for path in sorted(photos.glob("*.png"))[:count]:
        (folder / path.name).write_bytes(path.read_bytes())
    return folder


@pytest.mark.slow
def test_run_killed_part_way_resumes_every_unit_exactly_once(tmp_path, photos):
    out = tmp_path / "run"
    dataset = few_photos(photos, tmp_path / "photos", 3)
    command = [sys.executable, "-m", "bench", "run", "--prior", PRIOR, "--dataset", f"folder:{dataset}"]
    command += ["--out", str(out), "--solvers", "uncond,pinv", "--set", "uncond.steps=20", "--tasks", "sr4"]
    command += ["--sigma", "0.05", "--batch-size", "1", "--no-progress"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    units = out / "units"
    while process.poll() is None and time.monotonic() < deadline:
        if units.is_dir() and any(units.glob("part-*.parquet")):
            break
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL, "the run finished before it could be killed"
    parts_before = ResultStore(out).parts("units")
    total = 2 * 3
    assert 1 <= len(parts_before) < total
    # a recomputed unit would get a new measured solver time: the finished rows must come back unchanged
    done_before = ResultStore(out).units().set_index("key")[["wall_s", "psnr"]]

    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    store = ResultStore(out)
    raw = store.raw_units()
    assert len(raw) == total and raw["key"].is_unique  # every unit exactly once, none lost
    assert set(raw["status"]) == {"ok"}
    assert len(store.parts("units")) == 1  # the end of the run merged the batches' parts
    pd.testing.assert_frame_equal(raw.set_index("key").loc[done_before.index, ["wall_s", "psnr"]], done_before)
    traces = store.traces()
    assert len(traces) == 20 * 3 and not traces.duplicated(["key", "step"]).any()


def parse(*argv: str):
    return settings_from_args(build_parser().parse_args(["run", *argv]))


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--sigma", "0,-0.05"], "sigma must be a finite number >= 0"),
        (["--sigma", "abc"], "expects numbers"),
        (["--solvers", "ddmn"], "did you mean 'ddnm'"),
        (["--tasks", "sr5"], "unknown task 'sr5'"),
        (["--solvers", "dps", "--set", "dps.zta=1"], "did you mean 'zeta'"),
        (["--solvers", "dps", "--set", "ddnm.steps=3"], "does not include"),
        (["--batch-size", "0"], "--batch-size must be >= 1"),
        (["--seed", str(2**63)], "--seed must be between 0 and 9223372036854775807"),
        (["--seed", "-1"], "--seed must be between 0"),
        (["--solvers", "ddnm", "--set", "ddnm.steps=100000"], "ddnm.steps=100000 exceeds the 1000 timesteps"),
        (["--device", "gpu"], "unknown device 'gpu'"),
        (["--prior", "gausian"], "did you mean 'gaussian'"),
        (["--prior", "gaussian:32", "--dataset", "skimage-natral"], "did you mean 'skimage-natural'"),
    ],
)
def test_run_rejects_bad_options_before_any_work(argv, message, capsys, tmp_path):
    code = main(["run", "--out", str(tmp_path / "never"), "--solvers", "pinv", *argv])
    assert code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "never").exists()


def test_run_rejects_a_prior_that_does_not_fit_the_task(tmp_path, photos, capsys):
    code, _, err = bench_run(capsys, tmp_path / "r", photos, "--prior", "gaussian:20", "--tasks", "sr8")
    assert code == 2 and "task 'sr8' does not fit prior 'gaussian:20'" in err and "divisible by the SR factor 8" in err


def test_run_rejects_an_unwritable_output_folder(tmp_path, photos, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("a file where the run folder's parent should be")
    code, _, err = bench_run(capsys, blocker / "run", photos, "--solvers", "pinv")
    assert code == 2 and f"lies under '{blocker}', which is a file, not a folder" in err and "--out" in err


@pytest.mark.slow
def test_run_warns_when_the_dataset_has_fewer_images_and_scores_complete_sets(tmp_path, photos, capsys):
    dataset = few_photos(photos, tmp_path / "photos", 4)
    args = ["--solvers", "pinv", "--tasks", "sr4", "--sigma", "0", "--n-images", "9", "--batch-size", "4"]
    code, _, err = bench_run(capsys, tmp_path / "r", dataset, *args)
    assert code == 0 and "has only 4 images; using all 4" in err
    store = ResultStore(tmp_path / "r")
    assert len(store.units()) == 4
    # four finished images make a set: FID and KID are computed from the saved PNGs
    (scores,) = store.sets().itertuples()
    assert scores.n_images == 4 and scores.fid > 0 and math.isfinite(scores.kid) and scores.note is None


def test_run_config_file_is_overridden_by_the_command_line(tmp_path):
    config = tmp_path / "exp.toml"
    config.write_text(
        'solvers = "pinv,ddnm"\nsigma = [0, 0.05]\nbatch-size = 8\nset = ["ddnm.steps=5"]\nname = "exp"\n'
    )
    settings = parse("--config", str(config), "--batch-size", "2")
    assert settings.solvers == ["pinv", "ddnm"] and settings.sigmas == [0.0, 0.05]
    assert settings.batch_size == 2 and settings.overrides == {"ddnm": {"steps": "5"}}
    assert settings.out == Path("results") / "exp" and settings.tasks == ["sr4", "sr8", "gblur", "inpaint", "jpeg10"]
    config.write_text('solver = "pinv"\n')
    with pytest.raises(ValueError, match="did you mean 'solvers'"):
        parse("--config", str(config))


def test_run_yaml_config_reads_like_the_toml_one(tmp_path):
    config = tmp_path / "exp.yaml"
    config.write_text("solvers: [pinv, ddnm]\nsigma: [0, 0.05]\nbatch-size: 8\nset: [ddnm.steps=5]\nbudget: paper\n")
    settings = parse("--config", str(config), "--batch-size", "2")
    assert settings.solvers == ["pinv", "ddnm"] and settings.sigmas == [0.0, 0.05] and settings.budget == "paper"
    assert settings.batch_size == 2 and settings.overrides == {"ddnm": {"steps": "5"}}
    config.write_text("solvers: [pinv\n")
    with pytest.raises(ValueError, match="not valid YAML"):
        parse("--config", str(config))
    config.write_text("- pinv\n")
    with pytest.raises(ValueError, match="table of settings"):
        parse("--config", str(config))
    other = tmp_path / "exp.json"
    other.write_text("{}")
    with pytest.raises(ValueError, match=r"TOML \(\.toml\) or YAML"):
        parse("--config", str(other))


def test_budget_lowers_only_the_expensive_solvers_and_set_wins():
    from bench.pipeline.settings import budget_overrides

    settings = parse("--solvers", "dps,ddnm,uncond", "--set", "uncond.steps=7")
    assert budget_overrides(settings, "cpu") == {"dps": {"steps": "100"}, "ddnm": {}, "uncond": {"steps": "7"}}
    assert budget_overrides(settings, "cuda") == {"dps": {}, "ddnm": {}, "uncond": {"steps": "7"}}
    paper = parse("--solvers", "dps", "--budget", "paper")
    assert budget_overrides(paper, "cpu") == {"dps": {}}
    quick = parse("--solvers", "dps", "--budget", "quick")
    assert budget_overrides(quick, "cuda") == {"dps": {"steps": "100"}}


@pytest.mark.slow
def test_run_under_torchrun_with_two_processes_gives_the_rows_of_one(tmp_path, photos, capsys):
    dataset = few_photos(photos, tmp_path / "photos", 3)
    args = ["--prior", PRIOR, "--dataset", f"folder:{dataset}", "--solvers", "pinv,ddnm", "--set", "ddnm.steps=3"]
    args += ["--tasks", "sr4,jpeg10", "--sigma", "0.05", "--batch-size", "2", "--no-progress"]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    command += ["-m", "bench", "run", "--out", str(tmp_path / "two"), *args]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.count("PSNR") == 1  # rank 0 alone prints the summary
    two = ResultStore(tmp_path / "two")
    assert set(two.raw_units()["rank"]) == {0, 1}  # both ranks computed units

    assert main(["run", "--out", str(tmp_path / "one"), *args]) == 0
    one_printed = capsys.readouterr().out
    columns = ["status", "psnr", "ssim", "lpips", "consistency", "nfe"]
    a = ResultStore(tmp_path / "one").units().set_index("key")[columns].sort_index()
    b = two.raw_units().set_index("key")[columns].sort_index()
    assert len(a) == len(b) == 2 * 2 * 3 and list(a.index) == list(b.index)
    assert (a["status"] == b["status"]).all() and (a["nfe"] == b["nfe"]).all()
    numbers = ["psnr", "ssim", "lpips", "consistency"]
    assert np.allclose(a[numbers].to_numpy(float), b[numbers].to_numpy(float), rtol=1e-4, equal_nan=True)
    assert summary_lines(result.stdout) == summary_lines(one_printed)

    # a single process resumes the two ranks' work: nothing left to do
    parts = two.parts("units")
    assert main(["run", "--out", str(tmp_path / "two"), *args]) == 0
    assert "12 already done" in capsys.readouterr().err and two.parts("units") == parts


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('force = "no"\n', "config key 'force' must be true or false"),
        ("n-images = 1.7\n", "must be a whole number, got 1.7"),
        ("n-images = true\n", "must be a whole number, got True"),
        ('set = "ddnm.steps=5"\n', "config key 'set' must be a list"),
        ("seed = 99999999999999999999\n", "--seed must be between"),
    ],
)
def test_run_config_values_are_type_checked_with_the_key_named(tmp_path, text, message):
    config = tmp_path / "exp.toml"
    config.write_text('solvers = "pinv,ddnm"\n' + text)
    with pytest.raises(ValueError, match=re.escape(message)):
        parse("--config", str(config))


def test_run_config_force_true_is_read_as_a_boolean(tmp_path):
    config = tmp_path / "exp.toml"
    config.write_text('solvers = "pinv"\nforce = true\n')
    assert parse("--config", str(config)).force is True
    config.write_text('solvers = "pinv"\nforce = false\n')
    assert parse("--config", str(config)).force is False


def test_a_full_disk_is_reported_with_how_to_resume(tmp_path, photos, capsys, monkeypatch):
    import errno

    def full(self, kind, rows, stem=None):
        raise OSError(errno.ENOSPC, "No space left on device", str(self.root / kind))

    monkeypatch.setattr(ResultStore, "write_part", full)
    code, _, err = bench_run(capsys, tmp_path / "r", photos, "--solvers", "pinv", "--tasks", "sr4", "--n-images", "1")
    assert code == 3 and "the disk is full" in err and "resumes where it stopped" in err and "Traceback" not in err


def test_bench_list_without_a_section_lists_them_all(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert all(heading in out for heading in ("tasks (", "solvers (", "priors:", "datasets:", "metrics:"))
    assert "does not use the diffusion prior" in out  # pnp-admm and the bridges
    assert main(["list", "priors", "bogus"]) == 2
    assert "no section 'bogus'" in capsys.readouterr().err


def test_loading_a_prior_prints_no_dtype_warning(capfd):
    from bench.priors import load_prior

    prior = load_prior("natural64")
    assert next(prior.network.parameters()).dtype == torch.float32
    assert "should be kept in float32" not in capfd.readouterr().err


def test_two_configs_and_two_seeds_keep_their_own_images(tmp_path, photos, capsys):
    out = tmp_path / "r"
    common = ["--solvers", "ddnm", "--tasks", "inpaint", "--sigma", "0.05", "--n-images", "1"]
    for extra in (["--set", "ddnm.steps=2"], ["--set", "ddnm.steps=3"], ["--set", "ddnm.steps=3", "--seed", "7"]):
        assert bench_run(capsys, out, photos, *common, *extra)[0] == 0
    rows = ResultStore(out).units()
    assert len(rows) == 3
    paths = [row_image_paths(out, r)[0] for r in rows.to_dict(orient="records")]
    assert len(set(paths)) == 3 and all(p.is_file() for p in paths)
    pixels = [np.asarray(Image.open(p)) for p in paths]
    assert not np.array_equal(pixels[0], pixels[1]) and not np.array_equal(pixels[1], pixels[2])
    # the measurement of each seed (its own inpainting mask and noise) is kept too
    by_seed = {r["seed"]: row_image_paths(out, r)[2] for r in rows.to_dict(orient="records")}
    masks = [np.asarray(Image.open(by_seed[s])) for s in (0, 7)]
    assert not np.array_equal(*masks)


def test_solvers_own_networks_are_counted_in_the_rows_and_the_runtime_table(tmp_path, photos, capsys):
    from bench.report.tables import runtime_summary, runtime_table

    out = tmp_path / "r"
    args = ["--solvers", "pnp-admm,pinv", "--tasks", "sr4", "--sigma", "0.05", "--n-images", "2"]
    assert bench_run(capsys, out, photos, *args, "--set", "pnp-admm.iterations=3")[0] == 0
    rows = ResultStore(out).units().set_index("solver")
    pnp, pinv = rows.loc["pnp-admm"], rows.loc["pinv"]
    assert (pnp["own_nfe"] == 3).all() and (pnp["own_networks"] == "dncnn").all() and (pnp["nfe"] == 0).all()
    assert (pnp["own_network_s"] > 0).all() and (pnp["own_network_s"] <= pnp["wall_s"]).all()
    assert (pinv["own_nfe"] == 0).all() and (pinv["own_networks"] == "").all()
    units = ResultStore(out).units().assign(method=lambda t: t["solver"])
    table = runtime_table(runtime_summary(units), ["pinv", "pnp-admm"])
    cells = {row[0].text: [c.text for c in row] for row in table.rows}
    assert cells["pnp-admm"][2] == "3 (dncnn)" and cells["pinv"][2] == "0"
    assert cells["pnp-admm"][4] != "0%"  # the denoiser's time counts as network time


def test_cpu_peak_memory_is_the_solves_own_even_in_a_warm_process(tmp_path, photos, capsys):
    args = ["--solvers", "ddnm", "--tasks", "sr4", "--sigma", "0.05", "--n-images", "3", "--batch-size", "1"]
    assert bench_run(capsys, tmp_path / "r", photos, *args, "--set", "ddnm.steps=2")[0] == 0
    rows = ResultStore(tmp_path / "r").units()
    assert len(rows) == 3 and (rows["peak_memory_bytes"] > 0).all()  # later batches too, not only the first
