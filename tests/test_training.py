"""The trainers: the loss falls on real photos, and --resume continues exactly where a run stopped."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from bench.cli import main
from bench.priors.train import diffusion_loss, linear_alphas_cumprod
from solvers.pnp_admm.dncnn import DnCNN, load_denoiser
from solvers.pnp_admm.train import denoising_loss


def _train(argv: list[str]) -> int:
    torch.manual_seed(0)
    return main(argv)


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    return load_file(path)


@pytest.mark.parametrize(
    "command,weights",
    [
        ("train-prior", "final/unet/diffusion_pytorch_model.safetensors"),
        ("train-denoiser", "final/model.safetensors"),
    ],
)
def test_trainer_resume_continues_exactly_where_it_stopped(photo_folder, tmp_path, command, weights):
    common = [command, "--data", str(photo_folder), "--size", "16", "--batch-size", "2", "--checkpoint-every", "2"]
    assert _train([*common, "--out", str(tmp_path / "straight"), "--steps", "4"]) == 0
    assert _train([*common, "--out", str(tmp_path / "split"), "--steps", "2"]) == 0
    assert _train([*common, "--out", str(tmp_path / "split"), "--steps", "4", "--resume"]) == 0
    straight, split = _tensors(tmp_path / "straight" / weights), _tensors(tmp_path / "split" / weights)
    assert straight.keys() == split.keys()
    for key in straight:
        torch.testing.assert_close(split[key], straight[key], rtol=0, atol=0, msg=key)
    record = json.loads((tmp_path / "split" / "final" / "provenance.json").read_text())
    assert record["steps"] == 4 and record["batch_size"] == 2 and len(record["data"]["manifest_sha256"]) == 64
    # Without --resume an existing run is never overwritten.
    assert _train([*common, "--out", str(tmp_path / "split"), "--steps", "4"]) == 2


def test_trainer_resume_without_a_checkpoint_is_a_clear_error(photo_folder, tmp_path, capsys):
    args = ["train-denoiser", "--data", str(photo_folder), "--out", str(tmp_path / "none"), "--steps", "1"]
    assert main([*args, "--resume"]) == 2
    assert "no checkpoint" in capsys.readouterr().err


def _fixed_batch(folder: Path, size: int, n: int) -> torch.Tensor:
    from bench.data import RandomCrops

    return RandomCrops(folder, size, seed=123).batch(n)


def _loss_on(loss_fn, network, batch: torch.Tensor) -> float:
    with torch.no_grad():
        return loss_fn(network, batch, torch.Generator().manual_seed(7)).item()


def test_prior_training_reduces_the_noise_prediction_loss(photo_folder):
    from bench.priors.train import build_unet, unet_config
    from bench.training import TrainConfig, Trainer

    torch.manual_seed(0)
    loss_fn = diffusion_loss(linear_alphas_cumprod())
    tiny = {
        **unet_config(16),
        "block_out_channels": [32, 64],
        "down_block_types": ["DownBlock2D", "AttnDownBlock2D"],
        "up_block_types": ["AttnUpBlock2D", "UpBlock2D"],
    }
    network = build_unet(tiny)
    held_out = _fixed_batch(photo_folder, 16, 16)
    from bench.data import RandomCrops

    crops = RandomCrops(photo_folder, 16, seed=0)
    config = TrainConfig(steps=40, batch_size=8, lr=1e-3, warmup_steps=1, checkpoint_every=1000)
    trainer = Trainer(network, loss_fn, crops.batch, crops.generator, config, "/nonexistent-unused")
    before = _loss_on(loss_fn, network.eval(), held_out)
    network.train()
    for _ in range(config.steps):
        trainer.train_step()
    after = _loss_on(loss_fn, network.eval(), held_out)
    assert after < 0.6 * before, (before, after)


def test_denoiser_training_reduces_the_loss_and_denoises(photo_folder, tmp_path):
    from bench.data import RandomCrops
    from bench.training import TrainConfig, Trainer
    from solvers.pnp_admm.train import save_denoiser

    torch.manual_seed(0)
    network = DnCNN(depth=5, features=16)
    loss_fn = denoising_loss(0.1)
    held_out = _fixed_batch(photo_folder, 24, 16)
    crops = RandomCrops(photo_folder, 24, seed=0)
    config = TrainConfig(steps=60, batch_size=8, lr=3e-3, warmup_steps=1, checkpoint_every=1000)
    trainer = Trainer(network, loss_fn, crops.batch, crops.generator, config, tmp_path / "train")
    before = _loss_on(loss_fn, network.eval(), held_out)
    network.train()
    for _ in range(config.steps):
        trainer.train_step()
    network.eval()
    after = _loss_on(loss_fn, network, held_out)
    # At initialisation the residual is ~0 (loss = the noise power); 60 small steps must cut it clearly.
    assert after < 0.85 * before, (before, after)
    # Saved and reloaded strictly, it gives the same output.
    save_denoiser(network, tmp_path / "final", {"steps": config.steps})
    reloaded = load_denoiser(tmp_path / "final")
    x = held_out[:2]
    torch.testing.assert_close(reloaded(x), network(x))


def test_denoiser_loading_rejects_a_missing_key(tmp_path):
    from safetensors.torch import save_file

    from solvers.pnp_admm.train import save_denoiser

    network = DnCNN(depth=3, features=8)
    save_denoiser(network, tmp_path, {})
    state = load_file(tmp_path / "model.safetensors")
    state.pop("body.0.weight")
    save_file(state, tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match=r"missing keys \['body.0.weight'\]"):
        load_denoiser(tmp_path)


def test_dncnn_has_the_standard_17_layer_shape():
    network = DnCNN()
    convs = [m for m in network.modules() if isinstance(m, torch.nn.Conv2d)]
    norms = [m for m in network.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(convs) == 17 and len(norms) == 15
    assert sum(p.numel() for p in network.parameters()) == pytest.approx(558_000, rel=0.01)
    assert network(torch.zeros(1, 3, 8, 8)).shape == (1, 3, 8, 8)


def test_trainer_learning_rate_warms_up_then_follows_its_schedule():
    from bench.training import TrainConfig, Trainer

    def trainer(schedule: str) -> Trainer:
        config = TrainConfig(steps=110, lr=1e-3, warmup_steps=10, lr_schedule=schedule)
        return Trainer(torch.nn.Linear(2, 2), lambda *a: None, lambda b: None, torch.Generator(), config, "/unused")

    cosine, constant = trainer("cosine"), trainer("constant")
    assert cosine.lr_at(0) == pytest.approx(1e-4) and cosine.lr_at(9) == pytest.approx(1e-3)
    assert cosine.lr_at(60) == pytest.approx(0.5e-3) and cosine.lr_at(110) == pytest.approx(0.0, abs=1e-12)
    assert all(cosine.lr_at(s) >= cosine.lr_at(s + 1) for s in range(10, 110))
    assert constant.lr_at(100) == pytest.approx(1e-3)
    with pytest.raises(ValueError, match="unknown lr_schedule 'step'"):
        trainer("step").lr_at(50)


def _tiny_trainer(tmp_path: Path, amp_dtype: str | None, loss_fn=None):
    from bench.training import TrainConfig, Trainer

    torch.manual_seed(0)
    config = TrainConfig(steps=1, batch_size=4, warmup_steps=1, amp_dtype=amp_dtype)
    batch = torch.randn(4, 8, generator=torch.Generator().manual_seed(1))

    def mse(network, images, generator):
        return (network(images).float() - images).square().mean()

    return Trainer(torch.nn.Linear(8, 8), loss_fn or mse, lambda b: batch, torch.Generator(), config, tmp_path)


def test_fp16_training_scales_the_loss_and_skips_overflowing_steps(tmp_path):
    trainer = _tiny_trainer(tmp_path, "fp16")
    assert trainer.scaler.is_enabled() and trainer.amp == torch.float16
    calls: list[str] = []
    for name in ("scale", "unscale_", "step", "update"):
        method = getattr(trainer.scaler, name)
        setattr(trainer.scaler, name, lambda *a, _m=method, _n=name: calls.append(_n) or _m(*a))
    before = trainer.network.weight.detach().clone()
    assert torch.isfinite(trainer.train_step())
    assert calls == ["scale", "unscale_", "step", "update"]
    assert not torch.equal(trainer.network.weight, before)  # a finite step was taken

    # A gradient beyond float16's range (65504) once scaled: the step is skipped and the scale halves.
    def overflowing(network, images, generator):
        return (network(images).float() * 1e30).mean()

    huge = _tiny_trainer(tmp_path, "fp16", overflowing)
    scale, weight = huge.scaler.get_scale(), huge.network.weight.detach().clone()
    huge.train_step()
    assert torch.equal(huge.network.weight, weight) and huge.scaler.get_scale() == scale / 2
    # --resume continues with the scale reached, not the initial one
    huge.save_checkpoint()
    resumed = _tiny_trainer(tmp_path, "fp16")
    resumed.load_checkpoint()
    assert resumed.scaler.get_scale() == scale / 2


def test_bf16_and_fp32_training_use_no_loss_scaling(tmp_path):
    assert not _tiny_trainer(tmp_path, "bf16").scaler.is_enabled()
    assert not _tiny_trainer(tmp_path, None).scaler.is_enabled()
    with pytest.raises(ValueError, match="unknown amp_dtype 'fp8'; use bf16, fp16 or none"):
        _tiny_trainer(tmp_path, "fp8")
