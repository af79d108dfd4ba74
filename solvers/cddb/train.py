"""`python -m bench train-bridge`: an I²SB bridge network for one task, the network CDDB samples with.

I²SB's objective (Liu et al. 2023, Alg. 1): for a clean crop x₀ and its degraded image x₁ = A⁺(A(x₀) + n),
draw a step n ~ U{0..N−1} and x_n ~ q(x_n | x₀, x₁) (solvers.cddb.schedule), and regress the network's
output on (x_n − x₀)/σ_n with the MSE. Unlike a diffusion prior, a bridge is trained for one task, one image
size and one measurement noise, and the solver refuses any other: `bridge.json` records all three with the
operator's full spec and the schedule.

The network is a diffusers UNet2DModel on x_n (and, with `cond_x1`, x₁ concatenated on channels, I²SB's
`--cond-x1`), conditioned on the integer step, wrapped in solvers.cddb.network.BridgeNetwork, beside the loader
(`load_bridge`) that the solver uses. I²SB's networks are ADM-256 started from the unconditional ImageNet prior;
the 64² default here is a few million parameters trained from scratch, with its output convolution
zero-initialised so that training starts from x̂₀ = x_n. `export_ema` writes a bridge folder from a run in
progress (`python -m bench export-ema`).

The trainer imports the network (solvers/cddb/network.py) and the schedule (solvers/cddb/schedule.py); the
solver never imports the trainer.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from bench.files import atomic_write_text, replace_folder
from bench.training import TrainConfig, Trainer, crop_batches, data_record, training_measurement
from operators.base import noise_std

from .network import BRIDGE_FILE, BridgeNetwork, load_bridge
from .schedule import DEFAULT_BETA_MAX, BridgeSchedule

LAYERS_PER_BLOCK = 1
DEFAULT_CHANNELS = (32, 64, 128, 128)
# I²SB trains with AdamW at lr 5e-5, batch 256 and EMA 0.99 for its ADM; a small network from scratch on a
# CPU budget takes a larger rate with a cosine decay.
BRIDGE_OPTIMIZER = {"lr": 3e-4, "weight_decay": 0.0, "ema_decay": 0.999, "warmup_steps": 200, "lr_schedule": "cosine"}


def bridge_unet_config(size: int, channels: int, block_out_channels: Sequence[int], cond_x1: bool) -> dict[str, Any]:
    blocks = list(block_out_channels)
    down = ["DownBlock2D"] * len(blocks)
    if len(blocks) >= 3:
        down[-2] = "AttnDownBlock2D"
    return {
        "sample_size": size,
        "in_channels": 2 * channels if cond_x1 else channels,
        "out_channels": channels,
        "layers_per_block": LAYERS_PER_BLOCK,
        "block_out_channels": blocks,
        "down_block_types": down,
        "up_block_types": [name.replace("Down", "Up") for name in reversed(down)],
        "attention_head_dim": min(32, min(blocks)),
        "norm_num_groups": min(32, min(blocks)),
        "dropout": 0.0,
    }


def build_bridge_network(
    size: int, channels: int = 3, block_out_channels: Sequence[int] = DEFAULT_CHANNELS, *, cond_x1: bool = False
) -> BridgeNetwork:
    from diffusers import UNet2DModel

    unet = UNet2DModel(**bridge_unet_config(size, channels, block_out_channels, cond_x1))
    nn.init.zeros_(unet.conv_out.weight)
    nn.init.zeros_(unet.conv_out.bias)
    return BridgeNetwork(unet, cond_x1=cond_x1)


def bridge_record(op, sigma: float, schedule: BridgeSchedule, cond_x1: bool) -> dict[str, Any]:
    """What a bridge is for, as bridge.json stores it and `solvers.cddb` checks it."""
    return {
        "task": op.task,
        "operator": op.spec(),
        "image_shape": list(op.input_shape),
        "sigma": float(sigma),
        "schedule": schedule.spec(),
        "cond_x1": cond_x1,
    }


def degraded_image(op, x0: Tensor, sigma: float, noise: Tensor) -> Tensor:
    """x₁ = A⁺(y) with y = A(x₀) + 2σ·noise built as the runner builds it (`Operator.restrict`)."""
    return op.pinv(training_measurement(op, x0, noise_std(sigma), noise))


def bridge_loss(op, schedule: BridgeSchedule, sigma: float):
    """I²SB's regression loss for the operator `op` (one task) at measurement noise σ (on [0, 1])."""

    def loss(network: nn.Module, x0: Tensor, generator: torch.Generator) -> Tensor:
        b, device = x0.shape[0], generator.device
        batch_op = op.for_images(
            [str(i) for i in range(b)], seed=int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
        )
        measurement_noise = torch.randn((b, *batch_op.measurement_shape), generator=generator, device=device)
        with torch.no_grad():
            x1 = degraded_image(batch_op, x0, sigma, measurement_noise.to(x0.device, x0.dtype))
        n = torch.randint(0, schedule.steps, (b,), generator=generator, device=device)
        noise = torch.randn(x0.shape, generator=generator, device=device).to(x0.device, x0.dtype)
        x_n = schedule.sample_marginal(x0, x1, n, noise)
        prediction = network(x_n, n.to(x0.device), x1)
        return torch.nn.functional.mse_loss(prediction, schedule.target(x_n, x0, n))

    return loss


