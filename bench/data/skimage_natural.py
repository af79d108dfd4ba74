"""The dataset "skimage-natural": the natural photographs bundled inside scikit-image's wheel (no download)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from bench.data import register_dataset
from bench.data.images import DatasetError, ImageDataset, check_n_images

_NAME = "skimage-natural"

#: Colour photographs shipped in scikit-image's wheel (skimage/data/), as (id, file name). Chosen because
#: they are ordinary photos of scenes; the wheel's other colour files are synthetic patterns (color,
#: chessboard_RGB, phantom, logo), microscopy or medical images (ihc, retina), a near-duplicate
#: (motorcycle_right) or a star field (hubble_deep_field).
SKIMAGE_NATURAL_COLOUR: tuple[tuple[str, str], ...] = (
    ("astronaut", "astronaut.png"),  # 512 x 512, portrait of Eileen Collins (NASA)
    ("chelsea", "chelsea.png"),  # 451 x 300, a cat
    ("coffee", "coffee.png"),  # 600 x 400, a cup of coffee on a table
    ("motorcycle", "motorcycle_left.png"),  # 741 x 500, left view of the Middlebury stereo pair
    ("rocket", "rocket.jpg"),  # 640 x 427, a rocket on its launch pad
)

#: Greyscale photographs shipped in the wheel, used only when channels=1 (a grey photo replicated to
#: three equal channels would be an unnatural colour image). The textures (brick, grass, gravel), text
#: scans and microscopy images are left out.
SKIMAGE_NATURAL_GREY: tuple[tuple[str, str], ...] = (
    ("camera", "camera.png"),  # 512 x 512, the cameraman
    ("coins", "coins.png"),  # 384 x 303, Greek coins from Pompeii
    ("moon", "moon.png"),  # 512 x 512, the lunar surface
)


def _skimage_data_dir() -> Path:
    # find_spec locates the installed package without importing it (skimage's import is slow).
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        raise DatasetError(f"dataset '{_NAME}' needs scikit-image; install it with `pip install scikit-image`")
    return Path(next(iter(spec.submodule_search_locations))) / "data"


_COLOUR_IDS = ", ".join(image_id for image_id, _ in SKIMAGE_NATURAL_COLOUR)
_GREY_IDS = ", ".join(image_id for image_id, _ in SKIMAGE_NATURAL_GREY)


@register_dataset(
    _NAME, _NAME, f"photos bundled with scikit-image, no download: {_COLOUR_IDS} (channels=1 adds {_GREY_IDS})"
)
def load(argument: str | None, options: dict[str, str], size: int, channels: int, n_images: int | None) -> ImageDataset:
    data_dir = _skimage_data_dir()
    chosen = SKIMAGE_NATURAL_COLOUR + (SKIMAGE_NATURAL_GREY if channels == 1 else ())
    entries = [(image_id, data_dir / file_name) for image_id, file_name in chosen]
    missing = [str(path) for _, path in entries if not path.is_file()]
    if missing:
        raise DatasetError(
            f"scikit-image's bundled photos are missing: {missing}; reinstall it with "
            "`pip install --force-reinstall scikit-image`"
        )
    count = check_n_images(n_images, len(entries), f"dataset '{_NAME}' (channels={channels})")
    return ImageDataset(entries[:count], size, channels, name=_NAME)
