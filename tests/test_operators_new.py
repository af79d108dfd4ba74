"""The tasks other papers compare on (issue 24): box inpainting, motion blur, colourisation, phase retrieval, HDR.

Each operator is checked against a reference that does not share its code: dense matrices and numpy's SVD /
pseudo-inverse, scipy's wrap-around convolution, numpy's FFT, and the definitions written out in numpy.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.ndimage
import torch

import operators
from operators import Cap, OperatorError
from operators.motion_kernels import kernel_size_for, motion_kernel

NEW_TASKS = ["box-inpaint", "box-inpaint-centre", "motion-blur", "colorize", "phase-retrieval", "hdr"]
LINEAR = ["box-inpaint", "box-inpaint-centre", "motion-blur", "colorize"]


def images(shape, n=2, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, *shape, generator=g, dtype=torch.float64) * 2 - 1


def measurements(op, n=2, seed=1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, *op.measurement_shape, generator=g, dtype=torch.float64)


def bound(task, shape, ids=("a", "b"), seed=0, **params) -> operators.Operator:
    return operators.build(task, shape=shape, **params).for_images(list(ids), seed)


def dense(task, shape, image_id="a", seed=0, **params):
    """(op bound to N copies of one image, the (M, N) matrix of A for that image)."""
    n = math.prod(shape)
    op = bound(task, shape, [image_id] * n, seed, **params)
    basis = torch.eye(n, dtype=torch.float64).reshape(n, *shape)
    return op, op(basis).reshape(n, -1).T


# ----- registry and suites ----------------------------------------------------------------------------


def test_new_tasks_declare_their_capabilities():
    caps = {t: operators.build(t, shape=(3, 64, 64)).capabilities for t in NEW_TASKS}
    full = {Cap.FORWARD, Cap.ADJOINT, Cap.PINV, Cap.SVD, Cap.DIFFERENTIABLE}
    assert all(caps[t] == full for t in LINEAR)
    assert caps["phase-retrieval"] == {Cap.FORWARD, Cap.DIFFERENTIABLE}  # no A⁺: not defined for |F x|
    assert caps["hdr"] == {Cap.FORWARD, Cap.PINV, Cap.DIFFERENTIABLE}
    assert [t for t in NEW_TASKS if operators.build(t, shape=(3, 64, 64)).linear] == LINEAR
    assert all(operators.build(t, shape=(3, 64, 64)).spec()["task"] == t for t in NEW_TASKS)


def test_suites_resolve_to_each_papers_tasks():
    assert operators.resolve_tasks("all") == list(operators.PAPER_TASKS) == operators.resolve_tasks("ddc")
    assert operators.resolve_tasks("dps") == [
        "sr4",
        "box-inpaint",
        "inpaint",
        "gblur",
        "motion-blur",
        "phase-retrieval",
    ]
    assert operators.resolve_tasks("daps") == ["sr4", "box-inpaint", "gblur", "motion-blur", "phase-retrieval", "hdr"]
    every = operators.resolve_tasks("every")
    assert every == [t for t in operators.available() if not operators.is_plugin(t)]
    assert set(NEW_TASKS) <= set(every) and set(operators.PAPER_TASKS) <= set(every)
    assert operators.resolve_tasks("hdr, dps, sr4") == [
        "hdr",
        "sr4",
        "box-inpaint",
        "inpaint",
        "gblur",
        "motion-blur",
        "phase-retrieval",
    ]
    with pytest.raises(OperatorError, match=r"unknown task 'dsp'.*dps"):
        operators.resolve_tasks("dsp")


# ----- linear identities --------------------------------------------------------------------------------


@pytest.mark.parametrize("task", LINEAR)
@pytest.mark.parametrize("shape", [(3, 32, 32), (1, 24, 40)])
def test_new_operator_adjoint_identity(task, shape):
    op = bound(task, shape)
    x, y = images(shape), measurements(op)
    lhs = (op(x) * y).flatten(1).sum(1)
    rhs = (x * op.adjoint(y)).flatten(1).sum(1)
    torch.testing.assert_close(lhs, rhs, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize(
    "task,params", [(t, {}) for t in LINEAR if t != "motion-blur"] + [("motion-blur", {"rcond": 0.0})]
)
def test_new_operator_penrose_identities(task, params):
    """A A⁺ A = A and A⁺ A A⁺ = A⁺ (exactly for the masks and colourisation; motion blur with rcond = 0)."""
    shape = (3, 32, 32)
    op = bound(task, shape, **params)
    x, y = images(shape), measurements(op)
    torch.testing.assert_close(op(op.pinv(op(x))), op(x), rtol=0, atol=1e-10)
    torch.testing.assert_close(op.pinv(op(op.pinv(y))), op.pinv(y), rtol=0, atol=1e-9 * op.pinv(y).abs().max().item())


@pytest.mark.parametrize(
    "task,shape,image_id,params,rcond",
    [
        ("motion-blur", (1, 16, 16), "d", {"size": 7}, 3e-2),  # image "d": 10 singular values below rcond
        ("motion-blur", (1, 9, 12), "b", {"size": 5}, 3e-2),  # odd and even sides, kernel of 5
        ("motion-blur", (1, 7, 5), "d", {"size": 9}, 3e-2),  # a kernel larger than the image wraps onto itself
        ("motion-blur", (1, 16, 16), "d", {"size": 7, "rcond": 0.0}, 1e-15),
        ("colorize", (3, 8, 8), "a", {}, 1e-12),
        ("box-inpaint", (1, 16, 16), "a", {}, 1e-12),
    ],
)
def test_new_operator_pinv_matches_numpy_pinv_with_the_same_rcond(task, shape, image_id, params, rcond):
    """A⁺ equals numpy's dense pseudo-inverse: motion blur with DDRM's rcond 3e-2 (`DEFAULT_RCOND`; numpy too keeps
    singular values above rcond · the largest); the masks and colourisation have no cutoff."""
    _, matrix = dense(task, shape, image_id, **params)
    op = bound(task, shape, [image_id], **params)
    reference = np.linalg.pinv(matrix.numpy(), rcond=rcond)
    y = measurements(op, n=1)
    np.testing.assert_allclose(op.pinv(y).flatten().numpy(), reference @ y.flatten().numpy(), rtol=0, atol=1e-10)


@pytest.mark.parametrize(
    "task,shape,image_id,params",
    [
        ("motion-blur", (1, 16, 16), "d", {}),  # image "d" has a 5-pixel kernel (image "a"'s is a delta)
        ("motion-blur", (1, 9, 12), "b", {"size": 5}),  # odd height: no Nyquist row
        ("motion-blur", (3, 8, 8), "e", {"size": 3}),
        ("colorize", (3, 8, 8), "a", {}),
        ("box-inpaint", (3, 8, 8), "a", {}),
        ("box-inpaint-centre", (1, 16, 16), "a", {}),
    ],
)
def test_new_operator_svd_is_a_real_svd_of_the_dense_matrix(task, shape, image_id, params):
    """U, V real orthogonal, Σ ≥ 0, A = U Σ Vᵀ for the dense matrix of A, and Σ = numpy's singular values."""
    op, matrix = dense(task, shape, image_id, **params)
    svd = op.svd
    n, m = matrix.shape[1], matrix.shape[0]
    v = svd.v(torch.eye(n, dtype=torch.float64)).reshape(n, -1).T  # column j = v(e_j)
    s = svd.singulars_like(v)
    s = s[0] if s.ndim == 2 else s
    k = s.numel()
    basis = torch.eye(n, k, dtype=torch.float64)  # the first k rows are e_1..e_k (one row per bound image)
    u = svd.u(basis)[:k].reshape(k, -1).T  # (M, k), column j = u(e_j)
    assert v.dtype == u.dtype == torch.float64 and not v.is_complex() and not u.is_complex()
    torch.testing.assert_close(v.T @ v, torch.eye(n, dtype=torch.float64), rtol=0, atol=1e-12)
    torch.testing.assert_close(u.T @ u, torch.eye(k, dtype=torch.float64), rtol=0, atol=1e-12)
    if k == m:
        torch.testing.assert_close(u @ u.T, torch.eye(m, dtype=torch.float64), rtol=0, atol=1e-12)
    assert torch.all(s >= 0)
    torch.testing.assert_close(u @ torch.diag(s) @ v[:, :k].T, matrix, rtol=0, atol=1e-12)
    reference = np.linalg.svd(matrix.numpy(), compute_uv=False)
    ours = np.sort(np.concatenate([s.numpy(), np.zeros(max(0, len(reference) - k))]))[::-1]  # + the zeros it omits
    np.testing.assert_allclose(ours[: len(reference)], reference, rtol=0, atol=1e-12)
    # the implicit maps agree with the dense factors
    x = images(shape, n=n)
    torch.testing.assert_close(svd.vt(x), x.flatten(1) @ v, rtol=0, atol=1e-12)
    torch.testing.assert_close(svd.ut(op(x)), op(x).flatten(1) @ u, rtol=0, atol=1e-12)


