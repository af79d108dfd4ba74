"""Noise models (`operators.noise`, `bench run --noise`) and best-of-N runs (`bench run --best-of`).

Runs use the analytic Gaussian prior at 3x32x32 and 48x48 crops of scikit-image's photos (`run_cases`), with
--metrics psnr so that no LPIPS or Inception network is loaded.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import pytest
import torch
from run_cases import PRIOR, cli, write_photo_crops

import operators
import solvers
from bench.pipeline.evaluate import best_of, selection_residual, solver_generators
from bench.pipeline.store import UNIT_COLUMNS, ResultStore, new_row, unit_image_paths
from bench.pipeline.units import DEFAULT_NOISE_SPEC, unit_key
from operators.base import noise_std
from operators.noise import GaussianNoise, PoissonNoise, noise_model


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    return write_photo_crops(tmp_path_factory.mktemp("photos"), count=3)


def run(capsys, out: Path, photos: Path, *extra: str) -> tuple[int, str, str]:
    argv = ["run", "--prior", PRIOR, "--dataset", f"folder:{photos}", "--out", str(out), "--no-progress"]
    return cli(capsys, *argv, "--tasks", "sr4", "--sigma", "0.05", "--metrics", "psnr", *extra)


# ----- the models --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("intensity", [0.2, 0.5, 0.7])
def test_poisson_noise_has_the_mean_and_variance_of_its_definition(intensity):
    """DPS's definition: y = 2 k / (255 λ) − 1 with k ~ Poisson(255 λ u), u = (A(x) + 1) / 2, so E[y] = 2u − 1
    and Var[y] = 4u / (255 λ); here 255 λ = 0.5 / σ². Tolerances: 5 standard errors of the CLT over n draws."""
    sigma, model = 0.05, PoissonNoise()
    scale = model.counts_per_unit(sigma)
    assert scale == pytest.approx(0.5 / sigma**2) and model.rate(sigma) == pytest.approx(scale / 255.0)
    batch, shape = 4, (1, 64, 64)
    clean = torch.full((batch, *shape), 2.0 * intensity - 1.0)
    generators = operators.image_generators(7, [f"img{b}" for b in range(batch)], "noise")
    y = model.sample(clean, sigma, generators).double()
    n = y.numel()

    counts = (y + 1.0) * scale / 2.0  # every value lies on the lattice of whole counts
    assert torch.allclose(counts, counts.round(), atol=1e-4)
    mean, variance = 2.0 * intensity - 1.0, 4.0 * intensity / scale
    assert abs(float(y.mean()) - mean) < 5.0 * math.sqrt(variance / n)
    # the sample variance's standard error: sqrt((μ4 − σ⁴) / n), μ4 = σ⁴ (3 + 1/λ) for counts of mean λ
    mu4 = variance**2 * (3.0 + 1.0 / (scale * intensity))
    assert abs(float(y.var()) - variance) < 5.0 * math.sqrt((mu4 - variance**2) / n)
    if intensity == 0.5:  # mid-grey: the std on [-1, 1] is 2σ, as Gaussian noise's everywhere
        assert math.sqrt(variance) == pytest.approx(noise_std(sigma))


def test_poisson_noise_clips_draws_per_image_and_is_noiseless_at_zero():
    model = PoissonNoise()
    ids = ["a", "b"]
    clean = torch.tensor([-3.0, -1.0, 0.9, 5.0]).view(1, 1, 1, 4).expand(2, 1, 1, 4).contiguous()
    y = model.sample(clean, 0.1, operators.image_generators(0, ids, "noise"))
    assert y.min() >= -1.0 and y.max() <= 1.0  # DPS clips on [0, 1] before the draw and on [-1, 1] after it
    assert (y[:, ..., :2] == -1.0).all()  # u = 0: no counts
    assert torch.equal(model.sample(clean, 0.0, operators.image_generators(0, ids, "noise")), clean)
    # image b's noise comes from generators[b] alone: the same image alone in its batch draws the same noise
    alone = model.sample(clean[1:], 0.1, operators.image_generators(0, ids[1:], "noise"))
    assert torch.equal(alone[0], y[1])
    # DPS's rate 1.0 (its phase retrieval config) is σ = sqrt(0.5 / 255)
    assert model.sigma_for_rate(1.0) == pytest.approx(math.sqrt(0.5 / 255.0))
    assert model.rate(model.sigma_for_rate(1.0)) == pytest.approx(1.0)
    with pytest.raises(operators.OperatorError, match="did you mean 'poisson'"):
        noise_model("poison")


@pytest.mark.parametrize("task", ["sr4", "inpaint"])
def test_gaussian_measurement_is_bit_identical_to_the_convention(task):
    """measure() with the default model, by name or by object equals restrict(A(x) + 2σ·randn) drawn from the
    same generators, as before noise models existed."""
    ids, sigma = ["a", "b"], 0.05
    op = operators.build(task, shape=(3, 16, 16)).for_images(ids, 0)
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1
    draws = operators.randn_per_image(
        op.measurement_shape, operators.image_generators(3, ids, "noise"), dtype=x.dtype, device=x.device
    )
    expected = op.restrict(op(x) + noise_std(sigma) * draws)
    for noise in (None, "gaussian", GaussianNoise()):
        y = op.measure(x, sigma, operators.image_generators(3, ids, "noise"), noise=noise)
        assert torch.equal(y, expected)
    poisson = op.measure(x, sigma, operators.image_generators(3, ids, "noise"), noise="poisson")
    assert not torch.equal(poisson, expected)


# ----- keys --------------------------------------------------------------------------------------------------


def test_gaussian_best_of_one_unit_keys_are_the_keys_of_before():
    parts = (
        {"solver": "dps", "version": 1, "config": {"steps": 2}},
        {"task": "sr4", "shape": [3, 32, 32]},
        0.05,
        {"name": "gaussian", "size": 32},
        "folder:x",
        "img0",
        0,
    )
    # the key as bench.pipeline.units made it before noise models and best-of existed: the SHA-256 of these seven fields
    record = dict(zip(("solver", "operator", "sigma", "prior", "dataset", "image_id", "seed"), parts, strict=True))
    before = hashlib.sha256(json.dumps(record, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    assert GaussianNoise().spec() == DEFAULT_NOISE_SPEC
    assert unit_key(*parts) == before
    assert unit_key(*parts, noise=GaussianNoise().spec(), best_of=1) == before
    others = {unit_key(*parts, noise=PoissonNoise().spec()), unit_key(*parts, best_of=4), before}
    assert len(others) == 3
    # image paths: the defaults keep the layout of before; poisson and best-of get their own folders
    names = {
        "solver": "dps",
        "task": "sr4",
        "sigma": 0.05,
        "seed": 0,
        "image_id": "img0",
        "prior": PRIOR,
        "dataset": "d",
        "solver_version": 1,
        "solver_config": "{}",
    }
    plain = unit_image_paths(**names)
    assert unit_image_paths(**names, noise="gaussian", best_of=1) == plain
    poisson, best = unit_image_paths(**names, noise="poisson"), unit_image_paths(**names, best_of=4)
    assert "/0.05-poisson/" in poisson["measurement_path"] and poisson["image_path"] != plain["image_path"]
    assert best["measurement_path"] == plain["measurement_path"] and best["image_path"] != plain["image_path"]


def test_rows_of_stores_written_before_the_new_columns_read_as_gaussian_best_of_one(tmp_path):
    store = ResultStore(tmp_path)
    old = new_row(UNIT_COLUMNS, solver="pinv", task="sr4", sigma=0.05, key="k0", image_id="a", seed=0)
    for name in ("noise", "best_of", "best_repeat"):
        del old[name]
    store.write_part("units", [old])
    store.write_part("units", [new_row(UNIT_COLUMNS, key="k1", noise="poisson", best_of=3, best_repeat=2)])
    table = store.units().set_index("key")
    assert table.loc["k0", "noise"] == "gaussian" and table.loc["k1", "noise"] == "poisson"
    assert table["best_of"].tolist() == [1, 3] and str(table["best_of"].dtype) == "int64"
    assert table["best_repeat"].tolist() == [0, 2]


# ----- solvers -----------------------------------------------------------------------------------------------


def test_solvers_whose_data_term_assumes_gaussian_noise_refuse_poisson_with_the_reason():
    for name in ("ddrm", "ddnm", "pigdm", "mcgdiff"):
        reason = solvers.build(name).noise_unsupported("poisson", 0.05)
        assert reason and name in reason and "gaussian" in reason and "--noise gaussian" in reason
        assert solvers.build(name).noise_unsupported("poisson", 0.0) is None  # noiseless: no noise law to assume
        assert solvers.build(name).noise_unsupported("gaussian", 0.05) is None
    for name in ("dps", "reddiff", "pnp-admm", "pinv", "daps", "diffpir"):
        assert solvers.build(name).noise_unsupported("poisson", 0.05) is None, name


# ----- runs --------------------------------------------------------------------------------------------------


def test_run_under_poisson_noise_records_the_model_and_refuses_gaussian_solvers(tmp_path, photos, capsys):
    out = tmp_path / "run"
    argv = ["--noise", "poisson", "--solvers", "pinv,dps,ddrm", "--set", "dps.steps=2", "--n-images", "2"]
    code, _, err = run(capsys, out, photos, *argv)
    assert code == 0 and "poisson noise" in err
    table = ResultStore(out).units()
    assert len(table) == 6 and set(table["noise"]) == {"poisson"} and set(table["best_of"]) == {1}
    status = table.groupby("solver")["status"].agg(set).to_dict()
    assert status == {"pinv": {"ok"}, "dps": {"ok"}, "ddrm": {"unsupported"}}
    assert table[table["solver"] == "ddrm"]["error"].str.contains("poisson noise").all()
    ok = table[table["status"] == "ok"]
    assert ok["psnr"].notna().all() and (ok[ok["solver"] == "dps"]["nfe"] == 2).all()
    assert all("/0.05-poisson/" in path for path in ok["measurement_path"])
    assert all((out / path).is_file() for path in [*ok["image_path"], *ok["measurement_path"]])

    # the Gaussian run of the same matrix into the same folder is other units, with its own images
    code, _, err = run(capsys, out, photos, "--solvers", "pinv", "--n-images", "2")
    assert code == 0 and "already done" not in err
    table = ResultStore(out).units()
    pinv = table[table["solver"] == "pinv"]
    assert sorted(pinv["noise"]) == ["gaussian", "gaussian", "poisson", "poisson"] and pinv["key"].is_unique
    assert pinv["image_path"].is_unique and pinv["measurement_path"].is_unique
    # Poisson and Gaussian measurements of one image differ; so do the reconstructions' residuals
    by_noise = pinv.set_index(["noise", "image_id"])["consistency"]
    assert (by_noise["poisson"] != by_noise["gaussian"]).all()


def test_run_config_and_command_line_check_noise_and_best_of(tmp_path, capsys):
    from bench.cli import build_parser
    from bench.pipeline.settings import RunError, settings_from_args

    def settings(*argv: str):
        return settings_from_args(build_parser().parse_args(["run", "--out", str(tmp_path / "o"), *argv]))

    default = settings()
    assert (default.noise, default.best_of) == ("gaussian", 1)
    config = tmp_path / "c.toml"
    config.write_text('noise = "poisson"\nbest_of = 4\n')
    assert (settings("--config", str(config)).noise, settings("--config", str(config)).best_of) == ("poisson", 4)
    assert settings("--config", str(config), "--best-of", "2", "--noise", "gaussian").best_of == 2
    with pytest.raises(RunError, match="did you mean 'poisson'"):
        settings("--noise", "poison")
    with pytest.raises(RunError, match="--best-of must be >= 1"):
        settings("--best-of", "0")


def test_best_of_keeps_each_images_run_of_least_residual_never_a_diverged_one():
    op = operators.build("denoise", shape=(1, 2, 2))
    y = torch.zeros(3, 1, 2, 2)
    # per repeat and image: a constant estimate c, so the residual is |c| · 2; repeat 2 of image 1 holds NaN
    values = torch.tensor([[0.5, 0.3, 0.2], [0.4, 0.6, 0.1], [0.45, float("nan"), 0.9]])
    calls: list[int] = []

    def solve(repeat: int) -> torch.Tensor:
        calls.append(repeat)
        return values[repeat].view(3, 1, 1, 1).expand(3, 1, 2, 2).clone()

    estimate, chosen = best_of(3, solve, op, y)
    assert calls == [0, 1, 2] and chosen == [1, 0, 1]
    assert torch.equal(estimate[:, 0, 0, 0], torch.tensor([0.4, 0.3, 0.1]))
    assert torch.isinf(selection_residual(op, y, values[2].view(3, 1, 1, 1).expand(3, 1, 2, 2)))[1]
    calls.clear()
    assert best_of(1, solve, op, y)[1] == [0, 0, 0] and calls == [0]
    # repeat 0 is the plain run's "solver" stream; the others are streams of their own
    first = [torch.randn(2, generator=g) for g in solver_generators(0, ["a"], 0, "cpu")]
    plain = [torch.randn(2, generator=g) for g in operators.image_generators(0, ["a"], "solver")]
    other = [torch.randn(2, generator=g) for g in solver_generators(0, ["a"], 1, "cpu")]
    assert torch.equal(first[0], plain[0]) and not torch.equal(first[0], other[0])


def test_run_best_of_three_keeps_the_run_of_least_measurement_residual(tmp_path, photos, capsys, monkeypatch):
    """A⁺y plus generator noise: the three runs differ, and each row must name the argmin of ‖A(x̂) − y‖."""
    from bench.data import load_dataset
    from solvers.pinv import Pinv

    residuals: list[torch.Tensor] = []

    def noisy_pinv(self, y, op, prior, *, sigma, generators, callback=None):
        base = op.pinv(y)
        jitter = operators.randn_per_image(base.shape[1:], generators, dtype=base.dtype, device=base.device)
        estimate = base + 0.3 * jitter
        residuals.append((op(estimate.clamp(-1, 1)) - y).reshape(len(y), -1).norm(dim=1))
        return estimate

    monkeypatch.setattr(Pinv, "solve", noisy_pinv)
    out = tmp_path / "run"
    code, _, err = run(capsys, out, photos, "--solvers", "pinv", "--best-of", "3", "--n-images", "3")
    assert code == 0 and "best of 3" in err
    assert len(residuals) == 3  # one batch of three images, solved three times
    table = ResultStore(out).units().sort_values("image_id")
    per_image = torch.stack(residuals)  # (repeat, image), the batch in dataset order
    ids = load_dataset(f"folder:{photos}", size=32, channels=3, n_images=3).ids
    order = {image_id: b for b, image_id in enumerate(ids)}
    assert (table["best_of"] == 3).all() and (table["status"] == "ok").all()
    for row in table.itertuples():
        b = order[row.image_id]
        assert row.best_repeat == int(per_image[:, b].argmin())
        m = math.prod(operators.build("sr4", shape=(3, 32, 32)).measurement_shape)
        assert row.consistency == pytest.approx(float(per_image[row.best_repeat, b]) / math.sqrt(m), rel=1e-5)
    assert set(table["best_repeat"]) != {0}, "every image kept repeat 0: the selection is not exercised"