def save_bridge(network: BridgeNetwork, out_dir: Path, provenance: dict[str, Any]) -> None:
    """unet/ (diffusers), bridge.json (what the bridge is for) and provenance.json, renamed into place complete."""
    bridge = provenance["bridge"]

    def write(folder: Path) -> None:
        network.unet.save_pretrained(folder / "unet", safe_serialization=True)
        atomic_write_text(folder / BRIDGE_FILE, json.dumps(bridge, indent=2) + "\n")
        atomic_write_text(folder / "provenance.json", json.dumps(provenance, indent=2) + "\n")

    replace_folder(out_dir, write)


def train_bridge(
    task: str,
    data: str | Path,
    out: str | Path,
    *,
    config: TrainConfig,
    size: int = 64,
    channels: int = 3,
    sigma: float = 0.0,
    beta_max: float = DEFAULT_BETA_MAX,
    block_out_channels: Sequence[int] = DEFAULT_CHANNELS,
    cond_x1: bool = False,
    resume: bool = False,
    workers: int = 0,
    progress: bool = True,
) -> Path:
    """Train a bridge for `task` at size×size and measurement noise σ on crops of `data`; returns out/final."""
    import operators

    out = Path(out)
    if not resume and (out / "train" / "checkpoint.pt").exists():
        raise FileExistsError(
            f"{out} already holds a training run; pass --resume to continue it or choose another --out"
        )
    if not (isinstance(sigma, int | float) and 0.0 <= sigma <= 1.0):
        raise ValueError(f"--sigma is a noise std on the [0, 1] pixel scale, in [0, 1]; got {sigma!r}")
    op = operators.build(task, shape=(channels, size, size))
    if not op.supports(operators.Cap.PINV):
        raise ValueError(f"a bridge starts from A⁺y, and task '{task}' has no pseudo-inverse")
    schedule = BridgeSchedule(beta_max=beta_max)
    torch.manual_seed(config.seed)
    network = build_bridge_network(size, channels, block_out_channels, cond_x1=cond_x1)
    next_batch, generator = crop_batches(data, size, channels, config.seed, workers)
    bridge = bridge_record(op, sigma, schedule, cond_x1)
    description = {
        "kind": "I2SB bridge network (for CDDB)",
        "objective": "MSE on (x_n - x0) / sigma_n, n ~ U{0..N-1}, x_n ~ q(x_n | x0, x1) (I2SB Alg. 1)",
        "x1": "A^+(A(x0) + 2 sigma n), built through Operator.restrict as the runner builds y",
        "bridge": bridge,
        "block_out_channels": list(block_out_channels),
        "parameters": sum(p.numel() for p in network.parameters()),
    }
    trainer = Trainer(
        network,
        bridge_loss(op, schedule, float(sigma)),
        next_batch,
        generator,
        config,
        out / "train",
        description=description,
    )
    if resume:
        trainer.load_checkpoint()
    return trainer.run_and_save(save_bridge, out, data_record(data, size), progress=progress)


def bridge_from_flags(
    task: str,
    *,
    size: int = 64,
    channels: int = 3,
    sigma: float = 0.0,
    beta_max: float | None = None,
    block_out_channels: Sequence[int] = DEFAULT_CHANNELS,
    cond_x1: bool = False,
) -> tuple[BridgeNetwork, dict[str, Any]]:
    """(a fresh network, its bridge.json record) as `train_bridge` builds them from its arguments."""
    import operators

    network = build_bridge_network(size, channels, block_out_channels, cond_x1=cond_x1)
    op = operators.build(task, shape=(channels, size, size))
    schedule = BridgeSchedule(beta_max=DEFAULT_BETA_MAX if beta_max is None else beta_max)
    return network, bridge_record(op, sigma, schedule, cond_x1)


def export_ema(checkpoint: dict[str, Any], template: Path | None, out: Path, note: str, **flags: Any) -> int:
    """The EMA weights of a train-bridge checkpoint (`train/checkpoint.pt`, loaded) as a bridge folder at `out`;
    returns the checkpoint's step. The architecture and record come from the bridge folder `template`, else from
    the run's train-bridge arguments (`flags`: task, size, ... as `bridge_from_flags` takes them)."""
    if template is not None:
        network, bridge = load_bridge(template)
        provenance_file = Path(template) / "provenance.json"
        provenance = json.loads(provenance_file.read_text()) if provenance_file.is_file() else {}
    else:
        if flags.get("task") is None:
            raise ValueError("a bridge without a template needs the run's --task (and its other train-bridge flags)")
        network, bridge = bridge_from_flags(**flags)
        provenance = {}
    network.load_state_dict(checkpoint["ema"], strict=True)
    step = checkpoint["state"]["step"]
    save_bridge(network, out, {**provenance, "bridge": bridge, "steps": step, "note": note})
    return step
