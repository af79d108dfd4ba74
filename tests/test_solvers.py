"""Every registered solver, checked against the contract; loops run over `solvers.available()`.

Method-specific accuracy against exact Gaussian posteriors lives in tests/test_solver_<name>.py.
"""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

import operators
import solvers
from bench.priors import load_prior
from operators import Cap
from solvers import SolverError

SIGMAS = (0.0, 0.05)


def quick(name: str) -> solvers.Solver:
    """The solver with as few steps / iterations as it allows, for plumbing tests."""
    fields = {f.name for f in dataclasses.fields(solvers.get(name).Config)}
    # steps and inner loops at 2, particle clouds at 4: plumbing, not quality (an SMC sampler's 64 particles on
    # every task at 64² would cost more than the rest of this file)
    overrides = {key: 2 for key in ("steps", "iterations", "nfe", "ode_steps", "langevin_steps") if key in fields}
    overrides |= {key: 4 for key in ("particles",) if key in fields}
    if "off_schedule" in fields:  # a φ trained at its sampler's 5 timesteps refuses 2 steps unless told
        overrides["off_schedule"] = True
    return solvers.build(name, **overrides)


@pytest.fixture(scope="module")
def natural64():
    return load_prior("natural64")


@pytest.fixture(scope="module")
def gaussian():
    return load_prior("gaussian")


def measurement(task: str, prior, sigma: float, ids=("a",), seed: int = 0):
    op = operators.build(task, shape=prior.image_shape).for_images(list(ids), seed)
    truth = operators.image_generators(seed, list(ids), "truth")
    x = torch.stack([torch.rand(prior.image_shape, generator=g) * 1.6 - 0.8 for g in truth])
    y = op.measure(x, sigma, operators.image_generators(seed, list(ids), "noise"))
    return op, x, y


def test_solver_registry_and_declarations():
    names = solvers.available()
    assert names[:2] == ["uncond", "pinv"]
    assert all(solvers.build(n).missing_weights() is None for n in names)  # every solver's weights ship
    for name in names:
        cls = solvers.get(name)
        assert cls.name == name and cls.summary
        assert dataclasses.is_dataclass(cls.Config) and cls.Config.__dataclass_params__.frozen
        assert all(isinstance(c, Cap) for c in cls.requires | cls.requires_when_noisy)
        spec = solvers.build(name).spec()
        assert json.loads(json.dumps(spec)) == spec and spec["solver"] == name and spec["version"] >= 1


def test_solver_build_converts_overrides_and_rejects_unknown_options():
    solver = solvers.build("uncond", steps="25")
    assert solver.config.steps == 25 and isinstance(solver.config.steps, int)
    with pytest.raises(SolverError, match=r"solver 'uncond' has no option 'stpes'; did you mean 'steps'\?"):
        solvers.build("uncond", stpes="3")
    with pytest.raises(SolverError, match="cannot read 'many' as"):
        solvers.build("uncond", steps="many")
    with pytest.raises(SolverError, match=r"unknown solver 'dsp'"):
        solvers.get("dsp")
    assert solvers.parse_overrides(["uncond.steps=5", "pinv.x=1"]) == {"uncond": {"steps": "5"}, "pinv": {"x": "1"}}
    with pytest.raises(SolverError, match="solver.option=value"):
        solvers.parse_overrides(["steps=5"])


@pytest.mark.parametrize("name", solvers.available())
def test_solver_unsupported_pairs_name_the_missing_capability(name):
    solver = solvers.build(name)
    for task in operators.available():
        op = operators.build(task, shape=(3, 16, 16))
        for sigma in SIGMAS:
            reason = solver.unsupported(op, sigma)
            missing = solver.required_capabilities(sigma) - op.capabilities
            if missing:
                assert reason and task in reason and all(c.value in reason for c in missing)
            elif reason:  # only for want of per-task weights (a bridge, a φ not trained for it), the fix named
                assert "python -m bench train-" in reason, reason
            if reason:
                with pytest.raises(SolverError):
                    solver.check(op, sigma)


@pytest.mark.slow
@pytest.mark.parametrize("name", solvers.available())
def test_solver_runs_on_the_default_prior_for_every_supported_task(name, natural64):
    """Every solver x task x sigma in {0, 0.05}: finite output in [-1, 1], callback sees each network call."""
    solver = quick(name)
    if reason := solver.missing_weights():
        pytest.skip(reason)
    for task in operators.available():
        for sigma in SIGMAS:
            op, _, y = measurement(task, natural64, sigma)
            if solver.unsupported(op, sigma):
                continue
            calls = []
            natural64.reset_stats()
            out = solver.reconstruct(
                y,
                op,
                natural64,
                sigma=sigma,
                generators=operators.image_generators(0, ["a"], "solver"),
                callback=lambda calls=calls, **k: calls.append(k),
            )
            assert out.shape == (1, *natural64.image_shape), (task, sigma)
            assert torch.isfinite(out).all() and out.abs().max() <= 1, (task, sigma)
            expected = natural64.stats.nfe if solver.uses_prior else getattr(solver.config, "nfe", 0)
            assert len(calls) == expected, (task, sigma)
            assert solver.uses_prior or natural64.stats.nfe == 0, (task, sigma)
            for call in calls:
                assert set(call) == {"step", "t", "x_t", "eps", "x0"}


