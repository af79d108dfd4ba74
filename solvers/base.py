"""The solver contract.

A solver is a frozen config (defaults from the DDC paper's Appendix B, each citing its source) plus a
`solve` method. It declares the operator capabilities it needs, for every noise level and additionally for
σ > 0, and whether it backpropagates through the prior's network. The runner asks `unsupported(op, sigma)`
first and records the reason instead of crashing.

Shapes and ranges: y is (B, *op.measurement_shape), the estimate x̂ is (B, C, H, W) in [-1, 1]. σ is on the
[0, 1] pixel scale, so the measurement noise std on the [-1, 1] image scale is 2σ (see `operators`).
Image b's randomness comes only from generators[b], so its result does not depend on the batch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, ClassVar, Protocol

import torch
from torch import Tensor

from operators import Cap, Operator


class StepCallback(Protocol):
    """Receives every network evaluation: step index, timestep, x_t, ε̂ and x̂₀ (each (B, C, H, W))."""

    def __call__(self, *, step: int, t: int, x_t: Tensor, eps: Tensor, x0: Tensor) -> None: ...


class SolverError(ValueError):
    """Bad solver name, option or input: the message names the problem and the fix."""


@dataclasses.dataclass(frozen=True)
class SolverConfig:
    """Base of every solver's config; subclasses add fields with their sources in comments."""


class Solver:
    name: ClassVar[str]
    version: ClassVar[int] = 1  # bump when the method's math changes: results of other versions are not mixed
    Config: ClassVar[type[SolverConfig]] = SolverConfig
    requires: ClassVar[frozenset[Cap]] = frozenset({Cap.FORWARD})
    requires_when_noisy: ClassVar[frozenset[Cap]] = frozenset()  # extra needs for σ > 0 (e.g. DDNM+: svd)
    backprop_through_network: ClassVar[bool] = False
    summary: ClassVar[str] = ""

    def __init__(self, config: SolverConfig | None = None, **overrides: Any):
        base = config if config is not None else self.Config()
        self.config = dataclasses.replace(base, **overrides) if overrides else base

    def required_capabilities(self, sigma: float) -> frozenset[Cap]:
        return self.requires | (self.requires_when_noisy if sigma > 0 else frozenset())

    def unsupported(self, op: Operator, sigma: float) -> str | None:
        """None if this solver can run on `op` at noise level `sigma`, else the reason it cannot."""
        missing = self.required_capabilities(sigma) - op.capabilities
        if missing:
            names = ", ".join(sorted(c.value for c in missing))
            noisy = " at sigma > 0" if missing & self.requires_when_noisy and sigma > 0 else ""
            return f"{self.name} needs {names}{noisy}, which {op.task} does not provide"
        return None

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
        raise NotImplementedError

    def spec(self) -> dict[str, Any]:
        """The solver's identity for result keys: name, version and resolved config."""
        return {"solver": self.name, "version": self.version, "config": dataclasses.asdict(self.config)}

    def check(self, op: Operator, sigma: float) -> None:
        reason = self.unsupported(op, sigma)
        if reason:
            raise SolverError(reason)
