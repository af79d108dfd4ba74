"""Phase retrieval: the magnitude of the Fourier transform of the zero-padded image (DPS's setting).

DPS (`guided_diffusion/measurements.py`, `PhaseRetrievalOperator`, configs/phase_retrieval_config.yaml with
oversample 2.0): pad every side by p = int(oversample / 8 · 256) = 64 pixels, take the centred orthonormal 2-D
DFT (`fft2c`: ifftshift, `fft2(norm="ortho")`, fftshift) and keep its magnitude. Here p scales with the image:
p_H = int(oversample · H / 8) rows above and below, p_W = int(oversample · W / 8) columns left and right (DAPS's
generalisation), so at 64² the padded image is 96² (1.5× the side, 2.25× the pixels, at "oversampling 2.0").

    y = |fftshift(F_ortho(pad(x)))|,  x: (B, C, H, W),  y: (B, C, H + 2 p_H, W + 2 p_W), y >= 0 before noise.

The input shift of `fft2c` only changes phases, so it is left out; the output shift puts the DC term at
(H/2 + p_H, W/2 + p_W) as in DPS's measurements. The orthonormal DFT keeps norms: ‖y‖ = ‖x‖ (Parseval).

Image range: DPS applies this to the [-1, 1] image as it is ("minus-one-one", the default here); DAPS first maps
it to [0, 1] ("zero-one": (x + 1) / 2), which makes the image non-negative and removes the x ↔ −x ambiguity of
the magnitude. Noise is added to the magnitudes with the project's convention (std 2σ, `add_noise`); DPS's config
uses Poisson noise for this task instead.

Nonlinear; differentiable (|z| has gradient z/|z|, 0 at z = 0). No adjoint, pseudo-inverse or SVD: A⁺ is not
defined for a magnitude measurement, so solvers that need it report the task as unsupported.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from operators import register

from .base import Cap, Operator, OperatorError

DPS_OVERSAMPLE = 2.0  # DPS configs/phase_retrieval_config.yaml (and DAPS configs/task/phase_retrieval.yaml)
DOMAINS = ("minus-one-one", "zero-one")


class PhaseRetrieval(Operator):
    """y = |F(pad(x))| (DPS: oversampling 2.0, centred orthonormal DFT), on the [-1, 1] image by default."""

    task = "phase-retrieval"
    capabilities = frozenset({Cap.FORWARD, Cap.DIFFERENTIABLE})
    linear = False

    def __init__(self, shape: Sequence[int], oversample: float = DPS_OVERSAMPLE, domain: str = "minus-one-one"):
        super().__init__(shape)
        oversample = float(oversample)
        if not oversample >= 0.0:
            raise OperatorError(f"phase-retrieval oversample must be >= 0 (DPS: 2.0), got {oversample}")
        if domain not in DOMAINS:
            raise OperatorError(
                f"phase-retrieval domain must be one of {', '.join(DOMAINS)} (DPS: minus-one-one, DAPS: zero-one), "
                f"got {domain!r}"
            )
        _, h, w = self.input_shape
        self.oversample, self.domain = oversample, domain
        self.padding = (int(oversample * h / 8), int(oversample * w / 8))

    @property
    def measurement_shape(self) -> tuple[int, int, int]:
        c, h, w = self.input_shape
        ph, pw = self.padding
        return (c, h + 2 * ph, w + 2 * pw)

    def params(self) -> dict[str, Any]:
        return {
            "oversample": self.oversample,
            "padding": list(self.padding),
            "domain": self.domain,
            "transform": "centred orthonormal DFT magnitude",
        }

    def _forward(self, x: Tensor) -> Tensor:
        if self.domain == "zero-one":
            x = (x + 1.0) / 2.0
        ph, pw = self.padding
        padded = torch.nn.functional.pad(x, (pw, pw, ph, ph))
        spectrum = torch.fft.fftshift(torch.fft.fft2(padded, norm="ortho"), dim=(-2, -1))
        return spectrum.abs()


register("phase-retrieval", PhaseRetrieval, "phase retrieval: |FFT| of the zero-padded image, oversampling 2.0 (DPS)")
