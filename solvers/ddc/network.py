"""DDC's data-consistency network φ: its architecture, the paper-size stand-in `bench speed` times, and the
loader of a φ folder (`solvers.ddc.train.save_phi` writes ours, `solvers.ddc.official` imports the authors').

A φ folder holds unet/ (a diffusers UNet2DModel: config.json and diffusion_pytorch_model.safetensors),
provenance.json (how φ was trained: the conventions the sampler follows, see solvers.ddc.sampler) and, for a φ
built with output_dc=True, output_dc.safetensors (the mean-passing gain, see `DeltaNetwork`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from bench.files import asset

from ..base import SolverError

PROVENANCE = "provenance.json"

# φ as a plain function: (x̂₀ (B, C, H, W), y brought to image size (B, C, H, W), t (B,) int64) -> Δ (B, C, H, W)
Phi = Callable[[Tensor, Tensor, Tensor], Tensor]

DC_WEIGHTS = "output_dc.safetensors"  # the mean-passing gain of a φ built with output_dc=True
DC_GAIN_SCALE = 10.0


def phi_unet_config(size: int = 64, channels: int = 3, block_out_channels: Sequence[int] = (32, 64, 128, 128)):
    """φ's UNet2DModel: input [x̂₀, y_img] (2C channels), output Δ (C channels).

    The paper's 256² network has blocks (128, 128, 256, 256, 512, 512) with attention in the fifth; this one is
    scaled down for 64² on a CPU (~4M parameters with the defaults) with attention at the second-lowest level.
    """
    blocks = list(block_out_channels)
    down = ["DownBlock2D"] * len(blocks)
    if len(blocks) >= 3:
        down[-2] = "AttnDownBlock2D"
    up = [name.replace("Down", "Up") for name in reversed(down)]
    return {
        "sample_size": size,
        "in_channels": 2 * channels,
        "out_channels": channels,
        "layers_per_block": 1,
        "block_out_channels": blocks,
        "down_block_types": down,
        "up_block_types": up,
        "attention_head_dim": min(32, min(blocks)),
        "norm_num_groups": min(32, min(blocks)),
        "dropout": 0.0,
    }


# The paper's φ (DDC's exp/logs/ddc_network/config.json): 113,676,675 parameters at 256².
PAPER_PHI_CHANNELS = (128, 128, 256, 256, 512, 512)
PAPER_PHI_LAYERS = 2


def paper_phi(size: int, channels: int = 3, block_out_channels: Sequence[int] = PAPER_PHI_CHANNELS) -> nn.Module:
    """A φ with random weights for `size`x`size` images; at the default widths the paper's 113.7M network
    (the architecture, not the weights, sets the speed: `bench speed` times with it)."""
    from diffusers import UNet2DModel

    config = phi_unet_config(size, channels, block_out_channels)
    if tuple(block_out_channels) == PAPER_PHI_CHANNELS:
        config["layers_per_block"] = PAPER_PHI_LAYERS
    # Random, not zero, output weights: the sampler then subtracts a Δ of ordinary magnitude.
    return DeltaNetwork(UNet2DModel(**config)).eval().requires_grad_(False)


class DeltaNetwork(nn.Module):
    """φ as a diffusers UNet2DModel on [x̂₀, y_img] concatenated on channels, conditioned on the integer t.

    output_dc=True lets each image's per-channel mean reach the output. A UNet2DModel ends with GroupNorm →
    SiLU → conv; at φ's 64² size (16 channels in 16 groups) that GroupNorm is an instance norm, which removes
    every feature channel's mean, so Δ cannot carry a per-image colour shift, and x̂₀,y kept the prior's colours
    (measured: the features' per-image means have std 0.16 before that norm and 6·10⁻⁸ after). The option adds
    γ ⊙ mean_hw(h) back after the norm, one gain per channel, zero at the start so that a network trained
    without it computes the same Δ until training moves γ. γ = DC_GAIN_SCALE · dc_gain: Adam moves a parameter
    by about the learning rate per step, and γ must reach order 1 within a short fine-tuning run.
    """

    def __init__(self, unet: nn.Module, *, output_dc: bool = False):
        super().__init__()
        self.unet = unet
        self.output_dc = output_dc
        if output_dc:
            channels = unet.conv_norm_out.num_channels
            self.dc_gain = nn.Parameter(torch.zeros(channels))
            unet.conv_norm_out.register_forward_hook(self._pass_dc)

    def _pass_dc(self, module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> Tensor:
        gain = DC_GAIN_SCALE * self.dc_gain.view(1, -1, 1, 1)
        return output + gain * inputs[0].mean(dim=(2, 3), keepdim=True)

    def forward(self, x0: Tensor, y_image: Tensor, t: Tensor) -> Tensor:
        return self.unet(torch.cat([x0, y_image], dim=1), t).sample


def network_folder(network: str) -> Path:
    """The folder of φ weights named by `network`: bench/assets/ddc-<name>/ for a bare name, else a path."""
    named = asset(f"ddc-{network}")
    return named if "/" not in network and not Path(network).is_dir() else Path(network)


def read_provenance(folder: str | Path) -> dict[str, Any] | None:
    """The provenance.json of a φ folder as a dict, or None where the folder has none."""
    path = Path(folder) / PROVENANCE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise SolverError(f"ddc: cannot read {path}: {error}; re-save or re-import the network") from None
    if not isinstance(record, dict):
        raise SolverError(f"ddc: {path} must hold a JSON object; re-save or re-import the network")
    return record


def load_phi(folder: str | Path) -> tuple[DeltaNetwork, dict[str, Any]]:
    """φ from a folder written by `solvers.ddc.train.save_phi`: (network in eval mode, provenance dict).

    The weights load strictly (`bench.weights.load_exact`): a missing or unexpected key is an error naming them.
    """
    folder = Path(folder)
    config_path = folder / "unet" / "config.json"
    weights_path = folder / "unet" / "diffusion_pytorch_model.safetensors"
    if not config_path.is_file() or not weights_path.is_file():
        raise SolverError(
            f"ddc: no trained φ network at {folder} (need unet/config.json and unet/diffusion_pytorch_model"
            ".safetensors); train one with `python -m bench train-ddc` "
            "and pass the folder with --set ddc.network=<folder>"
        )
    from diffusers import UNet2DModel
    from safetensors.torch import load_file

    from bench.weights import WeightsError, load_exact

    unet = UNet2DModel.from_config(json.loads(config_path.read_text()))
    try:
        load_exact(unet, load_file(str(weights_path), device="cpu"))
    except WeightsError as error:
        raise SolverError(f"ddc: {weights_path} does not fit its config: {error}") from None
    provenance = read_provenance(folder) or {}
    output_dc = bool(provenance.get("output_dc", False))
    network = DeltaNetwork(unet, output_dc=output_dc)
    dc_path = folder / DC_WEIGHTS
    if output_dc != dc_path.is_file():
        raise SolverError(
            f"ddc: {folder} is inconsistent: provenance.json says output_dc={output_dc} but {DC_WEIGHTS} is "
            f"{'missing' if output_dc else 'present'}; re-save the network with solvers.ddc.train.save_phi"
        )
    if output_dc:
        extra = load_file(str(dc_path), device="cpu")
        if set(extra) != {"dc_gain"} or extra["dc_gain"].shape != network.dc_gain.shape:
            raise SolverError(f"ddc: {dc_path} must hold one tensor 'dc_gain' of shape {tuple(network.dc_gain.shape)}")
        with torch.no_grad():
            network.dc_gain.copy_(extra["dc_gain"])
    return network.eval().requires_grad_(False), provenance
