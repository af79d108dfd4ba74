"""PnP-ADMM (Chan et al. 2016) in one place: the solver (`solver`, which registers `pnp-admm`), its DnCNN
denoiser and the loader of a saved one (`dncnn`), and the trainer (`train`, `python -m bench train-denoiser`).

Importing the package registers the solver; `train` is imported only by the command that uses it. The trainer
imports the network, never the reverse.
"""

from __future__ import annotations

from .dncnn import DnCNN, load_denoiser
from .solver import (
    DNCNN_ASSET,
    MEASUREMENT_NOISE_FLOOR,
    Denoiser,
    PnPADMM,
    PnPADMMConfig,
    conjugate_gradients,
    data_step,
)

__all__ = [
    "DNCNN_ASSET",
    "MEASUREMENT_NOISE_FLOOR",
    "Denoiser",
    "DnCNN",
    "PnPADMM",
    "PnPADMMConfig",
    "conjugate_gradients",
    "data_step",
    "load_denoiser",
]
