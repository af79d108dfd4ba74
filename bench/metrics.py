"""Image-quality metrics: per image PSNR, SSIM, LPIPS and measurement consistency; per set FID and KID.

Per-image metrics take (B, C, H, W) tensors in [-1, 1] (C in {1, 3}), estimate first and reference second,
and return a (B,) tensor. Estimates are clamped to [-1, 1] before scoring, as an image saved to disk would be.
Per-set metrics compare two sets of images, each a (N, C, H, W) tensor in [-1, 1] or a folder of image files.

The pretrained networks (LPIPS trunks, the FID Inception) come from `bench.weights`, never from a model hub.
"""

from __future__ import annotations

import contextlib
import io
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

if TYPE_CHECKING:
    import numpy as np

    from operators import Operator


# The declarations (names, directions, columns, --metrics) live in bench.metric_specs, which needs no torch;
# they are re-exported here for callers of the metric functions.
from bench.metric_specs import ALWAYS_METRICS as ALWAYS_METRICS  # noqa: E402
from bench.metric_specs import DEFAULT_METRICS as DEFAULT_METRICS  # noqa: E402
from bench.metric_specs import MetricError as MetricError  # noqa: E402
from bench.metric_specs import MetricSpec as MetricSpec  # noqa: E402
from bench.metric_specs import available as available  # noqa: E402
from bench.metric_specs import names as names  # noqa: E402
from bench.metric_specs import select as select  # noqa: E402
from bench.metric_specs import spec as spec  # noqa: E402
from bench.metric_specs import weights_needed as weights_needed  # noqa: E402

# ----- input checks and the one range conversion -----------------------------------------------------------


