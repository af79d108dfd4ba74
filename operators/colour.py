"""Colourisation: the measurement is the mean of the colour channels (DDRM's and DDNM's definition).

Per pixel, A is the 1 × C row (1/C, …, 1/C). Its SVD is exact and the same at every pixel:

    A Aᵀ = C / C² = 1/C,  so the one singular value is 1/√C (1/√3 for RGB),
    v₁ = (1, …, 1)/√C, u = 1  (A v₁ = (C/C)/√C = 1/√C),
    A⁺ = Aᵀ (A Aᵀ)⁻¹ = C·Aᵀ: the grey value copied to every channel;  Aᵀ y = y / C on every channel.

The rest of V completes v₁ to an orthonormal basis of R^C: for RGB (1, −1, 0)/√2 and (1, 1, −2)/√6. The V
coefficients are ordered [the v₁ coefficient of every pixel, then the second, then the third], so the first H·W
pair with the singular values. A one-channel image is its own mean: A is then the identity.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from operators import register

from .base import SVD, Cap, Operator


def channel_basis(channels: int) -> Tensor:
    """(C, C) float64 orthogonal matrix whose first row is the normalised all-ones vector (the rows are V's)."""
    if channels == 1:
        return torch.ones(1, 1, dtype=torch.float64)
    rows = [torch.ones(channels, dtype=torch.float64) / math.sqrt(channels)]
    for k in range(1, channels):  # Helmert: k ones, then −k, normalised
        row = torch.zeros(channels, dtype=torch.float64)
        row[:k] = 1.0
        row[k] = -float(k)
        rows.append(row / math.sqrt(k * (k + 1)))
    return torch.stack(rows)


class _ColourSVD(SVD):
    def __init__(self, op: Colorize):
        c, h, w = op.input_shape
        self.shape = op.input_shape
        self.basis = channel_basis(c)  # (C, C): row i is the i-th right singular vector's channel profile
        self.singulars = torch.full((h * w,), 1.0 / math.sqrt(c), dtype=torch.float64)

    def vt(self, x: Tensor) -> Tensor:
        return torch.einsum("ij,bjhw->bihw", self.basis.to(x), x).flatten(1)

    def v(self, z: Tensor) -> Tensor:
        return torch.einsum("ij,bihw->bjhw", self.basis.to(z), z.reshape(-1, *self.shape))

    def ut(self, y: Tensor) -> Tensor:
        return y.flatten(1)

    def u(self, z: Tensor) -> Tensor:
        return z.reshape(z.shape[0], 1, *self.shape[1:])


class Colorize(Operator):
    """y = the mean of the channels (DDRM / DDNM colourisation): x (B, C, H, W) in [-1, 1] -> y (B, 1, H, W)."""

    task = "colorize"
    capabilities = frozenset({Cap.FORWARD, Cap.ADJOINT, Cap.PINV, Cap.SVD, Cap.DIFFERENTIABLE})

    @property
    def measurement_shape(self) -> tuple[int, int, int]:
        return (1, *self.input_shape[1:])

    def params(self) -> dict[str, Any]:
        return {"weights": "channel mean"}

    def _forward(self, x: Tensor) -> Tensor:
        return x.mean(dim=1, keepdim=True)

    def _adjoint(self, y: Tensor) -> Tensor:
        c = self.input_shape[0]
        return (y / c).expand(-1, c, -1, -1).contiguous()

    def _pinv(self, y: Tensor) -> Tensor:
        return y.expand(-1, self.input_shape[0], -1, -1).contiguous()

    def _svd(self) -> _ColourSVD:
        return _ColourSVD(self)


register("colorize", Colorize, "colourisation: y is the mean of the channels (DDRM / DDNM)")