@pytest.mark.parametrize("name", solvers.available())
def test_solver_result_does_not_depend_on_the_batch(name, gaussian):
    """Image 'q' gets the same estimate solved alone or as the second image of a batch of 4."""
    solver = quick(name)
    if reason := solver.missing_weights():
        pytest.skip(reason)
    task = next(
        (t for t in ("sr4", "inpaint", "jpeg10") if not solver.unsupported(operators.build(t, (3, 16, 16)), 0.05)),
        None,
    )
    if task is None:  # CDDB: its bridges are for 64×64 and σ = 0 (tests/test_cddb.py checks its batch independence)
        pytest.skip(f"{name} has no trained weights for a 16×16 task at σ = 0.05")
    ids = ["p", "q", "r", "s"]
    op, _, y = measurement(task, gaussian, 0.05, ids=ids)
    batched = solver.reconstruct(y, op, gaussian, sigma=0.05, generators=operators.image_generators(3, ids, "solver"))
    op_alone, _, y_alone = measurement(task, gaussian, 0.05, ids=["q"])
    torch.testing.assert_close(y_alone, y[1:2])
    alone = solver.reconstruct(
        y_alone, op_alone, gaussian, sigma=0.05, generators=operators.image_generators(3, ["q"], "solver")
    )
    torch.testing.assert_close(alone, batched[1:2], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", solvers.available())
def test_reconstruct_checks_inputs_for_every_solver(name, gaussian):
    """The one input check of `reconstruct`: capabilities, y's shape, the generator count, the prior's steps."""
    solver = quick(name)
    gens = operators.image_generators(0, ["a", "b"], "solver")
    ops = [operators.build(task, shape=gaussian.image_shape) for task in operators.available()]
    for op in ops:
        if reason := solver.unsupported(op, 0.0):
            with pytest.raises(SolverError) as refused:
                solver.reconstruct(torch.zeros(2, *op.measurement_shape), op, gaussian, sigma=0.0, generators=gens)
            assert str(refused.value) == reason
    op = next((op for op in ops if not solver.unsupported(op, 0.0)), None)
    if op is None:  # CDDB: no bridge for 16×16 images (tests/test_cddb.py checks its inputs with a bridge)
        return
    good = torch.zeros(2, *op.measurement_shape)
    with pytest.raises(SolverError, match="y must have shape"):
        solver.reconstruct(torch.zeros(2, 3, 5, 5), op, gaussian, sigma=0.0, generators=gens)
    with pytest.raises(SolverError, match="one generator per image"):
        solver.reconstruct(good, op, gaussian, sigma=0.0, generators=gens[:1])
    if solver.uses_prior and "steps" in {f.name for f in dataclasses.fields(solver.Config)}:
        too_many = solvers.build(name, steps=gaussian.num_timesteps + 1)
        with pytest.raises(SolverError, match=f"exceeds the {gaussian.num_timesteps} timesteps"):
            too_many.reconstruct(good, op, gaussian, sigma=0.0, generators=gens)


class _Overshoot(solvers.Solver):
    """A solver whose `solve` leaves [-1, 1]: twice A⁺y."""

    name = "overshoot"

    def solve(self, y, op, prior, *, sigma, generators, callback=None):
        return 2.0 * op.pinv(y)


def test_reconstruct_clamps_what_solve_returns(gaussian):
    op = operators.build("denoise", shape=gaussian.image_shape)
    y = torch.linspace(-1, 1, math.prod(op.measurement_shape)).reshape(1, *op.measurement_shape)
    gens = operators.image_generators(0, ["a"], "solver")
    raw = _Overshoot().solve(y, op, gaussian, sigma=0.0, generators=gens)
    assert raw.abs().max() > 1.5
    torch.testing.assert_close(_Overshoot().reconstruct(y, op, gaussian, sigma=0.0, generators=gens), raw.clamp(-1, 1))


def test_readme_support_matrix_is_the_generated_one():
    from pathlib import Path

    from bench.tools.matrix import README_BEGIN, README_END, readme_block

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    start, end = readme.index(README_BEGIN), readme.index(README_END) + len(README_END)
    assert readme[start:end] == readme_block(), "regenerate the README table with `python -m bench matrix`"
