"""The training loop shared by every trainer: bench/priors/train.py and those of the methods (solvers/*/train.py).

What it owns: AdamW, an EMA of the weights, gradient clipping, a progress bar (loss, images/s), periodic
checkpoints written atomically and `resume` from them, EMA snapshots at chosen steps, and a provenance
record. What a trainer supplies: the network, a loss `loss_fn(network, images, generator) -> scalar`, and a
source of image batches.

Resuming is exact on one process: the checkpoint holds the weights, the EMA, the optimiser, the step and
the states of both random generators (data and loss), so a run stopped at step k and resumed gives the same
weights as an uninterrupted run (tested).

Batch normalisation and the EMA: the EMA averages the parameters only; its buffers (batch-norm running
statistics) are copied from the raw network each step. Those statistics belong to the raw weights, not to the
averaged ones, and for a deep batch-normalised network (DnCNN) the mismatch compounds through the layers. A
trainer of such a network passes `bn_recalibration_batches=k > 0`: the network that is saved is then a copy
of the EMA whose batch-norm statistics are recomputed over k training batches, run through the loss (so the
network sees its training inputs, noise included) in train mode with a cumulative average, as SWA does for
its averaged weights (Izmailov et al. 2018, "Averaging Weights Leads to Wider Optima and Better
Generalization", Sec. 3.2; `torch.optim.swa_utils.update_bn`). The default, 0, saves the EMA as it is.
"""

from __future__ import annotations

import copy
import json
import math
import os
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from bench.files import git_commit

CHECKPOINT_NAME = "checkpoint.pt"


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 100_000
    batch_size: int = 32
    lr: float = 2e-4  # DDPM (Ho et al. 2020) used 2e-4 at 32x32
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = 500
    grad_clip: float = 1.0  # DDPM / ADM clip the gradient norm at 1
    ema_decay: float = 0.9999  # ADM; warmed up as min(decay, (1 + step) / (10 + step))
    checkpoint_every: int = 1000
    snapshot_steps: tuple[int, ...] = ()
    seed: int = 0
    device: str = "cpu"
    amp_dtype: str | None = None  # "bf16" on GPUs that have it, "fp16" (with loss scaling); None trains in fp32
    max_wall_seconds: float | None = None  # stop early (with a checkpoint) once this much time is spent
    lr_schedule: str = "constant"  # after warm-up: "constant", or "cosine" decay to 0 at `steps`

    def __post_init__(self) -> None:
        # A negative count trains nothing and would save the random initial weights as a trained network.
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 0:
            raise ValueError(f"steps must be a whole number >= 0 (the optimisation steps), got {self.steps!r}")


@dataclass
class TrainState:
    step: int = 0
    wall_seconds: float = 0.0
    images_seen: int = 0
    losses: list[float] = field(default_factory=list)  # mean loss per logging window


def ema_decay_at(step: int, decay: float) -> float:
    """EMA warm-up: early weights are averaged over few steps, late ones over ~1/(1-decay)."""
    return min(decay, (1 + step) / (10 + step))


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, decay: float) -> None:
    for e, p in zip(ema.parameters(), model.parameters(), strict=True):
        e.lerp_(p.detach(), 1.0 - decay)
    for e, b in zip(ema.buffers(), model.buffers(), strict=True):
        e.copy_(b)


