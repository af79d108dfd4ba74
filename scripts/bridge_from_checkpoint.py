"""Write the EMA bridge held in a train-bridge checkpoint as a bridge folder (to evaluate a run in progress).

    python scripts/bridge_from_checkpoint.py runs/bridge-jpeg10 runs/bridge-jpeg10/ema-latest --task jpeg10

The architecture and record are rebuilt from the flags, which must be the run's (the load below is strict, so a
different width is an error); the step count and the source checkpoint are written into the provenance.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import operators  # noqa: E402
from bench.train_bridge import DEFAULT_CHANNELS, bridge_record, build_bridge_network, save_bridge  # noqa: E402
from solvers.bridge_schedule import DEFAULT_BETA_MAX, BridgeSchedule  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run")
    parser.add_argument("out")
    parser.add_argument("--task", required=True)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--channels", type=int, default=3)
    parser.add_argument("--sigma", type=float, default=0.0)
    parser.add_argument("--beta-max", type=float, default=DEFAULT_BETA_MAX)
    parser.add_argument("--bridge-channels", default=",".join(map(str, DEFAULT_CHANNELS)))
    parser.add_argument("--cond-x1", action="store_true")
    args = parser.parse_args()
    run = Path(args.run)
    checkpoint = torch.load(run / "train" / "checkpoint.pt", map_location="cpu", weights_only=True)
    widths = tuple(int(c) for c in args.bridge_channels.split(","))
    network = build_bridge_network(args.size, args.channels, widths, cond_x1=args.cond_x1)
    network.load_state_dict(checkpoint["ema"], strict=True)
    op = operators.build(args.task, shape=(args.channels, args.size, args.size))
    bridge = bridge_record(op, args.sigma, BridgeSchedule(beta_max=args.beta_max), args.cond_x1)
    step = checkpoint["state"]["step"]
    save_bridge(
        network, Path(args.out), {"bridge": bridge, "steps": step, "note": f"EMA from {run}/train/checkpoint.pt"}
    )
    print(f"step {step} -> {args.out}")


if __name__ == "__main__":
    main()
