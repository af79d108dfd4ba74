"""Every registered operator is checked against the identities its capabilities promise.

The loops run over `operators.available()`, so a new operator is tested without editing this file.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.ndimage
import torch
from conftest import to_tensor
from PIL import Image

import operators
from operators import Cap, OperatorError

SHAPES = [(3, 32, 32), (1, 24, 40)]
IDS = ["img-a", "img-b"]


def make(task: str, shape=(3, 32, 32), ids=IDS, seed=0) -> operators.Operator:
    return operators.build(task, shape=shape).for_images(ids, seed)


def random_images(shape, n=2, seed=0, dtype=torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, *shape, generator=g, dtype=dtype) * 2 - 1


def smooth_images(shape, n=2, seed=0) -> torch.Tensor:
    """Random images low-pass filtered to look like photos (JPEG is close to idempotent on these)."""
    coarse = random_images((shape[0], shape[1] // 4, shape[2] // 4), n, seed)
    return torch.nn.functional.interpolate(coarse, size=shape[1:], mode="bilinear", align_corners=False)


def random_measurements(op, n=2, seed=1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, *op.measurement_shape, generator=g, dtype=torch.float64)


def tasks_with(cap: Cap) -> list[str]:
    return [t for t in operators.available() if cap in operators.build(t, shape=(3, 32, 32)).capabilities]


def compatible(task: str, shape) -> bool:
    try:
        operators.build(task, shape=shape)
    except OperatorError:
        return False
    return True


def shaped_cases(cap: Cap) -> list[tuple[str, tuple[int, int, int]]]:
    return [(t, s) for t in tasks_with(cap) for s in SHAPES if compatible(t, s)]


def test_registry_lists_the_six_tasks_with_declared_capabilities():
    assert operators.available()[:6] == ["sr4", "sr8", "gblur", "inpaint", "jpeg10", "denoise"]
    assert {"sr4-pool", "sr4-ddrm"} <= set(operators.available())  # I²SB's degradations
    for task in operators.available():
        op = operators.build(task, shape=(3, 64, 64))
        assert Cap.FORWARD in op.capabilities and isinstance(op.capabilities, frozenset)
        assert all(isinstance(c, Cap) for c in op.capabilities)
    linear = [t for t in operators.available()[:6] if operators.build(t, shape=(3, 64, 64)).linear]
    assert linear == ["sr4", "sr8", "gblur", "inpaint", "denoise"]
    assert operators.resolve_tasks("all") == ["sr4", "sr8", "gblur", "inpaint", "jpeg10"]


@pytest.mark.parametrize("task,shape", shaped_cases(Cap.ADJOINT))
def test_operator_adjointness(task, shape):
    op = make(task, shape)
    x, y = random_images(shape), random_measurements(op)
    lhs = (op(x) * y).flatten(1).sum(1)
    rhs = (x * op.adjoint(y)).flatten(1).sum(1)
    torch.testing.assert_close(lhs, rhs, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("task,shape", shaped_cases(Cap.PINV))
def test_operator_pinv_reproduces_the_measurement(task, shape):
    """A A+ A x = A x, up to the singular values the pseudo-inverse discards (each below rcond * s_max)."""
    op = make(task, shape)
    x = random_images(shape) if op.linear else smooth_images(shape)
    ax = op(x)
    residual = (op(op.pinv(ax)) - ax).flatten(1).norm(dim=1)
    if Cap.SVD in op.capabilities and op.linear:
        s = op.svd.singulars
        rcond = getattr(op, "rcond", 0.0)
        discarded = s[(s > 0) & (s <= rcond * s.max())]
        bound = (discarded.max().item() if discarded.numel() else 0.0) * x.flatten(1).norm(dim=1) + 1e-10
        assert torch.all(residual <= bound), (residual, bound)
    else:
        # Recompressing a decoded JPEG changes it only by re-rounding: within 2% of its norm.
        assert torch.all(residual <= 2e-2 * ax.flatten(1).norm(dim=1)), residual


@pytest.mark.parametrize("task,shape", shaped_cases(Cap.PINV))
def test_operator_pinv_is_idempotent_projection_on_natural_measurements(task, shape):
    """A+ A is a projector: applying A+ A twice changes nothing (Penrose condition A+ A A+ = A+)."""
    op = make(task, shape)
    if not op.linear:
        pytest.skip(f"{task} is not linear: A+ A is not a projector (see the A A+ A test)")
    x = random_images(shape)
    once = op.pinv(op(x))
    twice = op.pinv(op(once))
    torch.testing.assert_close(twice, once, rtol=0, atol=1e-8)


@pytest.mark.parametrize("task,shape", shaped_cases(Cap.SVD))
def test_operator_svd_reconstructs_forward_with_orthonormal_factors(task, shape):
    op = make(task, shape)
    svd = op.svd
    x = random_images(shape)
    n = math.prod(shape)
    s = svd.singulars_like(x)
    m = s.shape[-1]
    assert m <= n and torch.all(s >= 0)
    coeffs = svd.vt(x)
    assert coeffs.shape == (2, n)
    torch.testing.assert_close(svd.u(s * coeffs[:, :m]), op(x), rtol=0, atol=1e-12)
    # V orthogonal: V V^T x = x and norms are preserved.
    torch.testing.assert_close(svd.v(coeffs), x, rtol=0, atol=1e-12)
    torch.testing.assert_close(coeffs.norm(dim=1), x.flatten(1).norm(dim=1), rtol=1e-12, atol=0)
    # U orthonormal columns: U^T U z = z.
    z = torch.randn(2, m, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(svd.ut(svd.u(z)), z, rtol=0, atol=1e-12)
    # A^T = V S U^T where the operator has an adjoint.
    if Cap.ADJOINT in op.capabilities:
        y = random_measurements(op)
        padded = torch.cat([s * svd.ut(y), y.new_zeros(2, n - m)], dim=1)
        torch.testing.assert_close(svd.v(padded), op.adjoint(y), rtol=0, atol=1e-12)


# Operators whose forward pass quantises (their gradient is a straight-through surrogate); every other
# differentiable operator, linear or not (phase retrieval, HDR), is checked against finite differences.
ROUNDING = {"jpeg10"}


@pytest.mark.parametrize("task", tasks_with(Cap.DIFFERENTIABLE))
def test_operator_gradcheck(task):
    op = make(task, (1, 8, 16))
    if task in ROUNDING:
        pytest.skip(f"{task} rounds: finite differences of a step function are not its surrogate gradient")
    x = random_images((1, 8, 16)).requires_grad_(True)
    assert torch.autograd.gradcheck(op.forward, (x,), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("task", tasks_with(Cap.DIFFERENTIABLE))
def test_operator_gradient_reduces_data_misfit(task):
    """A gradient step on ||A(x) - y||^2 from a wrong image moves toward the measurement.

    For a rounding operator the loss is piecewise constant at small scales, so the best of a few step sizes
    along the negative gradient must reduce it by a real margin.
    """
    op = make(task, (3, 32, 32))
    truth, start = smooth_images((3, 32, 32), seed=0), smooth_images((3, 32, 32), seed=5)
    y = op(truth)
    x = start.clone().requires_grad_(True)
    loss = (op(x) - y).pow(2).sum()
    (grad,) = torch.autograd.grad(loss, x)
    assert grad.abs().sum() > 0
    direction = grad / grad.norm() * (x - truth).norm()
    with torch.no_grad():
        stepped = min((op(x - scale * direction) - y).pow(2).sum().item() for scale in (1e-2, 1e-1, 3e-1))
    assert stepped < 0.9 * loss.item()


@pytest.mark.parametrize("task", operators.available())
def test_operator_results_do_not_depend_on_the_batch(task):
    """Image b's measurement is the same alone or in a batch (per-image masks and noise)."""
    shape = (3, 32, 32)
    x = random_images(shape, n=3)
    ids = ["p", "q", "r"]
    batch_op = make(task, shape, ids=ids, seed=7)
    gens = operators.image_generators(7, ids, "noise")
    batched = batch_op.measure(x, 0.05, gens)
    alone_op = make(task, shape, ids=["q"], seed=7)
    alone = alone_op.measure(x[1:2], 0.05, operators.image_generators(7, ["q"], "noise"))
    torch.testing.assert_close(alone, batched[1:2], rtol=0, atol=1e-12)