@torch.no_grad()
def recalibrate_batch_norm(
    network: nn.Module,
    loss_fn: Callable[[nn.Module, Tensor, torch.Generator], Tensor],
    batches: Callable[[], Tensor],
    n_batches: int,
    generator: torch.Generator,
) -> nn.Module:
    """Recompute every batch-norm layer's running mean and variance of `network` (in place; returned) as the
    plain average over `n_batches` batches of `batches()`, each run through `loss_fn` (which builds the
    network's input from clean images) with the batch-norm layers in train mode; everything else stays in
    eval mode and the weights are untouched. A network without batch norm is returned unchanged."""
    norms = [m for m in network.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms or n_batches <= 0:
        return network
    was_training = network.training
    network.eval()
    momenta = []
    for norm in norms:
        momenta.append(norm.momentum)
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average over the batches
        norm.train()
    device = next(network.parameters()).device
    for _ in range(n_batches):
        loss_fn(network, batches().to(device), generator)
    for norm, momentum in zip(norms, momenta, strict=True):
        norm.momentum = momentum
    network.train(was_training)
    return network


def atomic_torch_save(obj: Any, path: Path) -> None:
    """torch.save through `bench.files.atomic_write_bytes`: a kill mid-write leaves the previous checkpoint."""
    import io

    from bench.files import atomic_write_bytes

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def data_record(data: str | Path, size: int, note: dict[str, Any] | None = None) -> dict[str, Any]:
    """The provenance of a training set: its folder, manifest sha256 and crop size (plus any note)."""
    from bench.data import manifest_sha256

    return {"folder": str(Path(data).resolve()), "manifest_sha256": manifest_sha256(data), "size": size, **(note or {})}


def hardware() -> dict[str, Any]:
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
    }
    if torch.cuda.is_available():
        info["cuda_device"] = torch.cuda.get_device_name(0)
    return info


_AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast_dtype(amp_dtype: str | None) -> torch.dtype | None:
    """The autocast dtype of `TrainConfig.amp_dtype`: None (or "none") trains in float32."""
    if amp_dtype in (None, "", "none"):
        return None
    if amp_dtype not in _AMP_DTYPES:
        raise ValueError(f"unknown amp_dtype {amp_dtype!r}; use bf16, fp16 or none")
    return _AMP_DTYPES[amp_dtype]


def loss_scaler(amp: torch.dtype | None, device: torch.device) -> torch.amp.GradScaler:
    """Dynamic loss scaling for float16 autocast, disabled (a pass-through) otherwise.

    float16 gradients below 6e-8 flush to zero and above 65504 become inf; the scaler multiplies the loss by
    a large factor before backward, divides the gradients before they are used, and skips a step (halving the
    factor) whose gradients overflowed. bfloat16 has float32's exponent range and needs none.
    """
    return torch.amp.GradScaler(device.type, enabled=amp == torch.float16)


