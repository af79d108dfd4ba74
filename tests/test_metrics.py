"""Metrics on real photos: PSNR/SSIM against torchmetrics and scikit-image, LPIPS orderings, FID/KID sanity.

Crops come from Kodak24 (../shared/data/kodak24; skipped where absent). Networks come from `bench.weights`.
"""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from conftest import to_tensor
from PIL import Image
from scipy.ndimage import gaussian_filter
from skimage.metrics import peak_signal_noise_ratio as skimage_psnr
from skimage.metrics import structural_similarity as skimage_ssim
from torchmetrics.functional.image import peak_signal_noise_ratio as tm_psnr
from torchmetrics.functional.image import structural_similarity_index_measure as tm_ssim

import operators
from bench import metrics
from bench.metrics import MetricError, inception
from bench.metrics import images as images_module


def center_crops(photos: list[np.ndarray], size: int, count: int, shift: int = 0) -> list[np.ndarray]:
    crops = []
    for photo in photos[:count]:
        top, left = (photo.shape[0] - size) // 2 + shift, (photo.shape[1] - size) // 2 + shift
        crops.append(np.ascontiguousarray(photo[top : top + size, left : left + size]))
    return crops


def batch(crops: list[np.ndarray]) -> torch.Tensor:
    return torch.cat([to_tensor(c, torch.float32) for c in crops])


def jpeg(crop: np.ndarray, quality: int) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(crop).save(buffer, format="JPEG", quality=quality)
    return np.asarray(Image.open(buffer).convert("RGB"))


@pytest.fixture(scope="module")
def kodak_crops(kodak_photos: list[np.ndarray]) -> list[np.ndarray]:
    # 128 px: on smaller crops torchmetrics' and scikit-image's SSIM drift apart through border handling
    return center_crops(kodak_photos, 128, 4)


def distortions(crops: list[np.ndarray]) -> dict[str, np.ndarray]:
    """uint8 noisy and blurred versions of each crop, as (N, H, W, 3) arrays."""
    rng = np.random.default_rng(0)
    clean = np.stack(crops).astype(np.float64)
    noisy = np.clip(clean + rng.normal(0.0, 20.0, clean.shape), 0, 255).round()
    blurred = np.stack([gaussian_filter(c, sigma=(1.5, 1.5, 0)) for c in clean]).round()
    return {"noise": noisy.astype(np.uint8), "blur": blurred.astype(np.uint8)}


# ----- PSNR and SSIM --------------------------------------------------------------------------------


def test_psnr_matches_torchmetrics_and_skimage_per_image(kodak_crops: list[np.ndarray]) -> None:
    reference = batch(kodak_crops)
    for name, distorted in distortions(kodak_crops).items():
        estimate = batch(list(distorted))
        ours = metrics.psnr(estimate, reference)
        assert ours.shape == (len(kodak_crops),)
        for i in range(len(kodak_crops)):
            unit_est, unit_ref = distorted[i] / 255.0, kodak_crops[i] / 255.0
            expected_tm = tm_psnr(torch.from_numpy(unit_est), torch.from_numpy(unit_ref), data_range=1.0)
            assert ours[i].item() == pytest.approx(expected_tm.item(), abs=1e-4), name
            assert ours[i].item() == pytest.approx(skimage_psnr(unit_ref, unit_est, data_range=1.0), abs=1e-4), name


def test_psnr_of_a_known_mse_is_the_closed_form(kodak_crops: list[np.ndarray]) -> None:
    # keep pixels inside [0.2, 0.8] so that adding +-d never leaves [0, 1]: the MSE is exactly d^2
    unit = 0.2 + 0.6 * torch.from_numpy(np.stack(kodak_crops) / 255.0).permute(0, 3, 1, 2)
    signs = torch.ones_like(unit)
    signs[..., ::2, 1::2] = -1
    signs[..., 1::2, ::2] = -1
    for d in (0.01, 0.05, 0.1):
        reference, estimate = 2 * unit - 1, 2 * (unit + d * signs) - 1
        expected = -10 * math.log10(d**2)
        torch.testing.assert_close(metrics.psnr(estimate, reference), torch.full((4,), expected, dtype=torch.float64))