@pytest.mark.parametrize("task", operators.available())
def test_operator_spec_is_json_and_identifies_the_operator(task):
    import json

    op = operators.build(task, shape=(3, 32, 32))
    spec = op.spec()
    assert json.loads(json.dumps(spec)) == spec
    assert spec["task"] == task and spec["shape"] == [3, 32, 32]


@pytest.mark.parametrize("task", operators.available())
def test_operator_rejects_a_tensor_of_the_wrong_shape(task):
    op = make(task, (3, 32, 32))
    with pytest.raises(OperatorError, match=r"shape \(B, 3, 32, 32\)"):
        op(torch.zeros(2, 3, 16, 16))
    with pytest.raises(OperatorError, match="shape"):
        op(torch.zeros(3, 32, 32))


# ----- noise convention ---------------------------------------------------------------------------


def test_add_noise_std_is_twice_sigma_on_the_minus_one_one_scale():
    y = torch.zeros(4, 3, 64, 64, dtype=torch.float64)
    noisy = operators.add_noise(y, 0.05, operators.image_generators(0, list("abcd"), "noise"))
    std = noisy.std().item()
    # 49152 draws: the sample std is within ~1% of 0.1 with overwhelming probability.
    assert abs(std - 0.1) < 0.003, std
    assert abs(noisy.mean().item()) < 0.003
    assert torch.equal(operators.add_noise(y, 0.0, operators.image_generators(0, list("abcd"), "noise")), y)


