"""`adm:<checkpoint>[?preset=<name>]`: a guided-diffusion ADM checkpoint as a prior; `adm-random:<name>`: the
same architecture with random weights, for timing and for tests at 256x256 without a checkpoint.

The network is `bench.priors.adm.ADMUNet` (loaded strictly by `load_adm`). ADM checkpoints were trained
with DDPM's linear schedule (β 1e-4..0.02, T = 1000) and, for `learn_sigma` presets, output 2C channels:
ε in the first C and Improved DDPM's variance interpolation v in the rest.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from .base import Prior
from .schedule import DDPM_BETA_END, DDPM_BETA_START, DDPM_NUM_TIMESTEPS, PriorError, linear_betas

if TYPE_CHECKING:
    from .adm import ADMConfig

__all__ = ["ADM_DEFAULT_PRESET", "RANDOM_ARCHITECTURES", "load_adm_prior", "load_random_adm_prior"]

# The DDC paper's prior: guided-diffusion's unconditional ImageNet-256 model (256x256_diffusion_uncond.pt).
ADM_DEFAULT_PRESET = "imagenet256-uncond"
# adm-random's architectures: the checkpoint presets by name, plus the narrow 256x256 test network.
RANDOM_ARCHITECTURES = ("imagenet256", "imagenet256-uncond", "ffhq256", "tiny")


def _schedule_record() -> dict[str, object]:
    return {
        "beta_schedule": "linear",
        "beta_start": DDPM_BETA_START,
        "beta_end": DDPM_BETA_END,
        "num_train_timesteps": DDPM_NUM_TIMESTEPS,
    }


def load_adm_prior(
    path: str | Path,
    preset: str | ADMConfig = ADM_DEFAULT_PRESET,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | str = torch.float32,
    attention: str = "sdpa",
) -> Prior:
    """The ADM checkpoint at `path` (.pt state dict or .safetensors) as a Prior.

    preset: a name in `bench.priors.adm.PRESETS` or an `ADMConfig` for other architectures.
    attention: "sdpa" (fused) or "legacy" (ADM's einsum); see `bench.priors.adm.ATTENTION_IMPLEMENTATIONS`.
    """
    from . import adm  # the network module is large; import it only when an ADM prior is asked for

    path = Path(path).expanduser()
    if not path.is_file():
        raise PriorError(
            f"ADM checkpoint not found: {path}; download the guided-diffusion weights (e.g. "
            f"256x256_diffusion_uncond.pt) and pass 'adm:<path>?preset=<name>' "
            f"(presets: {', '.join(sorted(adm.PRESETS))})"
        )
    network = _with_attention(adm.load_adm(path, preset), attention)
    preset_name = preset if isinstance(preset, str) else "custom"
    return _adm_prior(network, "adm", {"preset": preset_name}, attention, device, dtype, checkpoint_files=[path])


def _adm_prior(network, kind: str, identity: dict, attention: str, device, dtype, checkpoint_files=()) -> Prior:
    """A Prior around an ADM network: its architecture, the linear schedule and `identity` (preset, weights)."""
    architecture = network.config
    config = {
        **identity,
        "architecture": json.loads(json.dumps(asdict(architecture))),
        "schedule": _schedule_record(),
    }
    if attention != "sdpa":  # recorded only off the default, so that stored results keep their keys
        config["attention"] = attention
    return Prior(
        network,
        linear_betas(),
        (architecture.in_channels, architecture.image_size, architecture.image_size),
        kind=kind,
        config=config,
        learned_variance=architecture.learn_sigma,
        checkpoint_files=checkpoint_files,
        device=device,
        dtype=dtype,
    )


def _with_attention(network, attention: str):
    try:
        return network.set_attention(attention)
    except ValueError as exc:
        raise PriorError(f"{exc}; e.g. 'adm:<checkpoint>?attention=legacy'") from exc


def load_random_adm_prior(
    architecture: str = "imagenet256",
    *,
    seed: int = 0,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | str = torch.float32,
    attention: str = "sdpa",
) -> Prior:
    """An ADM prior with random weights (`bench.priors.adm.random_adm`): the architecture of a checkpoint preset
    ('imagenet256' is the DDC paper's 552.8M-parameter network) or 'tiny' (`adm.TINY_256`, the same 256x256
    code path at GroupNorm's narrowest widths). Its samples mean nothing; it times and tests the code a real
    checkpoint runs. The spec records the seed instead of a checkpoint digest."""
    from . import adm

    names = {"imagenet256": "imagenet256-uncond", "imagenet256-uncond": "imagenet256-uncond", "ffhq256": "ffhq256"}
    if architecture == "tiny":
        config_adm = adm.TINY_256
    elif architecture in names:
        config_adm = adm.PRESETS[names[architecture]]
    else:
        raise PriorError(
            f"unknown adm-random architecture {architecture!r} (available: {', '.join(RANDOM_ARCHITECTURES)}); "
            "e.g. 'adm-random:imagenet256' or 'adm-random:tiny'"
        )
    # Checked before the network is built: the full-size one takes seconds and 2.2 GB to initialise.
    if torch.device(device).type == "cuda" and not torch.cuda.is_available():
        raise PriorError(f"device {device} requested but CUDA is not available; use device='cpu'")
    network = _with_attention(adm.random_adm(config_adm, seed), attention)
    identity = {"preset": names.get(architecture, architecture), "weights": f"random (seed {seed})"}
    return _adm_prior(network, "adm-random", identity, attention, device, dtype)