def test_ssim_matches_torchmetrics_and_skimage_per_image(kodak_crops: list[np.ndarray]) -> None:
    reference = batch(kodak_crops)
    assert torch.allclose(metrics.ssim(reference, reference), torch.ones(4))
    for name, distorted in distortions(kodak_crops).items():
        ours = metrics.ssim(batch(list(distorted)), reference)
        assert ours.shape == (4,)
        for i in range(4):
            unit_est = torch.from_numpy(distorted[i] / 255.0).permute(2, 0, 1)[None].float()
            unit_ref = torch.from_numpy(kodak_crops[i] / 255.0).permute(2, 0, 1)[None].float()
            assert ours[i].item() == pytest.approx(tm_ssim(unit_est, unit_ref, data_range=1.0).item(), abs=1e-5), name
            # scikit-image with the Wang et al. settings is an independent implementation of the same formula
            independent = skimage_ssim(
                kodak_crops[i] / 255.0,
                distorted[i] / 255.0,
                data_range=1.0,
                channel_axis=2,
                gaussian_weights=True,
                sigma=1.5,
                use_sample_covariance=False,
            )
            assert ours[i].item() == pytest.approx(independent, abs=0.01), name
        assert (ours < 0.99).all(), name


def test_per_image_metrics_reject_bad_input_clearly() -> None:
    a = torch.zeros(2, 3, 16, 16)
    with pytest.raises(MetricError, match=r"same shape, got \(2, 3, 16, 16\) and \(2, 3, 16, 8\)"):
        metrics.psnr(a, torch.zeros(2, 3, 16, 8))
    with pytest.raises(MetricError, match="must be a torch.Tensor"):
        metrics.ssim(a.numpy(), a)
    with pytest.raises(MetricError, match=r"C in \{1, 3\}, got \(2, 4, 16, 16\)"):
        metrics.lpips(torch.zeros(2, 4, 16, 16), torch.zeros(2, 4, 16, 16))
    with pytest.raises(MetricError, match="at least 11x11"):
        metrics.ssim(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 8))


# ----- LPIPS -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lpips_cases(kodak_photos: list[np.ndarray]) -> dict[str, torch.Tensor]:
    photos = center_crops(kodak_photos, 96, 4)
    g = torch.Generator().manual_seed(0)
    reference = batch(photos)
    return {
        "reference": reference,
        "jpeg10": batch([jpeg(c, 10) for c in photos]),
        "noise50": (reference + 2 * (50 / 255) * torch.randn(reference.shape, generator=g)).clamp(-1, 1),
        "unrelated": torch.roll(reference, 1, dims=0),  # each crop against another photo
    }


def test_lpips_orders_distortions_sensibly(lpips_cases: dict[str, torch.Tensor]) -> None:
    reference = lpips_cases["reference"]
    scores = {name: metrics.lpips(images, reference) for name, images in lpips_cases.items()}
    assert torch.equal(scores["reference"], torch.zeros(4))
    assert (scores["jpeg10"] > 0.05).all()
    assert (scores["jpeg10"] < scores["noise50"]).all()
    assert (scores["jpeg10"] < scores["unrelated"]).all()
    assert (scores["unrelated"] > 0.5).all()


def test_lpips_with_a_random_trunk_gives_other_values(lpips_cases: dict[str, torch.Tensor]) -> None:
    from bench import weights

    reference, jpeg10 = lpips_cases["reference"], lpips_cases["jpeg10"]
    trained = metrics.lpips(jpeg10, reference)
    model = weights.lpips_model("alex")
    torch.manual_seed(0)
    for layer in model.net.modules():
        if isinstance(layer, torch.nn.Conv2d):
            layer.reset_parameters()
    with torch.no_grad():
        random_trunk = model(jpeg10, reference).reshape(-1)
    assert ((trained - random_trunk).abs() > 0.3 * trained).all()