def test_add_noise_is_reproducible_per_image_and_independent_across_images():
    y = torch.zeros(2, 1, 8, 8)
    a = operators.add_noise(y, 0.1, operators.image_generators(3, ["x", "y"], "noise"))
    b = operators.add_noise(y, 0.1, operators.image_generators(3, ["x", "y"], "noise"))
    assert torch.equal(a, b)
    assert not torch.allclose(a[0], a[1])
    c = operators.add_noise(y, 0.1, operators.image_generators(4, ["x", "y"], "noise"))
    assert not torch.allclose(a, c)


def test_add_noise_rejects_negative_sigma_and_wrong_generator_count():
    y = torch.zeros(2, 1, 8, 8)
    with pytest.raises(OperatorError, match="sigma must be >= 0"):
        operators.add_noise(y, -0.1, operators.image_generators(0, ["a", "b"], "noise"))
    with pytest.raises(OperatorError, match="one generator per image"):
        operators.add_noise(y, 0.1, operators.image_generators(0, ["a"], "noise"))


def test_inpaint_measurement_noise_stays_on_observed_pixels():
    op = make("inpaint", (3, 32, 32))
    y = op.measure(torch.zeros(2, 3, 32, 32), 0.1, operators.image_generators(0, IDS, "noise"))
    mask = op.mask.expand_as(y)
    assert torch.all(y[~mask] == 0) and y[mask].std() > 0.15


# ----- task-specific facts and references -----------------------------------------------------------


def test_inpaint_masks_exactly_92_percent_on_all_channels_per_image():
    op = make("inpaint", (3, 50, 50), ids=["a", "b", "c"], seed=1)
    kept = op.mask.flatten(1).sum(1)
    assert torch.all(kept == round(0.08 * 2500))
    assert not torch.equal(op.mask[0], op.mask[1])
    y = op(torch.ones(3, 3, 50, 50))
    assert torch.equal(y[:, 0], y[:, 1]) and torch.equal(y[:, 1], y[:, 2])
    again = make("inpaint", (3, 50, 50), ids=["c"], seed=1)
    assert torch.equal(again.mask[0], op.mask[2])


def test_inpaint_unbound_operator_says_how_to_bind():
    op = operators.build("inpaint", shape=(3, 16, 16))
    with pytest.raises(OperatorError, match="for_images"):
        op(torch.zeros(1, 3, 16, 16))


def test_denoise_is_the_identity():
    x = random_images((3, 16, 16))
    assert torch.equal(make("denoise", (3, 16, 16))(x), x)


