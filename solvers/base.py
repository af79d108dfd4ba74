"""The solver contract.

A solver is a frozen config (defaults from the DDC paper's Appendix B, each citing its source) plus a
`solve` method, the one method a solver overrides. It declares the operator capabilities it needs, for every
noise level and additionally for σ > 0, and whether it backpropagates through the prior's network. The runner
asks `unsupported(op, sigma)` first and records the reason instead of crashing, then calls `reconstruct`,
which checks the inputs, calls `solve` and clamps its estimate to [-1, 1]; `solve` may return values outside
[-1, 1] (tests check exact, unclamped identities on it).

Shapes and ranges: y is (B, *op.measurement_shape), the estimate x̂ is (B, C, H, W). σ is on the [0, 1] pixel
scale, so the measurement noise std on the [-1, 1] image scale is 2σ (`noise_std`).
Image b's randomness comes only from generators[b], so its result does not depend on the batch.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any, ClassVar, Protocol

import torch
from torch import Tensor

from operators import Cap, Operator


class StepCallback(Protocol):
    """Receives every network evaluation: step index, timestep, x_t, ε̂ and x̂₀ (each (B, C, H, W))."""

    def __call__(self, *, step: int, t: int, x_t: Tensor, eps: Tensor, x0: Tensor) -> None: ...


@dataclasses.dataclass
class NetworkUse:
    """Calls of one of a solver's own networks (φ, a denoiser, a bridge) and the seconds inside their forward
    passes (CUDA synchronised), since the solver's last `reset_network_use`. The prior counts its own."""

    calls: int = 0
    seconds: float = 0.0


class SolverError(ValueError):
    """Bad solver name, option or input: the message names the problem and the fix."""


@dataclasses.dataclass(frozen=True)
class SolverConfig:
    """Base of every solver's config; subclasses add fields with their sources in comments."""


