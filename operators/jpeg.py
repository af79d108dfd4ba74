"""JPEG compression at a fixed quality as a forward operator: A(x) is the image decoded from x's JPEG file.

The codec is baseline JPEG as libjpeg (and so Pillow) writes and reads it, re-done in torch so that it runs
batched on any device and dtype and can be differentiated:

  encode  [-1, 1] -> 8-bit RGB -> YCbCr (JFIF full-range BT.601 in libjpeg's 16-bit fixed point, bit-exact)
          -> chroma 2x2 averaged (4:2:0, libjpeg's alternating 1/2 rounding bias)
          -> each plane padded to whole 8x8 blocks by repeating its last row / column, where libjpeg's encoder does
          -> level shift by 128 -> 8x8 DCT-II at libjpeg's scale (8 x orthonormal), rounded to integers
          -> divide by 8 x the quantisation table, round half away from zero
  decode  multiply by the table -> inverse DCT -> +128, round, clip to [0, 255] -> crop
          -> chroma upsampled by libjpeg's "fancy" triangular filter (3/4, 1/4 both ways; what Pillow decodes with)
          -> RGB (libjpeg's fixed point), clip to [0, 255] -> [-1, 1]
  C = 1 images are coded as one luma plane (Pillow's mode "L"): no colour transform, no subsampling.

The quantisation tables are the example tables of the JPEG standard (ITU-T T.81 Annex K, which libjpeg ships),
scaled as libjpeg's `jpeg_quality_scaling` and `jpeg_add_quant_table` scale them, baseline (entries clipped to
[1, 255]); `quantisation_table` returns them.

Gradients. Rounding has a zero derivative almost everywhere, so an exact codec would hand gradient-based
solvers (DPS and its relatives, which differentiate ||y - A(x0(x_t))||^2) no data-consistency signal at all.
Every rounding step is therefore straight-through: its forward value is the rounded one, and the backward pass
treats it as the identity. The clips to [0, 255] are straight-through as well, so that a pixel a solver pushes
past white is still pulled back by the loss (a hard clip has zero gradient outside the range). The gradient is
thus that of the codec without rounding or clipping, a linear map independent of the quality: the identity for
C = 1, and for colour the YCbCr transform, chroma averaging, chroma upsampling and the inverse transform (the
DCT, the division by the table and their inverses cancel).

Fidelity. The colour transforms, chroma resampling, table scaling and the rounding of DCT coefficients to
integers at libjpeg's scale (8 x orthonormal) follow libjpeg's integer arithmetic exactly. The DCTs themselves
are exact transforms (float64 products; float32 sums on devices without float64), whereas libjpeg uses 13-bit
integer approximations (its default "islow" method), so now and then a coefficient lands in the neighbouring
quantisation bin.
Against Pillow 13.0 (libjpeg-turbo 3.2) at quality 10, 4:2:0, on the 24 Kodak photos (500 x 500): PSNR
between this operator's output and Pillow's decoded file is 58.35 dB mean, 53.67 dB min in colour and 58.44 dB
mean, 53.69 dB min in grayscale; 99.3% of the 8-bit values are identical. Both codecs are about 26.6 dB (colour)
and 28.0 dB (grayscale) from the original photos, equal to within 0.01 dB.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from operators import register

from .base import Cap, Operator, OperatorError

__all__ = ["IJG_CHROMINANCE_TABLE", "IJG_LUMINANCE_TABLE", "JPEG", "quantisation_table"]

BLOCK = 8  # the JPEG DCT block size

# ITU-T T.81 Annex K, tables K.1 and K.2, in natural (row-major) order.
IJG_LUMINANCE_TABLE: tuple[int, ...] = (
    16, 11, 10, 16, 24, 40, 51, 61,
    12, 12, 14, 19, 26, 58, 60, 55,
    14, 13, 16, 24, 40, 57, 69, 56,
    14, 17, 22, 29, 51, 87, 80, 62,
    18, 22, 37, 56, 68, 109, 103, 77,
    24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101,
    72, 92, 95, 98, 112, 100, 103, 99,
)  # fmt: skip
IJG_CHROMINANCE_TABLE: tuple[int, ...] = (
    17, 18, 24, 47, 99, 99, 99, 99,
    18, 21, 26, 66, 99, 99, 99, 99,
    24, 26, 56, 99, 99, 99, 99, 99,
    47, 66, 99, 99, 99, 99, 99, 99,
    99, 99, 99, 99, 99, 99, 99, 99,
    99, 99, 99, 99, 99, 99, 99, 99,
    99, 99, 99, 99, 99, 99, 99, 99,
    99, 99, 99, 99, 99, 99, 99, 99,
)  # fmt: skip

# libjpeg converts colours in 16-bit fixed point, FIX(c) = round(c * 2^16), and descales with an arithmetic shift.
# Its SIMD versions are bit-exact with this, so integer arithmetic here reproduces Pillow's samples exactly.
_SCALE_BITS = 16
_HALF = 1 << (_SCALE_BITS - 1)


def _fix(c: float) -> int:
    return int(c * (1 << _SCALE_BITS) + 0.5)


# (weights on R, G, B; offset added before the shift) for Y, Cb, Cr. Chroma is centred on 128 and rounds
# with ONE_HALF - 1 so that it never reaches 256.
_RGB_TO_YCBCR: tuple[tuple[tuple[int, int, int], int], ...] = (
    ((_fix(0.29900), _fix(0.58700), _fix(0.11400)), _HALF),
    ((-_fix(0.16874), -_fix(0.33126), _fix(0.50000)), (128 << _SCALE_BITS) + _HALF - 1),
    ((_fix(0.50000), -_fix(0.41869), -_fix(0.08131)), (128 << _SCALE_BITS) + _HALF - 1),
)
_CR_TO_R, _CB_TO_G, _CR_TO_G, _CB_TO_B = _fix(1.40200), -_fix(0.34414), -_fix(0.71414), _fix(1.77200)


def quantisation_table(quality: int, chroma: bool = False) -> Tensor:
    """The 8x8 baseline quantisation table libjpeg uses at `quality` (1..100), as an int64 tensor (8, 8).

    Scaling as libjpeg's `jpeg_quality_scaling`: scale = 5000 / q for q < 50, else 200 - 2q (percent);
    entry = (base * scale + 50) // 100, clipped to [1, 255] (baseline JPEG stores 8-bit entries).
    """
    quality = _check_quality(quality)
    scale = 5000 // quality if quality < 50 else 200 - 2 * quality
    base = IJG_CHROMINANCE_TABLE if chroma else IJG_LUMINANCE_TABLE
    entries = [min(max((b * scale + 50) // 100, 1), 255) for b in base]
    return torch.tensor(entries, dtype=torch.int64).reshape(BLOCK, BLOCK)


def _check_quality(quality: Any) -> int:
    if isinstance(quality, bool) or not isinstance(quality, numbers.Integral) or not 1 <= int(quality) <= 100:
        raise OperatorError(f"JPEG quality must be an integer from 1 to 100 (libjpeg's scale), got {quality!r}")
    return int(quality)


# ----- straight-through steps: exact forward value, identity backward -------------------------------------------
def _with_value(x: Tensor, value: Tensor) -> Tensor:
    """A tensor equal to `value` whose gradient is that of `x`.

    Written as value + (x - x) rather than x + (value - x) so that the forward value is exactly `value`: the
    latter can miss an integer by an ulp when x is far from it (a clip of a wildly out-of-range pixel).
    """
    return value.detach().to(x.dtype) + (x - x.detach())


def _straight_through(x: Tensor, value: Callable[[Tensor], Tensor]) -> Tensor:
    return _with_value(x, value(x.detach()))


def _round(x: Tensor) -> Tensor:
    """Round half up, as libjpeg's fixed-point descaling (x + 2^(n-1)) >> n does."""
    return _straight_through(x, lambda v: torch.floor(v + 0.5))


