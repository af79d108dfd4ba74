"""`python -m bench export-ema <run> <out>`: the EMA network of a training run in progress, as a network folder.

A train-ddc or train-bridge run keeps its EMA weights in <run>/train/checkpoint.pt; this writes them as the folder
the solvers load (a φ folder for `--set ddc.network=<out>`, a bridge folder for `--set cddb.bridge=<out>`), so a
run can be evaluated, or a new run started with --init, before it ends.

The architecture and provenance come from a template folder: the run's latest ema-step*/ snapshot, or --template
(for example the folder a train-ddc run was --init from) when it has none yet. A template holding bridge.json makes
a bridge, one without a φ (--kind auto). A bridge can also be rebuilt from train-bridge's flags (--task and the
others, which must be the run's: the load is strict, so another width is an error). The step count and the source
checkpoint are written into the provenance.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

KINDS = ("auto", "phi", "bridge")


def template_folder(run: Path, template: str | None) -> Path | None:
    """--template, else the run's latest ema-step* snapshot, else None."""
    if template is not None:
        path = Path(template)
        if not path.is_dir():
            raise FileNotFoundError(f"template folder '{path}' does not exist; pass a φ or bridge folder")
        return path
    snapshots = sorted(run.glob("ema-step*"))
    return snapshots[-1] if snapshots else None


def detect_kind(kind: str, template: Path | None, task: str | None) -> str:
    """phi or bridge: as given, else from the template (bridge.json or not), else from --task."""
    from solvers.cddb.network import BRIDGE_FILE

    if kind != "auto":
        return kind
    if template is not None:
        return "bridge" if (template / BRIDGE_FILE).is_file() else "phi"
    if task is not None:
        return "bridge"
    raise ValueError(
        "the run has no ema-step* snapshot to tell its kind and architecture from; pass --template <folder> "
        "(a φ folder, e.g. the one the run was --init from) or, for a train-bridge run, its --task and flags"
    )


def load_checkpoint(run: Path) -> dict[str, Any]:
    import torch

    path = run / "train" / "checkpoint.pt"
    if not path.is_file():
        raise FileNotFoundError(
            f"no checkpoint at {path}; pass the --out folder of a train-ddc or train-bridge run that has saved one"
        )
    return torch.load(path, map_location="cpu", weights_only=True)


# What each kind of network needs lives with its method (`export_ema` in solvers/ddc/train.py and
# solvers/cddb/train.py); this module is the command.
def export_phi(checkpoint: dict[str, Any], template: Path, out: Path, note: str) -> int:
    """A train-ddc run's EMA as a φ folder (`solvers.ddc.train.export_ema`); returns the step."""
    from solvers.ddc.train import export_ema

    return export_ema(checkpoint, template, out, note)


def export_bridge(checkpoint: dict[str, Any], template: Path | None, out: Path, note: str, args: Any) -> int:
    """A train-bridge run's EMA as a bridge folder (`solvers.cddb.train.export_ema`); returns the step."""
    from solvers.cddb.train import export_ema

    flags = {
        "task": args.task,
        "size": args.size,
        "channels": args.channels,
        "sigma": args.sigma,
        "beta_max": args.beta_max,
        "block_out_channels": tuple(int(c) for c in args.bridge_channels.split(",")),
        "cond_x1": args.cond_x1,
    }
    return export_ema(checkpoint, template, out, note, **flags)


def add_export_parser(commands: Any) -> None:
    """The `export-ema` subcommand."""
    parser = commands.add_parser(
        "export-ema",
        help="write the EMA network of a train-ddc or train-bridge run in progress as a φ or bridge folder",
        description=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("run", type=Path, help="the --out folder of the training run (holds train/checkpoint.pt)")
    parser.add_argument("out", type=Path, help="the network folder to write (replaced whole)")
    parser.add_argument("--kind", choices=KINDS, default="auto", help="phi (train-ddc) or bridge (train-bridge)")
    parser.add_argument("--template", help="folder giving the architecture (default: the run's latest ema-step*)")
    flags = parser.add_argument_group("a bridge without a template: the run's train-bridge flags")
    flags.add_argument("--task", help="the task the bridge inverts (e.g. jpeg10)")
    flags.add_argument("--size", type=int, default=64)
    flags.add_argument("--channels", type=int, default=3)
    flags.add_argument("--sigma", type=float, default=0.0)
    flags.add_argument("--beta-max", type=float, default=None, help="(default: the bridge schedule's, 0.3)")
    flags.add_argument("--bridge-channels", default="32,64,128,128")
    flags.add_argument("--cond-x1", action="store_true")
    parser.set_defaults(func=_cmd_export_ema)


def _cmd_export_ema(args: argparse.Namespace) -> int:
    checkpoint = load_checkpoint(args.run)
    template = template_folder(args.run, args.template)
    kind = detect_kind(args.kind, template, args.task)
    note = f"EMA from {args.run}/train/checkpoint.pt"
    if kind == "phi":
        if template is None:
            raise ValueError(
                f"{args.run} has no ema-step* snapshot yet: pass the φ folder it was --init from as --template"
            )
        step = export_phi(checkpoint, template, args.out, note)
    else:
        step = export_bridge(checkpoint, template, args.out, note, args)
    use = f"--set ddc.network={args.out}" if kind == "phi" else f"--set cddb.bridge={args.out}"
    print(f"step {step} -> {args.out} ({kind}; use it with {use})")
    return 0
