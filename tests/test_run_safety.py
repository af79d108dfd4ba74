"""What a run folder survives: unreadable or foreign parts, orphan trace parts, two runs at once, and run names
or config files that would have written elsewhere or failed without naming the file."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from run_cases import write_photo_crops

from bench.cli import main
from bench.pipeline.settings import RunError
from bench.pipeline.store import ResultStore, StoreError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    return write_photo_crops(tmp_path_factory.mktemp("photos"), count=3)


def run_command(out: Path, photos: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "bench", "run", "--prior", "gaussian:32", "--dataset", f"folder:{photos}",
        "--out", str(out), "--tasks", "sr4", "--sigma", "0.05", "--no-progress", *extra,
    ]  # fmt: skip


def small_run(out: Path, photos: Path, capsys) -> None:
    argv = run_command(out, photos, "--solvers", "pinv")[3:]
    assert main(argv) == 0
    capsys.readouterr()


def test_an_unreadable_part_is_named_with_what_to_do(tmp_path, photos, capsys):
    out = tmp_path / "run"
    small_run(out, photos, capsys)
    broken = out / "units" / "part-00000000000000000001-r0000-deadbeef.parquet"
    broken.write_bytes(b"not parquet at all")
    with pytest.raises(StoreError, match=f"'{broken}' is not a readable parquet file.*move it out"):
        ResultStore(out).units()
    for argv in (["report", "--results", str(out), "--out", str(tmp_path / "report")], run_command(out, photos)[3:]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert str(broken) in err and "Traceback" not in err


def test_a_part_without_a_key_column_is_named(tmp_path, photos, capsys):
    out = tmp_path / "run"
    small_run(out, photos, capsys)
    foreign = out / "units" / "part-00000000000000000001-r0000-cafebabe.parquet"
    pd.DataFrame({"psnr": [30.0]}).to_parquet(foreign)
    with pytest.raises(StoreError, match="has no 'key' column"):
        ResultStore(out).units()
    assert main(["report", "--results", str(out), "--out", str(tmp_path / "report")]) == 2
    assert "has no 'key' column" in capsys.readouterr().err


def test_orphan_trace_parts_of_a_killed_merge_are_removed(tmp_path, photos, capsys):
    """A merge killed after writing its trace part leaves all traces twice; the next consolidation removes the
    orphan (it has no unit part) and keeps every committed trace once."""
    out = tmp_path / "run"
    argv = run_command(out, photos, "--solvers", "uncond", "--set", "uncond.steps=5", "--batch-size", "1")[3:]
    assert main(argv) == 0
    capsys.readouterr()
    store = ResultStore(out)
    traces = store.traces()
    assert len(traces) == 3 * 5
    orphan = store.write_part("traces", traces.drop(columns="part").to_dict(orient="records"))  # the killed merge
    killed_batch = store.write_part("traces", traces.head(5).drop(columns="part").to_dict(orient="records"))
    assert set(store.orphan_traces()) == {orphan, killed_batch}
    store.consolidate()
    assert not orphan.exists() and not killed_batch.exists()
    assert len(store.parts("traces")) == 1 and len(store.traces()) == 3 * 5


def test_orphan_traces_of_a_rank_that_is_writing_are_kept(tmp_path):
    writer, other = ResultStore(tmp_path, rank=1), ResultStore(tmp_path, rank=0)
    writer.acquire_writer_lock()
    try:
        in_flight = writer.write_part("traces", [{"key": "k", "step": 0, "t": 0, "kurtosis": 0.0}])
        assert other.orphan_traces() == []  # rank 1 may still commit its unit part
    finally:
        writer.release_writer_lock()
    assert other.orphan_traces() == [in_flight]


@pytest.mark.slow
def test_a_second_run_into_the_same_folder_waits_and_skips_what_the_first_finished(tmp_path, photos):
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    command = run_command(out, photos, "--solvers", "uncond,pinv", "--set", "uncond.steps=200", "--batch-size", "1")
    first = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    probe = ResultStore(out, rank=5)
    deadline = time.monotonic() + 300
    while probe._writer_idle(0) and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert first.poll() is None, "the first run finished before the second could start"
    second = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert first.wait(timeout=600) == 0
    assert second.returncode == 0, second.stderr[-2000:]
    assert "another run is writing to" in second.stderr
    assert "6 already done" in second.stderr
    raw = ResultStore(out).raw_units()
    assert len(raw) == 6 and raw["key"].is_unique  # no unit computed twice


@pytest.mark.parametrize("name", ["../escaped", "/tmp/abs", "a/b", ".."])
def test_a_run_name_is_a_name_not_a_path(name, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["run", "--solvers", "pinv", "--tasks", "sr4", "--name", name]) == 2
    err = capsys.readouterr().err
    assert "is not a plain folder name" in err and "--out" in err
    assert not (tmp_path / "escaped").exists()


def test_config_file_errors_name_the_file(tmp_path, capsys):
    folder = tmp_path / "configs"
    folder.mkdir()
    binary = tmp_path / "exp.toml"
    binary.write_bytes(b'solvers = "pinv"\n# \xff\xfe\n')
    for path, message in ((folder, "is a folder"), (binary, "is not UTF-8 text")):
        assert main(["run", "--config", str(path)]) == 2
        err = capsys.readouterr().err
        assert f"config file '{path}' {message}" in err


def test_run_error_is_a_value_error():
    assert issubclass(RunError, ValueError) and issubclass(StoreError, ValueError)


def test_compile_is_a_run_setting_and_a_checked_config_key(tmp_path):
    from bench.cli import build_parser
    from bench.pipeline.settings import settings_from_args

    def parse(*argv: str):
        return settings_from_args(build_parser().parse_args(["run", *argv]))

    assert parse().compile is False and parse("--compile").compile is True
    config = tmp_path / "exp.toml"
    config.write_text("compile = true\n")
    assert parse("--config", str(config)).compile is True
    config.write_text('compile = "yes"\n')
    with pytest.raises(RunError, match="config key 'compile' must be true or false"):
        parse("--config", str(config))


def test_rows_record_whether_the_prior_was_compiled(tmp_path, photos, capsys):
    out = tmp_path / "run"
    small_run(out, photos, capsys)
    assert ResultStore(out).units()["compiled"].eq(False).all()


def test_the_support_matrix_marks_an_operator_it_cannot_build(monkeypatch):
    """An operator (a plug-in's, say) that refuses the matrix's 3×64×64 shape is a column of n/a with its
    reason, not a crash of `bench matrix`."""
    import operators
    from bench.tools.matrix import support_matrix

    def only_16(shape, **params):
        raise ValueError(f"needs 16x16 images, got {tuple(shape)}")

    registry = operators._TASKS.copy()
    registry.register("tiny-op", operators.TaskSpec(only_16), summary="an operator for 16x16 images only")
    monkeypatch.setattr(operators, "_TASKS", registry)
    table = support_matrix()
    assert "| tiny-op |" in table.splitlines()[0]
    assert table.splitlines()[2].endswith("| n/a |")
    assert "n/a: `tiny-op` cannot be built at 3×64×64 (ValueError: needs 16x16 images, got (3, 64, 64))" in table