def _check_images(x: Any, what: str) -> Tensor:
    if not isinstance(x, Tensor):
        raise MetricError(f"{what} must be a torch.Tensor (B, C, H, W) in [-1, 1], got {type(x).__name__}")
    if x.dim() != 4 or x.shape[1] not in (1, 3):
        raise MetricError(f"{what} must have shape (B, C, H, W) with C in {{1, 3}}, got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise MetricError(f"{what} must be a floating-point tensor in [-1, 1], got {x.dtype}")
    return x


def _check_pair(x_hat: Any, x: Any) -> tuple[Tensor, Tensor]:
    x_hat, x = _check_images(x_hat, "estimate"), _check_images(x, "reference")
    if x_hat.shape != x.shape:
        raise MetricError(
            f"estimate and reference must have the same shape, got {tuple(x_hat.shape)} and {tuple(x.shape)}"
        )
    return x_hat, x


def to_unit(x: Tensor) -> Tensor:
    """[-1, 1] -> [0, 1], clamped: the one place metrics change range."""
    return ((x + 1.0) / 2.0).clamp(0.0, 1.0)


def _to_uint8(x: Tensor) -> Tensor:
    """[-1, 1] (N, C, H, W) -> uint8 (N, 3, H, W), rounded as when the images are saved as 8-bit PNGs."""
    pixels = (to_unit(x) * 255.0).round().to(torch.uint8)
    return pixels.expand(-1, 3, -1, -1) if pixels.shape[1] == 1 else pixels


# ----- per-image metrics -------------------------------------------------------------------------------


def psnr(x_hat: Tensor, x: Tensor) -> Tensor:
    """Peak signal-to-noise ratio in dB on [0, 1] (data_range=1), (B,); +inf where the images are equal."""
    from torchmetrics.functional.image import peak_signal_noise_ratio

    x_hat, x = _check_pair(x_hat, x)
    return peak_signal_noise_ratio(to_unit(x_hat), to_unit(x), data_range=1.0, reduction="none", dim=(1, 2, 3))


def ssim(x_hat: Tensor, x: Tensor) -> Tensor:
    """Structural similarity on [0, 1] (data_range=1), (B,).

    torchmetrics' defaults follow Wang et al. 2004: 11x11 Gaussian window with std 1.5, K1=0.01, K2=0.03,
    averaged over channels and the valid (unpadded) region. Images need H, W >= 11.
    """
    from torchmetrics.functional.image import structural_similarity_index_measure

    x_hat, x = _check_pair(x_hat, x)
    if min(x.shape[-2:]) < 11:
        raise MetricError(f"SSIM's 11x11 window needs images of at least 11x11 pixels, got {tuple(x.shape[-2:])}")
    return structural_similarity_index_measure(to_unit(x_hat), to_unit(x), data_range=1.0, reduction="none")


# The SSIM of the DDC and DPS evaluation code: skimage's `structural_similarity` on float images in [0, 1]
# with the library's defaults of the versions they pin: a 7x7 uniform window, the sample covariance
# (N / (N - 1)), K1 = 0.01, K2 = 0.03, and for float input a data range of 2 (dtype_range of floats is
# [-1, 1] there; skimage >= 0.20 makes the caller pass it). Colour images: the mean over channels.
SKIMAGE_SSIM_WINDOW = 7
SKIMAGE_SSIM_DATA_RANGE = 2.0


def ssim_skimage(x_hat: Tensor, x: Tensor) -> Tensor:
    """SSIM as the DDC/DPS papers computed it (skimage conventions, see above), (B,).

    Written in torch so it runs on the images' device in a batch; `tests/test_metrics.py` checks it against
    `skimage.metrics.structural_similarity(..., data_range=2, channel_axis=...)` on real photos. skimage
    filters the whole image and then averages only pixels at least 3 from the border, where the 7x7 window
    lies inside the image: that is the valid region of an unpadded 7x7 average, which is computed here.
    Images need H, W >= 7. Computed in float64 where the device has it (CPU, CUDA), as skimage does.
    """
    import torch.nn.functional as F

    x_hat, x = _check_pair(x_hat, x)
    size = SKIMAGE_SSIM_WINDOW
    if min(x.shape[-2:]) < size:
        raise MetricError(f"skimage SSIM's {size}x{size} window needs images of at least {size}x{size} pixels")
    dtype = torch.float64 if x.device.type in ("cpu", "cuda") else torch.float32
    a, b = to_unit(x_hat).to(dtype), to_unit(x).to(dtype)

    def mean(t: Tensor) -> Tensor:
        return F.avg_pool2d(t, size, stride=1)

    n = size * size
    cov_norm = n / (n - 1)  # skimage's use_sample_covariance=True
    mu_a, mu_b = mean(a), mean(b)
    var_a = cov_norm * (mean(a * a) - mu_a * mu_a)
    var_b = cov_norm * (mean(b * b) - mu_b * mu_b)
    cov = cov_norm * (mean(a * b) - mu_a * mu_b)
    c1, c2 = (0.01 * SKIMAGE_SSIM_DATA_RANGE) ** 2, (0.03 * SKIMAGE_SSIM_DATA_RANGE) ** 2
    index = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return index.mean(dim=(1, 2, 3)).float()  # channel mean of each channel's spatial mean (equal sizes)


# Loaded networks, keyed by (what, device); each loads once per process.
_MODELS: dict[tuple[str, str], Any] = {}


def _cached(key: str, device: torch.device, build: Callable[[], Any]) -> Any:
    slot = (key, str(device))
    if slot not in _MODELS:
        _MODELS[slot] = build()
    return _MODELS[slot]


def _lpips_network(net: str, device: torch.device) -> torch.nn.Module:
    from bench import weights

    return _cached(f"lpips-{net}", device, lambda: weights.lpips_model(net).to(device))


def lpips(x_hat: Tensor, x: Tensor, net: str = "alex") -> Tensor:
    """LPIPS v0.1 distance (Zhang et al. 2018), (B,); lower is more similar, 0 for equal images.

    net: "alex" (the usual choice in the literature and the lpips package's default) or "vgg".
    Grey images are repeated to three channels. Computed in float32 on the inputs' device, without gradients.
    """
    x_hat, x = _check_pair(x_hat, x)
    if net not in ("alex", "vgg"):
        raise MetricError(f"unknown LPIPS network '{net}' (available: alex, vgg)")
    model = _lpips_network(net, x.device)
    # lpips expects [-1, 1], the project's own range; clamp the estimate like every other metric does
    a, b = (2.0 * to_unit(t).float() - 1.0 for t in (x_hat, x))
    if a.shape[1] == 1:
        a, b = a.expand(-1, 3, -1, -1), b.expand(-1, 3, -1, -1)
    with torch.no_grad():
        return model(a, b).reshape(-1)


def consistency(op: Operator, x_hat: Tensor, y: Tensor) -> Tensor:
    """||A(x_hat) - y|| / sqrt(m) per image, (B,): the RMS measurement residual on y's scale.

    op: the operator that produced y (bound to these images); m = number of entries of one measurement.
    With y = A(x) + n, n ~ N(0, (2 sigma)^2 I) (see operators.add_noise), the true image scores about
    2 sigma; a much lower value means the estimate fits the noise. x_hat is not clamped: A sees it as given.
    """
    x_hat = _check_images(x_hat, "estimate")
    if not isinstance(y, Tensor):
        raise MetricError(f"measurement y must be a torch.Tensor, got {type(y).__name__}")
    expected = (x_hat.shape[0], *op.measurement_shape)
    if tuple(y.shape) != expected:
        raise MetricError(f"measurement y must have shape {expected} for {op!r}, got {tuple(y.shape)}")
    with torch.no_grad():
        residual = (op(x_hat) - y).reshape(y.shape[0], -1)
    return residual.norm(dim=1) / math.sqrt(residual.shape[1])


# ----- per-set metrics ---------------------------------------------------------------------------------

ImageSet = Tensor | str | Path
FID_BATCH = 16  # Inception batch; small to bound memory on CPU-only machines


def _feature_extractor(device: torch.device) -> Callable[[Tensor], Tensor]:
    from bench import weights

    return _cached("inception-fid", device, lambda: weights.inception_features(device))


def inception_features(
    images: ImageSet, device: str | torch.device | None = None, batch_size: int = FID_BATCH
) -> np.ndarray:
    """(N, 2048) float32 Inception pool3 features, computed the clean-fid way ("clean" mode).

    images: a (N, C, H, W) tensor in [-1, 1], or a folder of image files (png, jpg, ... searched recursively).
    Tensors are first rounded to 8 bits as if saved to PNG, so a tensor and the folder of its saved PNGs give
    the same features; clean-fid's resizer then takes each image to 299x299 (PIL bicubic on float pixels).
    """
    import numpy as np
    from cleanfid import fid as cleanfid_fid
    from cleanfid.resize import build_resizer
    from cleanfid.utils import EXTENSIONS

    if isinstance(images, str | Path):
        folder = Path(images)
        if not folder.is_dir():
            raise MetricError(f"image folder {folder} does not exist")
        if not any(p.suffix.lower().lstrip(".") in EXTENSIONS for p in folder.rglob("*") if p.is_file()):
            raise MetricError(f"image folder {folder} holds no images (looked for {', '.join(sorted(EXTENSIONS))})")
        dev = torch.device(device or "cpu")
        features = cleanfid_fid.get_folder_features(
            str(folder),
            _feature_extractor(dev),
            num_workers=0,
            batch_size=batch_size,
            device=dev,
            mode="clean",
            verbose=False,
        )
        return features.astype(np.float32)
    images = _check_images(images, "image set")
    dev = torch.device(device) if device is not None else images.device
    extract = _feature_extractor(dev)
    resize = build_resizer("clean")
    pixels = _to_uint8(images).permute(0, 2, 3, 1).cpu().numpy()
    chunks = []
    for start in range(0, len(pixels), batch_size):
        batch = np.stack([resize(p) for p in pixels[start : start + batch_size]]).transpose(0, 3, 1, 2)
        chunks.append(cleanfid_fid.get_batch_features(torch.from_numpy(np.ascontiguousarray(batch)), extract, dev))
    return np.concatenate(chunks).astype(np.float32)


def _features_of(images: ImageSet | np.ndarray, device: str | torch.device | None) -> np.ndarray:
    import numpy as np

    if isinstance(images, np.ndarray):
        if images.ndim != 2 or images.shape[1] != 2048:
            raise MetricError(f"precomputed features must be (N, 2048), got {images.shape}")
        return images
    return inception_features(images, device)


def _common_span(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both feature sets written in an orthonormal basis of the affine span of all their points.

    The mean difference and both sets' centred points lie in that span, so the means' distance, both
    covariances' traces and the spectrum of their product, hence the FID, are the same in these
    coordinates as in the full 2048 dimensions. With fewer points than dimensions this turns the
    2048x2048 matrix square root (about a minute on two CPU cores) into one of size n_a + n_b.
    """
    import numpy as np

    origin = b.mean(axis=0)
    basis, _ = np.linalg.qr(np.concatenate([a, b]).T - origin[:, None])  # (d, n_a + n_b), orthonormal columns
    return (a - origin) @ basis, (b - origin) @ basis


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """FID between two (N, D) feature sets with clean-fid's `fid_from_feats`, in float64.

    Sets with fewer points than dimensions are first expressed in their common span (`_common_span`), an
    exact change of coordinates.
    """
    import numpy as np
    from cleanfid import fid as cleanfid_fid

    a, b = a.astype(np.float64), b.astype(np.float64)
    if len(a) + len(b) < a.shape[1]:
        a, b = _common_span(a, b)
    # covariances of fewer points than dimensions are singular: clean-fid then prints a notice, and scipy
    # warns that the square root may be inaccurate, which the tests bound against exact references
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(cleanfid_fid.fid_from_feats(a, b))


@dataclass(frozen=True)
class SetScores:
    """FID and KID between two image sets; KID is given as mean and std over random subsets."""

    fid: float
    kid: float
    kid_std: float
    kid_subset_size: int
    n_estimate: int
    n_reference: int


KID_SUBSETS = 100  # clean-fid's and torch-fidelity's default number of KID subsets
KID_MAX_SUBSET = 1000  # subset size of Binkowski et al. 2018, also clean-fid's default cap


def fid_kid(
    estimates: ImageSet | np.ndarray,
    references: ImageSet | np.ndarray,
    *,
    device: str | torch.device | None = None,
    kid_subsets: int = KID_SUBSETS,
    seed: int = 0,
) -> SetScores:
    """FID (Heusel et al. 2017) and KID (Binkowski et al. 2018) between two sets, via clean-fid's formulas.

    Each set is a (N, C, H, W) tensor in [-1, 1], a folder of images, or (N, 2048) features from
    `inception_features`. FID is strongly biased upwards for sets below a few thousand images, so compare
    FIDs only between sets of equal size and read KID (unbiased) beside it.

    KID subsets have size min(1000, n // 2) where n is the smaller set: clean-fid uses min(1000, n), which
    makes every subset of a set under 1000 images the whole set and the std meaningless. Subsets are drawn
    with numpy's global generator seeded with `seed`, and its previous state is restored afterwards.
    A set compared with itself gets a small negative KID, as subsets then share images, which the
    estimator (built for independent samples) counts in the cross term only.
    """
    import numpy as np
    from cleanfid import fid as cleanfid_fid

    a, b = _features_of(estimates, device), _features_of(references, device)
    n = min(len(a), len(b))
    if n < 4:
        raise MetricError(f"FID/KID need at least 4 images in each set, got {len(a)} and {len(b)}")
    subset = min(KID_MAX_SUBSET, n // 2)
    fid_value = frechet_distance(a, b)
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    saved = np.random.get_state()
    try:
        np.random.seed(seed)
        # one clean-fid estimate per subset, so that their spread gives the std
        estimates_kid = [
            cleanfid_fid.kernel_distance(a64, b64, num_subsets=1, max_subset_size=subset) for _ in range(kid_subsets)
        ]
    finally:
        np.random.set_state(saved)
    return SetScores(
        fid=fid_value,
        kid=float(np.mean(estimates_kid)),
        kid_std=float(np.std(estimates_kid)),
        kid_subset_size=subset,
        n_estimate=len(a),
        n_reference=len(b),
    )


def fid(estimates: ImageSet | np.ndarray, references: ImageSet | np.ndarray, **options: Any) -> float:
    """FID between two sets (see `fid_kid`)."""
    return fid_kid(estimates, references, **options).fid


def kid(estimates: ImageSet | np.ndarray, references: ImageSet | np.ndarray, **options: Any) -> tuple[float, float]:
    """KID mean and std between two sets (see `fid_kid`)."""
    scores = fid_kid(estimates, references, **options)
    return scores.kid, scores.kid_std


# ----- registry ----------------------------------------------------------------------------------------


def lpips_vgg(x_hat: Tensor, x: Tensor) -> Tensor:
    """LPIPS v0.1 with the VGG16 trunk (DPS's evaluation), (B,)."""
    return lpips(x_hat, x, net="vgg")


def score_images(
    selection: Sequence[str], x_hat: Tensor, x: Tensor, *, op: Operator, y: Tensor
) -> tuple[dict[str, Tensor], dict[str, str]]:
    """The selected per-image metrics of a batch: ({column: (B,) scores}, {metric: why it is missing}).

    A metric whose weights cannot be found is reported missing (its images stay scorable later with
    `bench score`); any other error propagates. Images smaller than a metric's `min_size` get no score.
    """
    from bench.weights import WeightsError

    scores: dict[str, Tensor] = {}
    missing: dict[str, str] = {}
    for name in selection:
        metric = spec(name)
        if metric.scope != "image" or min(x.shape[-2:]) < metric.min_size:
            continue
        try:
            scores[metric.column] = metric.fn(op, x_hat, y) if metric.uses_measurement else metric.fn(x_hat, x)
        except WeightsError as error:
            missing[name] = str(error).splitlines()[0]
    return scores, missing
