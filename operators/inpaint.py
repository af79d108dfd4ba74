"""Random inpainting: each image loses the same fraction of its pixels, on all channels.

The mask of an image comes from a generator seeded by (seed, image id), so an image gets the same mask
whatever batch it is in. Exactly round((1 - ratio) * H * W) pixels are kept per image (a random
permutation, not independent coin flips), so every image has the same number of observations and the SVD
has the same shape across a batch. The measurement keeps the image layout with zeros where pixels are
missing: A is a diagonal 0/1 projector, so A^T = A^+ = A.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from operators import register

from .base import SVD, Cap, Operator, OperatorError, seeded_generator


class _MaskSVD(SVD):
    """U and V are permutations putting each image's observed entries first; singular values are 1."""

    def __init__(self, op: MaskOperator):
        c, h, w = op.input_shape
        pixels = h * w
        observed = op.mask.reshape(op.mask.shape[0], pixels)  # (B, H*W) bool
        channel_offsets = torch.arange(c) * pixels
        rows = []
        for keep in observed:
            kept = keep.nonzero().flatten()
            dropped = (~keep).nonzero().flatten()
            rows.append(
                torch.cat([(channel_offsets[:, None] + kept).flatten(), (channel_offsets[:, None] + dropped).flatten()])
            )
        self.perm = torch.stack(rows)  # (B, N)
        self.num_observed = c * op.kept_pixels
        self.shape = op.input_shape
        self.singulars = torch.ones(self.num_observed, dtype=torch.float64)

    def vt(self, x: Tensor) -> Tensor:
        return torch.gather(x.flatten(1), 1, self.perm.to(x.device))

    def v(self, z: Tensor) -> Tensor:
        return torch.zeros_like(z).scatter(1, self.perm.to(z.device), z).reshape(-1, *self.shape)

    def ut(self, y: Tensor) -> Tensor:
        return self.vt(y)[:, : self.num_observed]

    def u(self, z: Tensor) -> Tensor:
        flat = z.new_zeros(z.shape[0], self.perm.shape[1])
        return flat.scatter(1, self.perm[:, : self.num_observed].to(z.device), z).reshape(-1, *self.shape)


class MaskOperator(Operator):
    """y = m * x for a per-image 0/1 mask m shared by the channels (True = observed): adjoint, pseudo-inverse
    and restriction are the same product, and the SVD is the mask's (`_MaskSVD`). Subclasses draw the masks
    in `for_images` and name what they draw (`what`, `mask_word`) for the messages."""

    capabilities = frozenset({Cap.FORWARD, Cap.ADJOINT, Cap.PINV, Cap.SVD, Cap.DIFFERENTIABLE})
    what = "the inpainting operator"
    mask_word = ("mask", "masks")

    def __init__(self, shape: Sequence[int], mask: Tensor | None = None):
        super().__init__(shape)
        self.mask = mask  # (B, 1, H, W) bool, or None until bound to images
        self._svd_cache: _MaskSVD | None = None

    @property
    def measurement_shape(self) -> tuple[int, int, int]:
        return self.input_shape

    def _bound_mask(self) -> Tensor:
        if self.mask is None:
            one, many = self.mask_word
            raise OperatorError(
                f"{self.what} has no {many} yet: call op.for_images(image_ids, seed) to draw each image's {one}"
            )
        return self.mask

    def _weights(self, t: Tensor) -> Tensor:
        if t.shape[0] != self._bound_mask().shape[0]:
            raise OperatorError(
                f"{self.what} holds {self.mask_word[1]} for {self.mask.shape[0]} images but got a batch of "
                f"{t.shape[0]}; call op.for_images(image_ids, seed) with this batch's ids"
            )
        return self._bound_mask().to(device=t.device, dtype=t.dtype)

    def _forward(self, x: Tensor) -> Tensor:
        return x * self._weights(x)

    _adjoint = _forward
    _pinv = _forward
    _restrict = _forward

    def _svd(self) -> _MaskSVD:
        self._bound_mask()
        if self._svd_cache is None:
            self._svd_cache = _MaskSVD(self)
        return self._svd_cache


class RandomInpainting(MaskOperator):
    """y = m * x with a random per-image mask m that drops `ratio` of the pixels (all channels alike)."""

    task = "inpaint"

    def __init__(self, shape: Sequence[int], ratio: float = 0.92, mask: Tensor | None = None):
        super().__init__(shape, mask)
        ratio = float(ratio)
        if not 0.0 <= ratio < 1.0:
            raise OperatorError(f"inpainting ratio (fraction of pixels masked) must be in [0, 1), got {ratio}")
        self.ratio = ratio
        _, h, w = self.input_shape
        self.kept_pixels = round((1.0 - ratio) * h * w)
        if self.kept_pixels < 1:
            raise OperatorError(f"ratio {ratio} keeps no pixel of a {h}x{w} image; lower the ratio")

    def params(self) -> dict[str, Any]:
        return {"ratio": self.ratio, "mask": "per image, seeded by (seed, image id)"}

    def for_images(self, image_ids: Sequence[str], seed: int) -> RandomInpainting:
        _, h, w = self.input_shape
        masks = []
        for image_id in image_ids:
            generator = seeded_generator(seed, str(image_id), "inpaint-mask")
            keep = torch.zeros(h * w, dtype=torch.bool)
            keep[torch.randperm(h * w, generator=generator)[: self.kept_pixels]] = True
            masks.append(keep.reshape(1, h, w))
        return RandomInpainting(self.input_shape, self.ratio, torch.stack(masks))


register("inpaint", RandomInpainting, "random inpainting: 92% of pixels masked, per-image mask", ratio=0.92)
