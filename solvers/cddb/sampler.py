"""CDDB: the direct diffusion bridge with data consistency (Chung, Kim, Ye 2023, "Direct Diffusion Bridge using
Data Consistency for Inverse Problems", Alg. 1), and I²SB (Liu et al. 2023), which is CDDB at step size 0.

A bridge network is trained for one task (`python -m bench train-bridge`, solvers/cddb/train.py) between a clean
image x₀ and its degraded image x₁ = A⁺y. Sampling starts at x₁ and walks the bridge's steps down to 0
(solvers.cddb.schedule holds the schedule and its posterior):

    x̂₀     = x_n − σ_n·net(x_n, n)                                  (I²SB Eq. 12; clipped to [-1, 1])
    x_m     ~ p(x_m | x_n, x̂₀) = N(c₀·x̂₀ + c_n·x_n, v·I)           (I²SB Eq. 4; no noise when m = 0)
    x_m    ← x_m − c₀·λ·∇_{x̂₀}‖y − A(x̂₀)‖²                          (CDDB's data-consistency step)

so the correction is the gradient step x̂₀ − λ∇ taken inside the posterior mean, with no backpropagation through
the network. `cddb-deep` (CDDB's "CDDB-deep") differentiates through the network instead,
x_m ← x_m − λ·∇_{x_n}‖y − A(x̂₀(x_n))‖², and `i2sb` is the bridge alone (λ = 0). The output is x at step 0.

Released I²SB / CDDB bridges (`python -m bench import-bridge`, solvers.cddb.official) run here too: their
bridge.json says how the network sees the step (I²SB's linspace(t0, T, N)[n]·N, applied by the loaded network,
solvers.cddb.network) and how x₁ is formed (y upsampled by nearest-neighbour for their SR, not A⁺y); the
operator must be the one they were trained on (sr4 with kernel="pool" or "ddrm-bicubic"), and a bridge whose
degradation this project lacks (their JPEG) is refused with the reason.

None of them uses the diffusion prior: the runner passes it, and records it in each row, but only its device is
read. A task without a trained bridge (for this image size and measurement noise) is unsupported, and the reason
names the command that trains one.

Defaults: NFE 100 (CDDB's `scripts/sample.sh`), x̂₀ clipped (its `--clip-denoise`); λ = 1.0 for super-
resolution and 0.5 for JPEG (the DDC paper's CDDB setting, Appendix B), 1.0 elsewhere. λ multiplies the gradient
of the squared residual summed over the measurement, as the official code does, so its effect depends on the
operator's scale: our bicubic ×4 averages 16 pixels per measurement where the official one does too, and our
JPEG operator's straight-through gradient is that of the codec without rounding (operators.jpeg).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from bench.files import asset
from operators import Cap, Operator, randn_per_image

from .. import register
from ..base import Solver, SolverConfig, SolverError, StepCallback
from .network import BRIDGE_FILE, load_bridge, weights_file
from .schedule import BridgeSchedule

ASSETS = asset("")  # the shipped bridges are the folders cddb-<task>-<size> in it
DEFAULT_STEP_SIZE = {"sr4": 1.0, "sr8": 1.0, "jpeg10": 0.5}  # DDC paper, Appendix B (CDDB: SR 1.0, JPEG 0.5)

# A bridge as a plain function, for tests and callers with their own network: (x_n, n (B,) int64, x₁) -> output
BridgeFn = Callable[[Tensor, Tensor, Tensor], Tensor]


@dataclasses.dataclass(frozen=True)
class CDDBConfig(SolverConfig):
    nfe: int = 100  # CDDB scripts/sample.sh: --nfe 100
    step_size: float | None = None  # λ; None: DEFAULT_STEP_SIZE for the task (DDC paper's CDDB setting), else 1.0
    bridge: str = "auto"  # "auto": bench/assets/cddb-<task>-<size>/; else a folder written by solvers.cddb.train
    clip_x0: bool = True  # CDDB scripts/sample.sh: --clip-denoise

    def __post_init__(self) -> None:
        if isinstance(self.nfe, bool) or not isinstance(self.nfe, int) or not 1 <= self.nfe <= 999:
            raise SolverError(f"cddb.nfe must be an integer in [1, 999] (the bridge has 1000 steps), got {self.nfe!r}")
        if self.step_size is not None and not (
            isinstance(self.step_size, int | float) and not isinstance(self.step_size, bool) and self.step_size >= 0
        ):
            raise SolverError(
                f"cddb.step_size must be a number >= 0 (or none for the task's default), got {self.step_size!r}"
            )
        if not isinstance(self.bridge, str) or not self.bridge:
            raise SolverError(f"cddb.bridge must be 'auto' or a folder, got {self.bridge!r}")


def bridge_folder(bridge: str, task: str, size: int) -> Path:
    return asset(f"cddb-{task}-{size}") if bridge == "auto" else Path(bridge)


def _spec_difference(trained: Mapping[str, Any], given: Mapping[str, Any]) -> str:
    """The keys on which two operator specs differ, as 'key: trained vs given' (for refusal messages)."""
    keys = sorted(set(trained) | set(given))
    return "; ".join(
        f"{k}: {trained.get(k)!r} (bridge) vs {given.get(k)!r} (this operator)"
        for k in keys
        if trained.get(k) != given.get(k)
    )


def _fit(record: dict[str, Any], op: Operator, sigma: float) -> str | None:
    """Why a bridge described by `record` cannot serve `op` at σ, or None when it can."""
    import json

    spec = json.loads(json.dumps(op.spec()))  # tuples as lists, as bridge.json stores them
    if record["task"] != op.task:
        return f"it was trained for {record['task']}, not {op.task} ({_spec_difference(record['operator'], spec)})"
    if record.get("operator_mismatch"):
        return record["operator_mismatch"]
    if list(record["image_shape"]) != list(op.input_shape):
        return f"it was trained for {tuple(record['image_shape'])} images, not {tuple(op.input_shape)}"
    if record["operator"] != spec:
        return f"it was trained for another operator ({_spec_difference(record['operator'], spec)})"
    if abs(float(record["sigma"]) - float(sigma)) > 1e-12:
        return f"it was trained at measurement noise σ = {record['sigma']:g}, not σ = {sigma:g}"
    return None


def bridge_start(record: Mapping[str, Any], op: Operator, y: Tensor) -> Tensor:
    """x₁, where the bridge starts (and what a cond_x1 network sees), from y (B, *measurement) -> (B, C, H, W).

    A⁺y for ours; y upsampled by nearest-neighbour to the image size for I²SB's SR bridges (`x1` in bridge.json:
    their `upsample(_img)`), which is A⁺y for the pool kernel and not for their bicubic."""
    kind = record.get("x1", "pinv")
    if kind == "nearest-upsample":
        return torch.nn.functional.interpolate(y, size=tuple(op.input_shape[1:]), mode="nearest")
    if kind in ("pinv", "decoded"):
        return op.pinv(y)
    raise SolverError(f"unknown x1 convention {kind!r} in bridge.json; re-import or re-train the bridge")


@register
class CDDB(Solver):
    name = "cddb"
    Config = CDDBConfig
    requires = frozenset({Cap.FORWARD, Cap.PINV, Cap.DIFFERENTIABLE})
    uses_prior = False
    deep: bool = False  # differentiate through the bridge network (CDDB-deep)
    summary = "consistent direct diffusion bridge (Chung et al. 2023), 100 NFE; a bridge per task, no diffusion prior"

    config: CDDBConfig

    def __init__(self, config: SolverConfig | None = None, *, bridge_fn: BridgeFn | None = None, **overrides: Any):
        super().__init__(config, **overrides)
        self.bridge_fn = bridge_fn
        self.schedule_for_fn = BridgeSchedule()  # the schedule an injected bridge_fn is sampled with
        self._loaded: dict[str, tuple[Any, dict[str, Any]]] = {}

    def step_size(self, task: str) -> float:
        return float(self.config.step_size) if self.config.step_size is not None else DEFAULT_STEP_SIZE.get(task, 1.0)

    # ----- the bridge -----------------------------------------------------------------------------
    def _record(self, op: Operator) -> tuple[Path, dict[str, Any]] | str:
        """(folder, bridge.json record) of the bridge for `op`, or the reason there is none."""
        import json

        folder = bridge_folder(self.config.bridge, op.task, op.input_shape[-1])
        path = folder / BRIDGE_FILE
        if not path.is_file():
            c, h, w = op.input_shape
            where = (
                f"at {folder}" if self.config.bridge != "auto" else f"for {op.task} at {h}×{w} ({folder} is missing)"
            )
            return (
                f"{self.name} has no trained bridge {where}; train one with `python -m bench train-bridge --task "
                f"{op.task} --size {h} --data <photos> --out <dir>` (or import a released one with `python -m bench "
                f"import-bridge`) and pass --set {self.name}.bridge=<dir>/final"
            )
        return folder, json.loads(path.read_text())

    def unsupported(self, op: Operator, sigma: float) -> str | None:
        reason = super().unsupported(op, sigma)
        if reason or self.bridge_fn is not None:
            return reason
        found = self._record(op)
        if isinstance(found, str):
            return found
        folder, record = found
        mismatch = _fit(record, op, sigma)
        if mismatch and record.get("official"):
            return f"{self.name}: the released bridge at {folder} does not fit: {mismatch}"
        if mismatch:
            return (
                f"{self.name}: the bridge at {folder} does not fit: {mismatch}; train one with `python -m bench "
                f"train-bridge --task {op.task} --size {op.input_shape[-1]} --sigma {sigma:g} --data <photos> --out <dir>`"
            )
        return None

    def spec(self) -> dict[str, Any]:
        from bench.files import file_sha256

        spec = super().spec()
        if self.bridge_fn is not None:
            spec["bridge"] = f"callable:{getattr(self.bridge_fn, '__qualname__', type(self.bridge_fn).__name__)}"
        elif self.config.bridge == "auto":
            spec["bridge_sha256"] = {
                folder.name: file_sha256(weights_file(folder))
                for folder in sorted(ASSETS.glob("cddb-*"))
                if weights_file(folder).is_file()
            }
        else:
            weights = weights_file(self.config.bridge)
            if weights.is_file():
                spec["bridge_sha256"] = file_sha256(weights)
        return spec

    def bridge(
        self, op: Operator, sigma: float, device: torch.device
    ) -> tuple[BridgeFn, BridgeSchedule, dict[str, Any]]:
        """The bridge network for `op` at σ on `device`, its schedule and its bridge.json record; SolverError when
        there is none. An injected bridge_fn gets an empty record (x₁ = A⁺y, the integer step)."""
        if self.bridge_fn is not None:
            return self.bridge_fn, self.schedule_for_fn, {}
        reason = self.unsupported(op, sigma)
        if reason:
            raise SolverError(reason)
        folder, _ = self._record(op)  # type: ignore[misc]
        key = str(folder.resolve())
        if key not in self._loaded:
            try:
                self._loaded[key] = load_bridge(folder)
            except (ValueError, OSError) as error:
                raise SolverError(f"{self.name} cannot load the bridge in {folder}: {error}") from error
        network, record = self._loaded[key]
        return network.to(device), BridgeSchedule.from_spec(record["schedule"]), record

    # ----- sampling -------------------------------------------------------------------------------
    def solve(
        self,
        y: Tensor,
        op: Operator,
        prior,
        *,
        sigma: float,
        generators: Sequence[torch.Generator],
        callback: StepCallback | None = None,
    ) -> Tensor:
        """CDDB Alg. 1 from x₁ (A⁺y, or the bridge's own convention: `bridge_start`); returns x at bridge step 0. `prior` gives only the device.

        The callback receives the network's output as eps and x̂₀ (before the data-consistency step) as x0."""
        device = prior.device
        network, schedule, record = self.bridge(op, sigma, device)
        network = self.counted("bridge", network)
        step_size = self.step_size(op.task)
        y = y.to(device=device, dtype=torch.float32)
        x1 = bridge_start(record, op, y)
        x = x1
        steps = schedule.sampling_steps(self.config.nfe)
        for i, (n, m) in enumerate(zip(reversed(steps[1:]), reversed(steps[:-1]), strict=True)):
            n_batch = torch.full((x.shape[0],), n, dtype=torch.long, device=device)
            with torch.set_grad_enabled(self.deep and step_size > 0):
                x_n = x.detach().requires_grad_(self.deep and step_size > 0)
                output = network(x_n, n_batch, x1)
                x0 = schedule.x0_from_output(x_n, n, output)
                if self.config.clip_x0:
                    x0 = x0.clamp(-1, 1)
            if callback is not None:
                callback(step=i, t=n, x_t=x_n.detach(), eps=output.detach(), x0=x0.detach())
            c0, cn, std = schedule.posterior(m, n)
            noise = randn_per_image(x.shape[1:], generators, dtype=x.dtype, device=device) if std > 0 else 0.0
            x_m = c0 * x0.detach() + cn * x_n.detach() + std * noise
            if step_size > 0:
                if self.deep:
                    gradient = self._residual_gradient(y, op, x0, x_n)
                    x_m = x_m - step_size * gradient
                else:
                    x0_leaf = x0.detach().requires_grad_(True)
                    gradient = self._residual_gradient(y, op, x0_leaf, x0_leaf)
                    x_m = x_m - c0 * step_size * gradient
            x = x_m.detach()
        return x

    @staticmethod
    def _residual_gradient(y: Tensor, op: Operator, x0: Tensor, wrt: Tensor) -> Tensor:
        """∇_wrt ‖y − A(x̂₀)‖², summed over each image's measurement (images do not interact)."""
        with torch.enable_grad():
            residual = (y - op(x0)).square().sum()
            (gradient,) = torch.autograd.grad(residual, wrt)
        return gradient


@dataclasses.dataclass(frozen=True)
class I2SBConfig(CDDBConfig):
    step_size: float | None = 0.0  # I²SB is CDDB without the data-consistency step


@register
class I2SB(CDDB):
    """The bridge alone (λ = 0): what CDDB's data-consistency step is measured against."""

    name = "i2sb"
    Config = I2SBConfig
    requires = frozenset({Cap.FORWARD, Cap.PINV})
    summary = "image-to-image Schrödinger bridge (Liu et al. 2023), 100 NFE; CDDB at step size 0; no diffusion prior"


@register
class CDDBDeep(CDDB):
    """CDDB-deep: the data-consistency gradient taken through the bridge network, with respect to x_n."""

    name = "cddb-deep"
    deep = True
    backprop_through_network = True
    summary = "CDDB with the data-consistency gradient through the bridge network (CDDB-deep), 100 NFE; no prior"
