"""`bench speed`: the step-count extrapolation, the rows it reports and the command line."""

from __future__ import annotations

import json

import pytest
import torch

import solvers
from bench.cli import main
from bench.priors import load_prior
from bench.tools import speed
from bench.tools.speed import SpeedRow, Timing, extrapolate, measure_solver, step_field
from solvers.ddc.network import paper_phi


def test_extrapolation_recovers_one_off_and_per_step_costs_exactly():
    # q(S) = a + S b for every quantity: solves of 1 and 4 steps determine a and b, so 100 steps follow exactly.
    def timing(steps: int) -> Timing:
        return Timing(wall_s=3.0 + 0.5 * steps, nfe=steps, own_nfe=2 * steps, network_s=0.4 * steps, peak_bytes=0)

    values = extrapolate(timing(1), timing(4), 4, 100)
    assert values["wall_s"] == pytest.approx(timing(100).wall_s)
    assert values["nfe"] == pytest.approx(100) and values["own_nfe"] == pytest.approx(200)
    assert values["network_s"] == pytest.approx(40.0)
    assert values["one_off_s"] == pytest.approx(3.0) and values["per_step_s"] == pytest.approx(0.5)
    # One measured step cannot separate the one-off part: the estimate is S times the 1-step solve (an upper bound).
    single = extrapolate(timing(1), timing(1), 1, 100)
    assert single["wall_s"] == pytest.approx(350.0) and single["one_off_s"] is None


def test_each_solver_has_its_length_field():
    assert step_field(solvers.get("ddnm")) == "steps" and step_field(solvers.get("ddc")) == "steps"
    assert step_field(solvers.get("pnp-admm")) == "iterations"
    assert step_field(solvers.get("cddb")) == "nfe"
    assert step_field(solvers.get("pinv")) is None


def test_speed_names_the_solvers_paper_phi_widths():
    import solvers.ddc
    from bench.tools import speed

    assert speed.PAPER_PHI_CHANNELS == solvers.ddc.PAPER_PHI_CHANNELS


def test_paper_phi_has_the_papers_113_7m_parameters():
    with torch.device("meta"):
        phi = paper_phi(256)
    count = sum(p.numel() for p in phi.parameters())
    assert round(count / 1e5) == 1137  # 113.7M, as the DDC paper reports for its 256x256 φ
    with torch.device("meta"):
        assert sum(p.numel() for p in paper_phi(256, 3, (32, 64)).parameters()) < 2e6


@pytest.fixture(scope="module")
def prior():
    return load_prior("gaussian")


def test_extrapolated_nfe_matches_the_full_solver(prior):
    row = measure_solver("ddnm", prior, "sr4", 2, steps_measured=3)
    assert row.status == "ok" and row.extrapolated and row.steps == 100 and row.steps_measured == 3
    assert row.nfe == pytest.approx(solvers.build("ddnm").nfe()) == pytest.approx(100)
    assert row.seconds_per_image == pytest.approx(row.seconds_per_solve / 2)
    assert row.one_off_s is not None and row.per_step_s is not None
    assert row.seconds_per_solve == pytest.approx(row.one_off_s + 100 * row.per_step_s)
    assert row.peak_memory_bytes >= 0 and row.warmup_s > 0 and row.cpu_seconds_per_image is not None
    # Millisecond solves on a shared CPU can time the 1-step solve slower than the 3-step one; the note says so.
    assert row.note().startswith("measured 3 of 100 steps")


def test_ddc_counts_phi_and_full_measurement_needs_no_extrapolation(prior):
    phi = paper_phi(16, 3, (32, 32))
    row = measure_solver("ddc", prior, "sr4", 1, steps_measured=10, networks={"phi": phi})
    assert row.status == "ok" and not row.extrapolated and row.steps_measured == row.steps == 5
    assert row.nfe == 5 and row.own_nfe == 5  # one prior and one φ call per step
    assert row.note() == "measured in full"
    pinv = measure_solver("pinv", prior, "sr4", 1, steps_measured=2)
    assert pinv.steps is None and pinv.nfe == 0 and pinv.note() == "measured in full"


def test_solvers_without_weights_at_the_priors_size_are_unsupported_with_the_reason(prior):
    row = measure_solver("cddb", prior, "sr4", 1, steps_measured=2)
    assert row.status == "unsupported" and "bridge" in row.reason and row.seconds_per_image is None
    assert row.note().startswith("unsupported: ")
    ddnm = measure_solver("ddnm", prior, "jpeg10", 1, steps_measured=2)
    assert ddnm.status == "unsupported" and "svd" in ddnm.reason


def test_speed_command_prints_the_table_and_writes_json(tmp_path, capsys):
    out = tmp_path / "speed" / "table.json"
    args = ["speed", "--prior", "gaussian", "--solvers", "ddnm,cddb", "--steps-measured", "2"]
    assert main([*args, "--batch-sizes", "1,2", "--device", "cpu", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| solver | batch | steps | s/image |" in printed and "measured 2 of 100 steps" in printed
    report = json.loads(out.read_text())
    assert report["device"].startswith("CPU") and report["prior_spec"]["kind"] == "gaussian"
    assert [(r["solver"], r["batch_size"]) for r in report["rows"]] == [
        ("ddnm", 1),
        ("ddnm", 2),
        ("cddb", 1),
        ("cddb", 2),
    ]
    assert [SpeedRow(**r).status for r in report["rows"]] == ["ok", "ok", "unsupported", "unsupported"]
    assert not list(out.parent.glob("*.tmp"))


def test_speed_command_rejects_bad_input(capsys):
    assert main(["speed", "--prior", "gaussian", "--solvers", "dsp", "--device", "cpu"]) == 2
    assert "unknown solver" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["speed", "--batch-sizes", "0"])
    assert "positive integers" in capsys.readouterr().err
    with pytest.raises(ValueError, match="steps-measured"):
        speed.speed_table("gaussian", ["ddnm"], [1], steps_measured=0)
