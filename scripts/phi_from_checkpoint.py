"""Write the EMA φ held in a train-ddc checkpoint as a φ folder (to evaluate or --init from a run in progress).

    python scripts/phi_from_checkpoint.py runs/ddc-chain runs/ddc-chain/ema-latest
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.train_ddc import save_phi  # noqa: E402
from solvers.ddc import DeltaNetwork, load_phi  # noqa: E402


def main() -> None:
    run, out = Path(sys.argv[1]), Path(sys.argv[2])
    checkpoint = torch.load(run / "train" / "checkpoint.pt", map_location="cpu", weights_only=True)
    template = sorted(run.glob("ema-step*")) or [Path(json.loads(checkpoint["config"]).get("init") or "")]
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
