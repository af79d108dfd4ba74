"""Bridge networks as CDDB samples them, and the loader of a bridge folder (solvers.cddb.train writes ours,
solvers.cddb.official imports the released I²SB / CDDB ones).

Every bridge is called the same way, net(x_n, n, x₁) -> the prediction of (x_n − x₀)/σ_n, with n the integer
bridge step (B,) int64 and x₁ the degraded image the bridge started from. What differs is behind that call:

* ours (`"network": "unet"` or absent in bridge.json): a diffusers UNet2DModel under unet/, fed the integer step n;
* released (`"network": "adm"`): guided-diffusion's ADM under adm/ (bench.priors.adm), fed I²SB's time input
  t_n = linspace(t0, T, N)[n]·N in float32 (I²SB `Runner.__init__`'s noise_levels; t0 = 1e-4, T = 1, N = 1000
  make it 0.1..1000, not n and not 1e-4..1).

A folder is: bridge.json (what the bridge is for: task, operator spec, image shape, σ, schedule, cond_x1, and for
released bridges the time input and how x₁ is formed) and the network's config and safetensors weights.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

BRIDGE_FILE = "bridge.json"
UNET_WEIGHTS = Path("unet") / "diffusion_pytorch_model.safetensors"
ADM_WEIGHTS = Path("adm") / "model.safetensors"
ADM_CONFIG = Path("adm") / "config.json"
REQUIRED_KEYS = ("task", "operator", "image_shape", "sigma", "schedule", "cond_x1")
TIME_INPUTS = ("step", "i2sb")  # how the network sees n: the integer itself, or I²SB's linspace(t0, T, N)[n]·N


class BridgeNetwork(nn.Module):
    """(x_n (B, C, H, W), n (B,) int64, x₁ (B, C, H, W)) -> the prediction of (x_n − x₀)/σ_n, for our bridges.

    x₁ is concatenated to the input only when the network was built with cond_x1; otherwise it is ignored."""

    def __init__(self, unet: nn.Module, *, cond_x1: bool):
        super().__init__()
        self.unet = unet
        self.cond_x1 = cond_x1

    def forward(self, x_n: Tensor, n: Tensor, x1: Tensor) -> Tensor:
        inputs = torch.cat([x_n, x1], dim=1) if self.cond_x1 else x_n
        return self.unet(inputs, n).sample


def i2sb_time_levels(t0: float, T: float, interval: int) -> Tensor:
    """(interval,) float32: the network's time input at each bridge step, as I²SB computes it
    (`torch.linspace(t0, T, interval) * interval`, float32); 0.1..1000 for the released bridges."""
    return torch.linspace(float(t0), float(T), int(interval), dtype=torch.float32) * int(interval)


class ADMBridgeNetwork(nn.Module):
    """A released I²SB / CDDB bridge: an ADM fed [x_n, x₁] (cond_x1) or x_n, at time t_n = levels[n].

    forward(x_n (B, C, H, W), n (B,) int64 in [0, N), x₁ (B, C, H, W)) -> (B, C, H, W)."""

    def __init__(self, adm: nn.Module, levels: Tensor, *, cond_x1: bool):
        super().__init__()
        self.adm = adm
        self.cond_x1 = cond_x1
        self.register_buffer("levels", levels.to(torch.float32), persistent=False)  # moves with .to(device)

    def forward(self, x_n: Tensor, n: Tensor, x1: Tensor) -> Tensor:
        inputs = torch.cat([x_n, x1], dim=1) if self.cond_x1 else x_n
        return self.adm(inputs, self.levels[n.to(self.levels.device)])


def read_record(folder: Path) -> dict[str, Any]:
    """bridge.json of `folder`, checked for the keys every bridge has; FileNotFoundError / ValueError otherwise."""
    path = folder / BRIDGE_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"bridge file {path} is missing; train a bridge with `python -m bench train-bridge --task <task> "
            "--data <photos> --out <dir>` and use <dir>/final, or import a released one with "
            "`python -m bench import-bridge <dir with latest.pt and options.pkl> <dest>`"
        )
    record = json.loads(path.read_text())
    for key in REQUIRED_KEYS:
        if key not in record:
            raise ValueError(f"{path} has no '{key}'; re-save the bridge with solvers.cddb.train.save_bridge")
    time_input = record.get("time_input", {"kind": "step"})
    if time_input.get("kind") not in TIME_INPUTS:
        raise ValueError(f"{path}: unknown time_input {time_input!r} (known kinds: {', '.join(TIME_INPUTS)})")
    return record


def weights_file(folder: str | Path) -> Path:
    """The weights file of a bridge folder (adm/ for released bridges, unet/ for ours), existing or not."""
    folder = Path(folder)
    try:
        network = json.loads((folder / BRIDGE_FILE).read_text()).get("network")
    except (OSError, ValueError):
        network = None
    return folder / (ADM_WEIGHTS if network == "adm" else UNET_WEIGHTS)


def _require(*paths: Path) -> None:
    for path in paths:
        if not path.is_file():
            raise FileNotFoundError(
                f"bridge file {path} is missing; re-create the folder with `python -m bench train-bridge` "
                "or `python -m bench import-bridge`"
            )


def _load_unet(folder: Path, record: dict[str, Any]) -> nn.Module:
    from diffusers import UNet2DModel
    from safetensors.torch import load_file

    from bench.weights import WeightsError, load_exact

    config_path, weights_path = folder / "unet" / "config.json", folder / UNET_WEIGHTS
    _require(config_path, weights_path)
    unet = UNet2DModel.from_config(json.loads(config_path.read_text()))
    try:
        load_exact(unet, load_file(str(weights_path), device="cpu"))
    except WeightsError as error:
        raise ValueError(f"{weights_path} does not fit its config: {error}") from None
    return BridgeNetwork(unet, cond_x1=bool(record["cond_x1"]))


def adm_config_from_json(values: dict[str, Any]):
    """The ADMConfigWithOutputs that adm/config.json describes (lists back to tuples)."""
    from bench.priors.adm import ADMConfigWithOutputs

    values = dict(values)
    for key in ("attention_resolutions", "channel_mult"):
        values[key] = tuple(values[key])
    try:
        return ADMConfigWithOutputs(**values)
    except TypeError as error:
        raise ValueError(f"adm/config.json does not describe an ADM: {error}") from None


def _load_adm(folder: Path, record: dict[str, Any]) -> nn.Module:
    from bench.priors.adm import CheckpointMismatchError, load_adm

    _require(folder / ADM_CONFIG, folder / ADM_WEIGHTS)
    config = adm_config_from_json(json.loads((folder / ADM_CONFIG).read_text()))
    try:
        adm = load_adm(folder / ADM_WEIGHTS, config)
    except CheckpointMismatchError as error:
        raise ValueError(str(error)) from None
    time_input = record.get("time_input", {"kind": "step"})
    if time_input["kind"] == "i2sb":
        levels = i2sb_time_levels(time_input["t0"], time_input["T"], time_input["interval"])
    else:
        levels = torch.arange(int(record["schedule"]["steps"]), dtype=torch.float32)
    if levels.numel() != int(record["schedule"]["steps"]):
        raise ValueError(
            f"{folder / BRIDGE_FILE}: the time input has {levels.numel()} levels but the schedule "
            f"{record['schedule']['steps']} steps; re-import the bridge"
        )
    return ADMBridgeNetwork(adm, levels, cond_x1=bool(record["cond_x1"]))


def load_bridge(folder: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """(network in eval mode, the bridge record of bridge.json) from a bridge folder.

    Strict: a missing file, or a key the network does not expect (or lacks), is an error naming it."""
    folder = Path(folder)
    record = read_record(folder)
    network = _load_adm(folder, record) if record.get("network") == "adm" else _load_unet(folder, record)
    return network.eval().requires_grad_(False), record
