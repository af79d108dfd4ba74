"""The no-prior baseline: the pseudo-inverse A⁺y (for jpeg10, the decoded image itself)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch
from torch import Tensor

from operators import Cap, Operator

from . import register
from .base import Solver, SolverConfig, StepCallback


@dataclasses.dataclass(frozen=True)
class PinvConfig(SolverConfig):
    pass


@register
class Pinv(Solver):
    name = "pinv"
    noise_models = frozenset({"gaussian", "poisson"})  # A⁺y assumes no noise law
    Config = PinvConfig
    requires = frozenset({Cap.PINV})
    summary = "A⁺y, the measurement's pseudo-inverse (no prior)"

    def nfe(self) -> int:
        return 0

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
        with torch.no_grad():
            return op.pinv(y)