# ----- motion blur ------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape,params", [((3, 32, 32), {}), ((1, 24, 40), {"size": 9})])
def test_motion_blur_is_scipy_wrap_convolution_with_the_image_kernel(shape, params):
    op = bound("motion-blur", shape, ids=["p", "q"], seed=3, **params)
    x = images(shape)
    ours = op(x).numpy()
    for b, kernel in enumerate(op.kernels().numpy()):
        for c in range(shape[0]):
            reference = scipy.ndimage.convolve(x[b, c].numpy(), kernel, mode="wrap")
            np.testing.assert_allclose(ours[b, c], reference, rtol=0, atol=1e-13)
    # the adjoint is the correlation: convolution with the kernel rotated by 180°
    y = measurements(op)
    adjoint = op.adjoint(y).numpy()
    kernel = op.kernels()[0].numpy()[::-1, ::-1]
    np.testing.assert_allclose(adjoint[0, 0], scipy.ndimage.convolve(y[0, 0].numpy(), kernel, mode="wrap"), atol=1e-13)


def test_motion_blur_kernels_are_per_image_reproducible_and_normalised():
    shape = (3, 64, 64)
    op = bound("motion-blur", shape, ids=["p", "q", "r"], seed=7)
    kernels = op.kernels()
    assert kernels.shape == (3, 15, 15) and kernels.dtype == torch.float64
    assert torch.all(kernels >= 0)
    torch.testing.assert_close(kernels.sum((1, 2)), torch.ones(3, dtype=torch.float64), rtol=0, atol=1e-14)
    alone = bound("motion-blur", shape, ids=["q"], seed=7)
    assert torch.equal(alone.kernels()[0], kernels[1])  # the same alone as second of a batch
    assert torch.equal(op.kernel_for("r", 7), kernels[2])  # recoverable from (seed, id)
    assert not torch.allclose(kernels[0], kernels[1]) and not torch.allclose(kernels[1], kernels[2])
    other_seed = bound("motion-blur", shape, ids=["q"], seed=8)
    assert not torch.allclose(other_seed.kernels()[0], kernels[1])
    x = images(shape, n=3)
    torch.testing.assert_close(alone(x[1:2]), op(x)[1:2], rtol=0, atol=1e-14)


