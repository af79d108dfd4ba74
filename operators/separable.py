"""Separable linear operators: bicubic super-resolution and Gaussian blur.

Both act on each channel as X -> A_h X A_w^T with small dense 1-D matrices A_h (m_h x H) and A_w (m_w x W)
that already contain the boundary handling (reflect padding, folded into the matrix). The 2-D operator is the
Kronecker product A_h (x) A_w, so its SVD comes from the two 1-D SVDs: with A_h = U_h S_h V_h^T and
A_w = U_w S_w V_w^T, the singular values are the products s_h[i] * s_w[j] and the singular vectors the
outer products. Nothing of size (H*W) x (H*W) is ever formed.

Near-zero singular values: `singulars` holds the exact products. The pseudo-inverse zeroes every singular
value below `rcond` times the largest one (default 3e-2, the threshold DDRM uses for its SR operator), so
A A^+ A = A holds up to the discarded components, whose total weight is bounded by rcond.

Reflect padding follows torch's / scipy's "mirror" convention: the edge pixel is not repeated
(index -1 maps to 1). Folding it into the matrix works for any image size, including images smaller than
the kernel (the reflection is applied repeatedly).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from operators import register

from .base import SVD, Cap, Operator, OperatorError, check_shape

DEFAULT_RCOND = 3e-2  # DDRM's SRConv zeroes singular values below 3e-2


def reflect_index(j: int, n: int) -> int:
    """Map an index outside [0, n) back inside by mirroring without repeating the edge (torch 'reflect')."""
    if n == 1:
        return 0
    period = 2 * (n - 1)
    j = j % period
    return period - j if j >= n else j


def conv_matrix(kernel: Tensor, n: int) -> Tensor:
    """The (n x n) matrix of a centred 1-D correlation with an odd kernel and reflect padding."""
    half = (kernel.numel() - 1) // 2
    matrix = torch.zeros(n, n, dtype=torch.float64)
    for i in range(n):
        for k, w in enumerate(kernel.tolist()):
            matrix[i, reflect_index(i + k - half, n)] += w
    return matrix


def keys_cubic(s: Tensor, a: float = -0.5) -> Tensor:
    """Keys' cubic convolution kernel; a = -0.5 is the bicubic of MATLAB imresize and PIL."""
    s = s.abs()
    near = (a + 2) * s**3 - (a + 3) * s**2 + 1
    far = a * s**3 - 5 * a * s**2 + 8 * a * s - 4 * a
    return torch.where(s <= 1, near, torch.where(s < 2, far, torch.zeros_like(s)))


def bicubic_downsample_matrix(n: int, factor: int, a: float = -0.5) -> Tensor:
    """The (n/factor x n) antialiased bicubic downsampling matrix with reflect padding.

    As in PIL and MATLAB imresize, the kernel is stretched by the factor (support 2*factor input pixels on
    each side, 4*factor taps) and each row is normalised to sum to 1. Output pixel i is centred at input
    coordinate (i + 0.5) * factor, input pixel j at j + 0.5.
    """
    m = n // factor
    matrix = torch.zeros(m, n, dtype=torch.float64)
    for i in range(m):
        centre = (i + 0.5) * factor
        taps = torch.arange(math.floor(centre - 2 * factor), math.ceil(centre + 2 * factor) + 1, dtype=torch.float64)
        weights = keys_cubic((taps + 0.5 - centre) / factor, a)
        weights = weights / weights.sum()
        for j, w in zip(taps.long().tolist(), weights.tolist(), strict=True):
            if w != 0.0:
                matrix[i, reflect_index(j, n)] += w
    return matrix