def test_lpips_treats_grey_as_repeated_channels(lpips_cases: dict[str, torch.Tensor]) -> None:
    grey_ref = lpips_cases["reference"].mean(dim=1, keepdim=True)
    grey_est = lpips_cases["jpeg10"].mean(dim=1, keepdim=True)
    torch.testing.assert_close(
        metrics.lpips(grey_est, grey_ref), metrics.lpips(grey_est.repeat(1, 3, 1, 1), grey_ref.repeat(1, 3, 1, 1))
    )


def test_lpips_vgg_is_available_and_zero_on_identity(lpips_cases: dict[str, torch.Tensor]) -> None:
    reference, jpeg10 = lpips_cases["reference"][:1], lpips_cases["jpeg10"][:1]
    assert torch.equal(metrics.lpips(reference, reference, net="vgg"), torch.zeros(1))
    assert metrics.lpips(jpeg10, reference, net="vgg") > 0.05


# ----- measurement consistency ----------------------------------------------------------------------


def test_consistency_is_the_rms_measurement_residual(kodak_crops: list[np.ndarray]) -> None:
    x = batch(kodak_crops).double()
    ids = [f"kodak-{i}" for i in range(len(x))]
    op = operators.build("sr4", shape=(3, 128, 128)).for_images(ids, seed=0)
    clean = op(x)
    assert torch.allclose(metrics.consistency(op, x, clean), torch.zeros(4, dtype=x.dtype), atol=1e-12)
    sigma = 0.05
    noisy = op.measure(x, sigma, operators.image_generators(0, ids, "noise"))
    # the residual of the true image is the noise: RMS about 2 sigma on [-1, 1] over 3*32*32 entries
    torch.testing.assert_close(
        metrics.consistency(op, x, noisy), torch.full((4,), 2 * sigma, dtype=x.dtype), rtol=0.05, atol=0
    )
    other = torch.roll(x, 1, dims=0)
    expected = (op(other) - noisy).flatten(1).pow(2).mean(dim=1).sqrt()
    torch.testing.assert_close(metrics.consistency(op, other, noisy), expected)
    with pytest.raises(MetricError, match=r"measurement y must have shape \(4, 3, 32, 32\)"):
        metrics.consistency(op, x, x)


# ----- FID and KID -----------------------------------------------------------------------------------

FID_SET = 10  # images per set: enough for the checks, small enough for Inception on two CPU cores


@pytest.fixture(scope="module")
def fid_sets(kodak_photos: list[np.ndarray]) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "kodak": batch(center_crops(kodak_photos, 96, FID_SET)),
        "noise": torch.rand(FID_SET, 3, 96, 96, generator=g) * 2 - 1,
    }


@pytest.fixture(scope="module")
def fid_features(fid_sets: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    return {name: inception.inception_features(images) for name, images in fid_sets.items()}


def test_inception_features_are_pool3_activations(fid_features: dict[str, np.ndarray]) -> None:
    kodak = fid_features["kodak"]
    assert kodak.shape == (FID_SET, 2048) and kodak.dtype == np.float32
    assert (kodak >= 0).all()  # averages of ReLU outputs
    assert 0.05 < kodak.mean() < 2.0
    assert not np.allclose(kodak[0], kodak[1])


def test_fid_kid_of_a_set_with_itself_is_near_zero_and_noise_is_far(fid_features: dict[str, np.ndarray]) -> None:
    kodak, noise = fid_features["kodak"], fid_features["noise"]
    same = inception.fid_kid(kodak, kodak)
    far = inception.fid_kid(noise, kodak)
    assert abs(same.fid) < 1e-6
    assert far.fid > 100.0
    # a set against itself scores a little below 0: shared images enter KID's cross term (see fid_kid)
    assert far.kid > 0.1 and far.kid > 3 * abs(same.kid)
    assert far.kid > 3 * far.kid_std > 0
    assert same.kid_subset_size == far.kid_subset_size == FID_SET // 2
    assert (far.n_estimate, far.n_reference) == (FID_SET, FID_SET)
    assert inception.fid_kid(noise, kodak) == far  # seeded subsets: reproducible


def test_fid_of_tensors_equals_fid_of_their_saved_pngs(
    fid_sets: dict[str, torch.Tensor], fid_features, tmp_path
) -> None:
    images = fid_sets["kodak"][:2]
    pixels = images_module.to_uint8(images).permute(0, 2, 3, 1).numpy()
    for i, p in enumerate(pixels):
        Image.fromarray(p).save(tmp_path / f"{i:02d}.png")
    from_folder = inception.inception_features(tmp_path)
    np.testing.assert_allclose(from_folder, fid_features["kodak"][:2], rtol=1e-4, atol=1e-5)


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::scipy.linalg.LinAlgWarning")
def test_fid_in_the_common_span_equals_clean_fid_in_full_dimension() -> None:
    from cleanfid.fid import fid_from_feats

    rng = np.random.default_rng(0)
    a = np.abs(rng.normal(size=(12, 100)))
    b = np.abs(rng.normal(0.2, 1.0, size=(9, 100)))
    assert inception.frechet_distance(a, b) == pytest.approx(fid_from_feats(a, b), rel=1e-6)
    assert inception.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-9)


