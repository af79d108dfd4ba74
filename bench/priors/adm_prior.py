"""`adm:<checkpoint>[?preset=<name>]`: a guided-diffusion ADM checkpoint as a prior.

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

from .base import DDPM_BETA_END, DDPM_BETA_START, DDPM_NUM_TIMESTEPS, Prior, PriorError, linear_betas

if TYPE_CHECKING:
    from .adm import ADMConfig

__all__ = ["ADM_DEFAULT_PRESET", "load_adm_prior"]

# The DDC paper's prior: guided-diffusion's unconditional ImageNet-256 model (256x256_diffusion_uncond.pt).
ADM_DEFAULT_PRESET = "imagenet256-uncond"


def load_adm_prior(
    path: str | Path,
    preset: str | ADMConfig = ADM_DEFAULT_PRESET,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | str = torch.float32,
) -> Prior:
    """The ADM checkpoint at `path` (.pt state dict or .safetensors) as a Prior.

    preset: a name in `bench.priors.adm.PRESETS` or an `ADMConfig` for other architectures.
    """
    from . import adm  # the network module is large; import it only when an ADM prior is asked for

    path = Path(path).expanduser()
    if not path.is_file():
        raise PriorError(
            f"ADM checkpoint not found: {path}; download the guided-diffusion weights (e.g. "
            f"256x256_diffusion_uncond.pt) and pass 'adm:<path>?preset=<name>' "
            f"(presets: {', '.join(sorted(adm.PRESETS))})"
        )
    network = adm.load_adm(path, preset)
    architecture = network.config
    config = {
        "preset": preset if isinstance(preset, str) else "custom",
        "architecture": json.loads(json.dumps(asdict(architecture))),
        "schedule": {
            "beta_schedule": "linear",
            "beta_start": DDPM_BETA_START,
            "beta_end": DDPM_BETA_END,
            "num_train_timesteps": DDPM_NUM_TIMESTEPS,
        },
    }
    return Prior(
        network,
        linear_betas(),
        (architecture.in_channels, architecture.image_size, architecture.image_size),
        kind="adm",
        config=config,
        learned_variance=architecture.learn_sigma,
        checkpoint_files=[path],
        device=device,
        dtype=dtype,
    )