class Trainer:
    """Runs `config.steps` optimisation steps of `loss_fn` on `network`, checkpointing into `out_dir`."""

    def __init__(
        self,
        network: nn.Module,
        loss_fn: Callable[[nn.Module, Tensor, torch.Generator], Tensor],
        next_batch: Callable[[int], Tensor],
        data_generator: torch.Generator,
        config: TrainConfig,
        out_dir: str | Path,
        *,
        description: dict[str, Any] | None = None,
        bn_recalibration_batches: int = 0,
    ):
        self.config = config
        self.bn_recalibration_batches = bn_recalibration_batches
        self.device = torch.device(config.device)
        self.network = network.to(self.device)
        self.ema = copy.deepcopy(self.network).eval().requires_grad_(False)
        self.loss_fn = loss_fn
        self.next_batch = next_batch
        self.data_generator = data_generator
        self.loss_generator = torch.Generator(device=self.device).manual_seed(config.seed + 1)
        self.optimizer = torch.optim.AdamW(
            self.network.parameters(), lr=config.lr, betas=config.betas, weight_decay=config.weight_decay
        )
        self.amp = autocast_dtype(config.amp_dtype)
        self.scaler = loss_scaler(self.amp, self.device)
        self.out_dir = Path(out_dir)
        self.state = TrainState()
        self.description = description or {}

    # ----- checkpoints -----------------------------------------------------------------------------
    def checkpoint_path(self) -> Path:
        return self.out_dir / CHECKPOINT_NAME

    def save_checkpoint(self) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        atomic_torch_save(
            {
                "network": self.network.state_dict(),
                "ema": self.ema.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "state": asdict(self.state),
                "data_generator": self.data_generator.get_state(),
                "loss_generator": self.loss_generator.get_state(),
                "scaler": self.scaler.state_dict(),  # empty unless fp16: its scale resumes where it was
                "config": json.dumps(asdict(self.config)),
            },
            self.checkpoint_path(),
        )

    def load_checkpoint(self) -> None:
        path = self.checkpoint_path()
        if not path.is_file():
            raise FileNotFoundError(f"--resume: no checkpoint at {path}; start without --resume to train from scratch")
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        self.network.load_state_dict(ckpt["network"], strict=True)
        self.ema.load_state_dict(ckpt["ema"], strict=True)
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.state = TrainState(**ckpt["state"])
        self.data_generator.set_state(ckpt["data_generator"])
        self.loss_generator.set_state(ckpt["loss_generator"])
        if ckpt.get("scaler") and self.scaler.is_enabled():  # checkpoints from before fp16 scaling have none
            self.scaler.load_state_dict(ckpt["scaler"])

    # ----- the loop --------------------------------------------------------------------------------
    def lr_at(self, step: int) -> float:
        """Linear warm-up over `warmup_steps`, then constant or a half-cosine down to 0 at `steps`."""
        config = self.config
        warmup = max(1, config.warmup_steps)
        if step < warmup or config.lr_schedule == "constant":
            return config.lr * min(1.0, (step + 1) / warmup)
        if config.lr_schedule == "cosine":
            progress = min(1.0, (step - warmup) / max(1, config.steps - warmup))
            return config.lr * 0.5 * (1.0 + math.cos(math.pi * progress))
        raise ValueError(f"unknown lr_schedule {config.lr_schedule!r} (available: constant, cosine)")

    def train_step(self) -> Tensor:
        images = self.next_batch(self.config.batch_size).to(self.device, non_blocking=True)
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr_at(self.state.step)
        with torch.autocast(self.device.type, dtype=self.amp, enabled=self.amp is not None):
            loss = self.loss_fn(self.network, images, self.loss_generator)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss became {loss.item()} at step {self.state.step}; lower --lr")
        self.optimizer.zero_grad(set_to_none=True)
        # The scaler is a pass-through unless fp16 (see `loss_scaler`): fp32 and bf16 steps are unchanged.
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)  # clip the true gradient, not the scaled one
        nn.utils.clip_grad_norm_(self.network.parameters(), self.config.grad_clip)
        self.scaler.step(self.optimizer)  # skipped when a gradient overflowed; the scale then halves
        self.scaler.update()
        update_ema(self.ema, self.network, ema_decay_at(self.state.step, self.config.ema_decay))
        self.state.step += 1
        self.state.images_seen += images.shape[0]
        return loss.detach()

    def run(self, on_snapshot: Callable[[int, nn.Module], None] | None = None, progress: bool = True) -> TrainState:
        from tqdm import tqdm

        config = self.config
        bar = tqdm(total=config.steps, initial=self.state.step, disable=not progress, dynamic_ncols=True)
        window: list[Tensor] = []
        start = time.perf_counter()
        seen_at_start = self.state.images_seen
        wall_at_start = self.state.wall_seconds
        while self.state.step < config.steps:
            if config.max_wall_seconds is not None and time.perf_counter() - start >= config.max_wall_seconds:
                self.save_checkpoint()
                break
            window.append(self.train_step())
            self.state.wall_seconds = wall_at_start + time.perf_counter() - start
            bar.update(1)
            step = self.state.step
            if step % 50 == 0 or step == config.steps:
                mean_loss = torch.stack(window).float().mean().item()
                self.state.losses.append(mean_loss)
                window.clear()
                rate = (self.state.images_seen - seen_at_start) / max(1e-9, time.perf_counter() - start)
                bar.set_postfix(loss=f"{mean_loss:.4f}", img_s=f"{rate:.1f}")
            if step in config.snapshot_steps and on_snapshot is not None:
                on_snapshot(step, self.ema)
            if step % config.checkpoint_every == 0 or step == config.steps:
                self.save_checkpoint()
        bar.close()
        return self.state

    def run_and_save(
        self, save: Callable[[nn.Module, Path, dict[str, Any]], None], out: Path, data: dict[str, Any], progress=True
    ) -> Path:
        """Train, saving the EMA network with `save(network, folder, provenance)` at each snapshot step
        (out/ema-step<k>) and at the end (out/final); returns out/final."""

        def snapshot(step: int, ema: nn.Module) -> None:
            save(self.network_to_save(), out / f"ema-step{step:07d}", self.provenance(data))

        self.run(on_snapshot=snapshot, progress=progress)
        save(self.network_to_save(), out / "final", self.provenance(data))
        return out / "final"

    def network_to_save(self) -> nn.Module:
        """The EMA network; with `bn_recalibration_batches` > 0, a copy of it whose batch-norm statistics are
        recomputed for its own weights (see the module docstring). The training run is not disturbed: the data
        generator is restored afterwards and the loss noise comes from a generator of its own (seed + 2), so a
        run with snapshots trains the same weights as one without."""
        if self.bn_recalibration_batches <= 0:
            return self.ema
        data_state = self.data_generator.get_state()
        generator = torch.Generator(device=self.device).manual_seed(self.config.seed + 2)
        try:
            network = recalibrate_batch_norm(
                copy.deepcopy(self.ema),
                self.loss_fn,
                lambda: self.next_batch(self.config.batch_size),
                self.bn_recalibration_batches,
                generator,
            )
        finally:
            self.data_generator.set_state(data_state)
        return network

    def provenance(self, data: dict[str, Any]) -> dict[str, Any]:
        return {
            "steps": self.state.step,
            "batch_size": self.config.batch_size,
            "images_seen": self.state.images_seen,
            "wall_seconds": round(self.state.wall_seconds, 1),
            "final_losses": self.state.losses[-5:],
            "train_config": asdict(self.config),
            "data": data,
            "hardware": hardware(),
            "git_commit": git_commit(dirty_mark=False),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            **self.description,
        }


