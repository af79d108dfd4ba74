from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
KODAK = SHARED_DATA / "kodak24"


def kodak_paths() -> list[Path]:
    return sorted(KODAK.glob("*.png")) if KODAK.is_dir() else []


@pytest.fixture(scope="session")
def kodak_photos() -> list[np.ndarray]:
    """The Kodak24 photos as uint8 (H, W, 3) arrays; skipped where ../shared/data/kodak24 is absent."""
    paths = kodak_paths()
    if not paths:
        pytest.skip(f"real photos not found at {KODAK} (the shared data folder beside the repository)")
    return [np.asarray(Image.open(p).convert("RGB")) for p in paths]


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory) -> Path:
    """Three real photos from scikit-image's bundled data, downscaled to keep the tests quick."""
    from skimage import data

    folder = tmp_path_factory.mktemp("photos")
    for name in ("astronaut", "coffee", "chelsea"):
        image = Image.fromarray(getattr(data, name)())
        image.thumbnail((96, 96), Image.BICUBIC)
        image.save(folder / f"{name}.png")
    return folder


def to_tensor(photo: np.ndarray, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """uint8 (H, W, C) or (H, W) -> (1, C, H, W) in [-1, 1]."""
    array = photo[..., None] if photo.ndim == 2 else photo
    return torch.from_numpy(array.astype(np.float64) / 127.5 - 1.0).permute(2, 0, 1)[None].to(dtype)


# CI always has ../shared/data beside the repository: there, a test that would skip for want of it fails with
# the reason instead (.ci/run sets BENCH_REQUIRE_SHARED_DATA=1), so that a moved folder cannot silently turn
# the real-photo tests off. Elsewhere (a clone without the data) such tests skip, naming what is missing.
REQUIRE_SHARED_DATA = os.environ.get("BENCH_REQUIRE_SHARED_DATA") == "1"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if not (REQUIRE_SHARED_DATA and report.skipped):
        return
    reason = str(report.longrepr[-1]) if isinstance(report.longrepr, tuple) else str(report.longrepr)
    if "shared/data" in reason or str(SHARED_DATA) in reason:
        report.outcome = "failed"
        report.longrepr = f"BENCH_REQUIRE_SHARED_DATA=1 but the shared data is missing: {reason}"


@pytest.fixture(scope="module")
def four_photos(tmp_path_factory) -> Path:
    """Four 48x48 crops of scikit-image's bundled photos (tests/run_cases.py)."""
    from run_cases import write_photo_crops

    return write_photo_crops(tmp_path_factory.mktemp("photos"), count=4)