def _pil_resize_float(channel: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    return np.asarray(Image.fromarray(channel.astype(np.float32), mode="F").resize(size, Image.BICUBIC))


@pytest.mark.parametrize("factor", [4, 8])
def test_sr_matches_pil_bicubic_on_real_photos(kodak_photos, factor):
    """Interior pixels match PIL's antialiased bicubic (a = -0.5) to float32 precision.

    PIL renormalises its kernel at the border where we reflect, so the outer 2 output pixels of each edge
    (the kernel's reach) differ slightly; over the whole image the two agree to better than 45 dB PSNR.
    """
    op = operators.build(f"sr{factor}", shape=(3, 256, 256))
    for photo in kodak_photos[:6]:
        crop = photo[100:356, 100:356].astype(np.float64)
        ours = op(to_tensor(crop.astype(np.uint8)))[0].numpy()
        ours = (ours + 1) * 127.5
        reference = np.stack([_pil_resize_float(crop[..., c], (256 // factor,) * 2) for c in range(3)])
        interior = (slice(None), slice(2, -2), slice(2, -2))
        assert np.abs(ours[interior] - reference[interior]).max() < 2e-3  # in 0..255 units
        mse = np.mean((ours - reference) ** 2)
        assert 10 * np.log10(255**2 / mse) > 45


def test_gblur_matches_scipy_gaussian_filter_on_real_photos(kodak_photos):
    """scipy's 'mirror' boundary is torch's 'reflect'; truncate=10 std gives the same 61 taps."""
    op = operators.build("gblur", shape=(3, 128, 128))
    for photo in kodak_photos[:6]:
        crop = photo[200:328, 150:278]
        ours = op(to_tensor(crop))[0].numpy()
        image = to_tensor(crop)[0].numpy()
        reference = np.stack(
            [scipy.ndimage.gaussian_filter(ch, sigma=3.0, mode="mirror", truncate=10.0) for ch in image]
        )
        assert np.abs(ours - reference).max() < 1e-10


def test_gblur_kernel_is_61_taps_std_3_and_sums_to_one():
    from operators.separable import gaussian_kernel_1d

    kernel = gaussian_kernel_1d(61, 3.0)
    assert kernel.numel() == 61 and abs(kernel.sum().item() - 1) < 1e-12
    offsets = torch.arange(61, dtype=torch.float64) - 30
    assert abs(((offsets**2) * kernel).sum().sqrt().item() - 3.0) < 1e-6


def test_sr_pinv_is_a_sensible_upsampler_on_a_real_photo(kodak_photos):
    """A+ y of a smooth photo is close to the photo (far closer than a flat image)."""
    op = operators.build("sr4", shape=(3, 128, 128))
    x = to_tensor(kodak_photos[3][::3, ::3][:128, :128])
    restored = op.pinv(op(x))
    assert (restored - x).pow(2).mean() < 0.25 * (x - x.mean()).pow(2).mean()


# ----- errors ---------------------------------------------------------------------------------------


def test_build_suggests_the_closest_task_name():
    with pytest.raises(OperatorError, match=r"unknown task 'sr3'; did you mean 'sr4'\?.*available: sr4, sr8"):
        operators.build("sr3")
    with pytest.raises(OperatorError, match="unknown task 'bogus'"):
        operators.resolve_tasks("sr4,bogus")


def test_build_rejects_bad_parameters_and_shapes():
    with pytest.raises(OperatorError, match="not divisible by the SR factor 8"):
        operators.build("sr8", shape=(3, 60, 64))
    with pytest.raises(OperatorError, match="C in"):
        operators.build("denoise", shape=(2, 16, 16))
    with pytest.raises(OperatorError, match="unknown parameter for task 'gblur' 'sdt'; did you mean 'std'"):
        operators.build("gblur", shape=(3, 16, 16), sdt=2.0)
    with pytest.raises(OperatorError, match="ratio"):
        operators.build("inpaint", shape=(3, 16, 16), ratio=1.5)


def test_operator_without_a_capability_says_which_it_has():
    op = operators.build("jpeg10", shape=(3, 16, 16))
    with pytest.raises(OperatorError, match="has no svd"):
        op.svd  # noqa: B018
