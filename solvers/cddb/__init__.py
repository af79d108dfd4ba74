"""CDDB (Chung et al. 2023) and I²SB (Liu et al. 2023) in one place: the sampler (`sampler`, which registers
`cddb`, `i2sb` and `cddb-deep`), the bridge networks and the loader of a bridge folder (`network`), the bridge's
schedule (`schedule`), the importer of released I²SB / CDDB bridges (`official`, `python -m bench
import-bridge`) and the trainer (`train`, `python -m bench train-bridge`).

Importing the package registers the solvers; `official` and `train` are imported only by the commands that use
them. The trainer imports the network and the schedule, never the reverse.
"""

from __future__ import annotations

from .network import BRIDGE_FILE, ADMBridgeNetwork, BridgeNetwork, load_bridge, read_record, weights_file
from .sampler import (
    ASSETS,
    CDDB,
    DEFAULT_STEP_SIZE,
    I2SB,
    BridgeFn,
    CDDBConfig,
    CDDBDeep,
    I2SBConfig,
    bridge_folder,
    bridge_start,
)
from .schedule import BridgeSchedule

__all__ = [
    "ASSETS",
    "BRIDGE_FILE",
    "CDDB",
    "DEFAULT_STEP_SIZE",
    "I2SB",
    "ADMBridgeNetwork",
    "BridgeFn",
    "BridgeNetwork",
    "BridgeSchedule",
    "CDDBConfig",
    "CDDBDeep",
    "I2SBConfig",
    "bridge_folder",
    "bridge_start",
    "load_bridge",
    "read_record",
    "weights_file",
]