def test_set_metrics_reject_bad_input_clearly(tmp_path) -> None:
    with pytest.raises(MetricError, match="at least 4 images in each set, got 3 and 8"):
        inception.fid_kid(np.ones((3, 2048)), np.ones((8, 2048)))
    with pytest.raises(MetricError, match="holds no images"):
        inception.inception_features(tmp_path)
    with pytest.raises(MetricError, match="does not exist"):
        inception.inception_features(tmp_path / "missing")


# ----- registry --------------------------------------------------------------------------------------


def test_registry_lists_direction_and_scope() -> None:
    listed = dict(metrics.available())
    assert listed["psnr"].startswith("higher is better, per image")
    assert listed["lpips"].startswith("lower is better, per image")
    assert listed["fid"].startswith("lower is better, per set")
    assert metrics.names("set") == ["fid", "kid"]
    assert set(metrics.names("image")) == {
        "psnr", "ssim", "ssim-skimage", "lpips", "lpips-vgg", "consistency",
        "blockiness", "chroma-ratio", "colour-shift", "clipping",
    }  # fmt: skip
    assert listed["lpips"].startswith("lower is better, per image, default") and "default" not in listed["lpips-vgg"]
    assert metrics.spec("ssim").higher_is_better and metrics.spec("ssim").fn is metrics.ssim
    with pytest.raises(MetricError, match=r"unknown metric 'lpip'; did you mean 'lpips'\?"):
        metrics.spec("lpip")


# ----- visual checks: blockiness, colour loss, clipping ------------------------------------------------------

LEVEL = 2 / 255  # one 8-bit level on [-1, 1]: added to both sides of the blockiness ratio


def ramp_with_steps(size: int, block: int, inside: float, across: float, channels: int = 3) -> torch.Tensor:
    """(1, C, size, size): x[i, j] = f(i) + f(j) with f rising by `inside` within a block and by `across` from one
    block to the next, so every neighbour difference inside a block is `inside` and across an edge `across`."""
    steps = torch.tensor([across if (k + 1) % block == 0 else inside for k in range(size - 1)], dtype=torch.float64)
    f = torch.cat([torch.zeros(1, dtype=torch.float64), steps.cumsum(0)])
    image = f[:, None] + f[None, :]
    image = image - image.max() / 2  # centred: inside [-1, 1] for the values used here
    assert image.abs().max() <= 1
    return image.expand(1, channels, size, size).clone()