class _KroneckerSVD(SVD):
    """SVD of X -> A_h X A_w^T per channel, from the 1-D SVDs; see the module docstring."""

    def __init__(self, op: SeparableOperator):
        self.op = op
        c, h, w = op.input_shape
        mh, mw = op.a_h.shape[0], op.a_w.shape[0]
        uh, sh, vh_t = torch.linalg.svd(op.a_h, full_matrices=True)
        uw, sw, vw_t = torch.linalg.svd(op.a_w, full_matrices=True)
        self._mats = {"uh": uh, "uw": uw, "vh": vh_t.T.contiguous(), "vw": vw_t.T.contiguous()}
        grid = torch.zeros(h, w, dtype=torch.float64)
        grid[:mh, :mw] = sh[:, None] * sw[None, :]
        # Order the V-basis coefficients so the first M = C*mh*mw pair with the singular values.
        observed = torch.zeros(c, h, w, dtype=torch.bool)
        observed[:, :mh, :mw] = True
        flat = observed.flatten()
        self.perm = torch.cat([flat.nonzero().flatten(), (~flat).nonzero().flatten()])
        self.inverse_perm = torch.argsort(self.perm)
        self.singulars = grid[:mh, :mw].expand(c, mh, mw).flatten().clone()
        self._factor_singulars = (sh, sw)
        self._cache: dict[tuple[Any, ...], Tensor] = {}

    def discarded(self, cutoff: float) -> Tensor:
        """Components whose row or column singular value is below `cutoff`: the official DDRM/DDNM rule, which
        zeroes 1-D singular values below 3e-2 before forming their products."""
        sh, sw = self._factor_singulars
        c = self.op.input_shape[0]
        grid = (sh[:, None] < cutoff) | (sw[None, :] < cutoff)
        return grid.expand(c, *grid.shape).flatten()

    def _mat(self, name: str, like: Tensor) -> Tensor:
        key = (name, like.dtype, like.device)
        if key not in self._cache:
            self._cache[key] = self._mats[name].to(dtype=like.dtype, device=like.device)
        return self._cache[key]

    def vt(self, x: Tensor) -> Tensor:
        coeffs = self._mat("vh", x).T @ x @ self._mat("vw", x)
        return coeffs.flatten(1)[:, self.perm.to(x.device)]

    def v(self, z: Tensor) -> Tensor:
        c, h, w = self.op.input_shape
        coeffs = z[:, self.inverse_perm.to(z.device)].reshape(-1, c, h, w)
        return self._mat("vh", z) @ coeffs @ self._mat("vw", z).T

    def ut(self, y: Tensor) -> Tensor:
        return (self._mat("uh", y).T @ y @ self._mat("uw", y)).flatten(1)

    def u(self, z: Tensor) -> Tensor:
        y = z.reshape(-1, *self.op.measurement_shape)
        return self._mat("uh", z) @ y @ self._mat("uw", z).T


class SeparableOperator(Operator):
    """X -> A_h X A_w^T on every channel, with an implicit Kronecker SVD."""

    capabilities = frozenset({Cap.FORWARD, Cap.ADJOINT, Cap.PINV, Cap.SVD, Cap.DIFFERENTIABLE})

    def __init__(self, shape, a_h: Tensor, a_w: Tensor, rcond: float = DEFAULT_RCOND):
        super().__init__(shape)
        if not 0.0 <= rcond < 1.0:
            raise OperatorError(f"rcond must be in [0, 1), got {rcond}")
        self.a_h, self.a_w, self.rcond = a_h, a_w, float(rcond)
        self._svd_cache: _KroneckerSVD | None = None
        self._mat_cache: dict[tuple[Any, ...], Tensor] = {}

    @property
    def measurement_shape(self) -> tuple[int, int, int]:
        return (self.input_shape[0], self.a_h.shape[0], self.a_w.shape[0])

    def _mat(self, name: str, like: Tensor) -> Tensor:
        key = (name, like.dtype, like.device)
        if key not in self._mat_cache:
            self._mat_cache[key] = getattr(self, name).to(dtype=like.dtype, device=like.device)
        return self._mat_cache[key]

    def _forward(self, x: Tensor) -> Tensor:
        return self._mat("a_h", x) @ x @ self._mat("a_w", x).T

    def _adjoint(self, y: Tensor) -> Tensor:
        return self._mat("a_h", y).T @ y @ self._mat("a_w", y)

    def _svd(self) -> _KroneckerSVD:
        if self._svd_cache is None:
            self._svd_cache = _KroneckerSVD(self)
        return self._svd_cache

    def _pinv(self, y: Tensor) -> Tensor:
        svd = self._svd()
        s = svd.singulars_like(y)
        keep = s > self.rcond * s.max()
        inverse = torch.where(keep, 1.0 / torch.where(keep, s, torch.ones_like(s)), torch.zeros_like(s))
        coeffs = svd.ut(y) * inverse
        n = math.prod(self.input_shape)
        padded = torch.cat([coeffs, coeffs.new_zeros(coeffs.shape[0], n - coeffs.shape[1])], dim=1)
        return svd.v(padded)


# SuperResolution's `kernel` option. "bicubic" is this project's sr4/sr8; the other two are the degradations the
# released I²SB / CDDB bridges were trained on (I²SB corruption/superresolution.py, from DDRM), so that a bridge
# and the operator it was trained for can be paired.
SR_KERNELS = ("bicubic", "pool", "ddrm-bicubic")