class Solver:
    name: ClassVar[str]
    version: ClassVar[int] = 1  # bump when the method's math changes: results of other versions are not mixed
    # Options added after results were stored, with the value that reproduces the earlier behaviour: at that value
    # `spec` leaves them out, so that adding an option changes no stored key.
    options_keyed_off_default: ClassVar[dict[str, Any]] = {}
    Config: ClassVar[type[SolverConfig]] = SolverConfig
    requires: ClassVar[frozenset[Cap]] = frozenset({Cap.FORWARD})
    requires_when_noisy: ClassVar[frozenset[Cap]] = frozenset()  # extra needs for σ > 0 (e.g. DDNM+: svd)
    # Capabilities taken where the operator has them (a closed form, a better start), with a fallback where it has
    # not; they never make a task unsupported, but they are part of what the solver touches (`bench validate`).
    uses_when_available: ClassVar[frozenset[Cap]] = frozenset()
    backprop_through_network: ClassVar[bool] = False
    # False for methods that bring their own network instead (PnP-ADMM's denoiser, CDDB's bridges): the runner
    # still passes the prior (for its device) and records it, and the callback reports their own network's calls.
    uses_prior: ClassVar[bool] = True
    # The measurement noise models (`operators.noise.NOISE_MODELS` names) the solver's data term is valid for.
    # Gaussian only by default: a method whose update assumes it (DDRM's and DDNM+'s spectral noise, ΠGDM's noisy
    # form, DDC's φ trained on it, MCGDiff's exact law, CDDB's bridges) refuses the others. Methods that only
    # reduce ‖y − A(x)‖ (DPS, which ran Poisson in its paper, RED-diff, PnP-ADMM, A⁺, DAPS, DiffPIR) add them.
    noise_models: ClassVar[frozenset[str]] = frozenset({"gaussian"})
    # Keyword arguments of the constructor that take the solver's own networks (DDC: "phi"), so that tools can
    # inject stand-ins (`stand_in_networks`; `bench speed` times them): declared here, never read off a signature.
    injectable_networks: ClassVar[tuple[str, ...]] = ()
    summary: ClassVar[str] = ""
    # Options that `bench run --budget quick` (the CPU default) lowers so that a laptop sees results in minutes;
    # empty for methods that are already cheap. Explicit --set options win over them.
    quick: ClassVar[dict[str, Any]] = {}

    # Config fields that count something (steps, network evaluations, iterations): each must be an integer >= 1.
    COUNT_OPTIONS: ClassVar[tuple[str, ...]] = ("steps", "nfe", "iterations", "cg_iterations")

    @classmethod
    def stand_in_networks(cls, image_shape: Sequence[int], widths: Sequence[int] | None = None) -> dict[str, Any]:
        """The solver's own networks at its paper's size with random weights, by constructor keyword (one for
        each of `injectable_networks`), for timing and memory (`bench speed`) where no trained ones exist.

        image_shape: (C, H, W) of the prior's images; widths: the networks' channel widths instead of the
        paper's. Empty for a solver without networks of its own."""
        return {}

    def __init__(self, config: SolverConfig | None = None, **overrides: Any):
        base = config if config is not None else self.Config()
        self.config = dataclasses.replace(base, **overrides) if overrides else base
        self.network_use: dict[str, NetworkUse] = {}
        self._check_counts()

    def _check_counts(self) -> None:
        """A count option below 1 is refused when the solver is built, so a run fails before any work."""
        for name in self.COUNT_OPTIONS:
            value = getattr(self.config, name, None)
            if value is None or isinstance(value, bool):
                continue
            if not isinstance(value, int) or value < 1:
                raise SolverError(
                    f"{self.name}.{name} must be an integer >= 1, got {value!r}; e.g. --set {self.name}.{name}=10"
                )

    def reset_network_use(self) -> None:
        self.network_use = {}

    def counted(self, name: str, network: Any) -> Any:
        """`network` (any callable) wrapped so that its calls and forward seconds land in network_use[name]."""
        import time

        def call(*args: Any, **kwargs: Any) -> Any:
            use = self.network_use.setdefault(name, NetworkUse())
            _synchronize(args)
            start = time.perf_counter()
            out = network(*args, **kwargs)
            _synchronize((out,))
            use.calls += 1
            use.seconds += time.perf_counter() - start
            return out

        return call

    def required_capabilities(self, sigma: float) -> frozenset[Cap]:
        return self.requires | (self.requires_when_noisy if sigma > 0 else frozenset())

    def unsupported(self, op: Operator, sigma: float) -> str | None:
        """None if this solver can run on `op` at noise level `sigma`, else the reason it cannot.

        The base class checks the declared capabilities; a solver whose trained weights are per task (CDDB's
        bridges) also returns a reason where it has none, naming the command that trains them."""
        missing = self.required_capabilities(sigma) - op.capabilities
        if missing:
            names = ", ".join(sorted(c.value for c in missing))
            noisy = " at sigma > 0" if missing & self.requires_when_noisy and sigma > 0 else ""
            why = " (A⁺ is not defined for this nonlinear operator)" if Cap.PINV in missing and not op.linear else ""
            return f"{self.name} needs {names}{noisy}, which {op.task} does not provide{why}"
        return None

    def noise_unsupported(self, noise: str, sigma: float) -> str | None:
        """None if this solver's data term holds under the noise model named `noise` at level `sigma`, else why not.

        The runner asks it after `unsupported(op, sigma)`; it is a method of its own rather than an argument of
        `unsupported`, which subclasses override with (op, sigma) and would not pass on. σ = 0 is noiseless under
        every model, so nothing is refused there."""
        if sigma <= 0 or noise in self.noise_models:
            return None
        return (
            f"{self.name} assumes {' or '.join(sorted(self.noise_models))} measurement noise in its data term, "
            f"so it does not run under {noise} noise (Solver.noise_models); use --noise gaussian, or drop "
            f"{self.name} from --solvers"
        )

    def reconstruct(
        self,
        y: Tensor,
        op: Operator,
        prior: Any,
        *,
        sigma: float,
        generators: Sequence[torch.Generator],
        callback: StepCallback | None = None,
        clamp: bool = True,
    ) -> Tensor:
        """x̂ (B, C, H, W) in [-1, 1] from y (B, *op.measurement_shape): the checked, clamped `solve`.

        clamp=False returns `solve`'s raw output, so that a caller can tell divergence from a value that
        the clamp would hide (the runner does: `bench.pipeline.evaluate.DIVERGENCE_BOUND`).

        A SolverError names what does not fit: an operator this solver cannot serve at σ, a measurement of the
        wrong shape, a generator count other than the batch size, a prior whose images or timesteps do not fit,
        a float16 prior for a solver that backpropagates through it (`precision_mismatch`).
        """
        self.check(op, sigma)
        check_inputs(self.name, y, op, prior if self.uses_prior else None, generators)
        reason = self.precision_mismatch(getattr(prior, "dtype", torch.float32)) or self.prior_mismatch(prior)
        if reason:
            raise SolverError(reason)
        estimate = self.solve(y, op, prior, sigma=sigma, generators=generators, callback=callback)
        return estimate.clamp(-1, 1) if clamp else estimate

    def solve(
        self,
        y: Tensor,
        op: Operator,
        prior: Any,
        *,
        sigma: float,
        generators: Sequence[torch.Generator],
        callback: StepCallback | None = None,
    ) -> Tensor:
        """The method itself: x̂ (B, C, H, W), not yet clamped, from inputs `reconstruct` has checked."""
        raise NotImplementedError(f"{type(self).__name__} does not implement solve")

    def prior_mismatch(self, prior: Any) -> str | None:
        """Why this config cannot run on `prior`, or None: a step count above the prior's timesteps."""
        steps = getattr(self.config, "steps", None)
        total = getattr(prior, "num_timesteps", None)
        if self.uses_prior and isinstance(steps, int) and isinstance(total, int) and steps > total:
            return f"{self.name}.steps={steps} exceeds the {total} timesteps of the prior"
        return None

    def precision_mismatch(self, dtype: torch.dtype | str) -> str | None:
        """Why this solver refuses a prior whose network computes in `dtype` ('fp16', torch.float16, ...), or None.

        float16 autocast without loss scaling flushes gradients below 6e-8 to zero and turns those above 65504
        into inf; a solver that backpropagates through the prior's network takes its data-consistency step from
        such a gradient. Scaling it would need each solver to redo a step whose scaled gradient overflowed (an
        extra network call that changes the method's cost), so it is refused instead: bfloat16 has float32's
        exponent range and needs no scaling.
        """
        name = str(dtype).removeprefix("torch.").lower()
        if self.backprop_through_network and self.uses_prior and name in ("float16", "fp16", "half"):
            return (
                f"{self.name} backpropagates through the prior's network, and float16 gradients without loss "
                "scaling underflow to 0 or overflow to inf; use dtype bf16 (--dtype bf16: float32's range, "
                f"no scaling needed) or fp32 for {self.name}"
            )
        return None

    def missing_weights(self) -> str | None:
        """Why this solver cannot run for lack of trained weights, or None when it has what it needs."""
        return None

    def nfe(self) -> int | None:
        """Prior network evaluations per image that this config implies (one call on a batch counts once), or
        None where the solver does not declare it; `bench validate` checks it against the prior's own count.

        The default: 0 for a solver that does not use the prior; one call per step for a config with an integer
        `steps`; else None. A solver with another count overrides it."""
        if not self.uses_prior:
            return 0  # its networks (DnCNN, a bridge) are counted in network_use, not the prior
        steps = getattr(self.config, "steps", None)
        return steps if isinstance(steps, int) and not isinstance(steps, bool) else None

    def spec(self) -> dict[str, Any]:
        """The solver's identity for result keys: name, version and resolved config (without the options of
        `options_keyed_off_default` at their earlier behaviour's value)."""
        config = dataclasses.asdict(self.config)
        for name, earlier in self.options_keyed_off_default.items():
            if name in config and config[name] == earlier:
                del config[name]
        return {"solver": self.name, "version": self.version, "config": config}

    def check(self, op: Operator, sigma: float) -> None:
        reason = self.unsupported(op, sigma)
        if reason:
            raise SolverError(reason)


