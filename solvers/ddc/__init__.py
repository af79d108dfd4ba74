"""DDC (Chen et al. 2024) in one place: the sampler (`sampler`, which registers `ddc` and `ddc-nolpips`), the
data-consistency network φ and its loader (`network`), the importer of the authors' released φ (`official`,
`python -m bench import-ddc`) and the trainer (`train`, `python -m bench train-ddc`).

Importing the package registers the solvers; `official` and `train` are imported only by the commands that use
them. The trainer imports the network and the sampler's step, never the reverse.
"""

from __future__ import annotations

from .network import (
    DC_GAIN_SCALE,
    DC_WEIGHTS,
    PAPER_PHI_CHANNELS,
    PAPER_PHI_LAYERS,
    PROVENANCE,
    DeltaNetwork,
    Phi,
    load_phi,
    network_folder,
    paper_phi,
    phi_unet_config,
    read_provenance,
)
from .sampler import (
    DDC,
    DEFAULT_CONVENTIONS,
    INPAINT_UNOBSERVED,
    LEGACY_PROVENANCE,
    Y_TO_IMAGE,
    DDCConfig,
    DDCNoLpips,
    DDCNoLpipsConfig,
    corrected_prediction,
    fill_unobserved,
    measurement_to_image,
    trained_conventions,
    unobserved_mask,
)

__all__ = [
    "DC_GAIN_SCALE",
    "DC_WEIGHTS",
    "DDC",
    "DEFAULT_CONVENTIONS",
    "INPAINT_UNOBSERVED",
    "LEGACY_PROVENANCE",
    "PAPER_PHI_CHANNELS",
    "PAPER_PHI_LAYERS",
    "PROVENANCE",
    "Y_TO_IMAGE",
    "DDCConfig",
    "DDCNoLpips",
    "DDCNoLpipsConfig",
    "DeltaNetwork",
    "Phi",
    "corrected_prediction",
    "fill_unobserved",
    "load_phi",
    "measurement_to_image",
    "network_folder",
    "paper_phi",
    "phi_unet_config",
    "read_provenance",
    "trained_conventions",
    "unobserved_mask",
]
