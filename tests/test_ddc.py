"""DDC: the 5-step sampler (with injected φ networks, no trained weights needed) and its training loss."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from torch import nn

import operators
import solvers
from bench.priors import load_prior
from bench.training import Trainer, training_measurement
from solvers.base import SolverError
from solvers.ddc import DC_WEIGHTS, DDC, DeltaNetwork, load_phi, measurement_to_image
from solvers.ddc.sampler import INPAINT_UNOBSERVED, Y_TO_IMAGE, mean_fill, phi_input
from solvers.ddc.train import (
    build_phi,
    ddc_loss,
    ddc_train_config,
    draw_sampler_timesteps,
    kl_term,
    save_phi,
    train_ddc,
)

SHAPE = (3, 16, 16)
DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="module")
def prior():
    return load_prior("gaussian")


def zero_phi(x0, y_image, t):
    return torch.zeros_like(x0)


def measured(task: str, ids: list[str], sigma: float = 0.05):
    op = operators.build(task, shape=SHAPE).for_images(ids, seed=0)
    torch.manual_seed(0)
    x = torch.rand(len(ids), *SHAPE) * 2 - 1
    return op, op.measure(x, sigma, operators.image_generators(0, ids, "noise"))


@pytest.mark.parametrize("steps", [5, 3])
def test_ddc_counts_prior_and_phi_evaluations(prior, steps):
    op, y = measured("sr4", ["a", "b"])
    phi_calls, callback_ts = [], []

    def phi(x0, y_image, t):
        phi_calls.append(t.clone())
        return torch.zeros_like(x0)

    prior.reset_stats()
    DDC(phi=phi, steps=steps).reconstruct(
        y,
        op,
        prior,
        sigma=0.05,
        generators=operators.image_generators(1, ["a", "b"], "solve"),
        callback=lambda **kw: callback_ts.append(kw["t"]),
    )
    assert prior.stats.nfe == steps
    assert len(phi_calls) == steps
    assert callback_ts == prior.timesteps(steps)
    assert [int(t[0]) for t in phi_calls] == prior.timesteps(steps)
    assert prior.timesteps(5) == [800, 600, 400, 200, 0]


def test_ddc_zero_phi_equals_uncond_on_the_same_schedule(prior):
    ids = ["a", "b", "c"]
    op, y = measured("gblur", ids)
    # unclipped, as the official code feeds φ: exactly plain DDPM (clipping x̂₀ is a different sampler)
    ddc = DDC(phi=zero_phi, clip_x0=False).reconstruct(
        y, op, prior, sigma=0.05, generators=operators.image_generators(3, ids, "s")
    )
    uncond = solvers.build("uncond", steps=5).reconstruct(
        y, op, prior, sigma=0.05, generators=operators.image_generators(3, ids, "s")
    )
    torch.testing.assert_close(ddc, uncond, rtol=0, atol=1e-6)


def test_ddc_last_step_returns_the_corrected_estimate(prior):
    # The step 0 -> clean image has coef_x0 = 1, coef_xt = 0 and no noise, so it returns x̂₀,y itself.
    op, y = measured("denoise", ["a", "b"], sigma=0.0)
    target = y.clamp(-1, 1)

    def phi(x0, y_image, t):  # x̂₀,y = x̂₀ − (x̂₀ − y) = y
        return x0 - y_image

    out = DDC(phi=phi).reconstruct(y, op, prior, sigma=0.0, generators=operators.image_generators(0, ["a", "b"], "s"))
    torch.testing.assert_close(out, target, rtol=0, atol=1e-5)


def test_ddc_measurement_to_image_replicates_sr_and_keeps_image_sized_y():
    op, y = measured("sr4", ["a"])
    replicated = measurement_to_image(y, op, "replicate")
    assert replicated.shape == (1, *SHAPE)
    torch.testing.assert_close(replicated, y.repeat_interleave(4, dim=2).repeat_interleave(4, dim=3))
    torch.testing.assert_close(measurement_to_image(y, op, "pinv"), op.pinv(y))
    for task in ("gblur", "inpaint", "jpeg10", "denoise"):
        op, y = measured(task, ["a"])
        assert measurement_to_image(y, op, "replicate") is y


def test_pinv_if_smaller_takes_the_pseudo_inverse_only_where_y_is_smaller_than_the_image():
    op, y = measured("sr4", ["a"])
    torch.testing.assert_close(measurement_to_image(y, op, "pinv-if-smaller"), op.pinv(y))
    for task in ("gblur", "inpaint", "jpeg10", "denoise"):  # image-sized: y itself, not a deconvolution
        op, y = measured(task, ["a"])
        assert measurement_to_image(y, op, "pinv-if-smaller") is y
    with pytest.raises(SolverError, match="unknown y_to_image 'nearest'.*pinv-if-smaller"):
        measurement_to_image(y, op, "nearest")


@pytest.mark.parametrize("task", ["inpaint", "box-inpaint"])
def test_mean_fill_sets_hidden_pixels_to_the_observed_channel_means(task):
    ids = ["a", "b"]
    op, y = measured(task, ids)
    hidden = op.restrict(torch.ones_like(y)) == 0
    assert hidden.any() and (~hidden).any()
    filled = phi_input(y, op, "replicate", "mean")
    assert torch.equal(filled[~hidden], y[~hidden])  # what y observes is untouched
    for b in range(len(ids)):
        for c in range(SHAPE[0]):
            seen = y[b, c][~hidden[b, c]]
            expected = seen.double().mean()  # an independent float64 mean of the observed pixels
            values = filled[b, c][hidden[b, c]].double()
            torch.testing.assert_close(values, expected.expand_as(values), rtol=0, atol=1e-6)
    # one image's fill does not depend on the batch it is in
    alone_op, alone_y = operators.build(task, shape=SHAPE).for_images(["b"], seed=0), y[1:]
    torch.testing.assert_close(phi_input(alone_y, alone_op, "replicate", "mean"), filled[1:])
    assert torch.equal(phi_input(y, op, "pinv", "mean"), filled)  # A⁺ of inpainting re-zeroes; the fill follows
    assert phi_input(y, op, "replicate", "zero") is y


def test_mean_fill_leaves_fully_observed_measurements_alone():
    for task in ("gblur", "jpeg10", "sr4"):
        op, y = measured(task, ["a"])
        image = measurement_to_image(y, op, "replicate")
        assert torch.equal(mean_fill(image, y, op), image)


def test_train_ddc_cli_choices_are_the_solvers_conventions():
    from bench.cli import build_parser
    from solvers.ddc.train import TRAINED_UNOBSERVED

    actions = {a.dest: a for a in build_parser()._subparsers._group_actions[0].choices["train-ddc"]._actions}
    assert tuple(actions["y_to_image"].choices) == Y_TO_IMAGE
    assert tuple(actions["inpaint_unobserved"].choices) == TRAINED_UNOBSERVED
    assert set(TRAINED_UNOBSERVED) == set(INPAINT_UNOBSERVED) - {"noise"}


def test_train_ddc_task_weights_repeat_tasks_in_the_drawn_list_and_refuse_bad_input():
    from bench.cli import _weighted_tasks

    tasks = ["sr4", "sr8", "gblur"]
    assert _weighted_tasks(tasks, None) == tasks
    assert _weighted_tasks(tasks, "sr4=2,gblur=3") == ["sr4", "sr4", "sr8", "gblur", "gblur", "gblur"]
    with pytest.raises(SystemExit, match="not in --tasks"):
        _weighted_tasks(tasks, "inpaint=2")
    with pytest.raises(SystemExit, match="whole number"):
        _weighted_tasks(tasks, "sr4=1.5")
    with pytest.raises(SystemExit, match="whole number"):
        _weighted_tasks(tasks, "sr4=0")


def test_kl_term_matches_torch_distributions_gaussian_kl():
    torch.manual_seed(0)
    x0 = torch.rand(3, 2, 4, 4) * 2 - 1
    alpha_bar = torch.tensor([0.3, 0.9, 1.0], dtype=torch.float64)
    x_prev = alpha_bar.sqrt().view(3, 1, 1, 1).float() * x0 + 0.2 + 0.5 * torch.randn(3, 2, 4, 4)
    got = kl_term(x_prev, x0, alpha_bar.float().view(3, 1, 1, 1))
    for i in range(2):  # the ᾱ = 1 row has no target spread: the term is 0 there
        residual = (x_prev[i].double() - math.sqrt(alpha_bar[i]) * x0[i].double()).flatten()
        m, s = residual.mean(), residual.std(unbiased=False)
        reference = torch.distributions.kl_divergence(
            torch.distributions.Normal(m, s), torch.distributions.Normal(0.0, (1 - alpha_bar[i]).sqrt())
        )
        assert got[i].item() == pytest.approx(reference.item(), rel=1e-4)
    assert got[2].item() == 0.0


def test_ddc_training_steps_lower_the_loss_on_a_fixed_batch(prior, tmp_path):
    # Fixed images and fixed draws (task, t, noise) at every step, so only φ changes between evaluations.
    # Measured: 0.213 before, 0.127 after 10 steps (a 40% drop; the test asks for 20%).
    torch.manual_seed(0)
    batch = torch.rand(4, *SHAPE) * 2 - 1
    loss_of = ddc_loss(prior, ("sr4", "inpaint"), w_lpips=0.0)

    def fixed_loss(network, images, generator):
        return loss_of(network, images, torch.Generator().manual_seed(5))

    network = build_phi(16, 3, (16, 32))
    config = ddc_train_config(steps=10, batch_size=4, lr=2e-3, warmup_steps=1, checkpoint_every=10**6)
    trainer = Trainer(network, fixed_loss, lambda b: batch, torch.Generator(), config, tmp_path)
    with torch.no_grad():
        before = fixed_loss(trainer.network, batch, None).item()
    trainer.run(progress=False)
    with torch.no_grad():
        after = fixed_loss(trainer.network, batch, None).item()
    assert after < 0.8 * before, (before, after)


def test_ddc_batch_independence(prior):
    ids = ["a", "b", "c", "d"]
    op, y = measured("inpaint", ids)
    torch.manual_seed(1)
    conv = nn.Conv2d(6, 3, 3, padding=1)

    def phi(x0, y_image, t):
        return 0.1 * conv(torch.cat([x0, y_image], 1)) * (t.view(-1, 1, 1, 1) / 1000)

    batch = DDC(phi=phi).reconstruct(y, op, prior, sigma=0.05, generators=operators.image_generators(2, ids, "s"))
    single_op = operators.build("inpaint", shape=SHAPE).for_images(ids[1:2], seed=0)
    alone = DDC(phi=phi).reconstruct(
        y[1:2], single_op, prior, sigma=0.05, generators=operators.image_generators(2, ids[1:2], "s")
    )
    torch.testing.assert_close(alone[0], batch[1], rtol=0, atol=1e-5)


def test_ddc_missing_weights_and_bad_options_are_clear_errors(prior, tmp_path):
    op, y = measured("sr4", ["a"])
    with pytest.raises(SolverError, match="train-ddc"):
        DDC(network=str(tmp_path / "nothing")).reconstruct(
            y, op, prior, sigma=0.05, generators=operators.image_generators(0, ["a"], "s")
        )
    with pytest.raises(SolverError, match="y_to_image"):
        DDC(y_to_image="bilinear")
    with pytest.raises(SolverError, match="steps"):
        DDC(steps=0)
    assert solvers.get("ddc") is DDC


@pytest.mark.skipif(not (DATA / "natural-train").is_dir(), reason="needs ../shared/data/natural-train")
def test_train_ddc_writes_a_folder_the_solver_loads(prior, tmp_path):
    config = ddc_train_config(steps=2, batch_size=2, checkpoint_every=10**6)
    folder = train_ddc(
        "gaussian",
        DATA / "natural-train",
        tmp_path / "run",
        config=config,
        tasks=("sr4",),
        use_lpips=False,
        progress=False,
    )
    network, provenance = load_phi(folder)
    assert provenance["y_to_image"] == "replicate" and provenance["steps"] == 2 and provenance["w_lpips"] == 0.0
    op, y = measured("sr4", ["a"])
    out = DDC(network=str(folder)).reconstruct(y, op, prior, sigma=0.05, generators=operators.image_generators(0, ["a"], "s"))
    assert out.shape == (1, *SHAPE) and torch.isfinite(out).all()
    with pytest.raises(SolverError, match="y_to_image=replicate"):
        DDC(network=str(folder), y_to_image="pinv").reconstruct(
            y, op, prior, sigma=0.05, generators=operators.image_generators(0, ["a"], "s")
        )
    with pytest.raises(SolverError, match="clip_x0=True"):
        DDC(network=str(folder), clip_x0=False).reconstruct(
            y, op, prior, sigma=0.05, generators=operators.image_generators(0, ["a"], "s")
        )
    with pytest.raises(FileExistsError, match="--resume"):
        train_ddc("gaussian", DATA / "natural-train", tmp_path / "run", config=config, progress=False)


def test_the_spec_holds_phis_weight_hashes_so_retrained_weights_get_new_keys(tmp_path):
    folder = tmp_path / "phi"
    provenance = {"y_to_image": "replicate", "clip_x0": True}
    save_phi(build_phi(SHAPE[1], SHAPE[0], (8, 16)), folder, provenance)
    first = DDC(network=str(folder)).spec()
    assert set(first["phi_sha256"]) == {"unet/diffusion_pytorch_model.safetensors"}
    assert DDC(network=str(folder)).spec() == first  # the same files: the same key
    retrained = build_phi(SHAPE[1], SHAPE[0], (8, 16))
    with torch.no_grad():
        for parameter in retrained.parameters():
            parameter.add_(0.01)
    save_phi(retrained, tmp_path / "other", provenance)
    shutil.rmtree(folder)
    (tmp_path / "other").rename(folder)
    second = DDC(network=str(folder)).spec()
    assert second["config"] == first["config"] and second["phi_sha256"] != first["phi_sha256"]
    injected = DDC(phi=lambda x0, y, t: torch.zeros_like(x0)).spec()
    assert "phi_sha256" not in injected and injected["phi"].startswith("callable:")


def test_ddc_refuses_a_network_trained_for_another_prior(prior, tmp_path, monkeypatch):
    folder = tmp_path / "phi"
    network = build_phi(SHAPE[1], SHAPE[0], (8, 16))
    save_phi(network, folder, {"y_to_image": "replicate", "clip_x0": True, "prior": {"checkpoint_sha256": "a" * 64}})
    op, y = measured("sr4", ["a"])
    generators = operators.image_generators(0, ["a"], "s")
    monkeypatch.setattr(prior, "spec", lambda: {"kind": "other", "checkpoint_sha256": "b" * 64}, raising=False)
    with pytest.raises(SolverError, match="trained for the prior with checkpoint sha256 aaaaaaaaaaaa"):
        DDC(network=str(folder)).reconstruct(y, op, prior, sigma=0.05, generators=generators)
    same = tmp_path / "same"
    shutil.copytree(folder, same)
    provenance = json.loads((same / "provenance.json").read_text())
    (same / "provenance.json").write_text(json.dumps({**provenance, "prior": {"checkpoint_sha256": "b" * 64}}))
    assert torch.isfinite(DDC(network=str(same)).reconstruct(y, op, prior, sigma=0.05, generators=generators)).all()


# ----- where φ is trained (schedule-matched timesteps, the sampler's own x_t, y as the runner builds it) -----


def test_schedule_matched_draws_only_the_samplers_timesteps(prior):
    schedule = prior.timesteps(5)
    generator = torch.Generator().manual_seed(0)
    drawn = draw_sampler_timesteps(schedule, 4000, generator)
    assert set(drawn.tolist()) == set(schedule)  # every scheduled t occurs, nothing else does
    counts = torch.bincount(drawn)[schedule]
    assert counts.min() > 700  # ~800 each: uniform over the schedule
    jittered = draw_sampler_timesteps(schedule, 4000, generator, jitter=3, num_timesteps=prior.num_timesteps)
    distance = (jittered.view(-1, 1) - torch.tensor(schedule).view(1, -1)).abs().amin(dim=1)
    assert distance.max() <= 3 and (distance > 0).any() and jittered.min() >= 0


@pytest.mark.parametrize("task", ["sr4", "sr8", "gblur", "inpaint", "jpeg10", "denoise"])
def test_training_builds_y_exactly_as_the_runner_measures(task):
    shape = (3, 32, 32)
    ids = ["a", "b"]
    op = operators.build(task, shape=shape).for_images(ids, seed=3)
    x = torch.rand(2, *shape, generator=torch.Generator().manual_seed(0)) * 2 - 1
    sigma = 0.05
    runner_y = op.measure(x, sigma, operators.image_generators(0, ids, "noise"))
    generators = operators.image_generators(0, ids, "noise")
    noise = operators.randn_per_image(op.measurement_shape, generators, dtype=torch.float32, device="cpu")
    torch.testing.assert_close(training_measurement(op, x, 2 * sigma, noise), runner_y, rtol=0, atol=0)


def test_inpainting_training_y_is_zero_where_the_mask_hides_pixels(prior):
    seen = []

    def recording_phi(x0, y_image, t):
        seen.append(y_image.clone())
        return torch.zeros_like(x0)

    loss = ddc_loss(prior, ("inpaint",), w_lpips=0.0, sigma_max=0.05)
    x0 = torch.rand(2, *SHAPE) * 2 - 1
    loss(recording_phi, x0, torch.Generator().manual_seed(1))
    hidden = (seen[-1] == 0).float().mean().item()
    assert hidden == pytest.approx(0.92, abs=0.05)  # the unobserved 92% carry no noise, as op.measure gives

    filled = []
    mean_loss = ddc_loss(prior, ("inpaint",), w_lpips=0.0, sigma_max=0.05, inpaint_unobserved="mean")
    mean_loss(lambda x0, y_image, t: filled.append(y_image.clone()) or torch.zeros_like(x0),
              x0, torch.Generator().manual_seed(1))  # fmt: skip
    kept = seen[-1] != 0
    assert torch.equal(filled[-1][kept], seen[-1][kept])  # same y as "zero" draws, observed pixels untouched
    for b in range(2):
        for c in range(SHAPE[0]):
            holes = filled[-1][b, c][~kept[b, c]]
            torch.testing.assert_close(holes, seen[-1][b, c][kept[b, c]].mean().expand_as(holes))
    with pytest.raises(ValueError, match="'noise' cannot be trained here"):
        ddc_loss(prior, ("inpaint",), w_lpips=0.0, inpaint_unobserved="noise")


def test_chain_training_runs_the_sampler_up_to_the_trained_step(prior):
    schedule = prior.timesteps(5)
    calls: list[list[int]] = []

    def recording_phi(x0, y_image, t):
        calls[-1].append(int(t[0]))
        assert (t == t[0]).all()
        return torch.zeros_like(x0)

    loss = ddc_loss(prior, ("sr4",), w_lpips=0.0, timesteps="sampler", chain_fraction=1.0)
    generator = torch.Generator().manual_seed(0)
    lengths = set()
    for _ in range(12):
        calls.append([])
        loss(recording_phi, torch.rand(2, *SHAPE) * 2 - 1, generator)
        assert calls[-1] == schedule[: len(calls[-1])]  # the chain's steps, then the trained one, in order
        lengths.add(len(calls[-1]))
    assert len(lengths) >= 3  # steps k = 0..4 are all drawn
    with pytest.raises(ValueError, match="chain_fraction"):
        ddc_loss(prior, ("sr4",), w_lpips=0.0, chain_fraction=1.5)
    with pytest.raises(ValueError, match="timesteps"):
        ddc_loss(prior, ("sr4",), w_lpips=0.0, timesteps="every")


def test_a_schedule_matched_phi_refuses_other_step_counts(prior, tmp_path):
    folder = tmp_path / "phi"
    provenance = {"y_to_image": "replicate", "clip_x0": True, "timesteps": "sampler"}
    save_phi(build_phi(SHAPE[1], SHAPE[0], (8, 16)), folder, {**provenance, "sampler_timesteps": prior.timesteps(5)})
    op, y = measured("sr4", ["a"])
    generators = operators.image_generators(0, ["a"], "s")
    assert torch.isfinite(DDC(network=str(folder)).reconstruct(y, op, prior, sigma=0.05, generators=generators)).all()
    with pytest.raises(SolverError, match="off_schedule"):
        DDC(network=str(folder), steps=10).reconstruct(y, op, prior, sigma=0.05, generators=generators)
    off = DDC(network=str(folder), steps=10, off_schedule=True)
    assert torch.isfinite(off.reconstruct(y, op, prior, sigma=0.05, generators=generators)).all()


@pytest.mark.skipif(not (DATA / "natural-train").is_dir(), reason="needs ../shared/data/natural-train")
def test_train_ddc_from_init_records_where_it_started(prior, tmp_path):
    start = tmp_path / "start"
    network = build_phi(SHAPE[1], SHAPE[0], (8, 16))
    save_phi(network, start, {"y_to_image": "replicate", "clip_x0": True, "steps": 7})
    config = ddc_train_config(steps=1, batch_size=2, lr=0.0, warmup_steps=1, checkpoint_every=10**6)
    folder = train_ddc(
        "gaussian",
        DATA / "natural-train",
        tmp_path / "run",
        config=config,
        tasks=("sr4",),
        use_lpips=False,
        timesteps="sampler",
        chain_fraction=1.0,
        init=start,
        y_to_image="pinv-if-smaller",
        inpaint_unobserved="mean",
        progress=False,
    )
    trained, provenance = load_phi(folder)
    assert provenance["init"]["steps"] == 7 and len(provenance["init"]["weights_sha256"]) == 64
    # the fine-tune's input convention is the network's; the init's stays in its lineage
    assert (provenance["y_to_image"], provenance["inpaint_unobserved"]) == ("pinv-if-smaller", "mean")
    assert (provenance["init"]["y_to_image"], provenance["init"]["inpaint_unobserved"]) == ("replicate", "zero")
    solver = DDC(network=str(folder))
    assert (solver.config.y_to_image, solver.config.inpaint_unobserved) == ("pinv-if-smaller", "mean")
    assert solver.spec()["config"]["inpaint_unobserved"] == "mean"
    assert provenance["timesteps"] == "sampler" and provenance["chain_fraction"] == 1.0
    assert provenance["sampler_timesteps"] == prior.timesteps(5)
    assert provenance["phi_block_out_channels"] == [8, 16]
    for a, b in zip(trained.state_dict().values(), network.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b)  # lr 0: the weights are the init's, loaded strictly


def test_output_dc_lets_per_image_channel_means_reach_the_last_layer(tmp_path):
    torch.manual_seed(0)
    plain = build_phi(SHAPE[1], SHAPE[0], (8, 16))
    nn.init.normal_(plain.unet.conv_out.weight, std=0.1)  # a trained-looking φ, not the zero-initialised one
    x0, y_image = torch.randn(4, *SHAPE), torch.randn(4, *SHAPE) + torch.randn(4, 3, 1, 1)
    t = torch.tensor([800, 600, 400, 0])
    seen = {}
    plain.unet.conv_act.register_forward_hook(lambda m, i, o: seen.update(features=i[0]))
    with torch.no_grad():
        before = plain(x0, y_image, t)
    # the last GroupNorm is an instance norm at this width: every feature channel has mean 0 in every image
    assert seen["features"].mean(dim=(2, 3)).abs().max() < 1e-5
    with_dc = DeltaNetwork(plain.unet, output_dc=True)
    with torch.no_grad():
        torch.testing.assert_close(with_dc(x0, y_image, t), before, rtol=0, atol=0)  # zero gain: the same Δ
        with_dc.dc_gain.fill_(0.1)
        with_dc(x0, y_image, t)
    assert seen["features"].mean(dim=(2, 3)).std(dim=0).min() > 1e-3  # now the means differ between images
    save_phi(with_dc, tmp_path / "dc", {"y_to_image": "replicate", "clip_x0": True})
    loaded, provenance = load_phi(tmp_path / "dc")
    assert provenance["output_dc"] is True
    with torch.no_grad():
        torch.testing.assert_close(loaded(x0, y_image, t), with_dc(x0, y_image, t))
    (tmp_path / "dc" / DC_WEIGHTS).unlink()
    with pytest.raises(SolverError, match="output_dc=True"):
        load_phi(tmp_path / "dc")


@pytest.mark.parametrize("task", ["inpaint", "sr4", "colorize"])
def test_ddc_judges_support_on_the_unbound_operator_the_runner_passes(task):
    """The runner asks `unsupported` before any image is bound; inpainting's A⁺ needs a mask, so the check
    must not crash there (it once ended a whole run), and colourisation's one channel still gets its reason."""
    op = operators.build(task, shape=(3, 64, 64))
    for mode in ("replicate", "pinv"):
        reason = DDC(DDC.Config(y_to_image=mode)).unsupported(op, 0.05)
        assert reason is None or isinstance(reason, str)
    if task == "colorize":
        assert "colorize" in (DDC(DDC.Config(y_to_image="replicate")).unsupported(op, 0.05) or "")


