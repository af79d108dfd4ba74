"""Denoising: A is the identity, so the measurement is the image plus noise."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from operators import register

from .base import SVD, Cap, Operator


class _IdentitySVD(SVD):
    def __init__(self, n: int, shape: tuple[int, int, int]):
        self.shape = shape
        self.singulars = torch.ones(n, dtype=torch.float64)

    def vt(self, x: Tensor) -> Tensor:
        return x.flatten(1)

    def v(self, z: Tensor) -> Tensor:
        return z.reshape(-1, *self.shape)

    ut = vt
    u = v


class Identity(Operator):
    task = "denoise"
    capabilities = frozenset({Cap.FORWARD, Cap.ADJOINT, Cap.PINV, Cap.SVD, Cap.DIFFERENTIABLE})

    @property
    def measurement_shape(self) -> tuple[int, int, int]:
        return self.input_shape

    def params(self) -> dict[str, Any]:
        return {}

    def _forward(self, x: Tensor) -> Tensor:
        return x

    _adjoint = _forward
    _pinv = _forward

    def _svd(self) -> _IdentitySVD:
        c, h, w = self.input_shape
        return _IdentitySVD(c * h * w, self.input_shape)


register("denoise", Identity, "denoising: A is the identity")
