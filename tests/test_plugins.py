"""Plug-ins by entry point: the README's example package installed and run through the command line, a broken
plug-in reported by name while the built-ins still run, name clashes, the order of listing, and each registry's
check of what an entry point names."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
import textwrap
from importlib import metadata
from pathlib import Path

import pandas as pd
import pytest
import torch

import operators
import solvers
from bench import plugins
from bench import priors as bench_priors
from operators import Cap, Operator
from solvers import Solver, SolverConfig

REPO = Path(__file__).resolve().parents[1]


def readme_example() -> tuple[str, str]:
    """The pyproject.toml and the module of the README's "Write your own solver" example."""
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Write your own solver") :]
    section = section[: section.index("\n## ", 1)]
    toml = re.search(r"```toml\n(.*?)```", section, re.S).group(1)
    module = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    return toml, module


def install(site: Path, name: str, version: str, entry_points: dict[str, dict[str, str]], files: dict[str, str]):
    """Install a distribution the way pip leaves it: its files and a `*.dist-info` with entry_points.txt."""
    site.mkdir(parents=True, exist_ok=True)
    for relative, text in files.items():
        (site / relative).write_text(text)
    info = site / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    groups = "".join(
        f"[{group}]\n" + "".join(f"{key} = {value}\n" for key, value in points.items()) + "\n"
        for group, points in entry_points.items()
    )
    (info / "entry_points.txt").write_text(groups)


