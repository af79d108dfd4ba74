"""Motion blur: a random camera-shake kernel per image (DPS's task), applied with a circular boundary.

Kernels: `operators.motion_kernels.motion_kernel`, DPS's generator (the `motionblur` package, intensity 0.5), one
per image, drawn from a generator seeded by (seed, image id), so an image's kernel is the same in any batch and
can be recomputed from the seed and id alone; `op.kernels()` returns them (B, K, K) for a runner to save.

Kernel size: DPS uses 61×61 at 256². At other sizes the kernel scales with the image: the odd integer nearest
to 61·min(H, W)/256, at least 3 (`kernel_size_for`: 31 at 128², 15 at 64², 7 at 32²). `size=` overrides it.

Boundary: CIRCULAR (periodic), so A is diagonalised by the 2-D DFT and has an exact SVD, adjoint and
pseudo-inverse (`operators.circulant`). DPS instead reflect-pads and applies `conv2d` (a correlation, i.e. the
convolution with the kernel rotated by 180°); the two differ within K/2 pixels of the border, and DPS's "adjoint"
returns its input unchanged. Ours is the true convolution, `scipy.ndimage.convolve(x, k, mode="wrap")`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from operators import register

from .base import OperatorError, seeded_generator
from .circulant import CircularConvolution
from .motion_kernels import DPS_INTENSITY, kernel_size_for, motion_kernel
from .separable import DEFAULT_RCOND

KERNEL_STREAM = "motion-blur-kernel"  # the generator stream an image's kernel is drawn from


class MotionBlur(CircularConvolution):
    """Random motion blur (DPS: 61×61 at 256², intensity 0.5), one kernel per image, circular boundary.

    x: (B, C, H, W) in [-1, 1] -> y: (B, C, H, W)."""

    task = "motion-blur"

    def __init__(
        self,
        shape: Sequence[int],
        intensity: float = DPS_INTENSITY,
        size: int | None = None,
        rcond: float = DEFAULT_RCOND,
        kernels: Tensor | None = None,
    ):
        super().__init__(shape, kernels, rcond)
        _, h, w = self.input_shape
        self.intensity = float(intensity)
        self.size = kernel_size_for(h, w) if size is None else int(size)
        if self.size < 3 or self.size % 2 == 0:
            raise OperatorError(f"motion-blur kernel size must be an odd integer >= 3 (or None: scaled), got {size}")
        if not 0.0 <= self.intensity <= 1.0:
            raise OperatorError(f"motion-blur intensity must lie in [0, 1] (DPS: 0.5), got {intensity}")

    def params(self) -> dict[str, Any]:
        return {
            "size": self.size,
            "intensity": self.intensity,
            "kernel": "per image, seeded by (seed, image id); Boracchi-Foi trajectory as DPS's motionblur",
            "boundary": "circular",
            "rcond": self.rcond,
        }

    def kernel_for(self, image_id: str, seed: int) -> Tensor:
        """The (K, K) float64 kernel of one image, from (seed, image id) alone."""
        return motion_kernel(self.size, self.intensity, seeded_generator(seed, str(image_id), KERNEL_STREAM))

    def for_images(self, image_ids: Sequence[str], seed: int) -> MotionBlur:
        kernels = torch.stack([self.kernel_for(i, seed) for i in image_ids])
        return MotionBlur(self.input_shape, self.intensity, self.size, self.rcond, kernels)


register(
    "motion-blur",
    MotionBlur,
    "motion blur: DPS's random trajectory kernel per image (61x61 at 256², scaled), circular boundary",
)
