"""Write the EMA φ held in a train-ddc checkpoint as a φ folder (to evaluate or --init from a run in progress).

    python scripts/phi_from_checkpoint.py runs/ddc-chain runs/ddc-chain/ema-latest [template φ folder]

The architecture and provenance come from the run's latest ema-step* snapshot, or from the template folder
(for example the --init the run started from) when it has none yet.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.train_ddc import save_phi  # noqa: E402
from solvers.ddc import DeltaNetwork, load_phi  # noqa: E402


def main() -> None:
    run, out = Path(sys.argv[1]), Path(sys.argv[2])
    checkpoint = torch.load(run / "train" / "checkpoint.pt", map_location="cpu", weights_only=True)
    template = [Path(sys.argv[3])] if len(sys.argv) > 3 else sorted(run.glob("ema-step*"))
    if not template:
        raise SystemExit(f"{run} has no ema-step* snapshot yet: pass the folder it was --init from as a template")
    network, provenance = load_phi(template[-1])
    ema = {k.removeprefix("unet."): v for k, v in checkpoint["ema"].items() if k.startswith("unet.")}
    network.unet.load_state_dict(ema, strict=True)
    if "dc_gain" in checkpoint["ema"]:
        network = DeltaNetwork(network.unet, output_dc=True)
        network.load_state_dict(checkpoint["ema"], strict=True)
    record = {**provenance, "steps": checkpoint["state"]["step"], "note": f"EMA from {run}/train/checkpoint.pt"}
    save_phi(network, out, record)
    print(f"step {checkpoint['state']['step']} -> {out}")


if __name__ == "__main__":
    main()
