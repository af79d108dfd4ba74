"""Box inpainting: a square-ish hole of a stated fraction of the image side, on all channels, per image.

DPS's setting (Chung et al. 2022, `util/img_utils.py`: `mask_generator(mask_type="box")` with
`mask_len_range=(128, 129)` and its default `margin=(16, 16)` at `image_size=256`): a 128×128 hole whose top-left
corner is `np.random.randint(16, 256 - 16 - 128)`, i.e. uniform over {16, …, 111}, rows and columns drawn
independently. Written as fractions of the side so that it works at any size:

    box side  h = round(size · H),  margin m = round(margin · H)   (size = 128/256 = 1/2, margin = 16/256 = 1/16)
    top       uniform over {m, …, H − m − h − 1}                    (numpy's randint excludes its upper bound)

and the same for columns with W (at 64²: a 32×32 hole, top in {4, …, 27}). `round` rounds halves up.
DAPS uses the same generator with margin 32/256 (top in {32, …, 95}); `margin=0.125` gives that. The
"centre" position puts the hole at ((H − h) // 2, (W − w) // 2) for every image.

The hole of an image comes from a generator seeded by (seed, image id), as inpainting masks do, so an image
gets the same hole in any batch. A is the diagonal 0/1 projector `x * mask`, so A^T = A^+ = A and the SVD is a
permutation with unit singular values (the one of `operators.inpaint`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from operators import register

from .base import OperatorError, seeded_generator
from .inpaint import MaskOperator

POSITIONS = ("random", "centre")
DPS_BOX_SIZE = 128 / 256  # DPS configs/inpainting_config.yaml: mask_len_range (128, 129) at image_size 256
DPS_BOX_MARGIN = 16 / 256  # DPS util/img_utils.py: mask_generator(margin=(16, 16)) at image_size 256


def _round_half_up(value: float) -> int:
    return int(math.floor(value + 0.5))


class BoxInpainting(MaskOperator):
    """y = m * x with m zero on one box per image (all channels): DPS's 128×128-of-256² hole, or its centred variant.

    x: (B, C, H, W) in [-1, 1] -> y: (B, C, H, W), zero inside the box.
    """

    task = "box-inpaint"
    what = "the box-inpainting operator"
    mask_word = ("box", "boxes")

    def __init__(
        self,
        shape: Sequence[int],
        size: float = DPS_BOX_SIZE,
        margin: float = DPS_BOX_MARGIN,
        position: str = "random",
        boxes: Sequence[tuple[int, int]] | None = None,
    ):
        super().__init__(shape)
        size, margin = float(size), float(margin)
        if position not in POSITIONS:
            raise OperatorError(f"box position must be one of {', '.join(POSITIONS)}, got {position!r}")
        if not 0.0 < size < 1.0:
            raise OperatorError(f"box size is a fraction of the image side in (0, 1) (DPS: 0.5), got {size}")
        if not 0.0 <= margin < 0.5:
            raise OperatorError(f"box margin is a fraction of the image side in [0, 0.5) (DPS: 1/16), got {margin}")
        _, h, w = self.input_shape
        self.size, self.margin, self.position = size, margin, position
        self.task = "box-inpaint" if position == "random" else "box-inpaint-centre"
        self.box_shape = (max(1, _round_half_up(size * h)), max(1, _round_half_up(size * w)))
        self.margins = (_round_half_up(margin * h), _round_half_up(margin * w))
        rows, columns = (
            ("rows", h, self.box_shape[0], self.margins[0]),
            ("columns", w, self.box_shape[1], self.margins[1]),
        )
        for axis, n, side, m in (rows, columns):
            if position == "random" and n - m - side <= m:
                raise OperatorError(
                    f"a box of {side} {axis} with margins of {m} leaves no position in {n} {axis}; "
                    "lower the box size or the margin"
                )
            if side >= n:
                raise OperatorError(f"a box of {side} {axis} hides every pixel of {n}; lower the box size")
        self.kept_pixels = h * w - self.box_shape[0] * self.box_shape[1]
        self.corners = None if boxes is None else [tuple(int(v) for v in b) for b in boxes]
        self.mask = None if self.corners is None else self._masks(self.corners)  # (B, 1, H, W) bool, True = kept

    def params(self) -> dict[str, Any]:
        where = "per image, seeded by (seed, image id)" if self.position == "random" else "centre"
        return {"size": self.size, "margin": self.margin, "position": where}

    def _corner(self, image_id: str, seed: int) -> tuple[int, int]:
        (_, h, w), (bh, bw), (mh, mw) = self.input_shape, self.box_shape, self.margins
        if self.position == "centre":
            return (h - bh) // 2, (w - bw) // 2
        generator = seeded_generator(seed, str(image_id), "box-inpaint-mask")
        top = int(torch.randint(mh, h - mh - bh, (), generator=generator))
        left = int(torch.randint(mw, w - mw - bw, (), generator=generator))
        return top, left

    def for_images(self, image_ids: Sequence[str], seed: int) -> BoxInpainting:
        corners = [self._corner(i, seed) for i in image_ids]
        return BoxInpainting(self.input_shape, self.size, self.margin, self.position, corners)

    def boxes(self) -> list[tuple[int, int, int, int]]:
        """Each bound image's hole as (top, left, height, width) in pixels, for the record."""
        self._bound_mask()
        return [(top, left, *self.box_shape) for top, left in self.corners]

    def _masks(self, corners: list[tuple[int, int]]) -> Tensor:
        _, h, w = self.input_shape
        bh, bw = self.box_shape
        masks = torch.ones(len(corners), 1, h, w, dtype=torch.bool)
        for b, (top, left) in enumerate(corners):
            masks[b, :, top : top + bh, left : left + bw] = False
        return masks


register("box-inpaint", BoxInpainting, "box inpainting: a half-side hole per image within DPS's margins")
register("box-inpaint-centre", BoxInpainting, "box inpainting: a half-side hole in the image centre", position="centre")
