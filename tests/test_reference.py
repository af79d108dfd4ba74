"""The kurtosis figure's data reference (`bench.pipeline.reference`): the prior's ε̂ on the run's clean images,
forward-noised, checked against a hand computation on the Gaussian prior (whose ε̂ is exact), cached per spec."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from run_cases import write_photo_crops
from scipy import stats

from bench.cli import main
from bench.data import load_dataset
from bench.pipeline import reference
from bench.priors import load_prior
from operators import seeded_generator

PRIOR = "gaussian:16"


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    return write_photo_crops(tmp_path_factory.mktemp("photos"), count=3, size=32)


def _hand_kurtosis(prior, image: torch.Tensor, image_id: str, t: int, seed: int) -> float:
    """Excess kurtosis of the exact E[ε | x_t] of the Gaussian prior at x_t = √ᾱ x + √(1 − ᾱ) ε, in float64:
    E[ε | x_t] = √(1 − ᾱ) (ᾱ Σ + (1 − ᾱ) I)⁻¹ (x_t − √ᾱ μ), one division per coefficient of Σ's eigenbasis."""
    eps = torch.randn(prior.image_shape, generator=seeded_generator(seed, image_id, f"reference/t{t}"))
    ab = float(prior.alphas_cumprod[t])
    x_t = math.sqrt(ab) * image.double() + math.sqrt(1 - ab) * eps.double()
    z = prior.to_basis((x_t - math.sqrt(ab) * prior.mean)[None])
    eps_hat = math.sqrt(1 - ab) * prior.from_basis(z / (ab * prior.eigenvalues + 1 - ab))
    return float(stats.kurtosis(eps_hat.reshape(-1).numpy(), fisher=True, bias=True))


def test_compute_reference_is_the_exact_posterior_eps_kurtosis_and_does_not_depend_on_batching():
    prior = load_prior(PRIOR)
    images = prior.sample(3, generator=torch.Generator().manual_seed(1)).clamp(-1, 1)
    ids, grid = ["a", "b", "c"], [999, 500, 100, 10, 0]
    prior.reset_stats()
    values, pairs = reference.compute_reference(prior, images, ids, grid, seed=7, batch_size=4)
    assert prior.stats.nfe == math.ceil(len(ids) * len(grid) / 4)  # (image, t) pairs, 4 to a network call
    assert sorted(pairs) == sorted((i, t) for i in ids for t in grid)
    for value, (image_id, t) in zip(values, pairs, strict=True):
        expected = _hand_kurtosis(prior, images[ids.index(image_id)], image_id, t, seed=7)
        assert value == pytest.approx(expected, abs=2e-4), (image_id, t)
    alone, _ = reference.compute_reference(prior, images, ids, grid, seed=7, batch_size=1)
    assert np.allclose(alone, values, atol=1e-5)
    # one stream per (image, t): the value at t does not depend on the rest of the grid
    fewer, fewer_pairs = reference.compute_reference(prior, images, ids, [100], seed=7, batch_size=4)
    at_100 = {pair: v for pair, v in zip(pairs, values, strict=True) if pair[1] == 100}
    assert np.allclose(fewer, [at_100[p] for p in fewer_pairs], atol=1e-5)


def test_the_grid_takes_sparse_solvers_timesteps_within_its_bound():
    linspace = load_prior(PRIOR).timesteps(reference.GRID_STEPS, "linspace")
    grid = reference.reference_grid(1000, linspace, {"ddc": {800, 600, 400, 200, 0}, "dps": set(range(0, 1000, 10))})
    assert grid == sorted(grid, reverse=True) and len(set(grid)) == len(grid)
    assert {800, 600, 400, 200, 0, *reference.SMALL_T, *linspace} == set(grid)  # DPS's 100 steps are not taken
    many = {f"s{k}": {7 * k + j for j in range(15)} for k in range(5)}  # sparse, but 75 timesteps in all
    assert len(reference.reference_grid(1000, linspace, many)) <= reference.MAX_GRID