def _quantise(x: Tensor) -> Tensor:
    """Round half away from zero, as libjpeg's quantiser does."""
    return _straight_through(x, lambda v: torch.sign(v) * torch.floor(v.abs() + 0.5))


def _floor(x: Tensor) -> Tensor:
    return _straight_through(x, torch.floor)


def _clip_8bit(x: Tensor) -> Tensor:
    return _straight_through(x, lambda v: v.clamp(0.0, 255.0))


# ----- planes: (B, H, W) float tensors of 8-bit sample values ------------------------------------------------------
def _pad_edges(plane: Tensor, height: int, width: int) -> Tensor:
    """Extend a plane to (height, width) by repeating its last row and last column."""
    pad_h, pad_w = height - plane.shape[-2], width - plane.shape[-1]
    if pad_h:
        plane = torch.cat([plane, plane[..., -1:, :].expand(*plane.shape[:-2], pad_h, plane.shape[-1])], dim=-2)
    if pad_w:
        plane = torch.cat([plane, plane[..., :, -1:].expand(*plane.shape[:-1], pad_w)], dim=-1)
    return plane


def _round_up(n: int, multiple: int) -> int:
    return multiple * math.ceil(n / multiple)


def _dct_basis(dtype: torch.dtype, device: torch.device) -> Tensor:
    """sqrt(8) times the orthonormal 8-point DCT-II matrix, rows indexed by frequency: S[u, n].

    This is libjpeg's scale (its DCT outputs are 8 times the orthonormal coefficients), and in it rows 0 and 4 are
    exactly +-1, so the four coefficients at frequencies (0 or 4, 0 or 4), DC among them, are integer sums computed
    without rounding error. Their quantisation ties (k + 1/2) are common at low quality and then break exactly as
    libjpeg breaks them, whatever order the device sums in.
    """
    n = torch.arange(BLOCK, dtype=torch.float64)
    basis = math.sqrt(2.0) * torch.cos(math.pi * (2 * n[None, :] + 1) * n[:, None] / (2 * BLOCK))
    basis[0] = 1.0
    basis[4] = torch.sign(basis[4])
    return basis.to(dtype=dtype, device=device)