def bench(site: Path, *args: str, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(site), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "bench", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def example_site(tmp_path_factory) -> Path:
    """The README's package installed from its pyproject.toml, plus a broken plug-in beside it."""
    import tomllib

    toml, module = readme_example()
    project = tomllib.loads(toml)["project"]
    site = tmp_path_factory.mktemp("site")
    install(
        site,
        project["name"],
        project["version"],
        project["entry-points"],
        {"bench_one_step.py": module},
    )
    install(
        site,
        "bench-broken",
        "0.2",
        {
            "diffusion_inverse_bench.solvers": {
                "broken": "bench_broken_missing:Broken",
                "not-a-solver": "json:JSONDecoder",
            }
        },
        {},
    )
    return site


@pytest.mark.slow
def test_the_readme_plugin_installs_lists_runs_resumes_and_reports(example_site, tmp_path):
    listed = bench(example_site, "list", "solvers", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    names = [line.split()[0] for line in lines if line.startswith("  ") and not line.startswith("   ")]
    builtins = solvers.available()
    assert names[: len(builtins)] == builtins and names[len(builtins)] == "one-step"
    assert "[plug-in from bench-one-step 0.1.0]" in listed.stdout
    assert "defaults: t=50" in listed.stdout
    matrix = bench(example_site, "matrix", cwd=tmp_path)
    assert "| `one-step` | ✓ | ✓ | ✓ | ✓ | ✓ | ✓ |" in matrix.stdout

    results, report = tmp_path / "results", tmp_path / "report"
    run = [
        *("run", "--solvers", "one-step,pinv", "--tasks", "sr4", "--sigma", "0.05", "--prior", "gaussian:16"),
        *("--n-images", "2", "--set", "one-step.t=100", "--out", str(results)),
    ]
    first = bench(example_site, *run, cwd=tmp_path)
    assert first.returncode == 0, first.stdout + first.stderr
    units = pd.concat(pd.read_parquet(p) for p in sorted((results / "units").glob("*.parquet")))
    mine = units[units.solver == "one-step"]
    assert len(mine) == 2 and set(mine.status) == {"ok"} and set(mine.nfe) == {1}
    assert all('"t": 100' in config for config in mine.config) if "config" in mine else True
    again = bench(example_site, *run, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    parts = sorted((results / "units").glob("*.parquet"))
    assert len(pd.concat(pd.read_parquet(p) for p in parts)) == len(units)  # resumed: nothing recomputed
    rendered = bench(example_site, "report", "--results", str(results), "--out", str(report), cwd=tmp_path)
    assert rendered.returncode == 0, rendered.stderr
    assert "one-step" in (report / "index.html").read_text()


@pytest.mark.slow
def test_a_broken_plugin_is_reported_by_name_and_the_builtins_still_run(example_site, tmp_path):
    listed = bench(example_site, "list", "solvers", cwd=tmp_path)
    assert listed.returncode == 0
    assert "warning: solver plug-in 'broken' (bench_broken_missing:Broken, from bench-broken 0.2)" in listed.stderr
    assert "ModuleNotFoundError: No module named 'bench_broken_missing'" in listed.stderr
    assert "not-a-solver" in listed.stderr and "not a subclass of solvers.Solver" in listed.stderr
    assert "broken: NOT LOADED, plug-in bench_broken_missing:Broken from bench-broken 0.2" in listed.stdout
    assert all(f"  {name} " in listed.stdout for name in solvers.available())
    run = bench(
        example_site,
        *("run", "--solvers", "pinv", "--tasks", "sr4", "--sigma", "0", "--prior", "gaussian:16", "--n-images", "1"),
        *("--out", str(tmp_path / "results")),
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "warning: solver plug-in 'broken'" in run.stderr


def test_a_plugin_named_like_a_builtin_is_an_error_naming_both(tmp_path):
    site = tmp_path / "site"
    install(site, "bench-clash", "1.0", {"diffusion_inverse_bench.solvers": {"ddrm": "bench_clash:DDRM"}}, {})
    listed = bench(site, "list", "solvers", cwd=tmp_path)
    assert listed.returncode == 2
    assert "solver plug-in 'ddrm' (bench_clash:DDRM from bench-clash 1.0) has the name of the built-in solver" in (
        listed.stderr
    )


# ----- in-process: the registries' order and checks, with entry points supplied directly ----------------------


@dataclasses.dataclass(frozen=True)
class EmptyConfig(SolverConfig):
    pass


@pytest.fixture(autouse=True)
def _plugin_failures_restored(monkeypatch):
    """Plug-ins these tests load in-process record their failures in `bench.plugins`; later tests must not see them."""
    monkeypatch.setattr(plugins, "_failures", dict(plugins._failures))


def make_solver(solver_name: str) -> type[Solver]:
    class Plugged(Solver):
        name = solver_name
        Config = EmptyConfig
        requires = frozenset({Cap.PINV})

        def solve(self, y, op, prior, *, sigma, generators, callback=None):
            return op.pinv(y)

    return Plugged


ZETA, ALPHA = make_solver("zeta"), make_solver("alpha")


def entry_points(group: str, **targets: str) -> list[metadata.EntryPoint]:
    return [metadata.EntryPoint(name, value, group) for name, value in targets.items()]


def test_plugins_are_listed_after_the_builtins_sorted_by_name(monkeypatch):
    builtins = solvers.available()
    monkeypatch.setattr(solvers, "_SOLVERS", solvers._SOLVERS.copy())
    found = entry_points(plugins.GROUPS["solvers"], zeta=f"{__name__}:ZETA", alpha=f"{__name__}:ALPHA")
    monkeypatch.setattr(plugins, "_entry_points", lambda kind: sorted(found, key=lambda p: p.name))
    assert solvers.available() == [*builtins, "alpha", "zeta"]
    assert solvers.is_plugin("zeta") and not solvers.is_plugin("ddrm")
    assert solvers.build("alpha").name == "alpha"


def test_the_solver_check_names_what_is_missing():
    assert solvers.check_plugin("zeta", ZETA) is ZETA
    assert solvers.check_plugin("zeta", lambda: ZETA) is ZETA  # a factory
    with pytest.raises(TypeError, match="not a subclass of solvers.Solver"):
        solvers.check_plugin("x", dict)
    with pytest.raises(TypeError, match="name is 'zeta'; it must be the entry point's name 'other'"):
        solvers.check_plugin("other", ZETA)

    class NoSolve(Solver):
        name = "nosolve"
        Config = EmptyConfig

    with pytest.raises(TypeError, match="does not override solve"):
        solvers.check_plugin("nosolve", NoSolve)

    class BadRequires(ZETA):
        requires = {"pinv"}

    with pytest.raises(TypeError, match="requires must be a frozenset of operators.Cap"):
        solvers.check_plugin("zeta", BadRequires)

    class NoConfig(ZETA):
        Config = SolverConfig

    with pytest.raises(TypeError, match="Config must be its own dataclass"):
        solvers.check_plugin("zeta", NoConfig)

    @dataclasses.dataclass(frozen=True)
    class NeedsValue(SolverConfig):
        weight: float

    class Undefaulted(ZETA):
        Config = NeedsValue

    with pytest.raises(TypeError, match="Config\\(\\) must build with defaults alone"):
        solvers.check_plugin("zeta", Undefaulted)


def test_load_reports_failures_and_refuses_clashes(monkeypatch, capsys):
    group = plugins.GROUPS["solvers"]
    found = entry_points(group, good=f"{__name__}:ZETA", gone="no_such_module:Thing")
    monkeypatch.setattr(plugins, "_entry_points", lambda kind: found)
    loaded = plugins.load("solvers", lambda name, obj: obj, taken=["ddrm"])
    assert list(loaded) == ["good"]
    failure = {f.name: f for f in plugins.failures("solvers")}["gone"]
    assert failure.target == "no_such_module:Thing" and failure.error.startswith("ModuleNotFoundError")
    assert "solver plug-in 'gone' (no_such_module:Thing" in capsys.readouterr().err
    monkeypatch.setattr(plugins, "_entry_points", lambda kind: entry_points(group, ddrm=f"{__name__}:ZETA"))
    with pytest.raises(plugins.PluginError, match="has the name of the built-in solver 'ddrm'"):
        plugins.load("solvers", lambda name, obj: obj, taken=["ddrm"])
    twice = entry_points(group, same=f"{__name__}:ZETA") + entry_points(group, same=f"{__name__}:ALPHA")
    monkeypatch.setattr(plugins, "_entry_points", lambda kind: twice)
    with pytest.raises(plugins.PluginError, match="two solver plug-ins are named 'same'"):
        plugins.load("solvers", lambda name, obj: obj, taken=[])


class Flip(Operator):
    """Horizontal mirror: its own adjoint and inverse."""

    task = "flip"
    capabilities = frozenset({Cap.FORWARD, Cap.ADJOINT, Cap.PINV})

    def __init__(self, shape, *, axis: int = 3):
        super().__init__(shape)
        self.axis = axis

    @property
    def measurement_shape(self):
        return self.input_shape

    def _forward(self, x):
        return x.flip(self.axis)

    _adjoint = _pinv = _forward


def test_an_operator_plugin_is_checked_built_and_listed(monkeypatch):
    assert operators.check_plugin("flip", Flip) is Flip
    with pytest.raises(TypeError, match="declares svd but does not implement _svd"):
        operators.check_plugin("flip", type("Flip2", (Flip,), {"capabilities": frozenset({Cap.FORWARD, Cap.SVD})}))
    with pytest.raises(TypeError, match="task is 'flip'; it must be the entry point's name 'mirror'"):
        operators.check_plugin("mirror", Flip)
    monkeypatch.setattr(operators, "_TASKS", operators._TASKS.copy())
    found = entry_points(plugins.GROUPS["operators"], flip=f"{__name__}:Flip")
    monkeypatch.setattr(plugins, "_entry_points", lambda kind: found)
    assert operators.available()[-1] == "flip" and operators.is_plugin("flip")
    assert operators.describe("flip") == "Horizontal mirror: its own adjoint and inverse."
    op = operators.build("flip", shape=(1, 4, 4), axis=2)
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    assert torch.equal(op.pinv(op(x)), x) and torch.equal(op(x), x.flip(2))


def gaussian8(argument, options, device, dtype):
    """The analytic Gaussian prior at 8x8, as a plug-in kind."""
    from bench.priors.gaussian import GaussianPrior

    return GaussianPrior(size=8, channels=int(options.get("channels", 3)), device=device, dtype=dtype)


gaussian8.options = ("channels",)


def test_a_prior_plugin_is_checked_loaded_and_listed(monkeypatch):
    entry = bench_priors.check_plugin("gaussian8", gaussian8)
    assert (entry.options, entry.pattern, entry.summary) == (
        frozenset({"channels"}),
        "gaussian8[:<argument>]",
        "The analytic Gaussian prior at 8x8, as a plug-in kind.",
    )
    with pytest.raises(TypeError, match="must take \\(argument, options, device, dtype\\)"):
        bench_priors.check_plugin("bad", lambda argument: None)
    monkeypatch.setattr(bench_priors, "_KINDS", bench_priors._KINDS.copy())
    monkeypatch.setattr(plugins, "_entry_points", lambda kind: entry_points(kind, gaussian8=f"{__name__}:gaussian8"))
    assert bench_priors.available()[-1][0] == "gaussian8[:<argument>]"
    prior = bench_priors.load_prior("gaussian8?channels=1")
    assert prior.image_shape == (1, 8, 8)
    with pytest.raises(bench_priors.PriorError, match="unknown option 'size' for prior 'gaussian8'"):
        bench_priors.load_prior("gaussian8?size=4")


def test_plugin_modules_need_no_registration_code():
    """The README's module registers nothing itself: its entry point is the registration."""
    _, module = readme_example()
    assert "register" not in module and len(textwrap.dedent(module).splitlines()) <= 40