def crop_batches(data: str | Path, size: int, channels: int, seed: int, workers: int):
    """A `next_batch(B)` function and the generator that drives it (state saved in checkpoints)."""
    from bench.data import RandomCrops  # imported here: the loop itself does not depend on the data module

    crops = RandomCrops(data, size, channels, seed=seed)
    if workers <= 0:
        return crops.batch, crops.generator

    # Several processes draw crops in parallel (for GPUs); each worker reseeds from (seed, worker id), so a
    # run is reproducible for a fixed worker count, but --resume is exact only without workers.
    class _Stream(torch.utils.data.IterableDataset):
        def __iter__(self):
            info = torch.utils.data.get_worker_info()
            crops.generator.manual_seed(seed * 1000 + (info.id if info else 0))
            return iter(crops)

    loader: dict[int, Any] = {}

    def next_batch(batch_size: int) -> Tensor:
        if batch_size not in loader:
            loader[batch_size] = iter(
                torch.utils.data.DataLoader(
                    _Stream(), batch_size=batch_size, num_workers=workers, pin_memory=True, persistent_workers=True
                )
            )
        return next(loader[batch_size])

    return next_batch, crops.generator


def training_measurement(op, x0: Tensor, noise_std: Tensor | float, noise: Tensor) -> Tensor:
    """y = A(x₀) + noise_std·noise brought into the measurement space exactly as `Operator.measure` does.

    noise_std is on the [-1, 1] scale (2σ), a number or one value per image broadcastable to y. Going through
    `op.restrict` is what makes training's y match the runner's: inpainting's y is 0 on the pixels it does not
    observe, noise included. Shared by the trainers of networks that see measurements (DDC's φ, CDDB's bridges).
    """
    clean = op(x0)
    return op.restrict(clean + noise_std * noise)
