"""Measurement noise models: how a clean measurement A(x) becomes the y that a solver sees.

A noise model is an object (deepinv's `noise_model`; docs/shared CONVENTIONS item 18) with a `name`, a JSON-able
`spec()` (it enters unit keys when it is not the default), and `sample(clean, sigma, generators) -> noisy`.
Adding a model touches one place: a subclass here and its entry in `NOISE_MODELS`. Solvers opt in by name
(`Solver.noise_models`, default {"gaussian"}), so a new model is refused by every solver until one declares it.

The level of every model is σ on the [0, 1] pixel scale: the `sigma` of `--sigma`, of unit keys and of the
`sigma` column, whatever the model. For Gaussian noise σ is the std everywhere; for Poisson noise it is the std
at mid-grey (`PoissonNoise.reference`), so a Gaussian and a Poisson run at one σ have the same noise power in
a mid-grey region, σ = 0 is noiseless under both, and a solver is told the same σ under both (`solver_sigma`).

Shapes and ranges: `clean` is a measurement (B, *measurement_shape) on the [-1, 1] image scale; row b of the
noise is drawn from generators[b] alone, so an image's measurement does not depend on its batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor

from bench.registry import closest

from .base import OperatorError, add_noise

__all__ = ["DEFAULT_NOISE", "NOISE_MODELS", "GaussianNoise", "NoiseModel", "PoissonNoise", "noise_model"]

DEFAULT_NOISE = "gaussian"  # what every run used before noise models existed; its unit keys do not name it


def _check_level(sigma: float, generators: Sequence[torch.Generator], clean: Tensor) -> float:
    sigma = float(sigma)
    if not sigma >= 0.0:
        raise OperatorError(f"noise level sigma must be >= 0 (on the [0, 1] pixel scale), got {sigma}")
    if len(generators) != clean.shape[0]:
        raise OperatorError(
            f"need one generator per image: got {len(generators)} generators for a batch of {clean.shape[0]}"
        )
    return sigma


class NoiseModel:
    """The base of the noise models: subclasses set `name` and implement `sample`."""

    name: ClassVar[str]

    def params(self) -> dict[str, Any]:
        """The parameters that, with the name, define the model (none by default)."""
        return {}

    def spec(self) -> dict[str, Any]:
        """A JSON-able description of the model, e.g. {"name": "poisson", "reference": 0.5}."""
        return {"name": self.name, **self.params()}

    def sample(self, clean: Tensor, sigma: float, generators: Sequence[torch.Generator]) -> Tensor:
        """The noisy measurement (B, ...) of a clean one (B, ...) at level σ ([0, 1] scale); row b from generators[b]."""
        raise NotImplementedError

    def solver_sigma(self, sigma: float) -> float:
        """The σ ([0, 1] scale) a solver's data term is told: the level itself, since every model here defines
        its level as a std on that scale (Poisson's at mid-grey). A model whose level means something else (a
        rate, a quantisation step) converts it here."""
        return float(sigma)

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.params().items())
        return f"{type(self).__name__}({params})"


class GaussianNoise(NoiseModel):
    """y = A(x) + n, n ~ N(0, (2σ)² I) on the [-1, 1] scale: the project's convention (`add_noise`), unchanged."""

    name = "gaussian"

    def sample(self, clean: Tensor, sigma: float, generators: Sequence[torch.Generator]) -> Tensor:
        return add_noise(clean, sigma, generators)  # bit for bit what `Operator.measure` always did


class PoissonNoise(NoiseModel):
    """Shot noise, DPS's definition (guided_diffusion/measurements.py, `PoissonNoise`, "version 3"):

        u = clamp((A(x) + 1) / 2, 0, 1)                   the [-1, 1] measurement on [0, 1]
        k ~ Poisson(255 λ u)                               counts; λ is DPS's `rate`
        y = clamp(2 k / (255 λ) − 1, −1, 1)                back on [-1, 1], clipped

    so E[k / (255 λ)] = u and Var[k / (255 λ)] = u / (255 λ) (before the clip). The level is σ on the [0, 1]
    scale, the std at u = `reference` (mid-grey): 255 λ = reference / σ², i.e. λ = reference / (255 σ²)
    (`rate`); deepinv's PoissonNoise `gain` is σ² / reference. DPS's rate 1.0 (configs/phase_retrieval_config.yaml)
    is σ = sqrt(0.5 / 255) ≈ 0.04428 (`sigma_for_rate`). σ = 0 is noiseless: y = A(x), unclipped.

    The clip is DPS's: a measurement outside [-1, 1] (phase retrieval's Fourier magnitudes, a bicubic overshoot)
    is clipped to it before the counts are drawn, as DPS's code does for its phase retrieval.
    """

    name = "poisson"
    COUNT_SCALE: ClassVar[float] = 255.0  # DPS: `data * 255.0 * self.rate`; cancels out of everything but `rate`

    def __init__(self, reference: float = 0.5):
        reference = float(reference)
        if not 0.0 < reference <= 1.0:
            raise OperatorError(f"Poisson reference intensity must lie in (0, 1] (mid-grey: 0.5), got {reference}")
        self.reference = reference

    def params(self) -> dict[str, Any]:
        return {"reference": self.reference}

    def counts_per_unit(self, sigma: float) -> float:
        """255 λ: the expected count of a pixel at u = 1 (full white) at level σ > 0."""
        return self.reference / float(sigma) ** 2

    def rate(self, sigma: float) -> float:
        """DPS's `rate` λ at level σ > 0: reference / (255 σ²)."""
        return self.counts_per_unit(sigma) / self.COUNT_SCALE

    def sigma_for_rate(self, rate: float) -> float:
        """The level σ whose `rate` is DPS's λ: sqrt(reference / (255 λ))."""
        if not float(rate) > 0.0:
            raise OperatorError(f"a Poisson rate must be > 0 (DPS: 1.0), got {rate}")
        return (self.reference / (self.COUNT_SCALE * float(rate))) ** 0.5

    def sample(self, clean: Tensor, sigma: float, generators: Sequence[torch.Generator]) -> Tensor:
        sigma = _check_level(sigma, generators, clean)
        if sigma == 0.0:
            return clean
        scale = self.counts_per_unit(sigma)
        # float64 intensities: a count near 2^24 would lose its last digits in float32 (σ below ~1.5e-4)
        unit = ((clean.detach().double() + 1.0) / 2.0).clamp(0.0, 1.0)
        rows = [torch.poisson(unit[b].to(g.device) * scale, generator=g) for b, g in enumerate(generators)]
        counts = torch.stack(rows).to(clean.device)
        return (2.0 * counts / scale - 1.0).clamp(-1.0, 1.0).to(clean.dtype)


# name -> the model's class; `--noise` and the config key `noise` choose one of these names.
NOISE_MODELS: dict[str, type[NoiseModel]] = {"gaussian": GaussianNoise, "poisson": PoissonNoise}


def noise_model(name: str | NoiseModel | None = None) -> NoiseModel:
    """The noise model called `name` (None: the default, Gaussian); a model passes through unchanged."""
    if isinstance(name, NoiseModel):
        return name
    name = DEFAULT_NOISE if name is None else str(name).strip().lower()
    if name not in NOISE_MODELS:
        close = closest(name, list(NOISE_MODELS))
        hint = f"; did you mean '{close}'?" if close else ""
        raise OperatorError(f"unknown noise model '{name}'{hint} (available: {', '.join(NOISE_MODELS)})")
    return NOISE_MODELS[name]()
