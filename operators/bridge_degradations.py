"""The degradations of I²SB's and CDDB's released x4 bridges (`sr4x-pool`, `sr4x-bicubic`), as tasks, so that
imported bridges run on the operator they were trained with (docs/cddb/official-weights.md)."""

from __future__ import annotations

from operators import register

from .separable import SuperResolution

register("sr4-pool", SuperResolution, "x4 downsampling by 4x4 averaging (I²SB's sr4x-pool)", factor=4, kernel="pool")
register(
    "sr4-ddrm",
    SuperResolution,
    "bicubic x4 downsampling with edge-repeat padding (DDRM's SRConv, I²SB's sr4x-bicubic)",
    factor=4,
    kernel="ddrm-bicubic",
)
