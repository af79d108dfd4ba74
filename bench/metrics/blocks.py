"""Blockiness: whether an estimate is a mosaic of the measurement's blocks (an SR factor's, JPEG's 8×8 DCT).

PSNR rewards a mosaic of flat blocks that each hit the right mean; this measure names it. Neighbouring pixels
differ across the block grid's edges and inside the blocks; the measure is the mean absolute difference across
the edges over the mean inside (both directions pooled), each plus one 8-bit level so that a flat image reads 1
and a mosaic of perfectly flat blocks a finite number. About 1 for photos (their edges fall anywhere), well
above 1 for a mosaic.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bench.metrics import metric

if TYPE_CHECKING:
    from torch import Tensor

    from operators import Operator

#: One 8-bit level on [-1, 1]: differences below it vanish when the image is saved.
LEVEL = 2.0 / 255.0


@metric(
    "blockiness", higher_is_better=False, scope="image",
    description="mean |difference| of neighbours across the measurement's block grid over that inside the blocks "
    "(about 1 for photos)",
    label="blockiness", decimals=2, in_quality_table=False, uses_measurement=True,
    flag=(">", 1.5, "a block mosaic: neighbours differ {value:.1f}× as much across the block grid as inside it"),
)  # fmt: skip
def blockiness(op: Operator, x_hat: Tensor, y: Tensor) -> Tensor:
    """(B,) (across + L) / (inside + L): the mean absolute difference of neighbouring pixels whose pair crosses
    an edge of the operator's block grid (`Operator.block_size`, aligned with the top-left corner), and of
    those inside one block, pooled over both directions and the channels; L is one 8-bit level (2/255).

    NaN where the operator has no block grid or the image is smaller than two blocks. y is not used (the
    metric needs the operator's blocks, which is why it takes the measurement's arguments). The estimate is
    clamped to [-1, 1], as saved.
    """
    import torch

    from bench.metrics.images import check_images

    x_hat = check_images(x_hat, "estimate").detach().double().clamp(-1, 1)
    size = getattr(op, "block_size", None)
    batch = x_hat.shape[0]
    if not size or size < 2 or min(x_hat.shape[-2:]) < 2 * size:
        return torch.full((batch,), float("nan"), dtype=torch.float32, device=x_hat.device)
    across_sum = across_count = inside_sum = inside_count = 0.0
    for dim in (-1, -2):
        difference = x_hat.diff(dim=dim).abs()  # index i: pixel i + 1 minus pixel i
        edge = (torch.arange(difference.shape[dim], device=x_hat.device) + 1) % size == 0
        shape = [1, 1, 1, 1]
        shape[dim] = -1
        edge = edge.reshape(shape).expand_as(difference)
        per_image = difference[0].numel()
        across_sum = across_sum + (difference * edge).flatten(1).sum(1)
        inside_sum = inside_sum + (difference * ~edge).flatten(1).sum(1)
        across_count += int(edge[0].sum())
        inside_count += per_image - int(edge[0].sum())
    ratio = (across_sum / across_count + LEVEL) / (inside_sum / inside_count + LEVEL)
    return torch.where(ratio.isfinite(), ratio, torch.full_like(ratio, float("nan"))).float()
