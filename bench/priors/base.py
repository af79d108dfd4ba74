"""The `Prior` contract: what every solver sees of a pretrained diffusion model.

A prior is a frozen ε-prediction network together with its discrete DDPM noise schedule:

    x_t = sqrt(ᾱ_t) x0 + sqrt(1 - ᾱ_t) ε,   ε ~ N(0, I),   t in {0, ..., T-1},   ᾱ_t = prod_{i<=t} (1 - β_i).

Images are (B, C, H, W) tensors on the diffusion's [-1, 1] scale. Timesteps are integers of the training
schedule; t = -1 stands for the clean image (ᾱ_{-1} = 1), so that the last step of a sampler, "t -> clean",
uses the same formulas as every other step. The schedule and every coefficient derived from it, which call no
network, are `bench.priors.schedule.NoiseSchedule`, which `Prior` extends.

Solvers call `predict` (one network evaluation giving ε, the Tweedie estimate of x0 and, for priors with a
learned variance, the log-variance) and the schedule helpers `alpha_bar`, `q_posterior`, `timesteps`.
The prior counts its own network evaluations and the time spent in them (`stats`).

Precision: `dtype` (fp32, bf16, fp16) is the precision the network computes in, under autocast; its weights
stay float32 and everything outside the network (ε̂ and x̂₀ as solvers receive them, the schedule, operators)
is float32 or wider. Runtime options (`RUNTIME_OPTIONS`: torch.compile, channels_last, gradient checkpointing)
change how the network runs, not what it computes; the first two are recorded in `spec()`.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from bench.files import file_sha256
from bench.memory import synchronize

# The schedule's names are part of the prior's API (bench.priors re-exports them).
from .schedule import (
    NoiseSchedule,
    PosteriorCoefficients,
    PriorError,
    _integer_steps,
    linear_betas,
)

__all__ = [
    "PosteriorCoefficients",
    "Prediction",
    "Prior",
    "PriorError",
    "PriorStats",
    "RUNTIME_OPTIONS",
    "file_sha256",
    "linear_betas",
    "pop_runtime_options",
    "resolve_dtype",
]


_DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
}


def resolve_dtype(dtype: torch.dtype | str) -> torch.dtype:
    """A network dtype from a torch dtype or a name such as 'fp32', 'bf16', 'fp16'."""
    if isinstance(dtype, torch.dtype):
        if dtype not in _DTYPES.values():
            raise PriorError(f"network dtype must be float32, bfloat16 or float16, got {dtype}")
        return dtype
    if str(dtype).lower() not in _DTYPES:
        raise PriorError(f"unknown network dtype {dtype!r} (available: {', '.join(_DTYPES)})")
    return _DTYPES[str(dtype).lower()]


# Options every prior kind accepts, in a spec ('?compile=1') or as load_prior keywords (compile=True):
#   compile: torch.compile the network (nn.Module.compile, in place: the state dict keeps its keys);
#   channels_last: network weights and inputs in NHWC memory order, which cuDNN's convolutions prefer in
#       bf16/fp16 on tensor-core GPUs;
#   checkpointing: recompute activations in backward instead of storing them (networks with a
#       `gradient_checkpointing` switch: ADM), for solvers that backpropagate through the prior (DPS, ΠGDM).
RUNTIME_OPTIONS = ("compile", "channels_last", "checkpointing")
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def _flag(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE or text in _FALSE:
        return text in _TRUE
    raise PriorError(f"prior option {key!r} must be 1 or 0 (true or false), got {value!r}; e.g. '?{key}=1'")


def pop_runtime_options(spec_options: MutableMapping[str, Any], keywords: MutableMapping[str, Any]) -> dict[str, bool]:
    """Remove RUNTIME_OPTIONS from a spec's options and from load_prior's keywords; their values as booleans.

    A keyword of None is no choice; one given both ways must agree (compile=True agrees with '?compile=1').
    """
    chosen: dict[str, bool] = {}
    for key in RUNTIME_OPTIONS:
        in_spec = spec_options.pop(key, None)
        keyword = keywords.pop(key, None)
        values = [_flag(key, v) for v in (in_spec, keyword) if v is not None]
        if len(set(values)) > 1:
            raise PriorError(f"option {key!r} given twice with different values: {in_spec!r} in the spec, {keyword!r}")
        if values:
            chosen[key] = values[0]
    return chosen


@dataclass(frozen=True)
class Prediction:
    """What one network evaluation at (x_t, t) gives; every tensor is (B, C, H, W) in x_t's dtype.

    eps: the network's ε prediction.
    x0: the Tweedie estimate (x_t - sqrt(1 - ᾱ_t) ε) / sqrt(ᾱ_t), on the [-1, 1] scale but not clipped.
    log_variance: for learned-variance priors, log Σ_t of p(x_{t-1} | x_t) (Improved DDPM, Nichol & Dhariwal
        2021, Eq. 15): frac log β_t + (1 - frac) log β̃_t; None for fixed-variance priors.
    variance_frac: the interpolation weight frac = (v + 1) / 2 from the network's raw output v (nominally
        in [0, 1], not clamped, as in Improved DDPM); solvers that take respaced steps t -> s pass it to
        `Prior.learned_log_variance(frac, t, s)`. None for fixed-variance priors.
    """

    eps: Tensor
    x0: Tensor
    log_variance: Tensor | None = None
    variance_frac: Tensor | None = None


@dataclass
class PriorStats:
    """Network use since the last `reset_stats`.

    nfe: network calls; a call on a batch counts once.
    forward_seconds: wall time inside the network's forward calls (CUDA synchronised before and after).
    backward_seconds: wall time of autograd backward through the network, from the moment the gradient
        reaches the network's output to the moment it leaves its input, summed over calls. Backward through
        anything else (the operator, the loss) is not counted.
    """

    nfe: int = 0
    forward_seconds: float = 0.0
    backward_seconds: float = 0.0

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


# The clock is a module attribute so that tests can replace it with a deterministic one.
_clock = time.perf_counter


class _BackwardWindow:
    """The backward pass of one network call: opened at its output, closed at its input."""

    def __init__(self, prior: Prior) -> None:
        self.prior = prior
        self.opened: float | None = None


class _OpenBackwardWindow(torch.autograd.Function):
    """Identity on the network's output; its backward runs first in the network's backward pass."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, window: _BackwardWindow) -> Tensor:
        ctx.window = window
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        window: _BackwardWindow = ctx.window
        synchronize(grad.device)
        window.opened = _clock()
        return grad, None


