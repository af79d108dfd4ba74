"""Bad input and edge cases of issue 22: each is refused or reported with a message naming the problem and the
fix (never a traceback), or warned about once, and a store holding nothing ok still renders a report."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from bench.cli import build_parser, main
from bench.pipeline.settings import RunError, settings_from_args
from bench.pipeline.store import ResultStore, StoreError
from bench.report import ReportError, render_report

PRIOR = "gaussian:32"


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """Three 48x48 PNGs (noise: the report and store checks do not depend on the content)."""
    folder = tmp_path_factory.mktemp("photos")
    for i in range(3):
        pixels = np.random.default_rng(i).integers(0, 256, (48, 48, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"img{i}.png")
    return folder


def bench_run(out: Path, photos: Path, *extra: str) -> int:
    argv = ["run", "--prior", PRIOR, "--dataset", f"folder:{photos}", "--out", str(out), "--no-progress"]
    return main([*argv, "--metrics", "psnr,ssim", *extra])


@pytest.fixture(scope="module")
def ok_run(tmp_path_factory, photos) -> Path:
    """A finished run folder with one ok unit part (pinv on sr4)."""
    out = tmp_path_factory.mktemp("runs") / "ok"
    assert bench_run(out, photos, "--solvers", "pinv", "--tasks", "sr4") == 0
    return out


def report(results: Path, out: Path, capsys) -> tuple[int, str]:
    code = main(["report", "--results", str(results), "--out", str(out)])
    return code, capsys.readouterr().err


# ----- 1. a report of a store with no ok unit ------------------------------------------------------------------


def nan_solve(self, y, op, prior, **kwargs):
    return torch.full_like(op.pinv(y), math.nan)  # the solve diverged


def failing_solve(self, *args, **kwargs):
    raise RuntimeError("boom")


def test_a_store_where_every_unit_diverged_renders(tmp_path, photos, monkeypatch, capsys):
    import solvers.pinv

    monkeypatch.setattr(solvers.pinv.Pinv, "solve", nan_solve)
    assert bench_run(tmp_path / "run", photos, "--solvers", "pinv", "--tasks", "sr4") == 0
    code, err = report(tmp_path / "run", tmp_path / "report", capsys)
    assert code == 0 and "Traceback" not in err, err
    table = (tmp_path / "report" / "tables" / "quality_sigma0.05.md").read_text(encoding="utf-8")
    assert "| pinv | n/a<sup>a</sup> |" in table and "every image diverged" in table
    assert (tmp_path / "report" / "index.html").is_file()


def test_a_store_of_failed_unsupported_and_diverged_units_lists_them(tmp_path, photos, monkeypatch, capsys):
    import solvers.ddrm
    import solvers.pinv

    monkeypatch.setattr(solvers.pinv.Pinv, "solve", nan_solve)
    monkeypatch.setattr(solvers.ddrm.DDRM, "solve", failing_solve)
    args = ("--solvers", "pinv,ddrm", "--tasks", "sr4,jpeg10", "--set", "ddrm.steps=2")
    assert bench_run(tmp_path / "run", photos, *args) == 1  # failed units: a re-run retries them
    statuses = ResultStore(tmp_path / "run").units().groupby(["solver", "task"])["status"].agg(set).to_dict()
    assert statuses == {
        ("pinv", "sr4"): {"diverged"},
        ("pinv", "jpeg10"): {"diverged"},
        ("ddrm", "sr4"): {"failed"},
        ("ddrm", "jpeg10"): {"unsupported"},
    }
    code, err = report(tmp_path / "run", tmp_path / "report", capsys)
    assert code == 0 and "Traceback" not in err, err
    markdown = (tmp_path / "report" / "report.md").read_text(encoding="utf-8")
    missing = markdown.split("## Missing and failed")[1]
    assert "| ddrm | sr4 | 0.05 | 3 | img0, img1, img2 | RuntimeError: boom |" in missing
    table = (tmp_path / "report" / "tables" / "quality_sigma0.05.md").read_text(encoding="utf-8")
    assert "ddrm needs" in table and "every image diverged" in table


# ----- 2. parts the store cannot merge -----------------------------------------------------------------------


def _foreign_part(run: Path, frame: pd.DataFrame) -> Path:
    path = run / "units" / "part-99999999999999999999-r0000-cafebabe.parquet"
    frame.to_parquet(path)
    return path


def _copy(run: Path, where: Path) -> Path:
    import shutil

    shutil.copytree(run, where)
    return where


def test_a_part_holding_only_keys_is_named_before_it_is_merged(tmp_path, ok_run, photos, capsys):
    run = _copy(ok_run, tmp_path / "run")
    foreign = _foreign_part(run, pd.DataFrame({"key": ["not-a-unit"]}))
    with pytest.raises(StoreError, match=r"has no 'status', 'solver', 'task', 'sigma', 'image_id' columns"):
        ResultStore(run).units()
    with pytest.raises(StoreError, match="move it out"):
        ResultStore(run).consolidate()
    assert foreign.is_file()  # nothing merged, nothing deleted
    code, err = report(run, tmp_path / "report", capsys)
    assert code == 2 and str(foreign) in err and "Traceback" not in err


def test_a_store_of_foreign_parts_only_is_a_report_error_naming_them(tmp_path, capsys):
    run = tmp_path / "run"
    (run / "units").mkdir(parents=True)
    foreign = _foreign_part(run, pd.DataFrame({"key": ["a", "b"]}))
    with pytest.raises(ReportError, match=r"have no 'status', 'solver'.*move those parts out"):
        render_report(run, tmp_path / "report")
    code, err = report(run, tmp_path / "report", capsys)
    assert code == 2 and str(foreign) in err


def test_a_part_whose_column_types_conflict_is_named_in_run_and_report(tmp_path, ok_run, photos, capsys):
    run = _copy(ok_run, tmp_path / "run")
    rows = ResultStore(run).units().drop(columns="part")
    edited = _foreign_part(run, rows.assign(psnr=rows["psnr"].map(str), key="x" + rows["key"]))
    with pytest.raises(StoreError, match=r"holds column 'psnr' as .*string, but the other parts hold it as double"):
        ResultStore(run).units()
    code, err = report(run, tmp_path / "report", capsys)
    assert code == 2 and f"'{edited}'" in err and "Traceback" not in err
    assert bench_run(run, photos, "--solvers", "pinv", "--tasks", "sr4") == 2
    assert f"'{edited}'" in capsys.readouterr().err


# ----- 3. config files ---------------------------------------------------------------------------------------


def _settings(tmp_path: Path, text: str, suffix: str = ".toml"):
    config = tmp_path / f"experiment{suffix}"
    config.write_text(text, encoding="utf-8")
    return config, lambda: settings_from_args(build_parser().parse_args(["run", "--config", str(config)]))


@pytest.mark.parametrize(
    "line",
    [
        "out = 5",
        "name = 3",
        "prior = 1",
        "dataset = [1]",
        "device = 0",
        "dtype = 16",
        "budget = 2",
        "seed = '0'",
        "batch_size = 1.5",
        "sigma = true",
        "solvers = 5",
        "tasks = [1, 2]",
        "metrics = 1",
        "set = 'dps.steps=3'",
        "force = 'yes'",
    ],
)
def test_every_config_key_is_type_checked_naming_key_and_file(tmp_path, line):
    config, load = _settings(tmp_path, line + "\n")
    key = line.split(" = ")[0]
    with pytest.raises(
        RunError, match=rf"config key '{key}' must be .* in config file '{config}'; write it e\.g\. as {key} = "
    ):
        load()


def test_yaml_configs_are_type_checked_and_right_types_still_load(tmp_path):
    config, load = _settings(tmp_path, "out: 5\n", ".yaml")
    with pytest.raises(RunError, match=f"config key 'out' must be a folder path .* in config file '{config}'"):
        load()
    _, load = _settings(tmp_path, "out: results/x\nsigma: [0, 0.05]\nsolvers: pinv\nseed: 3\n", ".yaml")
    settings = load()
    assert settings.out == Path("results/x") and settings.sigmas == [0.0, 0.05] and settings.seed == 3


@pytest.fixture(scope="module")
def diffusers_model(tmp_path_factory) -> Path:
    """A tiny diffusers pipeline folder (unet/ + scheduler/), 8x8 pixels."""
    from diffusers import DDPMScheduler, UNet2DModel

    folder = tmp_path_factory.mktemp("model")
    torch.manual_seed(0)
    unet = UNet2DModel(
        sample_size=8,
        in_channels=3,
        out_channels=3,
        layers_per_block=1,
        block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=4,
    )
    unet.save_pretrained(folder / "unet")
    DDPMScheduler().save_pretrained(folder / "scheduler")
    return folder


def _edited_model(model: Path, where: Path, file: str, edit) -> tuple[Path, Path]:
    import shutil

    copy = Path(shutil.copytree(model, where))
    path = copy / file
    text = path.read_text()
    path.write_text(edit(text) if callable(edit) else edit)
    return copy, path


def _with(key: str, value: object):
    return lambda text: json.dumps({**json.loads(text), key: value})


@pytest.mark.parametrize(
    "file, edit, message",
    [
        ("scheduler/scheduler_config.json", '{"beta_start": 0.1 "beta_end": 0.2}', "is not valid JSON .*line 1"),
        ("scheduler/scheduler_config.json", _with("num_train_timesteps", "abc"), "key 'num_train_timesteps' must"),
        ("scheduler/scheduler_config.json", _with("beta_end", [0.02]), "key 'beta_end' must be a number"),
        ("unet/config.json", '{"in_channels": 3,,}', "is not valid JSON"),
        ("unet/config.json", _with("in_channels", "three"), "key 'in_channels' must be a positive integer"),
        ("unet/config.json", _with("sample_size", "8"), "key 'sample_size' must be an integer or a list"),
        ("unet/config.json", _with("layers_per_block", 1.5), "key 'layers_per_block' must be a positive integer"),
    ],
    ids=["scheduler-json", "scheduler-int", "scheduler-float", "unet-json", "unet-int", "unet-size", "unet-layers"],
)
def test_a_broken_prior_config_names_the_file_and_key(tmp_path, diffusers_model, file, edit, message):
    from bench.priors import PriorError, load_prior

    copy, path = _edited_model(diffusers_model, tmp_path / "model", file, edit)
    with pytest.raises(PriorError, match=f"^{path}.*{message}"):
        load_prior(f"diffusers:{copy}")


def test_a_unet_config_that_does_not_fit_its_weights_says_which_keys_briefly(tmp_path, diffusers_model):
    from bench.priors import PriorError, load_prior

    copy, path = _edited_model(
        diffusers_model, tmp_path / "model", "unet/config.json", _with("block_out_channels", [16, 32])
    )
    with pytest.raises(PriorError) as caught:
        load_prior(f"diffusers:{copy}")
    message = str(caught.value)
    assert str(path) in message and "shape mismatches: conv_in.bias (expected (16,), found (8,))" in message
    assert re.search(r"… \(\d+ in all\)", message) and len(message) < 1500, message


def test_load_exact_lists_a_few_keys_and_the_counts():
    from bench.weights import WeightsError, load_exact

    model = torch.nn.Sequential(*[torch.nn.Linear(4, 4) for _ in range(30)])
    wrong = {key: torch.zeros(5, *value.shape[1:]) for key, value in model.state_dict().items()}
    with pytest.raises(WeightsError) as caught:
        load_exact(model, wrong)
    message = str(caught.value)
    assert "shape mismatches ['0.bias (file (5,), model (4,))'" in message and "and 55 more (60 in all)" in message
    assert len(message) < 800, message


# ----- 4. wording ----------------------------------------------------------------------------------------------


def test_broken_symlinks_in_a_dataset_folder_are_named_as_such(tmp_path, capsys):
    from bench.data import DatasetError, load_dataset

    folder = tmp_path / "links"
    folder.mkdir()
    (folder / "a.png").symlink_to(tmp_path / "gone" / "a.png")
    with pytest.raises(DatasetError, match=r"1 broken symbolic link\(s\), whose targets do not exist: 'a.png' -> "):
        load_dataset(f"folder:{folder}", size=32)
    Image.new("RGB", (32, 32)).save(folder / "b.png")
    assert load_dataset(f"folder:{folder}", size=32).ids == ["b"]
    assert "skipped 1 broken symbolic link(s)" in capsys.readouterr().err


def test_report_results_and_run_out_that_are_files_say_so(tmp_path, photos, capsys):
    file = tmp_path / "notes.txt"
    file.write_text("not a run")
    code, err = report(file, tmp_path / "report", capsys)
    assert code == 2 and "is a file, not a run folder" in err and "does not exist" not in err
    assert bench_run(file, photos, "--solvers", "pinv", "--tasks", "sr4") == 2
    err = capsys.readouterr().err
    assert f"--out '{file}' is a file, not a folder" in err and "not writable" not in err


# ----- 5. silent acceptances -----------------------------------------------------------------------------------


def _sigmas(*argv: str) -> list[float]:
    return settings_from_args(build_parser().parse_args(["run", *argv])).sigmas


def test_sigma_above_one_warns_once(capsys):
    assert _sigmas("--sigma", "0.05,2,25") == [0.05, 2.0, 25.0]
    err = capsys.readouterr().err
    assert err.count("warning:") == 1 and "sigma 2, 25 is above 1" in err and "0.007843, 0.09804" in err
    assert _sigmas("--sigma", "0,1") == [0.0, 1.0] and capsys.readouterr().err == ""


def test_minus_zero_is_the_noise_level_zero():
    sigmas = _sigmas("--sigma=-0,0")
    assert sigmas == [0.0] and math.copysign(1.0, sigmas[0]) == 1.0


@pytest.mark.parametrize(
    "argv",
    [
        ["train-prior"],
        ["train-denoiser"],
        ["train-bridge", "--task", "sr4"],
        ["train-ddc", "--prior", PRIOR],
    ],
    ids=lambda argv: argv[0],
)
def test_training_zero_steps_is_refused(tmp_path, capsys, argv):
    out = tmp_path / "trained"
    assert main([*argv, "--data", str(tmp_path / "photos"), "--out", str(out), "--steps", "0"]) == 2
    err = capsys.readouterr().err
    assert "--steps 0 trains nothing" in err and "--steps 1 or more" in err
    assert not out.exists()


@pytest.mark.parametrize("command", ["train-ddc", "train-denoiser"])
def test_a_negative_sigma_max_is_refused(tmp_path, capsys, command):
    with pytest.raises(SystemExit):
        main([command, "--data", str(tmp_path), "--out", str(tmp_path / "out"), "--sigma-max", "-0.1"])
    assert "--sigma-max: must be a noise std >= 0" in capsys.readouterr().err


def test_images_far_smaller_than_the_prior_warn_once_with_their_count(tmp_path, capsys):
    from bench.data import load_dataset

    folder = tmp_path / "tiny"
    folder.mkdir()
    for i, side in enumerate([10, 12, 64]):
        Image.new("RGB", (side, side)).save(folder / f"im{i}.png")
    load_dataset(f"folder:{folder}", size=64)
    load_dataset(f"folder:{folder}", size=64, n_images=2)  # bench run loads twice when --n-images is given
    err = capsys.readouterr().err
    assert err.count("warning:") == 1 and "2 of 3 images" in err and "im0.png (10x10)" in err
    load_dataset(f"folder:{folder}", size=16)  # 10 and 12 pixels are not far below 16
    assert capsys.readouterr().err == ""


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_a_report_removes_staging_folders_a_killed_report_left(tmp_path, ok_run):
    out = tmp_path / "reports" / "ok"
    out.parent.mkdir()
    stale = [out.parent / f".ok.tmp-{_dead_pid()}-0123abcd", out.parent / f".ok.old-{_dead_pid()}-4567cdef"]
    live = out.parent / ".ok.tmp-1-89abcdef"  # pid 1 runs: a render in progress elsewhere keeps its folder
    other = out.parent / f".other.tmp-{_dead_pid()}-0123abcd"  # another report's: not this one's to remove
    for folder in [*stale, live, other]:
        folder.mkdir()
        (folder / "index.html").write_text("half")
    render_report(ok_run, out)
    assert (out / "index.html").is_file()
    assert not any(folder.exists() for folder in stale) and live.is_dir() and other.is_dir()
    assert os.getpid() != 1
