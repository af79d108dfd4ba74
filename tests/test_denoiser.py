"""The DnCNN denoiser of PnP-ADMM: the saved network's batch-norm statistics belong to its own (EMA) weights,
`--init` fine-tunes a saved DnCNN, and the shipped one actually denoises held-out photos.

The first shipped DnCNN was saved with the raw network's running statistics on the EMA's averaged weights and
removed only a third of the noise (23.3 dB at σ = 25/255 on 64 Kodak crops; the same weights with their own
statistics: 30.3 dB). These tests fail on a trainer that saves the EMA as it is.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from bench.cli import main
from bench.data import RandomCrops
from bench.files import asset
from bench.training import TrainConfig, Trainer, recalibrate_batch_norm
from solvers.pnp_admm.dncnn import DnCNN, load_denoiser
from solvers.pnp_admm.train import denoising_loss

ASSET = asset("dncnn")


@torch.no_grad()
def _batch_norm_inputs(network: torch.nn.Module, clean: torch.Tensor, sigma_max: float) -> list[torch.Tensor]:
    """What each batch-norm layer of `network` receives on noisy versions of `clean` (training's inputs)."""
    seen: list[torch.Tensor] = []
    norms = [m for m in network.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    hooks = [m.register_forward_hook(lambda _m, inputs, _o: seen.append(inputs[0])) for m in norms]
    try:
        network.eval()
        denoising_loss(sigma_max)(network, clean, torch.Generator().manual_seed(11))
    finally:
        for hook in hooks:
            hook.remove()
    return seen


def _statistics_gap(network: torch.nn.Module, clean: torch.Tensor, sigma_max: float) -> tuple[float, float]:
    """Worst over layers and channels of |running mean - actual mean| / actual std and |log(running var /
    actual var)|, the actual statistics measured on noisy `clean` through the network's own weights."""
    norms = [m for m in network.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    mean_gap = var_gap = 0.0
    for norm, seen in zip(norms, _batch_norm_inputs(network, clean, sigma_max), strict=True):
        mean, var = seen.mean(dim=(0, 2, 3)), seen.var(dim=(0, 2, 3))
        mean_gap = max(mean_gap, ((norm.running_mean - mean).abs() / var.sqrt()).max().item())
        var_gap = max(var_gap, (norm.running_var / var).log().abs().max().item())
    return mean_gap, var_gap


def _tiny_trainer(photo_folder: Path, out: Path, recalibration: int) -> Trainer:
    torch.manual_seed(0)
    crops = RandomCrops(photo_folder, 24, seed=0)
    config = TrainConfig(steps=4, batch_size=8, lr=1e-3, warmup_steps=1, checkpoint_every=1000)
    return Trainer(
        DnCNN(depth=5, features=16),
        denoising_loss(0.2),
        crops.batch,
        crops.generator,
        config,
        out,
        bn_recalibration_batches=recalibration,
    )


def test_recalibration_gives_the_ema_weights_their_own_batch_norm_statistics(photo_folder, tmp_path):
    trainer = _tiny_trainer(photo_folder, tmp_path / "train", recalibration=16)
    for _ in range(trainer.config.steps):
        trainer.train_step()
    # Averaged weights that differ from the raw network's, as after a long EMA: the first convolution
    # scaled by 3 and the second by 1/2 change what every batch-norm layer sees (its scale and mean).
    with torch.no_grad():
        convs = [m for m in trainer.ema.modules() if isinstance(m, torch.nn.Conv2d)]
        convs[0].weight.mul_(3.0)
        convs[1].weight.mul_(0.5)
    held_out = RandomCrops(photo_folder, 24, seed=123).batch(64)
    data_state = trainer.data_generator.get_state()

    saved = trainer.network_to_save()

    mean_gap, var_gap = _statistics_gap(saved, held_out, 0.2)
    assert mean_gap < 0.2 and var_gap < 0.25, (mean_gap, var_gap)  # sampling error only
    # The EMA itself keeps the raw network's statistics (copied every step), which do not fit these weights:
    stale_mean_gap, stale_var_gap = _statistics_gap(trainer.ema, held_out, 0.2)
    assert stale_var_gap > 1.0, (stale_mean_gap, stale_var_gap)
    # Only the statistics change, and training is not disturbed: same weights, same data stream.
    ema_state = trainer.ema.state_dict()
    assert saved.state_dict().keys() == ema_state.keys()
    for key, value in saved.state_dict().items():
        if "running" not in key and "num_batches" not in key:
            torch.testing.assert_close(value, ema_state[key], rtol=0, atol=0, msg=key)
    assert torch.equal(trainer.data_generator.get_state(), data_state)
    assert saved is not trainer.ema


def test_trainer_saves_the_ema_unchanged_by_default(photo_folder, tmp_path):
    """Other trainers (prior, DDC) do not ask for recalibration and save the EMA exactly as before."""
    trainer = _tiny_trainer(photo_folder, tmp_path / "train", recalibration=0)
    trainer.train_step()
    assert trainer.network_to_save() is trainer.ema


def test_recalibrate_batch_norm_is_the_plain_average_over_the_batches():
    torch.manual_seed(0)
    network = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 3), torch.nn.BatchNorm2d(3), torch.nn.Dropout(0.5))
    network.train()  # the mode is restored afterwards; during the passes only batch norm is in train mode
    norm = network[1]
    norm.running_mean.fill_(5.0)
    norm.running_var.fill_(9.0)
    batches = [torch.randn(4, 2, 8, 8) * (k + 1) + k for k in range(3)]
    feed = iter(batches)
    outputs = []

    def loss_fn(net, images, generator):
        outputs.append(net(images))
        return outputs[-1].mean()

    recalibrate_batch_norm(network, loss_fn, lambda: next(feed), 3, torch.Generator())
    with torch.no_grad():
        convolved = [network[0](b) for b in batches]
    expected_mean = torch.stack([c.mean(dim=(0, 2, 3)) for c in convolved]).mean(0)
    expected_var = torch.stack([c.var(dim=(0, 2, 3)) for c in convolved]).mean(0)  # unbiased, as BatchNorm2d
    torch.testing.assert_close(norm.running_mean, expected_mean)
    torch.testing.assert_close(norm.running_var, expected_var)
    assert norm.momentum == 0.1 and network.training and network[2].training
    # Dropout stayed in eval mode during the passes: no element of the outputs was zeroed.
    assert all(bool((o != 0).all()) for o in outputs)


def test_train_denoiser_saves_batch_norm_statistics_of_its_own_weights(photo_folder, tmp_path):
    out = tmp_path / "run"
    argv = ["train-denoiser", "--data", str(photo_folder), "--out", str(out), "--size", "24", "--batch-size", "8"]
    assert main([*argv, "--steps", "3", "--bn-batches", "16", "--sigma-max", "0.2"]) == 0
    saved = load_denoiser(out / "final")
    held_out = RandomCrops(photo_folder, 24, seed=123).batch(64)
    mean_gap, var_gap = _statistics_gap(saved, held_out, 0.2)
    assert mean_gap < 0.2 and var_gap < 0.25, (mean_gap, var_gap)
    record = json.loads((out / "final" / "provenance.json").read_text())
    assert record["bn_statistics"] == "recomputed for the EMA weights over 16 training batches"
    assert record["init"] is None


def test_init_fine_tunes_a_saved_denoiser_and_records_it(photo_folder, tmp_path):
    common = ["train-denoiser", "--data", str(photo_folder), "--size", "16", "--batch-size", "2", "--bn-batches", "2"]
    assert main([*common, "--out", str(tmp_path / "first"), "--steps", "2"]) == 0
    # Zero steps: the weights are the initial folder's exactly, with statistics recomputed.
    assert (
        main([*common, "--out", str(tmp_path / "again"), "--steps", "0", "--init", str(tmp_path / "first/final")]) == 0
    )
    first, again = (
        load_file(tmp_path / "first/final/model.safetensors"),
        load_file(tmp_path / "again/final/model.safetensors"),
    )
    assert first.keys() == again.keys()
    for key in first:
        if "running" not in key and "num_batches" not in key:
            torch.testing.assert_close(again[key], first[key], rtol=0, atol=0, msg=key)
    record = json.loads((tmp_path / "again/final/provenance.json").read_text())
    assert record["init"]["steps"] == 2 and len(record["init"]["weights_sha256"]) == 64
    assert main([*common, "--out", str(tmp_path / "grey"), "--steps", "1", "--channels", "1", "--init",
                 str(tmp_path / "first/final")]) == 2  # fmt: skip


def test_shipped_dncnn_denoises_held_out_photos(kodak_photos):
    """At σ = 25/255 on Kodak crops (never trained on) the shipped DnCNN removes most of the noise: the first
    shipped one predicted a residual a third of the noise's size and gained 2.9 dB; this one about 10 dB."""
    from solvers.pnp_admm.train import KODAK_HELDOUT, denoising_table, heldout_crops

    del kodak_photos  # only the skip when the photos are absent
    clean = heldout_crops(KODAK_HELDOUT, n=16)
    (row,) = denoising_table(load_denoiser(ASSET), clean, sigmas=(25 / 255,))
    assert row["residual_over_noise"] > 0.85, row
    assert row["psnr_denoised"] - row["psnr_noisy"] > 8.0, row