def test_blockiness_of_exact_mosaics() -> None:
    op = operators.build("sr4", shape=(3, 32, 32))
    assert op.block_size == 4 and "block_size" not in op.spec()  # not in unit keys: stored results keep theirs
    y = op(torch.zeros(1, 3, 32, 32))
    stepped = ramp_with_steps(32, 4, inside=0.01, across=0.05)
    assert metrics.blockiness(op, stepped, y).item() == pytest.approx((0.05 + LEVEL) / (0.01 + LEVEL), rel=1e-6)
    even = ramp_with_steps(32, 4, inside=0.02, across=0.02)
    assert metrics.blockiness(op, even, y).item() == pytest.approx(1.0, abs=1e-6)  # no grid: 1
    # a mosaic of flat 4x4 blocks (what nearest upsampling gives): nothing inside, so (across + L) / L
    low = torch.linspace(-0.8, 0.8, 64, dtype=torch.float64).reshape(1, 1, 8, 8)[:, [0, 0, 0]]
    mosaic = low.repeat_interleave(4, dim=2).repeat_interleave(4, dim=3)
    across = torch.cat(
        [mosaic.diff(dim=-1)[..., 3::4].abs().flatten(), mosaic.diff(dim=-2)[..., 3::4, :].abs().flatten()]
    )
    assert metrics.blockiness(op, mosaic, y).item() == pytest.approx((across.mean().item() + LEVEL) / LEVEL, rel=1e-6)
    flat = torch.full((2, 3, 32, 32), 0.3)
    assert torch.equal(metrics.blockiness(op, flat, op(flat)), torch.ones(2))
    # one channel reads as three equal ones
    grey = ramp_with_steps(32, 4, inside=0.01, across=0.05, channels=1)
    grey_op = operators.build("sr4", shape=(1, 32, 32))
    assert metrics.blockiness(grey_op, grey, grey_op(grey)).item() == pytest.approx((0.05 + LEVEL) / (0.01 + LEVEL))


def test_blockiness_uses_the_operators_block_size_and_is_nan_without_one() -> None:
    stepped = ramp_with_steps(32, 8, inside=0.01, across=0.05)
    jpeg_op = operators.build("jpeg10", shape=(3, 32, 32))
    assert jpeg_op.block_size == 8 and "block_size" not in jpeg_op.spec()
    assert metrics.blockiness(jpeg_op, stepped, jpeg_op(stepped)).item() == pytest.approx(
        (0.05 + LEVEL) / (0.01 + LEVEL), rel=1e-6
    )
    sr8 = operators.build("sr8", shape=(3, 32, 32))
    assert sr8.block_size == 8 and metrics.blockiness(sr8, stepped, sr8(stepped)).item() > 3
    sr4 = operators.build("sr4", shape=(3, 32, 32))
    # the 4-pixel grid's 7 edges per row: 3 of them the 8-pixel steps, 4 inside the 8-pixel blocks
    across = (3 * 0.05 + 4 * 0.01) / 7
    assert metrics.blockiness(sr4, stepped, sr4(stepped)).item() == pytest.approx(
        (across + LEVEL) / (0.01 + LEVEL), rel=1e-6
    )
    blur = operators.build("gblur", shape=(3, 32, 32))
    assert blur.block_size is None and math.isnan(metrics.blockiness(blur, stepped, blur(stepped)).item())
    small = operators.build("sr8", shape=(3, 8, 8))  # smaller than two blocks: no edge between blocks to judge
    assert math.isnan(metrics.blockiness(small, stepped[..., :8, :8], small(stepped[..., :8, :8])).item())


def test_blockiness_of_photos_is_about_one_and_of_their_mosaics_far_above(kodak_crops: list[np.ndarray]) -> None:
    x = batch(kodak_crops)
    op = operators.build("sr4", shape=(3, 128, 128))
    y = op(x)
    photos = metrics.blockiness(op, x, y)
    assert ((photos > 0.9) & (photos < 1.1)).all(), photos
    mosaic = torch.nn.functional.avg_pool2d(x, 4).repeat_interleave(4, dim=2).repeat_interleave(4, dim=3)
    assert (metrics.blockiness(op, mosaic, y) > 3).all()  # flagged: the threshold is 1.5
    assert metrics.spec("blockiness").flagged(3.0) and metrics.spec("blockiness").flagged(1.2) is None


