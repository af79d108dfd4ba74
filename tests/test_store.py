"""The parquet results store and the work-unit keys."""

from __future__ import annotations

import hashlib
import json

import pandas as pd
import pytest

from bench.pipeline.store import ResultStore, atomic_write_bytes
from bench.pipeline.units import Unit, canonical_json, enumerate_units, shard, unit_key

SOLVER = {"solver": "ddnm", "version": 1, "config": {"steps": 100, "eta": 0.85}}
OPERATOR = {"task": "sr4", "shape": [3, 64, 64], "factor": 4}
PRIOR = {"kind": "natural64", "config": {}, "checkpoint_sha256": "ab", "dtype": "float32"}


def key(**changes):
    args = {
        "solver_spec": SOLVER,
        "operator_spec": OPERATOR,
        "sigma": 0.05,
        "prior_spec": PRIOR,
        "dataset": "skimage-natural",
        "image_id": "astronaut",
        "seed": 0,
    }
    args.update(changes)
    return unit_key(**args)


def test_unit_key_is_sha256_of_sorted_compact_json():
    record = {
        "dataset": "skimage-natural",
        "image_id": "astronaut",
        "operator": OPERATOR,
        "prior": PRIOR,
        "seed": 0,
        "sigma": 0.05,
        "solver": SOLVER,
    }
    expected = hashlib.sha256(json.dumps(record, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    assert key() == expected
    # key order of the specs does not matter
    assert key(solver_spec={"config": {"eta": 0.85, "steps": 100}, "version": 1, "solver": "ddnm"}) == expected


@pytest.mark.parametrize(
    "change",
    [
        {"solver_spec": {**SOLVER, "version": 2}},
        {"solver_spec": {**SOLVER, "config": {"steps": 50, "eta": 0.85}}},
        {"operator_spec": {**OPERATOR, "factor": 8}},
        {"sigma": 0.0},
        {"prior_spec": {**PRIOR, "dtype": "bfloat16"}},
        {"dataset": "kodak24"},
        {"image_id": "chelsea"},
        {"seed": 1},
    ],
)
def test_unit_key_changes_with_each_field(change):
    assert key(**change) != key()


def test_canonical_json_refuses_nan():
    with pytest.raises(ValueError):
        canonical_json({"sigma": float("nan")})


def test_shard_is_a_disjoint_cover_in_order():
    specs = {"a": {**SOLVER, "solver": "a"}, "b": {**SOLVER, "solver": "b"}}
    units = enumerate_units(specs, {"sr4": OPERATOR}, [0.0, 0.05], PRIOR, "d", ["x", "y", "z"], 0)
    assert len(units) == 12 and len({u.key for u in units}) == 12
    assert [(u.solver, u.sigma, u.image_id) for u in units[:4]] == [
        ("a", 0.0, "x"),
        ("a", 0.0, "y"),
        ("a", 0.0, "z"),
        ("a", 0.05, "x"),
    ]
    shards = [shard(units, rank, 3) for rank in range(3)]
    assert [u for s in zip(*shards, strict=True) for u in s] == units
    with pytest.raises(ValueError, match="rank"):
        shard(units, 3, 3)


def test_atomic_write_leaves_no_temporary_file(tmp_path):
    target = tmp_path / "sub" / "file.bin"
    atomic_write_bytes(target, b"abc")
    atomic_write_bytes(target, b"defg")
    assert target.read_bytes() == b"defg"
    assert [p.name for p in target.parent.iterdir()] == ["file.bin"]


def row(key_, status, psnr=1.0):
    return {"key": key_, "status": status, "psnr": psnr, "error": None}


def test_store_keeps_latest_row_per_key_and_ignores_temporary_files(tmp_path):
    store = ResultStore(tmp_path)
    first = store.write_part("units", [row("a", "ok", 10.0), row("b", "failed", float("nan"))])
    second = store.write_part("units", [row("b", "ok", 20.0), row("c", "unsupported")])
    assert first.name < second.name  # names sort in writing order
    (tmp_path / "units" / ".part-x.parquet.tmp-1").write_bytes(b"half a file")
    assert store.write_part("units", []) is None
    raw = store.raw_units()
    assert len(raw) == 4
    latest = store.units().set_index("key")
    assert sorted(latest.index) == ["a", "b", "c"]
    assert latest.loc["b", "psnr"] == 20.0 and latest.loc["b", "part"] == second.stem
    assert store.done_keys() == {"a", "b", "c"}
    store.write_part("units", [row("c", "failed")])
    assert store.done_keys() == {"a", "b", "c"}  # a failure never shadows a result (module docstring)
    # the same rows as pandas reads them straight from the files, in writing order
    direct = pd.concat([pd.read_parquet(p) for p in store.parts("units")], ignore_index=True)
    pd.testing.assert_frame_equal(store.raw_units().drop(columns="part"), direct, check_dtype=False)
    assert len(direct) == 5


def test_store_traces_follow_the_latest_unit_row(tmp_path):
    store = ResultStore(tmp_path)
    old, new, orphan = store.new_stem(), store.new_stem(), store.new_stem()
    store.write_part("traces", [{"key": "a", "step": 0, "kurtosis": 1.0}], stem=old)
    store.write_part("units", [row("a", "ok")], stem=old)
    store.write_part("traces", [{"key": "a", "step": 0, "kurtosis": 2.0}], stem=new)
    store.write_part("units", [row("a", "ok")], stem=new)
    # a kill between a batch's traces and its unit part leaves traces without a committed unit row
    store.write_part("traces", [{"key": "b", "step": 0, "kurtosis": 3.0}], stem=orphan)
    traces = store.traces()
    assert traces["kurtosis"].tolist() == [2.0]


def test_store_consolidate_merges_parts_and_keeps_every_latest_row(tmp_path):
    store = ResultStore(tmp_path)
    stems = [store.new_stem() for _ in range(3)]
    for i, stem in enumerate(stems):  # unit "a" computed three times, "b" once in the first batch
        store.write_part("traces", [{"key": "a", "step": 0, "kurtosis": float(i)}], stem=stem)
        store.write_part("units", [row("a", "ok", 10.0 + i), *([row("b", "failed")] if i == 0 else [])], stem=stem)
    store.write_part("sets", [{"set_key": "s", "fid": 1.0}])
    store.write_part("sets", [{"set_key": "s", "fid": 2.0}, {"set_key": "t", "fid": 3.0}])
    writer = ResultStore(tmp_path)  # another process, writing: its traces' unit part is not committed yet
    writer.acquire_writer_lock()
    in_flight = writer.new_stem()
    writer.write_part("traces", [{"key": "c", "step": 0, "kurtosis": 9.0}], stem=in_flight)

    def tables():
        return (
            store.units().drop(columns="part").set_index("key").sort_index(),
            store.traces().drop(columns="part").reset_index(drop=True),
            store.sets().drop(columns="part").set_index("set_key").sort_index(),
        )

    before = tables()
    assert store.consolidate() == 3 + 3 + 2
    after = tables()
    for a, b in zip(before, after, strict=True):
        pd.testing.assert_frame_equal(a, b)
    assert after[0].loc["a", "psnr"] == 12.0 and after[1]["kurtosis"].tolist() == [2.0]
    assert len(store.parts("units")) == 1 and len(store.parts("sets")) == 1
    assert (tmp_path / "traces" / f"{in_flight}.parquet").exists()  # left for its own process to commit
    assert store.consolidate() == 0
    writer.release_writer_lock()  # the writer died before committing: its traces are an orphan now
    assert store.consolidate() == 1 and not (tmp_path / "traces" / f"{in_flight}.parquet").exists()


def test_unit_group():
    assert Unit("dps", "sr4", 0.05, "x", "k").group == ("dps", "sr4", 0.05)
