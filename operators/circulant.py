"""Circular 2-D convolution with one kernel per image: exact adjoint, pseudo-inverse and a real SVD via the DFT.

A acts on each channel as y = k ⊛ x with periodic (wrap-around) boundary: y[n] = Σ_m k[m] x[(n − m + c) mod (H, W)]
for a K×K kernel with centre c = K // 2, which is `scipy.ndimage.convolve(x, k, mode="wrap")`. A kernel larger than
the image wraps onto itself. With k̂ the 2-D DFT of the kernel placed circularly around pixel (0, 0):

    A = F⁻¹ diag(k̂) F,   Aᵀ = F⁻¹ diag(conj k̂) F (the correlation),   A⁺ = F⁻¹ diag(k̂⁺) F

with k̂⁺ = 1/k̂ where |k̂| > rcond·max|k̂| and 0 elsewhere (the project's rcond convention, `DEFAULT_RCOND`).

The real SVD. For a real kernel, k̂(−ω) = conj k̂(ω). Take one frequency ω of each pair {ω, −ω} and the real
vectors c_ω[n] = cos(2π ω·n), s_ω[n] = sin(2π ω·n), normalised (norm² HW/2 each; HW for a self-conjugate ω,
where s_ω = 0). With k̂(ω) = r e^{iφ}, A maps c_ω → r(cos φ c_ω − sin φ s_ω) and s_ω → r(sin φ c_ω + cos φ s_ω):
on span{c_ω, s_ω} A is r times a rotation by φ. So

    V = [ĉ_ω, ŝ_ω]_ω (the real Fourier basis),  Σ = |k̂(ω)| (twice per pair, once per self-conjugate ω),
    U = P V with P = F⁻¹ diag(k̂/|k̂|) F (a real orthogonal all-pass filter; phase 1 where k̂ = 0),

all real, U and V orthogonal, A = U Σ Vᵀ exactly. Coefficients in the V basis come from `rfft2`: for x real,
⟨x, ĉ_ω⟩ = √2 Re X(ω), ⟨x, ŝ_ω⟩ = −√2 Im X(ω) (and Re X(ω) for self-conjugate ω) with X the orthonormal DFT.
Nothing of size (HW)² is formed; every map costs one FFT.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from .base import SVD, Cap, Operator, OperatorError
from .separable import DEFAULT_RCOND


def embed_kernels(kernels: Tensor, height: int, width: int) -> Tensor:
    """(B, K, K) kernels placed on an (H, W) torus with their centre at pixel (0, 0) (wrapped, summed if K > H, W)."""
    b, size, _ = kernels.shape
    offsets = torch.arange(size) - size // 2
    rows = (offsets % height).view(1, size, 1).expand(b, size, size)
    cols = (offsets % width).view(1, 1, size).expand(b, size, size)
    batch = torch.arange(b).view(b, 1, 1).expand(b, size, size)
    out = torch.zeros(b, height, width, dtype=kernels.dtype)
    return out.index_put_((batch, rows, cols), kernels, accumulate=True)


class _FourierLayout:
    """Which rfft2 bins carry the real Fourier basis of an H × W image, in the order of the V coefficients.

    pairs: flat rfft2 indices of one frequency per pair {ω, −ω}; partners: the flat index of −ω for the pairs
    whose −ω also lies in the rfft2 half (columns 0 and W/2), else −1; selfs: the self-conjugate frequencies.
    Per channel, the V coefficients are [cos parts of pairs, sin parts of pairs, selfs]: 2P + S = H·W.
    """

    def __init__(self, height: int, width: int):
        half = width // 2 + 1
        edge_cols = [0] + ([width // 2] if width % 2 == 0 else [])
        edge_rows = [0] + ([height // 2] if height % 2 == 0 else [])
        pairs, partners = [], []
        for ky in range(height):
            for kx in range(1, (width - 1) // 2 + 1):
                pairs.append(ky * half + kx)
                partners.append(-1)
        for kx in edge_cols:
            for ky in range(1, (height - 1) // 2 + 1):
                pairs.append(ky * half + kx)
                partners.append(((-ky) % height) * half + kx)
        self.pairs = torch.tensor(pairs, dtype=torch.long)
        self.partners = torch.tensor(partners, dtype=torch.long)
        self.selfs = torch.tensor([ky * half + kx for ky in edge_rows for kx in edge_cols], dtype=torch.long)
        self.shape = (height, width)
        assert 2 * len(pairs) + len(self.selfs) == height * width

    def coefficients(self, spectrum: Tensor) -> Tensor:
        """(B, C, H, W//2+1) orthonormal rfft2 of real images -> (B, C, H·W) real-basis coefficients."""
        flat = spectrum.flatten(-2)
        pairs, selfs = flat[..., self.pairs.to(flat.device)], flat[..., self.selfs.to(flat.device)]
        root2 = math.sqrt(2.0)
        return torch.cat([root2 * pairs.real, -root2 * pairs.imag, selfs.real], dim=-1)

    def spectrum(self, coefficients: Tensor) -> Tensor:
        """Inverse of `coefficients`: (B, C, H·W) -> the (B, C, H, W//2+1) rfft2 of the real image they describe."""
        h, w = self.shape
        p = len(self.pairs)
        cos, sin, selfs = coefficients[..., :p], coefficients[..., p : 2 * p], coefficients[..., 2 * p :]
        dtype = torch.complex128 if coefficients.dtype == torch.float64 else torch.complex64
        flat = coefficients.new_zeros(*coefficients.shape[:-1], h * (w // 2 + 1), dtype=dtype)
        values = torch.complex(cos, -sin) / math.sqrt(2.0)
        flat[..., self.pairs.to(flat.device)] = values
        mirrored = self.partners >= 0
        flat[..., self.partners[mirrored].to(flat.device)] = values[..., mirrored.to(flat.device)].conj()
        flat[..., self.selfs.to(flat.device)] = selfs.to(dtype)
        return flat.reshape(*coefficients.shape[:-1], h, w // 2 + 1)


class _CirculantSVD(SVD):
    """A = U Σ Vᵀ with V the real Fourier basis and U = P V (see the module docstring); singulars (B, C·H·W)."""

    def __init__(self, op: CircularConvolution):
        c, h, w = op.input_shape
        self.shape = op.input_shape
        self.layout = _FourierLayout(h, w)
        spectra = op.spectra()  # (B, H, W//2+1) complex128
        magnitude = spectra.abs()
        phase = torch.where(magnitude > 0, spectra / magnitude.clamp_min(1e-300), torch.ones_like(spectra)).flatten(-2)
        # k̂ is real at the self-conjugate frequencies: its phase there is a sign, kept exactly real (+1 where k̂ = 0)
        selfs = self.layout.selfs
        phase[..., selfs] = torch.where(spectra.flatten(-2)[..., selfs].real < 0, -1.0, 1.0).to(phase.dtype)
        self.phase = phase.reshape(spectra.shape)[:, None]  # (B, 1, H, W//2+1), |phase| = 1
        flat = magnitude.flatten(-2)
        pairs = flat[..., self.layout.pairs]
        per_channel = torch.cat([pairs, pairs, flat[..., selfs]], dim=-1)  # (B, H·W), the order of vt's coefficients
        self.singulars = per_channel[:, None].expand(-1, c, -1).reshape(spectra.shape[0], c * h * w).clone()
        self._cache: dict[tuple[Any, ...], Tensor] = {}

    def _phase(self, like: Tensor) -> Tensor:
        key = (like.dtype, like.device)
        if key not in self._cache:
            dtype = torch.complex128 if like.dtype == torch.float64 else torch.complex64
            self._cache[key] = self.phase.to(dtype=dtype, device=like.device)
        return self._cache[key]

    def _to_coefficients(self, image: Tensor, phase: Tensor | None) -> Tensor:
        spectrum = torch.fft.rfft2(image, norm="ortho")
        if phase is not None:
            spectrum = spectrum * phase.conj()
        return self.layout.coefficients(spectrum).flatten(1)

    def _to_image(self, z: Tensor, phase: Tensor | None) -> Tensor:
        c, h, w = self.shape
        spectrum = self.layout.spectrum(z.reshape(z.shape[0], c, h * w))
        if phase is not None:
            spectrum = spectrum * phase
        return torch.fft.irfft2(spectrum, s=(h, w), norm="ortho")

    def vt(self, x: Tensor) -> Tensor:
        return self._to_coefficients(x, None)

    def v(self, z: Tensor) -> Tensor:
        return self._to_image(z, None)

    def ut(self, y: Tensor) -> Tensor:
        return self._to_coefficients(y, self._phase(y))

    def u(self, z: Tensor) -> Tensor:
        return self._to_image(z, self._phase(z))


class CircularConvolution(Operator):
    """y = k_b ⊛ x_b on every channel, periodic boundary, one kernel per image b (see the module docstring).

    x: (B, C, H, W) in [-1, 1] -> y: (B, C, H, W). Subclasses draw the kernels in `for_images`; `kernels` holds
    them as (B, K, K) float64, or None before binding.
    """

    capabilities = frozenset({Cap.FORWARD, Cap.ADJOINT, Cap.PINV, Cap.SVD, Cap.DIFFERENTIABLE})

    def __init__(self, shape: Sequence[int], kernels: Tensor | None = None, rcond: float = DEFAULT_RCOND):
        super().__init__(shape)
        rcond = float(rcond)
        if not 0.0 <= rcond < 1.0:
            raise OperatorError(f"rcond must be in [0, 1) (default {DEFAULT_RCOND}, DDRM's), got {rcond}")
        if kernels is not None and (
            kernels.dim() != 3 or kernels.shape[1] != kernels.shape[2] or kernels.shape[1] % 2 == 0
        ):
            raise OperatorError(f"kernels must be (B, K, K) with K odd, got {tuple(kernels.shape)}")
        self.rcond = rcond
        self._kernels = None if kernels is None else kernels.to(torch.float64)
        self._spectra: Tensor | None = None
        self._cache: dict[tuple[Any, ...], Tensor] = {}
        self._svd_cache: _CirculantSVD | None = None

    @property
    def measurement_shape(self) -> tuple[int, int, int]:
        return self.input_shape

    def kernels(self) -> Tensor:
        """The bound images' kernels (B, K, K), float64, in the order of the image ids given to `for_images`."""
        if self._kernels is None:
            raise OperatorError(
                f"the {self.task} operator has no kernels yet: call op.for_images(image_ids, seed) to draw each image's"
            )
        return self._kernels

    def spectra(self) -> Tensor:
        """k̂: (B, H, W//2+1) complex128, the rfft2 of each kernel placed around pixel (0, 0)."""
        if self._spectra is None:
            _, h, w = self.input_shape
            self._spectra = torch.fft.rfft2(embed_kernels(self.kernels(), h, w))
        return self._spectra

    def _filter(self, name: str, like: Tensor) -> Tensor:
        """A per-image spectral filter (B, 1, H, W//2+1) in like's complex dtype and device, cached."""
        key = (name, like.dtype, like.device)
        if key not in self._cache:
            spectra = self.spectra()
            if name == "adjoint":
                values = spectra.conj()
            elif name == "pinv":
                magnitude = spectra.abs()
                keep = magnitude > self.rcond * magnitude.flatten(1).max(dim=1).values[:, None, None]
                values = torch.where(keep, 1.0 / torch.where(keep, spectra, torch.ones_like(spectra)), 0.0)
            else:
                values = spectra
            dtype = torch.complex128 if like.dtype == torch.float64 else torch.complex64
            self._cache[key] = values[:, None].to(dtype=dtype, device=like.device)
        if like.shape[0] != self._cache[key].shape[0]:
            raise OperatorError(
                f"the {self.task} operator holds kernels for {self._cache[key].shape[0]} images but got a batch of "
                f"{like.shape[0]}; call op.for_images(image_ids, seed) with this batch's ids"
            )
        return self._cache[key]

    def _apply(self, t: Tensor, name: str) -> Tensor:
        _, h, w = self.input_shape
        return torch.fft.irfft2(torch.fft.rfft2(t) * self._filter(name, t), s=(h, w))

    def _forward(self, x: Tensor) -> Tensor:
        return self._apply(x, "forward")

    def _adjoint(self, y: Tensor) -> Tensor:
        return self._apply(y, "adjoint")

    def _pinv(self, y: Tensor) -> Tensor:
        return self._apply(y, "pinv")

    def _svd(self) -> _CirculantSVD:
        if self._svd_cache is None:
            self._svd_cache = _CirculantSVD(self)
        return self._svd_cache
