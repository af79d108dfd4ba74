"""The DDC authors' released φ: `bench import-ddc` and the official conventions the sampler then follows.

No download: random-weight UNet2DModels written in the released layout (config.json with the EMA's fields +
diffusion_pytorch_model.safetensors) stand in for the authors' files. Only the parameter count uses the released
architecture (on the meta device); the rest use a narrow network of the same block layout.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

import operators
from bench.cli import main
from bench.files import file_sha256
from bench.priors import load_prior
from operators.base import noise_std
from solvers.base import SolverError
from solvers.ddc import DDC, fill_unobserved, load_phi, measurement_to_image, unobserved_mask
from solvers.ddc.official import (
    EMA_FIELDS,
    OFFICIAL_ARCHITECTURE,
    OFFICIAL_PARAMETERS,
    ImportDDCError,
    import_official,
    official_architecture,
)
from solvers.ddc.train import build_phi, save_phi

# The released config's EMA and private fields (diffusers' EMAModel.save_pretrained), values as released.
EMA_RECORD = {
    "_class_name": "UNet2DModel",
    "_diffusers_version": "0.21.4",
    "decay": 0.9999,
    "inv_gamma": 1.0,
    "min_decay": 0.0,
    "optimization_step": 55000,
    "power": 0.75,
    "update_after_step": 0,
    "use_ema_warmup": True,
}
# The released block layout at narrow widths (GroupNorm of 8 groups), so that a 256² forward pass is quick.
SMALL = {**OFFICIAL_ARCHITECTURE, "block_out_channels": [8, 8, 16, 16, 16, 16], "norm_num_groups": 8}
SMALL["layers_per_block"] = 1
SIGMA = 0.05


def write_released(folder: Path, config: dict, *, seed: int = 0, edit=None) -> Path:
    """A random-weight UNet2DModel of `config` in the authors' layout; `edit(state)` may corrupt the weights."""
    from diffusers import UNet2DModel
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    state = {k: v.contiguous() for k, v in UNet2DModel(**config).state_dict().items()}
    if edit is not None:
        edit(state)
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({**EMA_RECORD, **config}, indent=2))
    save_file(state, str(folder / "diffusion_pytorch_model.safetensors"))
    return folder


@pytest.fixture(scope="module")
def released(tmp_path_factory) -> Path:
    return write_released(tmp_path_factory.mktemp("authors") / "standard", SMALL)


@pytest.fixture(scope="module")
def imported(released, tmp_path_factory) -> Path:
    dest = tmp_path_factory.mktemp("ours") / "ddc-official"
    assert main(["import-ddc", str(released), str(dest), "--variant", "standard"]) == 0
    return dest


def test_the_released_architecture_has_113_676_675_parameters():
    from diffusers import UNet2DModel

    with torch.device("meta"):  # the count, without allocating 455 MB of weights
        unet = UNet2DModel(**OFFICIAL_ARCHITECTURE)
    assert sum(p.numel() for p in unet.parameters()) == OFFICIAL_PARAMETERS == 113_676_675
    assert official_architecture(OFFICIAL_ARCHITECTURE) and not official_architecture(SMALL)


def test_import_writes_a_phi_folder_with_the_official_provenance(released, imported):
    provenance = json.loads((imported / "provenance.json").read_text())
    assert provenance["official"] is True and provenance["variant"] == "standard" and provenance["w_lpips"] == 0.1
    assert provenance["clip_x0"] is False and provenance["y_to_image"] == "replicate"
    assert provenance["inpaint_unobserved"] == "noise" and provenance["output_dc"] is False
    assert provenance["timesteps"] == "uniform" and provenance["sampler_timesteps"] == [800, 600, 400, 200, 0]
    assert provenance["prior"]["kind"] == "adm" and provenance["prior"]["config"] == {"preset": "imagenet256-uncond"}
    assert provenance["prior"]["checkpoint_sha256"] is None
    assert provenance["dropped_config_fields"] == EMA_RECORD and provenance["training_steps"] == 55000
    weights = "diffusion_pytorch_model.safetensors"
    assert provenance["source_sha256"] == {
        "config.json": file_sha256(released / "config.json"),
        weights: file_sha256(released / weights),
    }
    assert file_sha256(imported / "unet" / weights) == file_sha256(released / weights)  # a byte copy
    written = json.loads((imported / "unet" / "config.json").read_text())
    assert not set(EMA_FIELDS) & set(written) and written["block_out_channels"] == SMALL["block_out_channels"]
    network, _ = load_phi(imported)
    assert sum(p.numel() for p in network.parameters()) == provenance["parameters"]
    assert [p.name for p in imported.parent.iterdir()] == [imported.name]  # no staging folder left behind


