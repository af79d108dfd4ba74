"""Set metrics on Inception features: FID and KID, the clean-fid way."""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.metrics import MetricError, metric

if TYPE_CHECKING:
    import numpy as np
    import torch
    from torch import Tensor

ImageSet = Any  # a (N, C, H, W) tensor in [-1, 1], or a folder (str or Path) of image files
FID_BATCH = 16  # Inception batch; small to bound memory on CPU-only machines


def _feature_extractor(device: torch.device) -> Callable[[Tensor], Tensor]:
    from bench import weights
    from bench.metrics.images import cached

    return cached("inception-fid", device, lambda: weights.inception_features(device))


def inception_features(
    images: ImageSet, device: str | torch.device | None = None, batch_size: int = FID_BATCH
) -> np.ndarray:
    """(N, 2048) float32 Inception pool3 features, computed the clean-fid way ("clean" mode).

    images: a (N, C, H, W) tensor in [-1, 1], or a folder of image files (png, jpg, ... searched recursively).
    Tensors are first rounded to 8 bits as if saved to PNG, so a tensor and the folder of its saved PNGs give
    the same features; clean-fid's resizer then takes each image to 299x299 (PIL bicubic on float pixels).
    """
    import numpy as np
    import torch
    from cleanfid import fid as cleanfid_fid
    from cleanfid.resize import build_resizer
    from cleanfid.utils import EXTENSIONS

    from bench.metrics.images import check_images, to_uint8

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
    images = check_images(images, "image set")
    dev = torch.device(device) if device is not None else images.device
    extract = _feature_extractor(dev)
    resize = build_resizer("clean")
    pixels = to_uint8(images).permute(0, 2, 3, 1).cpu().numpy()
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


@metric(
    "fid", higher_is_better=False, scope="set",
    description="Frechet Inception distance (clean-fid; biased below ~2k images)", label="FID", decimals=1,
    weights=("inception-fid",), reported_by="RED-diff (clean-fid)",
)  # fmt: skip
def fid(estimates: ImageSet | np.ndarray, references: ImageSet | np.ndarray, **options: Any) -> float:
    """FID between two sets (see `fid_kid`)."""
    return fid_kid(estimates, references, **options).fid


@metric(
    "kid", higher_is_better=False, scope="set",
    description="kernel Inception distance, mean and std over subsets (clean-fid)", label="KID",
    weights=("inception-fid",),
)  # fmt: skip
def kid(estimates: ImageSet | np.ndarray, references: ImageSet | np.ndarray, **options: Any) -> tuple[float, float]:
    """KID mean and std between two sets (see `fid_kid`)."""
    scores = fid_kid(estimates, references, **options)
    return scores.kid, scores.kid_std