def _synchronize(values: Sequence[Any]) -> None:
    """Wait for CUDA's queued work on the device of the first tensor among `values` (none: nothing to wait for)."""
    from bench.memory import synchronize

    for value in values:
        if isinstance(value, Tensor):
            synchronize(value.device)
            return


def check_inputs(name: str, y: Tensor, op: Operator, prior, generators: Sequence[torch.Generator]) -> None:
    """Clear errors for a measurement, prior or generator list that does not fit the operator.

    `prior` None skips the image-shape check, for solvers that take only the device from it."""
    if prior is not None and tuple(prior.image_shape) != tuple(op.input_shape):
        raise SolverError(
            f"{name}: the prior makes {tuple(prior.image_shape)} images but the operator expects "
            f"{tuple(op.input_shape)}; build the operator with shape={tuple(prior.image_shape)}"
        )
    if not isinstance(y, Tensor) or y.ndim < 1 or tuple(y.shape[1:]) != tuple(op.measurement_shape):
        shape = tuple(getattr(y, "shape", ()))
        raise SolverError(f"{name}: y must have shape (B, {', '.join(map(str, op.measurement_shape))}), got {shape}")
    if len(generators) != y.shape[0]:
        raise SolverError(f"{name}: need one generator per image, got {len(generators)} for a batch of {y.shape[0]}")


def spectral_measurement(op: Operator, y: Tensor, cutoff: float = 0.0) -> tuple[Tensor, Tensor]:
    """(s, Uᵀy), both zero-padded to N = C·H·W entries so they line up with vt(x): s (1|B, N), Uᵀy (B, N).

    With `cutoff` > 0, singular values the operator discards under that cutoff (`SVD.discarded`) are zero."""
    svd = op.svd
    u_y = svd.ut(y)
    singulars = svd.singulars_like(u_y)
    if cutoff > 0:
        singulars = singulars.masked_fill(svd.discarded(cutoff).to(singulars.device), 0.0)
    singulars = singulars.expand(u_y.shape[0], -1) if singulars.ndim == 2 else singulars[None]
    pad = math.prod(op.input_shape) - u_y.shape[1]
    return (
        torch.cat([singulars, singulars.new_zeros(singulars.shape[0], pad)], dim=1),
        torch.cat([u_y, u_y.new_zeros(u_y.shape[0], pad)], dim=1),
    )