# Devices without float64 arithmetic; there the transforms use float32 broadcast sums instead.
_NO_FLOAT64_DEVICES = frozenset({"mps"})


def _transform_blocks(blocks: Tensor, left: Tensor, right: Tensor) -> Tensor:
    """left @ block @ right^T for every 8x8 block of (B, I, 8, J, 8), in blocks' dtype.

    The products run in float64, or as broadcast float32 sums where the device has no float64: a float32 matrix
    product may run in reduced precision (TF32 on GPUs when enabled, which most diffusion code enables), and that
    moves coefficients across rounding boundaries.
    """
    if blocks.device.type in _NO_FLOAT64_DEVICES:
        return _transform_blocks_broadcast(blocks, left, right)
    wide = torch.einsum("uh,bihjw,vw->biujv", left.double(), blocks.double(), right.double())
    return wide.to(blocks.dtype)


def _transform_blocks_broadcast(blocks: Tensor, left: Tensor, right: Tensor) -> Tensor:
    """`_transform_blocks` as elementwise products and sums in blocks' dtype (8x the memory, no matrix product)."""
    rows = (blocks.unsqueeze(-2) * right).sum(-1)  # (B, I, h, J, v)
    return (left[:, :, None, None] * rows.unsqueeze(2)).sum(3)  # (B, I, u, J, v)


