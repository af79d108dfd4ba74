"""`python -m bench export-ema`: the EMA of a training checkpoint written as a φ or bridge folder."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bench.cli import main
from solvers.cddb.network import load_bridge
from solvers.cddb.train import build_bridge_network
from solvers.ddc.network import load_phi
from solvers.ddc.train import build_phi, save_phi

WIDTHS = (8, 16)


def write_checkpoint(run: Path, network: torch.nn.Module, step: int) -> dict[str, torch.Tensor]:
    """A train/checkpoint.pt whose EMA differs from `network`'s weights, as the trainer writes one."""
    generator = torch.Generator().manual_seed(step)
    ema = {k: v + torch.randn(v.shape, generator=generator) for k, v in network.state_dict().items()}
    (run / "train").mkdir(parents=True)
    torch.save({"ema": ema, "state": {"step": step}}, run / "train" / "checkpoint.pt")
    return ema


def same_weights(network: torch.nn.Module, ema: dict[str, torch.Tensor]) -> bool:
    state = network.state_dict()
    return state.keys() == ema.keys() and all(torch.equal(state[k], ema[k]) for k in ema)


def test_export_ema_writes_a_phi_from_the_run_snapshot_or_a_template(tmp_path, capsys):
    template = tmp_path / "init"
    save_phi(build_phi(16, 3, WIDTHS), template, {"note": "init"})
    ema = write_checkpoint(tmp_path / "run", build_phi(16, 3, WIDTHS), step=7)
    assert main(["export-ema", str(tmp_path / "run"), str(tmp_path / "phi"), "--template", str(template)]) == 0
    assert "step 7" in capsys.readouterr().out
    network, provenance = load_phi(tmp_path / "phi")
    assert same_weights(network, ema) and provenance["steps"] == 7
    # without --template the run's latest ema-step* snapshot gives the architecture; without either, an error
    assert main(["export-ema", str(tmp_path / "run"), str(tmp_path / "phi2")]) == 2
    assert "--template" in capsys.readouterr().err
    save_phi(build_phi(16, 3, WIDTHS), tmp_path / "run" / "ema-step0000005", {})
    assert main(["export-ema", str(tmp_path / "run"), str(tmp_path / "phi2")]) == 0
    assert same_weights(load_phi(tmp_path / "phi2")[0], ema)


@pytest.mark.parametrize("from_flags", [True, False])
def test_export_ema_writes_a_bridge_from_flags_or_a_template(tmp_path, from_flags, capsys):
    ema = write_checkpoint(tmp_path / "run", build_bridge_network(16, 3, WIDTHS), step=3)
    if from_flags:
        flags = ["--task", "sr4", "--size", "16", "--bridge-channels", "8,16"]
    else:  # the bridge.json of a template makes the kind and the record
        main(["export-ema", str(tmp_path / "run"), str(tmp_path / "first"), "--task", "sr4", "--size", "16",
              "--bridge-channels", "8,16"])  # fmt: skip
        flags = ["--template", str(tmp_path / "first")]
    assert main(["export-ema", str(tmp_path / "run"), str(tmp_path / "bridge"), *flags]) == 0
    assert "(bridge;" in capsys.readouterr().out
    network, record = load_bridge(tmp_path / "bridge")
    assert same_weights(network, ema) and record["task"] == "sr4" and record["image_shape"] == [3, 16, 16]


def test_export_ema_names_a_missing_checkpoint(tmp_path, capsys):
    assert main(["export-ema", str(tmp_path), str(tmp_path / "out")]) == 2
    assert "no checkpoint at" in capsys.readouterr().err
