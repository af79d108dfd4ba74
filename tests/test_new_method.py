"""Adding a built-in solver is one new module: a copy of solvers/pinv.py under a new file and name, and no
other edit, is listed, placed in the support matrix and run (in a copy of the package, so the tree is untouched).
Adding a built-in dataset is one new module too: a copy of bench/data/skimage_natural.py under a new file and
name is listed and loaded by a run (in a copy of the `bench` package)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from run_cases import write_photo_crops

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_a_copied_solver_module_is_listed_placed_and_runs(tmp_path):
    package = tmp_path / "site" / "solvers"
    shutil.copytree(REPO / "solvers", package, ignore=shutil.ignore_patterns("__pycache__"))
    source = (package / "pinv.py").read_text()
    (package / "pinv_copy.py").write_text(
        source.replace('name = "pinv"', 'name = "pinv-copy"').replace("class Pinv(", "class PinvCopy(")
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "site"), str(REPO)]), "OMP_NUM_THREADS": "1"}

    def bench(*argv: str) -> subprocess.CompletedProcess:
        done = subprocess.run([sys.executable, "-m", "bench", *argv], capture_output=True, text=True, env=env, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        return done

    assert "pinv-copy" in bench("list", "solvers").stdout
    assert any(line.startswith("| `pinv-copy` |") for line in bench("matrix").stdout.splitlines())
    (tmp_path / "photos").mkdir()
    photos = write_photo_crops(tmp_path / "photos", count=2)
    out = tmp_path / "run"
    bench("run", "--prior", "gaussian:32", "--dataset", f"folder:{photos}", "--solvers", "pinv-copy", "--tasks",
          "sr4", "--metrics", "psnr", "--out", str(out), "--no-progress")  # fmt: skip
    assert len(list((out / "images" / "pinv-copy").rglob("*.png"))) == 2


def copy_bench(site: Path) -> None:
    """The whole `bench` package copied under `site` (datasets and metrics are its sub-packages); its large
    shipped assets are linked (where the copy looks for them), not copied."""
    shutil.copytree(REPO / "bench", site / "bench", ignore=shutil.ignore_patterns("__pycache__", "assets"))
    (site / "bench" / "assets").symlink_to(REPO / "bench" / "assets", target_is_directory=True)


@pytest.mark.slow
def test_a_copied_dataset_module_is_listed_and_loaded_by_a_run(tmp_path):
    site = tmp_path / "site"
    copy_bench(site)
    data = site / "bench" / "data"
    source = (data / "skimage_natural.py").read_text()
    assert '_NAME = "skimage-natural"' in source  # the module names its dataset once
    (data / "skimage_copy.py").write_text(source.replace('_NAME = "skimage-natural"', '_NAME = "skimage-copy"'))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(REPO)]), "OMP_NUM_THREADS": "1"}

    def bench(*argv: str) -> subprocess.CompletedProcess:
        done = subprocess.run([sys.executable, "-m", "bench", *argv], capture_output=True, text=True, env=env, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        return done

    listed = [line.split()[0] for line in bench("list", "datasets").stdout.splitlines() if line.startswith("  ")]
    assert listed == ["skimage-natural", "folder:<path>", "kodak24", "skimage-copy"]  # built-ins first, then by name
    out = tmp_path / "run"
    bench("run", "--prior", "gaussian:32", "--dataset", "skimage-copy", "--n-images", "2", "--solvers", "pinv",
          "--tasks", "sr4", "--metrics", "psnr", "--out", str(out), "--no-progress")  # fmt: skip
    from bench.pipeline.store import ResultStore

    units = ResultStore(out).units()
    assert set(units["dataset"]) == {"skimage-copy"}
    assert sorted(units["image_id"]) == ["astronaut", "chelsea"]


# A metric module as a user would write it: the declaration on the function, torch imported inside it.
MEAN_ABSOLUTE_ERROR = '''"""Mean absolute error on [0, 1]."""

from bench.metrics import metric


@metric("mae", higher_is_better=False, scope="image", description="mean absolute error on [0, 1]", label="MAE")
def mean_absolute_error(x_hat, x):
    from bench.metrics.images import check_pair, to_unit

    x_hat, x = check_pair(x_hat, x)
    return (to_unit(x_hat) - to_unit(x)).abs().flatten(1).mean(1)
'''


@pytest.mark.slow
def test_a_new_metric_module_is_scored_stored_and_reported(tmp_path):
    site = tmp_path / "site"
    copy_bench(site)
    (site / "bench" / "metrics" / "absolute.py").write_text(MEAN_ABSOLUTE_ERROR)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(REPO)]), "OMP_NUM_THREADS": "1"}

    def bench(*argv: str) -> subprocess.CompletedProcess:
        done = subprocess.run([sys.executable, "-m", "bench", *argv], capture_output=True, text=True, env=env, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        return done

    assert "mae" in bench("list", "metrics").stdout
    (tmp_path / "photos").mkdir()
    photos = write_photo_crops(tmp_path / "photos", count=2)
    out = tmp_path / "run"
    bench("run", "--prior", "gaussian:32", "--dataset", f"folder:{photos}", "--solvers", "pinv", "--tasks", "sr4",
          "--metrics", "psnr,mae", "--out", str(out), "--no-progress")  # fmt: skip
    import pandas as pd

    units = pd.concat(pd.read_parquet(part) for part in sorted((out / "units").glob("part-*.parquet")))
    assert units["mae"].between(0.0, 1.0).all() and units["mae"].gt(0).all()  # scored, stored in its own column
    bench("report", "--results", str(out), "--out", str(tmp_path / "report"))
    assert "MAE" in (tmp_path / "report" / "report.md").read_text()  # and a column of the report's table