def _code_plane(plane: Tensor, table: Tensor) -> Tensor:
    """Encode and decode one plane whose sides are multiples of 8: DCT, quantise, dequantise, inverse DCT."""
    batch, height, width = plane.shape
    basis = _dct_basis(plane.dtype, plane.device)
    blocks = (plane - 128.0).reshape(batch, height // BLOCK, BLOCK, width // BLOCK, BLOCK)
    # libjpeg's DCT hands the quantiser integers (8 x the orthonormal coefficients, rounded): round likewise, so
    # that a coefficient within 1/2 of a bin edge rounds as libjpeg's does.
    coefficients = _round(_transform_blocks(blocks, basis, basis))
    table = table.to(dtype=plane.dtype, device=plane.device)[:, None, :]  # broadcast as (u, j, v)
    dequantised = _quantise(coefficients / (8.0 * table)) * table
    decoded = _transform_blocks(dequantised, basis.T, basis.T) / 8.0  # basis^T c basis / 8 inverts the scaled DCT
    return _clip_8bit(_round(decoded.reshape(batch, height, width) + 128.0))


def _downsample_2x2(plane: Tensor) -> Tensor:
    """libjpeg's h2v2 chroma downsampling of an (B, H, W) plane to (B, ceil(H/2), 8 * ceil(W/16)).

    Columns are repeated out to whole chroma blocks before averaging and rows only to an even count, as libjpeg's
    encoder does; the rounding bias alternates 1, 2, 1, 2, ... along a row so that ties do not all round one way.
    """
    height, width = plane.shape[-2:]
    plane = _pad_edges(plane, _round_up(height, 2), _round_up(width, 2 * BLOCK))
    sums = plane[..., 0::2, 0::2] + plane[..., 0::2, 1::2] + plane[..., 1::2, 0::2] + plane[..., 1::2, 1::2]
    bias = 1.0 + (torch.arange(sums.shape[-1], device=plane.device) % 2).to(plane.dtype)
    return _floor((sums + bias) / 4.0)


def _upsample_2x2(plane: Tensor, height: int, width: int) -> Tensor:
    """libjpeg's "fancy" h2v2 upsampling of (B, h, w) to (B, 2h, 2w), cropped to (height, width).

    Each output sample weighs its nearest input 3/4 and the next nearest 1/4 in each direction (edges repeated),
    in libjpeg's integer arithmetic: biases 8 and 7 on alternate columns, then division by 16.
    """
    above = torch.cat([plane[..., :1, :], plane[..., :-1, :]], dim=-2)
    below = torch.cat([plane[..., 1:, :], plane[..., -1:, :]], dim=-2)
    rows = []
    for column_sums in (3.0 * plane + above, 3.0 * plane + below):
        left = torch.cat([column_sums[..., :1], column_sums[..., :-1]], dim=-1)
        right = torch.cat([column_sums[..., 1:], column_sums[..., -1:]], dim=-1)
        even = _floor((3.0 * column_sums + left + 8.0) / 16.0)
        odd = _floor((3.0 * column_sums + right + 7.0) / 16.0)
        rows.append(torch.stack([even, odd], dim=-1).flatten(-2))
    batch, h, w = plane.shape
    return torch.stack(rows, dim=-2).reshape(batch, 2 * h, 2 * w)[..., :height, :width]


# ----- colour: libjpeg's fixed-point transforms, with the real-valued transform's gradient ------------------------
def _integers(x: Tensor) -> Tensor:
    return x.detach().round().to(torch.int64)


def _rgb_to_ycbcr(rgb: Tensor) -> list[Tensor]:
    """Integer-valued RGB (B, 3, H, W) in [0, 255] -> [Y, Cb, Cr], each (B, H, W), integer-valued in [0, 255]."""
    channels = rgb.unbind(dim=1)
    exact = [_integers(c) for c in channels]
    planes = []
    for weights, offset in _RGB_TO_YCBCR:
        linear = sum(w / (1 << _SCALE_BITS) * c for w, c in zip(weights, channels, strict=True))
        linear = linear + float(offset >> _SCALE_BITS)
        value = (sum(w * c for w, c in zip(weights, exact, strict=True)) + offset) >> _SCALE_BITS
        planes.append(_with_value(linear, value))
    return planes


def _ycbcr_to_rgb(luma: Tensor, blue_diff: Tensor, red_diff: Tensor) -> Tensor:
    """Integer-valued Y, Cb, Cr planes (B, H, W) -> RGB (B, 3, H, W), integer-valued, not yet clipped."""
    cb, cr = blue_diff - 128.0, red_diff - 128.0
    cb_int, cr_int = _integers(cb), _integers(cr)
    scale = float(1 << _SCALE_BITS)
    red = _with_value(_CR_TO_R / scale * cr, (_CR_TO_R * cr_int + _HALF) >> _SCALE_BITS)
    green = _with_value(
        (_CB_TO_G * cb + _CR_TO_G * cr) / scale, (_CB_TO_G * cb_int + _CR_TO_G * cr_int + _HALF) >> _SCALE_BITS
    )
    blue = _with_value(_CB_TO_B / scale * cb, (_CB_TO_B * cb_int + _HALF) >> _SCALE_BITS)
    return torch.stack([luma + red, luma + green, luma + blue], dim=1)


class JPEG(Operator):
    """JPEG compression at a fixed quality: (B, C, H, W) in [-1, 1] -> the decoded image, same shape and range.

    Not linear. The forward value is the libjpeg round trip (see the module docstring for what matches libjpeg
    and how closely); gradients pass straight through the rounding and clipping steps. The pseudo-inverse is the
    identity: the decoded image is already the natural estimate of the original.
    """

    task = "jpeg10"
    linear = False
    block_size = 8  # the DCT's 8x8 blocks (chroma's, at 4:2:0, are 16x16 and share their edges)
    capabilities = frozenset({Cap.FORWARD, Cap.PINV, Cap.DIFFERENTIABLE})

    def __init__(self, shape: Sequence[int], quality: int = 10):
        super().__init__(shape)
        self.quality = _check_quality(quality)
        self.luma_table = quantisation_table(self.quality, chroma=False)
        self.chroma_table = quantisation_table(self.quality, chroma=True)

    @property
    def measurement_shape(self) -> tuple[int, ...]:
        return self.input_shape

    def params(self) -> dict[str, Any]:
        return {
            "quality": self.quality,
            "tables": "IJG Annex K, libjpeg scaling, baseline",
            "subsampling": "4:2:0",
            "chroma_upsampling": "libjpeg fancy (triangular)",
            "rounding": "straight-through",
            "clipping": "straight-through",
        }

    def _forward(self, x: Tensor) -> Tensor:
        # Integer-valued sample arithmetic needs float32 at least: half precision cannot hold the sums exactly.
        work_dtype = torch.promote_types(x.dtype, torch.float32)
        # The codec's 8-bit scale: [-1, 1] -> [0, 255], then the 8-bit quantisation of saving an image.
        samples = _clip_8bit(_round((x.to(work_dtype) + 1.0) * 127.5))
        height, width = self.input_shape[1:]
        if self.input_shape[0] == 1:
            decoded = self._code(samples[:, 0], self.luma_table, height, width)[:, None]
        else:
            decoded = self._code_colour(samples, height, width)
        return (decoded / 127.5 - 1.0).to(x.dtype)

    def _code(self, plane: Tensor, table: Tensor, height: int, width: int) -> Tensor:
        padded = _pad_edges(plane, _round_up(plane.shape[-2], BLOCK), _round_up(plane.shape[-1], BLOCK))
        return _code_plane(padded, table)[..., :height, :width]

    def _code_colour(self, rgb: Tensor, height: int, width: int) -> Tensor:
        luma, blue_diff, red_diff = _rgb_to_ycbcr(rgb)
        luma = self._code(luma, self.luma_table, height, width)
        chroma_height, chroma_width = math.ceil(height / 2), math.ceil(width / 2)
        blue_diff, red_diff = (
            _upsample_2x2(self._code(_downsample_2x2(p), self.chroma_table, chroma_height, chroma_width), height, width)
            for p in (blue_diff, red_diff)
        )
        return _clip_8bit(_ycbcr_to_rgb(luma, blue_diff, red_diff))

    def _pinv(self, y: Tensor) -> Tensor:
        return y.clone()


register("jpeg10", JPEG, "JPEG quality 10 (YCbCr, 4:2:0, 8x8 DCT, IJG tables), straight-through rounding", quality=10)
