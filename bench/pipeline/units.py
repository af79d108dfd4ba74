"""Work units of a benchmark run: one (solver, task, σ, image) under one prior, dataset and seed.

A unit's key is the SHA-256 of the canonical JSON (sorted keys, no spaces) of everything that defines its
result: the solver's spec (name, version, resolved config), the operator's spec, σ, the prior's spec, the
dataset's name, the image id and the seed, and the two run options that change a result only when they are not
their defaults: the noise model's spec (`--noise`, not named for Gaussian) and the best-of count (`--best-of`,
not named for 1). Keys of runs made before those options existed are therefore unchanged. Changing any of them
(or bumping a solver's `version`) gives a new key, so results of different definitions are never mixed; the
key does not depend on the batch size, the device, the output folder or the order of the command-line lists.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "DEFAULT_NOISE_SPEC",
    "Unit",
    "canonical_json",
    "enumerate_units",
    "image_tag",
    "shard",
    "solver_weights",
    "unit_key",
]

# The spec of the default noise model (`operators.noise.GaussianNoise().spec()`, kept here so that keys need no
# torch): a unit under it has no "noise" entry in its key, as before noise models existed.
DEFAULT_NOISE_SPEC: dict[str, Any] = {"name": "gaussian"}


def canonical_json(value: Any) -> str:
    """JSON with sorted keys and no whitespace; NaN/Inf are refused because they have no JSON spelling."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def solver_weights(solver_spec: Mapping[str, Any]) -> str:
    """What a solver's spec holds beyond its name, version and config (its own weight files' sha256: DDC's φ,
    PnP-ADMM's DnCNN, CDDB's bridge) as canonical JSON, the rows' `solver_weights`; "" for a solver with none."""
    extra = {name: value for name, value in solver_spec.items() if name not in ("solver", "version", "config")}
    return canonical_json(extra) if extra else ""


def image_tag(solver_version: int, solver_config: str, seed: int) -> str:
    """The folder that keeps one configuration's reconstructions apart from another's (12 hex characters).

    `solver_config` is the canonical JSON of the resolved config, as the result rows store it. PNGs live at
    images/<solver>/<task>/<σ>/<tag>/<id>.png, so a second configuration or seed in the same output folder
    never overwrites the first's images, and the grids and FID read the ones of the rows they show."""
    return hashlib.sha256(f"{int(solver_version)}/{solver_config}/{int(seed)}".encode()).hexdigest()[:12]


def unit_key(
    solver_spec: Mapping[str, Any],
    operator_spec: Mapping[str, Any],
    sigma: float,
    prior_spec: Mapping[str, Any],
    dataset: str,
    image_id: str,
    seed: int,
    noise: Mapping[str, Any] | None = None,
    best_of: int = 1,
) -> str:
    """Hex SHA-256 (64 characters) of the canonical JSON of a unit's definition.

    `noise`: the noise model's spec (None: Gaussian); it enters the record only when it is not
    `DEFAULT_NOISE_SPEC`. `best_of`: repeats of which the run keeps the best (`bench.pipeline.evaluate`); it enters the
    record only above 1. Gaussian, best-of-1 keys are byte for byte the keys made before these options."""
    record = {
        "solver": dict(solver_spec),
        "operator": dict(operator_spec),
        "sigma": float(sigma),
        "prior": dict(prior_spec),
        "dataset": str(dataset),
        "image_id": str(image_id),
        "seed": int(seed),
    }
    if noise is not None and dict(noise) != DEFAULT_NOISE_SPEC:
        record["noise"] = dict(noise)
    if int(best_of) != 1:
        record["best_of"] = int(best_of)
    return hashlib.sha256(canonical_json(record).encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Unit:
    """One image to reconstruct with one solver on one task at one noise level σ ([0, 1] pixel scale)."""

    solver: str
    task: str
    sigma: float
    image_id: str
    key: str

    @property
    def group(self) -> tuple[str, str, float]:
        """(solver, task, σ): the set over which FID/KID are computed."""
        return (self.solver, self.task, self.sigma)


def enumerate_units(
    solver_specs: Mapping[str, Mapping[str, Any]],
    operator_specs: Mapping[str, Mapping[str, Any]],
    sigmas: Sequence[float],
    prior_spec: Mapping[str, Any],
    dataset: str,
    image_ids: Sequence[str],
    seed: int,
    noise: Mapping[str, Any] | None = None,
    best_of: int = 1,
) -> list[Unit]:
    """Every unit of the matrix, ordered solver, task, σ, image (the given orders), so that consecutive
    units share a solver, task and σ and can be batched together. `noise`, `best_of`: as in `unit_key`."""
    return [
        Unit(
            solver,
            task,
            float(sigma),
            image_id,
            unit_key(sspec, ospec, sigma, prior_spec, dataset, image_id, seed, noise=noise, best_of=best_of),
        )
        for solver, sspec in solver_specs.items()
        for task, ospec in operator_specs.items()
        for sigma in sigmas
        for image_id in image_ids
    ]


def shard(units: Sequence[Unit], rank: int, world_size: int) -> list[Unit]:
    """The units of process `rank` out of `world_size`: those whose index i in the full list has i % world == rank.

    Every process enumerates the same list, so the shards are disjoint, cover it, and do not depend on which
    units are already done.
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank must lie in 0..world_size-1, got rank={rank}, world_size={world_size}")
    return [unit for index, unit in enumerate(units) if index % world_size == rank]