def box_downsample_matrix(n: int, factor: int) -> Tensor:
    """The (n/factor x n) matrix averaging each run of `factor` pixels: DDRM's / I²SB's "pool" SR in 1-D."""
    matrix = torch.zeros(n // factor, n, dtype=torch.float64)
    for i in range(n // factor):
        matrix[i, i * factor : (i + 1) * factor] = 1.0 / factor
    return matrix


def ddrm_bicubic_downsample_matrix(n: int, factor: int, a: float = -0.5) -> Tensor:
    """The (n/factor x n) matrix of DDRM's SRConv bicubic (I²SB's "sr4x-bicubic"), in float64.

    The same Keys kernel stretched by the factor as `bicubic_downsample_matrix` (4·factor taps, normalised,
    centred between pixels), but with symmetric padding that repeats the edge pixel (index -1 maps to 0) where
    ours mirrors without repeating it. DDRM also zeroes 1-D singular values below 3e-2 before applying it; for
    factor 4 the smallest is about 0.35 at any size, so that truncation changes nothing there.
    """
    taps = 4 * factor
    offsets = torch.arange(taps, dtype=torch.float64) - taps // 2 + 0.5  # tap k sits at (k - 2·factor + 0.5)
    kernel = keys_cubic(offsets / factor, a)
    kernel = kernel / kernel.sum()
    matrix = torch.zeros(n // factor, n, dtype=torch.float64)
    for row, centre in enumerate(range(factor // 2, n + factor // 2, factor)):
        for k, w in enumerate(kernel.tolist()):
            j = centre - taps // 2 + k
            j = -j - 1 if j < 0 else (2 * n - 1 - j if j >= n else j)  # symmetric: the edge pixel repeats
            matrix[row, j] += w
    return matrix


class SuperResolution(SeparableOperator):
    """Downsampling by an integer factor: bicubic (antialiased Keys kernel, a = -0.5, reflect padding) by default;
    `kernel="pool"` or `"ddrm-bicubic"` give the degradations of I²SB's released bridges (see SR_KERNELS)."""

    task = "sr"

    def __init__(self, shape, factor: int = 4, rcond: float = DEFAULT_RCOND, kernel: str = "bicubic"):
        factor = int(factor)
        _, h, w = check_shape(shape)
        if factor < 1:
            raise OperatorError(f"super-resolution factor must be a positive integer, got {factor}")
        if h % factor or w % factor:
            raise OperatorError(
                f"image size {h}x{w} is not divisible by the SR factor {factor}; "
                f"crop or resize to a multiple of {factor} (e.g. {h - h % factor}x{w - w % factor})"
            )
        if kernel not in SR_KERNELS:
            raise OperatorError(f"unknown SR kernel {kernel!r}; choose one of {', '.join(SR_KERNELS)}")
        if kernel == "ddrm-bicubic" and factor % 2:
            raise OperatorError(
                f"the ddrm-bicubic kernel needs an even factor (DDRM centres taps at factor/2), got {factor}"
            )
        self.factor, self.kernel = factor, kernel
        self.task = f"sr{factor}"
        self.block_size = factor  # y holds one value per factor x factor block of pixels
        matrix = {"bicubic": bicubic_downsample_matrix, "pool": box_downsample_matrix}.get(
            kernel, ddrm_bicubic_downsample_matrix
        )
        super().__init__(shape, matrix(h, factor), matrix(w, factor), rcond)

    def params(self) -> dict[str, Any]:
        if self.kernel == "pool":
            return {"factor": self.factor, "kernel": "pool", "padding": "none", "rcond": self.rcond}
        if self.kernel == "ddrm-bicubic":
            return {"factor": self.factor, "kernel": "ddrm-bicubic", "padding": "symmetric", "rcond": self.rcond}
        return {  # unchanged from before the kernel option, so that stored results keep their keys
            "factor": self.factor,
            "kernel": "bicubic-keys-a-0.5-antialiased",
            "padding": "reflect",
            "rcond": self.rcond,
        }


def gaussian_kernel_1d(size: int, std: float) -> Tensor:
    """A normalised 1-D Gaussian of `size` taps; the 2-D kernel is its outer product (also normalised)."""
    offsets = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    kernel = torch.exp(-0.5 * (offsets / std) ** 2)
    return kernel / kernel.sum()


class GaussianBlur(SeparableOperator):
    """Gaussian blur with a size x size kernel (separable) and reflect padding."""

    task = "gblur"

    def __init__(self, shape, size: int = 61, std: float = 3.0, rcond: float = DEFAULT_RCOND):
        size, std = int(size), float(std)
        if size < 1 or size % 2 == 0:
            raise OperatorError(f"blur kernel size must be a positive odd integer, got {size}")
        if not std > 0:
            raise OperatorError(f"blur std must be > 0, got {std}")
        self.size, self.std = size, std
        kernel = gaussian_kernel_1d(size, std)
        _, h, w = check_shape(shape)
        super().__init__(shape, conv_matrix(kernel, h), conv_matrix(kernel, w), rcond)

    def params(self) -> dict[str, Any]:
        return {"size": self.size, "std": self.std, "padding": "reflect", "rcond": self.rcond}


# The DDC paper's super-resolution and deblurring tasks (I²SB's x4 degradations: operators/bridge_degradations.py).
register("sr4", SuperResolution, "bicubic x4 downsampling (antialiased Keys a=-0.5, reflect)", factor=4)
register("sr8", SuperResolution, "bicubic x8 downsampling (antialiased Keys a=-0.5, reflect)", factor=8)
register("gblur", GaussianBlur, "Gaussian blur, 61x61 kernel, std 3.0, reflect padding", size=61, std=3.0)