def test_import_records_the_prior_checkpoint_and_refuses_to_overwrite(released, imported, tmp_path):
    checkpoint = tmp_path / "256x256_diffusion_uncond.pt"
    checkpoint.write_bytes(b"stand-in for the ADM weights")
    with pytest.raises(ImportDDCError, match="--force"):
        import_official(released, imported)
    dest, provenance = import_official(released, tmp_path / "wolpips", variant="wolpips", prior_checkpoint=checkpoint)
    assert provenance["prior"]["checkpoint_sha256"] == file_sha256(checkpoint) and provenance["w_lpips"] == 0.0
    assert json.loads((dest / "provenance.json").read_text()) == provenance


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda state: state.pop("conv_out.bias"), r"missing keys \['conv_out.bias'\]"),
        (lambda state: state.update(extra=torch.zeros(1)), r"unexpected keys \['extra'\]"),
    ],
    ids=["missing", "unexpected"],
)
def test_a_key_missing_or_extra_in_the_weights_is_an_error(tmp_path, edit, message):
    source = write_released(tmp_path / "bad", SMALL, edit=edit)
    with pytest.raises(ImportDDCError, match=message):
        import_official(source, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_config_that_is_not_a_ddc_phi_is_an_error(tmp_path):
    source = write_released(tmp_path / "src", SMALL)
    config = json.loads((source / "config.json").read_text())
    (source / "config.json").write_text(json.dumps({**config, "in_channels": 3}))
    with pytest.raises(ImportDDCError, match="in_channels=3"):
        import_official(source, tmp_path / "out")
    (source / "config.json").write_text(json.dumps({**config, "ema_whatever": 1}))
    with pytest.raises(ImportDDCError, match="ema_whatever"):
        import_official(source, tmp_path / "out")


def test_a_phi_folder_without_provenance_is_refused_naming_import_ddc(released, tmp_path):
    folder = tmp_path / "moved"  # what a user gets by moving the authors' files under unet/
    shutil.copytree(released, folder / "unet")
    solver = DDC(network=str(folder))
    assert "import-ddc" in solver.missing_weights()
    with pytest.raises(SolverError, match="bench import-ddc"):
        solver.phi(torch.device("cpu"))


def test_the_solver_follows_the_provenance_and_refuses_contradictions(imported):
    solver = DDC(network=str(imported))
    assert (solver.config.clip_x0, solver.config.y_to_image, solver.config.inpaint_unobserved) == (
        False,
        "replicate",
        "noise",
    )
    assert solver.spec()["config"]["inpaint_unobserved"] == "noise"
    # the default φ's conventions, departures of ours (docs/ddc/natural64.md, "Blocks and grey")
    shipped = DDC().config
    assert (shipped.clip_x0, shipped.y_to_image, shipped.inpaint_unobserved) == (True, "pinv-if-smaller", "mean")
    assert DDC().spec()["config"]["inpaint_unobserved"] == "mean"
    # the network trained with the official input conventions stays selectable
    official_inputs = DDC(network="natural64")
    assert (official_inputs.config.y_to_image, official_inputs.config.inpaint_unobserved) == ("replicate", "zero")
    assert "inpaint_unobserved" not in official_inputs.spec()["config"]  # the keys its stored results have
    for option, value, fix in [("clip_x0", True, "clip_x0=false"), ("inpaint_unobserved", "zero", "=noise")]:
        with pytest.raises(SolverError, match=fix):
            DDC(network=str(imported), **{option: value}).phi(torch.device("cpu"))
    assert DDC(network=str(imported), clip_x0=False).phi(torch.device("cpu")) is not None


def test_the_official_phi_refuses_a_prior_other_than_adm_imagenet256(imported):
    solver = DDC(network=str(imported))
    solver.phi(torch.device("cpu"))
    with pytest.raises(SolverError, match="preset=imagenet256-uncond"):
        solver._check_prior(load_prior("gaussian"))


@pytest.mark.parametrize("task", ["sr4", "sr8", "gblur", "inpaint", "jpeg10", "denoise"])
def test_replicate_is_the_official_adaptive_average_pooling(task):
    op = operators.build(task, shape=(3, 64, 64)).for_images(["a", "b"], seed=0)
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1)) * 2 - 1
    y = op.measure(x, SIGMA, operators.image_generators(0, ["a", "b"], "noise"))
    pooled = torch.nn.functional.adaptive_avg_pool2d(y, (64, 64))
    assert torch.equal(measurement_to_image(y, op, "replicate"), pooled)


