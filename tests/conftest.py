from __future__ import annotations

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