class _CloseBackwardWindow(torch.autograd.Function):
    """Identity on the network's input; its backward runs once the network's backward pass is done."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, window: _BackwardWindow) -> Tensor:
        ctx.window = window
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        window: _BackwardWindow = ctx.window
        if window.opened is not None:
            synchronize(grad.device)
            window.prior.stats.backward_seconds += _clock() - window.opened
            window.opened = None
        return grad, None


def _freeze(network: nn.Module) -> nn.Module:
    network.requires_grad_(False)
    return network.eval()


class Prior(NoiseSchedule):
    """A frozen ε-prediction diffusion model with its DDPM schedule (see the module docstring).

    Attributes:
        kind: the registry name ('gaussian', 'diffusers', 'adm', 'natural64').
        network: the frozen nn.Module (parameters have requires_grad False, eval mode).
        image_shape: (C, H, W) of the images the network was trained on.
        num_timesteps: T; valid timesteps are 0..T-1 (and -1, the clean image, in the schedule helpers).
        betas, alphas_cumprod: (T,) float64 on the CPU.
        learned_variance: whether the network also outputs Improved DDPM's variance interpolation v.
        device: where the network lives; inputs must be there too.
        dtype: the precision the network computes in: float32, or bfloat16 / float16 under autocast to save
            time and memory. Weights stay float32 and the network's output is cast back to float32 (or to the
            input's dtype when that is wider) before any schedule arithmetic (see `network_precision`).
        compiled, channels_last, gradient_checkpointing: the runtime options (`configure`).
        stats: `PriorStats` of network use since `reset_stats()`.

    Subclasses whose network does not map (x, t) -> (B, C or 2C, H, W) override `_network_output`.
    """

    def __init__(
        self,
        network: nn.Module,
        betas: Tensor,
        image_shape: Sequence[int],
        *,
        kind: str,
        config: Mapping[str, Any],
        learned_variance: bool = False,
        checkpoint_files: Sequence[str | Path] = (),
        device: str | torch.device = "cpu",
        dtype: torch.dtype | str = torch.float32,
    ) -> None:
        NoiseSchedule.__init__(self, betas)
        image_shape = tuple(int(s) for s in image_shape)
        if len(image_shape) != 3 or min(image_shape) < 1:
            raise PriorError(f"image_shape must be (C, H, W), got {image_shape}")
        self.kind = kind
        self.config: dict[str, Any] = dict(config)
        self.image_shape: tuple[int, int, int] = image_shape  # type: ignore[assignment]
        self.learned_variance = bool(learned_variance)
        self.checkpoint_files = tuple(Path(p) for p in checkpoint_files)
        self._checkpoint_sha256: str | None = None
        self.dtype = resolve_dtype(dtype)
        # Weights stay float32 whatever `dtype` is: autocast computes each layer in low precision from them,
        # while GroupNorm and softmax keep float32 where autocast says they need it. nn.Module.to, not diffusers'
        # override: that one warns about fp32-only modules on every cast.
        self.network = nn.Module.to(_freeze(network), dtype=torch.float32)
        self.compiled = False
        self.channels_last = False
        self.device = torch.device("cpu")
        self.to(device)
        self.stats = PriorStats()

    # ----- identity ------------------------------------------------------------------------------
    @property
    def checkpoint_sha256(self) -> str | None:
        """SHA-256 of the weights file (of the per-file digests when sharded); None without a checkpoint."""
        if self._checkpoint_sha256 is None and self.checkpoint_files:
            if len(self.checkpoint_files) == 1:
                self._checkpoint_sha256 = file_sha256(self.checkpoint_files[0])
            else:
                lines = "".join(f"{p.name} {file_sha256(p)}\n" for p in sorted(self.checkpoint_files))
                self._checkpoint_sha256 = hashlib.sha256(lines.encode()).hexdigest()
        return self._checkpoint_sha256

    def spec(self) -> dict[str, Any]:
        """JSON-able identity for result keys: kind, config, checkpoint sha256 (or None), network dtype and the
        runtime options that change the arithmetic (compile, channels_last), so that runs under different
        settings never share a result.

        No file paths: the same weights give the same spec wherever they are stored. The runtime options appear
        only when on, so that results stored before they existed keep their keys. Gradient checkpointing is not
        recorded: it recomputes the same operations on the same inputs.
        """
        spec: dict[str, Any] = {
            "kind": self.kind,
            "config": self.config,
            "checkpoint_sha256": self.checkpoint_sha256,
            "dtype": str(self.dtype).removeprefix("torch."),
        }
        if self.dtype != torch.float32:
            # bf16/fp16 once meant weights cast to that dtype; since it means autocast over float32 weights, which
            # rounds differently, results stored under the old meaning must not be reused
            spec["precision"] = "autocast"
        if self.compiled:
            spec["compile"] = True
        if self.channels_last:
            spec["channels_last"] = True
        return spec

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(kind={self.kind!r}, image_shape={self.image_shape}, T={self.num_timesteps}, "
            f"learned_variance={self.learned_variance}, device={self.device}, dtype={self.dtype})"
        )

    # ----- runtime options ------------------------------------------------------------------------
    def configure(self, *, compile: bool = False, channels_last: bool = False, checkpointing: bool = False) -> Prior:
        """Switch on runtime options (see RUNTIME_OPTIONS); returns self. Off is the default of each; an option
        already on stays on (a compiled network is not uncompiled)."""
        if checkpointing:
            self.gradient_checkpointing = True
        if channels_last and not self.channels_last:
            self.network.to(memory_format=torch.channels_last)
            self.channels_last = True
        if compile and not self.compiled:
            # In place: parameters, buffers and state-dict keys stay those of the original module; the
            # compiled graph is built at the first call (and again for each new input shape).
            self.network.compile()
            self.compiled = True
        return self

    @property
    def gradient_checkpointing(self) -> bool:
        """Whether the network recomputes its activations in backward instead of storing them."""
        return bool(getattr(self.network, "gradient_checkpointing", False))

    @gradient_checkpointing.setter
    def gradient_checkpointing(self, enabled: bool) -> None:
        if not hasattr(self.network, "gradient_checkpointing"):
            raise PriorError(
                f"the {self.kind} prior's network ({type(self.network).__name__}) has no gradient checkpointing; "
                "drop the 'checkpointing' option (it is available for ADM priors)"
            )
        self.network.gradient_checkpointing = bool(enabled)

    def network_precision(self) -> contextlib.AbstractContextManager[None]:
        """The context the prior's network runs in: autocast to `dtype`, or nothing for float32.

        Solvers run their own networks (DDC's φ) under it so that one --dtype choice covers them all. Only the
        networks run in low precision: the schedule divides by √ᾱ_t, which is 6e-3 at t = 999, so rounding
        error of 4e-3 (bf16's relative precision) in x_t or ε̂ would grow 160-fold in x̂₀; and data-consistency
        steps subtract nearly equal quantities (A x̂₀ − y), which low precision would turn into noise.
        """
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    # ----- placement and bookkeeping --------------------------------------------------------------
    def to(self, device: str | torch.device) -> Prior:
        """Move the network to `device`; returns self."""
        device = torch.device(device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise PriorError(f"device {device} requested but CUDA is not available; use device='cpu'")
        self.network.to(device)
        tensors = [*self.network.parameters(), *self.network.buffers()]
        # A bare 'cuda' becomes 'cuda:0' once tensors live there: keep the exact device for input checks.
        self.device = tensors[0].device if tensors else device
        return self

    def reset_stats(self) -> None:
        """Zero the NFE and timing counters."""
        self.stats = PriorStats()

    # ----- the network ----------------------------------------------------------------------------
    def _network_output(self, x: Tensor, t: Tensor) -> Tensor:
        """Raw network output for x (B, C, H, W) in the network dtype and t (B,) int64: (B, C or 2C, H, W)."""
        return self.network(x, t)

    def _evaluate(self, x_t: Tensor, t: Tensor) -> Tensor:
        """One counted, timed network call; output in x_t's dtype (float32 at least), backward-timed when x_t
        requires grad."""
        track_backward = torch.is_grad_enabled() and x_t.requires_grad
        window = _BackwardWindow(self)
        x_in = _CloseBackwardWindow.apply(x_t, window) if track_backward else x_t
        x_in = x_in.to(torch.float32)
        if self.channels_last:
            x_in = x_in.contiguous(memory_format=torch.channels_last)
        synchronize(self.device)
        start = _clock()
        with self.network_precision():
            out = self._network_output(x_in, t)
        synchronize(self.device)
        self.stats.forward_seconds += _clock() - start
        self.stats.nfe += 1
        if track_backward:
            out = _OpenBackwardWindow.apply(out, window)
        expected = 2 * self.image_shape[0] if self.learned_variance else self.image_shape[0]
        if out.shape != (x_t.shape[0], expected, *x_t.shape[2:]):
            raise PriorError(
                f"{self.kind} network returned shape {tuple(out.shape)}, expected {(x_t.shape[0], expected, *x_t.shape[2:])}"
            )
        return out.to(torch.promote_types(x_t.dtype, torch.float32)).contiguous()

    def predict(self, x_t: Tensor, t: int | Tensor) -> Prediction:
        """ε, Tweedie x0 and (learned variance only) the log-variance at (x_t, t), from one network call.

        x_t: (B, C, H, W) on `device`, any float dtype, the [-1, 1] image scale.
        t: a python int in 0..T-1 applied to the whole batch, or an integer tensor (B,) (or 0-dim).
        Differentiable with respect to x_t.
        """
        self._check_image(x_t)
        steps = self._as_timesteps(t, x_t.shape[0])
        out = self._evaluate(x_t, steps)
        channels = self.image_shape[0]
        eps = out[:, :channels]
        x0 = self.x0_from_eps(x_t, steps, eps)
        if not self.learned_variance:
            return Prediction(eps=eps, x0=x0)
        frac = (out[:, channels:] + 1.0) / 2.0
        return Prediction(eps=eps, x0=x0, log_variance=self.learned_log_variance(frac, steps), variance_frac=frac)

    def eps(self, x_t: Tensor, t: int | Tensor) -> Tensor:
        """ε prediction (B, C, H, W) in x_t's dtype; one network call (see `predict`)."""
        return self.predict(x_t, t).eps

    def x0(self, x_t: Tensor, t: int | Tensor) -> Tensor:
        """Tweedie estimate of x0, (B, C, H, W), not clipped; one network call (see `predict`)."""
        return self.predict(x_t, t).x0

    # ----- internals --------------------------------------------------------------------------
    def _check_image(self, x_t: Tensor) -> None:
        if not isinstance(x_t, Tensor) or not x_t.is_floating_point():
            raise PriorError(
                f"x_t must be a floating-point tensor, got {type(x_t).__name__} {getattr(x_t, 'dtype', '')}"
            )
        if x_t.ndim != 4 or tuple(x_t.shape[1:]) != self.image_shape:
            raise PriorError(
                f"x_t must have shape (B, {', '.join(map(str, self.image_shape))}) for this {self.kind} prior, "
                f"got {tuple(x_t.shape)}; resize or crop images to the prior's image_shape"
            )
        if x_t.device != self.device:
            raise PriorError(
                f"x_t is on {x_t.device} but the prior is on {self.device}; move it with x.to(prior.device)"
            )

    def _as_timesteps(self, t: int | Tensor, batch: int) -> Tensor:
        """t -> (B,) int64 on the network's device, checked to lie in 0..T-1."""
        steps = _integer_steps(t)
        if steps.ndim == 0:
            steps = steps.expand(batch)
        if steps.shape != (batch,):
            raise PriorError(
                f"t must be an int or an integer tensor of shape ({batch},), got shape {tuple(steps.shape)}"
            )
        low, high = int(steps.min()), int(steps.max())
        if low < 0 or high >= self.num_timesteps:
            raise PriorError(f"timesteps must lie in 0..{self.num_timesteps - 1} for the network, got {low}..{high}")
        return steps.to(self.device)