def test_inpainting_fill_is_noise_of_the_measurements_std_from_each_images_generator():
    ids = ["a", "b"]
    op = operators.build("inpaint", shape=(3, 64, 64)).for_images(ids, seed=0)
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1)) * 2 - 1
    y = op.measure(x, SIGMA, operators.image_generators(0, ids, "noise"))
    hidden = unobserved_mask(op, y)
    assert hidden.float().mean().item() == pytest.approx(0.92, abs=1e-3) and (y[hidden] == 0).all()
    filled = fill_unobserved(y, op, SIGMA, operators.image_generators(0, ids, "solver"))
    assert torch.equal(filled[~hidden], y[~hidden])
    assert filled[hidden].std().item() == pytest.approx(noise_std(SIGMA), rel=0.03)
    expected = operators.randn_per_image(
        y.shape[1:], operators.image_generators(0, ids, "solver"), dtype=y.dtype, device=y.device
    ) * noise_std(SIGMA)
    assert torch.equal(filled[hidden], expected[hidden])
    alone = fill_unobserved(
        y[1:], op.for_images(ids[1:], seed=0), SIGMA, operators.image_generators(0, ids[1:], "solver")
    )
    assert torch.equal(alone[0], filled[1])  # batch-independent
    sr = operators.build("sr4", shape=(3, 64, 64))
    assert torch.equal(fill_unobserved(y[:, :, :16, :16], sr, SIGMA, []), y[:, :, :16, :16])  # nothing hidden


def test_the_sampler_gives_phi_the_noise_filled_measurement(tmp_path):
    """φ sees y with noise in the hidden pixels, drawn right after x_T from the solver's generators."""
    prior = load_prior("gaussian")
    shape = prior.image_shape
    folder = tmp_path / "phi"
    conventions = {"y_to_image": "replicate", "clip_x0": False, "inpaint_unobserved": "noise"}
    save_phi(build_phi(shape[1], shape[0], (8, 16)), folder, conventions)
    ids = ["a"]
    op = operators.build("inpaint", shape=shape).for_images(ids, seed=0)
    y = op.measure(torch.zeros(1, *shape), SIGMA, operators.image_generators(0, ids, "noise"))
    solver = DDC(network=str(folder), steps=1)
    network = solver.phi(prior.device)
    seen = []
    solver._phi = lambda x0, y_image, t: seen.append(y_image) or network(x0, y_image, t)
    solver.reconstruct(y, op, prior, sigma=SIGMA, generators=operators.image_generators(0, ids, "s"))
    generators = operators.image_generators(0, ids, "s")
    operators.randn_per_image(shape, generators, dtype=torch.float32, device=prior.device)  # x_T
    torch.testing.assert_close(seen[0], fill_unobserved(y, op, SIGMA, generators), rtol=0, atol=0)


@pytest.mark.slow  # about 35 s on one CPU core: the 552.8M-parameter ADM is built and called once at 256²
def test_bench_runs_the_imported_phi_on_adm_imagenet256(imported, photo_folder, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["run", "--prior", "adm-random:imagenet256", "--solvers", "ddc", "--tasks", "inpaint", "--sigma", "0.05"]
    argv += ["--dataset", f"folder:{photo_folder}", "--n-images", "1", "--device", "cpu", "--out", str(out)]
    argv += ["--set", f"ddc.network={imported}", "--set", "ddc.steps=1", "--no-progress"]
    assert main(argv) == 0, capsys.readouterr().err
    import pyarrow.parquet as pq

    rows = [row for part in sorted((out / "units").glob("part-*.parquet")) for row in pq.read_table(part).to_pylist()]
    assert len(rows) == 1 and rows[0]["solver"] == "ddc" and rows[0]["status"] == "ok", rows[0]["error"]
    config = json.loads(rows[0]["solver_config"])
    assert config["clip_x0"] is False and config["inpaint_unobserved"] == "noise" and config["steps"] == 1