def test_motion_blur_kernel_size_scales_with_the_image():
    assert [kernel_size_for(n, n) for n in (256, 128, 64, 32, 16, 8)] == [61, 31, 15, 7, 3, 3]
    assert kernel_size_for(64, 256) == 15  # the shorter side
    assert operators.build("motion-blur", shape=(3, 256, 256)).spec()["size"] == 61
    assert operators.build("motion-blur", shape=(3, 64, 64), size=21).spec()["size"] == 21
    with pytest.raises(OperatorError, match="odd integer"):
        operators.build("motion-blur", shape=(3, 64, 64), size=20)


def test_motion_kernel_intensity_zero_is_a_straight_streak():
    """With intensity 0 every step has angle 0: the kernel's mass lies on a line (its second-moment matrix is
    nearly rank one), while DPS's intensity 0.5 bends the path."""

    def elongation(kernel: torch.Tensor) -> float:
        size = kernel.shape[0]
        grid = torch.stack(torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")).to(kernel)
        mean = (grid * kernel).sum((1, 2))
        centred = grid - mean[:, None, None]
        cov = torch.einsum("ihw,jhw,hw->ij", centred, centred, kernel)
        small, large = torch.linalg.eigvalsh(cov)
        return (small / large).item()

    straight = [motion_kernel(61, 0.0, torch.Generator().manual_seed(s)) for s in range(6)]
    curved = [motion_kernel(61, 0.5, torch.Generator().manual_seed(s)) for s in range(6)]
    long_straight = [k for k in straight if (k > 0).sum() > 150]  # short paths blur into blobs
    long_curved = [k for k in curved if (k > 0).sum() > 150]
    assert len(long_straight) >= 3 and all(elongation(k) < 0.01 for k in long_straight)
    assert max(elongation(k) for k in long_curved) > 0.05


def test_motion_blur_svd_has_the_kernel_spectrum_and_pinv_drops_below_rcond():
    op = bound("motion-blur", (1, 32, 32), ids=["d"])
    embedded = np.zeros((32, 32))
    kernel = op.kernels()[0].numpy()
    half = kernel.shape[0] // 2
    for i in range(kernel.shape[0]):
        for j in range(kernel.shape[1]):
            embedded[(i - half) % 32, (j - half) % 32] += kernel[i, j]
    spectrum = np.abs(np.fft.fft2(embedded)).ravel()
    np.testing.assert_allclose(np.sort(op.svd.singulars[0].numpy()), np.sort(spectrum), rtol=0, atol=1e-13)
    assert abs(spectrum.max() - 1.0) < 1e-13  # a non-negative kernel summing to 1 passes the mean unchanged
    discarded = spectrum <= 0.03 * spectrum.max()
    assert discarded.any()  # so the default rcond (3e-2) drops components: A A⁺ A = A only off them
    x = images((1, 32, 32), n=1)
    kept_part = op.pinv(op(x))
    spectrum_x = np.fft.fft2(x[0, 0].numpy()).ravel()
    np.testing.assert_allclose(np.abs(np.fft.fft2(kept_part[0, 0].numpy()).ravel()[discarded]), 0, atol=1e-12)
    np.testing.assert_allclose(
        np.fft.fft2(kept_part[0, 0].numpy()).ravel()[~discarded], spectrum_x[~discarded], atol=1e-10
    )
    with pytest.raises(OperatorError, match="for_images"):
        operators.build("motion-blur", shape=(1, 32, 32))(torch.zeros(1, 1, 32, 32))


# ----- box inpainting ---------------------------------------------------------------------------------


def test_box_inpaint_follows_dps_geometry_at_256_and_64():
    """A hole of half the side, corner uniform over {m, …, H − m − h − 1} with m = H/16 (DPS: 16..111 at 256)."""
    ids = [f"img{i}" for i in range(300)]
    for side, hole, low, high in ((256, 128, 16, 111), (64, 32, 4, 27)):
        op = bound("box-inpaint", (3, side, side), ids=ids)
        corners = torch.tensor([box[:2] for box in op.boxes()])
        assert all(box[2:] == (hole, hole) for box in op.boxes())
        assert corners.min() == low and corners.max() == high
        assert (corners[:, 0] != corners[:, 1]).any()  # rows and columns drawn independently
        hidden = ~op.mask[:, 0]
        assert torch.all(hidden.flatten(1).sum(1) == hole * hole)
    centre = bound("box-inpaint-centre", (3, 64, 64), ids=["a", "b"])
    assert centre.boxes() == [(16, 16, 32, 32)] * 2


def test_box_inpaint_is_per_image_on_all_channels_and_keeps_zeros_in_the_hole():
    shape = (3, 64, 64)
    op = bound("box-inpaint", shape, ids=["p", "q", "r"], seed=2)
    assert len(set(op.boxes())) == 3
    alone = bound("box-inpaint", shape, ids=["q"], seed=2)
    assert alone.boxes()[0] == op.boxes()[1]
    y = op.measure(torch.zeros(3, *shape), 0.1, operators.image_generators(2, ["p", "q", "r"], "noise"))
    top, left, h, w = op.boxes()[0]
    assert torch.all(y[0, :, top : top + h, left : left + w] == 0)
    assert y[0].abs().sum() > 0 and torch.equal(op.mask[0, 0] == 0, (y[0, 0] == 0))


def test_box_inpaint_rejects_a_box_that_does_not_fit():
    with pytest.raises(OperatorError, match="leaves no position"):
        operators.build("box-inpaint", shape=(3, 16, 16), size=0.9)
    with pytest.raises(OperatorError, match="fraction"):
        operators.build("box-inpaint", shape=(3, 16, 16), size=1.5)


# ----- colourisation ----------------------------------------------------------------------------------


def test_colorize_is_the_channel_mean_with_singular_value_one_over_root_three():
    op = bound("colorize", (3, 16, 16))
    x = images((3, 16, 16))
    assert op.measurement_shape == (1, 16, 16)
    np.testing.assert_allclose(op(x).numpy(), x.numpy().mean(axis=1, keepdims=True), rtol=0, atol=1e-15)
    assert torch.allclose(op.svd.singulars, torch.full((256,), 1 / math.sqrt(3), dtype=torch.float64))
    y = measurements(op)
    torch.testing.assert_close(op.pinv(y), 3 * op.adjoint(y), rtol=0, atol=1e-15)  # A⁺ = Aᵀ (A Aᵀ)⁻¹ = 3 Aᵀ
    torch.testing.assert_close(op(op.pinv(y)), y, rtol=0, atol=1e-15)


# ----- phase retrieval --------------------------------------------------------------------------------


@pytest.mark.parametrize("domain", ["minus-one-one", "zero-one"])
def test_phase_retrieval_matches_numpy_fft_magnitude(domain):
    shape = (3, 32, 24)
    op = bound("phase-retrieval", shape, domain=domain)
    assert op.padding == (8, 6) and op.measurement_shape == (3, 48, 36)
    x = images(shape)
    image = x.numpy() if domain == "minus-one-one" else (x.numpy() + 1) / 2
    padded = np.pad(image, ((0, 0), (0, 0), (8, 8), (6, 6)))
    reference = np.abs(np.fft.fftshift(np.fft.fft2(padded, norm="ortho"), axes=(-2, -1)))
    np.testing.assert_allclose(op(x).numpy(), reference, rtol=0, atol=1e-12)
    # Parseval: the orthonormal DFT keeps the norm of the padded image
    np.testing.assert_allclose(op(x).flatten(1).norm(dim=1).numpy(), np.linalg.norm(image.reshape(2, -1), axis=1))


def test_phase_retrieval_has_dps_padding_at_256_and_no_pseudo_inverse():
    op = operators.build("phase-retrieval", shape=(3, 256, 256))
    assert op.padding == (64, 64) and op.measurement_shape == (3, 384, 384)  # DPS: int(2.0 / 8 * 256) = 64
    with pytest.raises(OperatorError, match="has no pinv"):
        op.pinv(torch.zeros(1, 3, 384, 384))
    import solvers

    reason = solvers.build("pinv").unsupported(op, 0.0)
    assert reason and "pinv" in reason and "phase-retrieval" in reason


def test_phase_retrieval_noise_is_added_to_the_magnitudes():
    op = bound("phase-retrieval", (1, 16, 16), ids=["a"])
    x = images((1, 16, 16), n=1)
    y = op.measure(x, 0.05, operators.image_generators(0, ["a"], "noise"))
    residual = y - op(x)
    assert abs(residual.std().item() - 0.1) < 0.02  # std 2σ on the [-1, 1] scale
    assert (y < 0).any()  # the magnitudes are not clipped after the noise


# ----- HDR --------------------------------------------------------------------------------------------


def test_hdr_is_clip_of_twice_the_image_with_its_gradient():
    op = bound("hdr", (3, 16, 16))
    x = images((3, 16, 16)).requires_grad_(True)
    y = op(x)
    np.testing.assert_array_equal(y.detach().numpy(), np.clip(2 * x.detach().numpy(), -1, 1))
    (grad,) = torch.autograd.grad(y.sum(), x)
    inside = (2 * x.detach()).abs() < 1
    assert torch.all(grad[inside] == 2) and torch.all(grad[~inside] == 0)
    assert inside.any() and (~inside).any()


def test_hdr_pinv_is_the_minimum_norm_solution():
    op = bound("hdr", (3, 16, 16))
    x = images((3, 16, 16))
    y = op(x) + 0.3 * measurements(op)
    pinv = op.pinv(y)
    torch.testing.assert_close(op(pinv), y.clamp(-1, 1), rtol=0, atol=0)  # the closest attainable measurement
    torch.testing.assert_close(op.pinv(op(pinv)), pinv, rtol=0, atol=0)
    torch.testing.assert_close(op(op.pinv(op(x))), op(x), rtol=0, atol=0)
    # any other solution of clip(2x) = clip(y) is at least as large, pixel by pixel
    other = torch.where(y.abs() >= 1, pinv * 1.7, pinv)
    torch.testing.assert_close(op(other), y.clamp(-1, 1))
    assert torch.all(other.abs() >= pinv.abs())