@pytest.mark.slow
def test_default_phi_leaves_no_block_mosaic_or_grey_on_held_out_photos(kodak_photos):
    """The shipped default φ (A⁺y on SR, mean-filled holes) against the one trained on the official input
    conventions, on 6 Kodak photos at 64², σ = 0.05 (docs/ddc/natural64.md, "Blocks and grey"; on all 24:
    blockiness 2.12 → 1.03 on sr4, chroma ratio 0.54 → 0.84 and colour shift 0.148 → 0.025 on inpaint). Both
    stay above A⁺y in PSNR."""
    from bench.data import load_dataset
    from bench.metrics.blocks import blockiness
    from bench.metrics.colour import chroma_ratio, colour_shift

    natural64 = load_prior("natural64")
    ids, images = zip(*(load_dataset("kodak24", size=64, n_images=6)[i] for i in range(6)), strict=True)
    x = torch.stack(images).to(torch.float32)
    psnr = lambda estimate: float((10 * torch.log10(4 / (estimate.clamp(-1, 1) - x).square().mean((1, 2, 3)))).mean())  # noqa: E731
    outputs = {}
    for task in ("sr4", "inpaint"):
        op = operators.build(task, shape=tuple(x.shape[1:])).for_images(list(ids), seed=0)
        y = op.measure(x, 0.05, operators.image_generators(0, list(ids), "noise"))
        for network in ("natural64-pinv", "natural64"):
            generators = operators.image_generators(0, list(ids), "solver")
            out = DDC(network=network).reconstruct(y, op, natural64, sigma=0.05, generators=generators)
            outputs[task, network] = (op, y, out)
        assert psnr(outputs[task, "natural64-pinv"][2]) > psnr(op.pinv(y)), task
    op, y, default = outputs["sr4", "natural64-pinv"]
    official = outputs["sr4", "natural64"][2]
    assert float(blockiness(op, default, y).mean()) < 1.5 < float(blockiness(op, official, y).mean())
    default, official = outputs["inpaint", "natural64-pinv"][2], outputs["inpaint", "natural64"][2]
    assert float(chroma_ratio(default, x).mean()) > max(0.7, float(chroma_ratio(official, x).mean()) + 0.15)
    assert float(colour_shift(default, x).mean()) < 0.06 < float(colour_shift(official, x).mean())