def test_chroma_ratio_and_colour_shift_of_exact_constructions() -> None:
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 1.6 - 0.8
    grey = x.mean(dim=1, keepdim=True).expand_as(x)
    assert torch.equal(metrics.chroma_ratio(grey, x), torch.zeros(2))
    assert metrics.chroma_ratio(x, x).tolist() == pytest.approx([1.0, 1.0])
    half = grey + 0.5 * (x - grey)  # every pixel's channels pulled halfway to their mean
    assert metrics.chroma_ratio(half, x).tolist() == pytest.approx([0.5, 0.5])
    assert math.isnan(metrics.chroma_ratio(x, grey)[0].item())  # a grey photo has no colour to keep
    assert math.isnan(metrics.chroma_ratio(x[:, :1], x[:, :1])[0].item())  # nor a 1-channel one
    assert metrics.colour_shift(x + 0.1, x).tolist() == pytest.approx([0.1, 0.1])  # a constant offset, exactly
    cast = x + torch.tensor([0.1, -0.2, 0.05], dtype=x.dtype).reshape(1, 3, 1, 1)
    assert metrics.colour_shift(cast, x).tolist() == pytest.approx([0.2, 0.2])  # the largest channel's
    assert metrics.colour_shift(x[:, :1] - 0.15, x[:, :1]).tolist() == pytest.approx([0.15, 0.15])  # brightness
    assert metrics.spec("chroma-ratio").flagged(0.2) and metrics.spec("chroma-ratio").flagged(math.nan) is None
    assert metrics.spec("colour-shift").flagged(0.38) and metrics.spec("colour-shift").flagged(0.1) is None


def test_clipping_counts_values_at_plus_minus_one_beyond_the_photos_own() -> None:
    x = torch.zeros(2, 3, 10, 10)  # 300 values per image
    x[1, 0, 0, :6] = 1.0  # the second photo clips 6 values itself
    x_hat = x.clone()
    x_hat[:, 1, 0, :9] = -1.0  # 9 more at -1
    x_hat[:, 2, 0, :3] = 1.5  # 3 beyond +1 (clamped when saved)
    x_hat[:, 2, 1, :3] = 1 - 0.8 / 255  # 3 within half a level (1/255 on [-1, 1]): saved as 255 (254.6)
    x_hat[:, 2, 2, :3] = 1 - 1.2 / 255  # 3 not: saved as 254 (254.4)
    assert metrics.clipping(x_hat, x).tolist() == pytest.approx([15 / 300, 15 / 300])
    assert metrics.clipping(x, x_hat).tolist() == pytest.approx([-15 / 300, -15 / 300])
    one = metrics.clipping(x_hat[:, :1], x[:, :1])  # one channel: a share of its 100 values
    assert one.tolist() == pytest.approx([0.0, 0.0])
    assert metrics.spec("clipping").flagged(0.093) and metrics.spec("clipping").flagged(0.01) is None


def test_the_run_scores_the_visual_checks_with_the_arguments_they_take() -> None:
    x = ramp_with_steps(32, 4, inside=0.01, across=0.05).float().repeat(2, 1, 1, 1)
    op = operators.build("sr4", shape=(3, 32, 32))
    selection = metrics.select(None)
    assert {"blockiness", "chroma-ratio", "colour-shift", "clipping"} <= set(selection)  # defaults: cheap, offline
    assert all(not metrics.spec(n).in_quality_table and not metrics.spec(n).weights for n in ("blockiness", "clipping"))
    scores, missing = images_module.score_images(
        ["blockiness", "chroma-ratio", "colour-shift", "clipping"], x, x, op=op, y=op(x)
    )
    assert not missing and set(scores) == {"blockiness", "chroma_ratio", "colour_shift", "clipping"}
    assert scores["blockiness"].tolist() == pytest.approx([(0.05 + LEVEL) / (0.01 + LEVEL)] * 2, rel=1e-5)
    assert scores["chroma_ratio"].isnan().all()  # the ramp is grey: no colour to keep
    assert scores["colour_shift"].tolist() == [0.0, 0.0] and scores["clipping"].tolist() == [0.0, 0.0]


def test_a_flag_must_name_a_direction_a_threshold_and_a_reason() -> None:
    from bench.metrics import MetricSpec

    spec = MetricSpec("t", False, "image", "d", "f", "m", "t", flag=(">", 2, "off by {value:.1f}"))
    assert spec.flagged(2.5) == "off by 2.5" and spec.flagged(2.0) is None and spec.flagged(math.nan) is None
    with pytest.raises(MetricError, match="flag must be"):
        MetricSpec("t", False, "image", "d", "f", "m", "t", flag=(">=", 2, "x"))
