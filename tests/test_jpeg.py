"""The jpeg10 operator against Pillow's JPEG codec on real photos, and its straight-through gradient.

Pillow (libjpeg-turbo) is the independent reference: a photo quantised to 8 bits is saved with quality 10 and
4:2:0 subsampling and decoded with Pillow's defaults, and the operator must reproduce that image.
"""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from conftest import to_tensor
from PIL import Image

import operators
from operators import Cap, OperatorError, jpeg
from operators.jpeg import JPEG, quantisation_table

# A few Kodak photos with different content (kodim01, 05, 13, 20); the operator codes them as one batch.
PHOTOS = (0, 4, 12, 19)


def pillow_jpeg(photo: np.ndarray, quality: int = 10) -> np.ndarray:
    """Save a uint8 (H, W, 3) or (H, W) array as JPEG with Pillow (4:2:0 for colour) and decode it."""
    buffer = io.BytesIO()
    options = {"subsampling": 2} if photo.ndim == 3 else {}
    Image.fromarray(photo).save(buffer, format="JPEG", quality=quality, **options)
    buffer.seek(0)
    return np.asarray(Image.open(buffer))


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(B, C, H, W) in [-1, 1] -> uint8 (B, H, W, C), or (B, H, W) for C = 1."""
    array = ((images.double() + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return array[..., 0] if array.shape[-1] == 1 else array


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return math.inf if mse == 0 else 10.0 * math.log10(255.0**2 / mse)


def crops(kodak_photos, mode: str, top: int, left: int, height: int, width: int) -> list[np.ndarray]:
    photos = [kodak_photos[i][top : top + height, left : left + width] for i in PHOTOS]
    if mode == "L":  # Pillow's own grayscale conversion, so both codecs see the same 8-bit image
        photos = [np.asarray(Image.fromarray(p).convert("L")) for p in photos]
    return photos


def jpeg_of(photos: list[np.ndarray], quality: int = 10) -> np.ndarray:
    """The operator applied to uint8 photos as one batch, back to uint8."""
    x = torch.cat([to_tensor(p, torch.float32) for p in photos])
    return to_uint8(JPEG(x.shape[1:], quality=quality)(x))


# (mode, crop top, left, height, width, PSNR floor). 123 x 77 is a multiple of neither 8 nor 16, so it tests
# the edge padding. Measured PSNRs (ours vs Pillow) for PHOTOS: RGB 256: 55.1, 57.5, 56.3, 72.6 dB;
# RGB 123x77: 50.3, 52.2, 49.7, 71.8; L 256: 55.1, 57.6, 56.2, 72.5; L 123x77: 50.3, 52.3, 49.7, 71.8.
PILLOW_CASES = [
    ("RGB", 120, 120, 256, 256, 53.0),
    ("RGB", 200, 150, 123, 77, 48.0),
    ("L", 120, 120, 256, 256, 53.0),
    ("L", 200, 150, 123, 77, 48.0),
]


@pytest.mark.parametrize("mode,top,left,height,width,floor", PILLOW_CASES)
def test_jpeg_matches_pillow_on_real_photos(kodak_photos, mode, top, left, height, width, floor):
    photos = crops(kodak_photos, mode, top, left, height, width)
    ours = jpeg_of(photos)
    for photo, our in zip(photos, ours, strict=True):
        reference = pillow_jpeg(photo)
        assert reference.shape == our.shape
        assert psnr(our, reference) >= floor, (mode, height, width, psnr(our, reference))
        # Most 8-bit values agree exactly (measured 97.8-99.6%): only coefficients that libjpeg's integer DCT
        # puts on the other side of a rounding boundary differ.
        assert np.mean(our == reference) > 0.97


@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_jpeg_loses_as_much_as_pillow_at_quality_10(kodak_photos, mode):
    photos = crops(kodak_photos, mode, 120, 120, 256, 256)
    for photo, our in zip(photos, jpeg_of(photos), strict=True):
        ours_error, pillow_error = psnr(our, photo), psnr(pillow_jpeg(photo), photo)
        assert abs(ours_error - pillow_error) < 0.05  # measured at most 0.003 dB
        assert ours_error < 30.0  # really quality 10: these crops land at 22.7-28.4 dB


def flat_images(seed: int = 0) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """All 256 grey levels as 8x8 images, and 100 random colours as 16x16 images."""
    colours = np.random.default_rng(seed).integers(0, 256, size=(100, 3), dtype=np.uint8)
    return [np.full((8, 8), v, np.uint8) for v in range(256)], [np.tile(c, (16, 16, 1)) for c in colours]


@pytest.mark.parametrize("quality", [3, 10, 50])
def test_jpeg_matches_pillow_exactly_on_flat_images(quality):
    """Flat blocks have only a DC coefficient, which both codecs compute without approximation, so every value
    must agree, including the many DC ties (k + 1/2) that libjpeg rounds away from zero and decodes half up."""
    for images in flat_images():
        ours = jpeg_of(images, quality)
        for image, our in zip(images, ours, strict=True):
            np.testing.assert_array_equal(our, pillow_jpeg(image, quality))


def test_jpeg_without_float64_gives_the_same_images(monkeypatch):
    """The float32 broadcast-sum DCT used on devices without float64 reproduces the float64 path."""
    generator = torch.Generator().manual_seed(4)
    coarse = torch.rand(4, 3, 12, 10, generator=generator)
    x = torch.nn.functional.interpolate(coarse, size=(48, 40), mode="bicubic", align_corners=False)
    x = ((x + 0.05 * torch.randn(x.shape, generator=generator)).clamp(0, 1) * 255).round() / 127.5 - 1
    op = JPEG((3, 48, 40))
    reference = to_uint8(op(x))
    _, colours = flat_images()
    flat_reference = jpeg_of(colours)
    monkeypatch.setattr(jpeg, "_NO_FLOAT64_DEVICES", frozenset({"cpu"}))
    assert np.mean(to_uint8(op(x)) == reference) > 0.999
    np.testing.assert_array_equal(jpeg_of(colours), flat_reference)


@pytest.mark.parametrize("quality", [1, 5, 10, 25, 50, 75, 95, 100])
def test_jpeg_quantisation_table_matches_pillow(quality):
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (90, 140, 200)).save(buffer, format="JPEG", quality=quality, subsampling=2)
    tables = Image.open(io.BytesIO(buffer.getvalue())).quantization  # natural (row-major) order
    assert quantisation_table(quality).flatten().tolist() == list(tables[0])
    assert quantisation_table(quality, chroma=True).flatten().tolist() == list(tables[1])


def test_jpeg_gradient_step_reduces_data_misfit_on_a_photo(kodak_photos):
    """Straight-through rounding gives ||A(x) - y||^2 a gradient that leads back to the measurement."""
    truth = to_tensor(kodak_photos[4][200:264, 200:264], torch.float32)
    op = operators.build("jpeg10", shape=(3, 64, 64))
    y = op(truth)
    generator = torch.Generator().manual_seed(0)
    x = (truth + 0.3 * torch.randn(truth.shape, generator=generator)).clamp(-1, 1).requires_grad_(True)
    loss = (op(x) - y).pow(2).sum()
    (grad,) = torch.autograd.grad(loss, x)
    assert (grad != 0).float().mean() > 0.9  # a hard torch.round would give exactly zero everywhere
    with torch.no_grad():
        stepped = (op(x - 0.25 * grad) - y).pow(2).sum()
    assert stepped < 0.3 * loss  # measured 0.13


def test_jpeg_gradient_passes_through_rounding_and_clipping():
    """For C = 1 the surrogate Jacobian is the identity, also where pixels lie beyond white or black."""
    generator = torch.Generator().manual_seed(6)
    x = (torch.rand(2, 1, 16, 24, generator=generator, dtype=torch.float64) * 4 - 2).requires_grad_(True)
    assert (x.abs() > 1).float().mean() > 0.4  # many pixels the codec clips
    op = JPEG((1, 16, 24))
    y = torch.zeros(2, 1, 16, 24, dtype=torch.float64)
    residual = op(x) - y
    (grad,) = torch.autograd.grad(residual.pow(2).sum(), x)
    torch.testing.assert_close(grad, 2 * residual.detach(), rtol=0, atol=1e-12)


def test_jpeg_surrogate_jacobian_is_the_codec_without_rounding():
    """The JVP is the identity for C = 1 and along grey directions, and close to it for smooth colour changes."""
    generator = torch.Generator().manual_seed(1)
    x = torch.rand(2, 3, 24, 40, generator=generator, dtype=torch.float64) * 2 - 1
    for quality in (100, 10):  # the surrogate does not depend on the quality
        grey_op, colour_op = JPEG((1, 24, 40), quality=quality), JPEG((3, 24, 40), quality=quality)
        v = torch.randn(2, 1, 24, 40, generator=generator, dtype=torch.float64)
        _, jv = torch.autograd.functional.jvp(grey_op.forward, x[:, :1], v)
        torch.testing.assert_close(jv, v, rtol=0, atol=1e-12)
        # R = G = B changes leave Cb and Cr unchanged (libjpeg's fixed-point weights sum exactly to 0 and 1).
        grey = v.expand(2, 3, 24, 40).contiguous()
        _, jv = torch.autograd.functional.jvp(colour_op.forward, x, grey)
        torch.testing.assert_close(jv, grey, rtol=0, atol=1e-12)
        coarse = torch.randn(2, 3, 3, 5, generator=generator, dtype=torch.float64)
        smooth = torch.nn.functional.interpolate(coarse, size=(24, 40), mode="bilinear", align_corners=False)
        _, jv = torch.autograd.functional.jvp(colour_op.forward, x, smooth)
        assert (jv - smooth).norm() < 0.1 * smooth.norm()  # only 4:2:0 chroma resampling differs (measured 0.05)


@pytest.mark.parametrize("mode,floor", [("RGB", 38.0), ("L", 55.0)])
def test_jpeg_quality_100_is_nearly_the_identity(kodak_photos, mode, floor):
    """At quality 100 (all table entries 1) only rounding and, in colour, 4:2:0 chroma subsampling remain."""
    photos = crops(kodak_photos, mode, 200, 200, 64, 64)
    for photo, our in zip(photos, jpeg_of(photos, quality=100), strict=True):
        assert psnr(our, photo) >= floor  # measured RGB 40.7-47.6 dB, L 58.3-58.7 dB
        # Pillow's integer DCT adds a little error of its own here: measured differences up to 0.26 dB.
        assert abs(psnr(our, photo) - psnr(pillow_jpeg(photo, quality=100), photo)) < 0.4


def test_jpeg_rejects_bad_quality():
    for quality in (0, 101, 10.5, True, "10"):
        with pytest.raises(OperatorError, match="quality must be an integer from 1 to 100"):
            JPEG((3, 16, 16), quality=quality)
    with pytest.raises(OperatorError, match="quality"):
        operators.build("jpeg10", shape=(3, 16, 16), quality=0)


def test_jpeg_rejects_a_tensor_of_the_wrong_shape():
    with pytest.raises(OperatorError, match=r"must have shape \(B, 3, 16, 16\)"):
        JPEG((3, 16, 16))(torch.zeros(1, 3, 16, 24))


def test_jpeg_image_output_does_not_depend_on_the_batch():
    generator = torch.Generator().manual_seed(2)
    x = torch.rand(3, 3, 20, 36, generator=generator) * 2 - 1
    op = JPEG((3, 20, 36))
    alone = op(x[1:2])
    assert torch.equal(op(x)[1:2], alone)
    others = torch.rand(3, 3, 20, 36, generator=generator) * 2 - 1
    others[1] = x[1]
    assert torch.equal(op(others)[1:2], alone)


def test_jpeg_runs_in_other_float_dtypes():
    """Sample arithmetic happens in float32 or wider, so the dtype changes only the output's precision."""
    generator = torch.Generator().manual_seed(3)
    x = (torch.rand(2, 3, 16, 24, generator=generator, dtype=torch.float64) * 255).round() / 127.5 - 1
    op = JPEG((3, 16, 24))
    reference = op(x.float())
    for dtype in (torch.float64, torch.float16):
        out = op(x.to(dtype))
        assert out.dtype == dtype
        torch.testing.assert_close(out.float(), reference, rtol=0, atol=1e-3)


def test_jpeg_interface_declares_pinv_and_its_parameters():
    op = operators.build("jpeg10", shape=(3, 32, 48))
    assert isinstance(op, JPEG) and not op.linear
    assert op.capabilities == {Cap.FORWARD, Cap.PINV, Cap.DIFFERENTIABLE}
    assert op.measurement_shape == (3, 32, 48)
    assert op.spec()["quality"] == 10 and op.spec()["rounding"] == "straight-through"
    assert JPEG((3, 32, 48), quality=50).spec() != op.spec()
    y = torch.rand(2, 3, 32, 48) * 2 - 1
    assert torch.equal(op.pinv(y), y)