def test_the_switch():
    assert reference.enabled({}) and reference.enabled({"BENCH_REFERENCE": "1"})
    assert not reference.enabled({"BENCH_REFERENCE": "0"}) and not reference.enabled({"BENCH_REFERENCE": "off"})


def _run(capsys, out: Path, photos: Path, *extra: str) -> str:
    argv = ["run", "--prior", PRIOR, "--dataset", f"folder:{photos}", "--out", str(out), "--no-progress"]
    argv += ["--tasks", "sr4", "--sigma", "0.05", "--n-images", "3", "--metrics", "psnr,ssim", *extra]
    assert main(argv) == 0
    return capsys.readouterr().err


def test_a_run_writes_the_reference_once_and_reruns_reuse_it(tmp_path, photos, capsys, monkeypatch):
    calls = []
    compute = reference.compute_reference

    def counted(prior, *args, **kwargs):
        before = prior.stats.nfe
        result = compute(prior, *args, **kwargs)
        calls.append(prior.stats.nfe - before)
        return result

    monkeypatch.setattr(reference, "compute_reference", counted)
    out = tmp_path / "run"
    err = _run(capsys, out, photos, "--solvers", "ddnm,pinv", "--set", "ddnm.steps=3", "--batch-size", "4")
    files = list((out / "reference").glob("*.parquet"))
    assert len(files) == 1 and "reference: the prior's ε̂ on the 3 clean images" in err
    grid_size = len(set(reference.SMALL_T) | {666, 333, 0} | set(load_prior(PRIOR).timesteps(20, "linspace")))
    assert calls == [math.ceil(3 * grid_size / 4)]  # (image, t) pairs, batch size 4 to a call

    rows = reference.read_references(out)  # the report's reader
    assert set(rows["t"]) >= {666, 333, 0, *reference.SMALL_T} and len(rows) == 3 * grid_size
    assert set(rows["prior"]) == {PRIOR} and rows["image_id"].nunique() == 3
    prior = load_prior(PRIOR)
    dataset = load_dataset(f"folder:{photos}", size=16, channels=3, n_images=3)
    images = {image_id: dataset[i][1] for i, image_id in enumerate(dataset.ids)}
    for row in rows.sample(8, random_state=0).itertuples():
        expected = _hand_kurtosis(prior, images[row.image_id], row.image_id, row.t, seed=int(row.seed))
        assert row.kurtosis == pytest.approx(expected, abs=2e-4)

    err = _run(capsys, out, photos, "--solvers", "ddnm,pinv", "--set", "ddnm.steps=3", "--batch-size", "4")
    assert calls == [calls[0]] and "reference: reused" in err  # no second computation
    assert list((out / "reference").glob("*.parquet")) == files


def test_no_reference_where_uncond_runs_or_the_switch_is_off(tmp_path, photos, capsys, monkeypatch):
    solvers = ("--solvers", "uncond,ddnm", "--set", "uncond.steps=3", "--set", "ddnm.steps=3")
    err = _run(capsys, tmp_path / "uncond", photos, *solvers)
    assert not (tmp_path / "uncond" / "reference").exists() and "reference:" not in err
    monkeypatch.setenv("BENCH_REFERENCE", "0")
    err = _run(capsys, tmp_path / "off", photos, "--solvers", "ddnm", "--set", "ddnm.steps=3")
    assert not (tmp_path / "off" / "reference").exists() and "reference:" not in err


def test_read_references_skips_what_it_cannot_use(tmp_path):
    assert reference.read_references(tmp_path).empty
    (tmp_path / "reference").mkdir()
    (tmp_path / "reference" / "broken.parquet").write_bytes(b"not parquet")
    row = {"prior": "p", "dataset": "d", "image_id": "a", "seed": 0, "t": 5, "kurtosis": 0.5, "spec": "x"}
    pd.DataFrame([row, {**row, "t": 6}]).to_parquet(tmp_path / "reference" / "one.parquet")
    pd.DataFrame([row]).to_parquet(tmp_path / "reference" / "two.parquet")  # the same value under another grid
    rows = reference.read_references(tmp_path)
    assert sorted(rows["t"]) == [5, 6]
