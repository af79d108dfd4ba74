"""Datasets of clean images for the benchmark runner and the trainers.

Every image the benchmark sees goes through the same steps:

1. decode with Pillow and apply the EXIF orientation tag, so camera photos stand upright;
2. convert to ``"RGB"`` (channels=3) or ``"L"`` (channels=1; Pillow's ITU-R 601-2 luma
   L = 0.299 R + 0.587 G + 0.114 B). An alpha channel is dropped; 16-bit greyscale is reduced to 8 bits;
3. crop the centred largest square (when the two margins differ by one pixel, the extra pixel is
   left on the right or bottom);
4. resize that square to ``size`` x ``size`` with Pillow's bicubic filter (``Image.Resampling.BICUBIC``,
   ``reducing_gap=None``). Pillow widens the bicubic kernel by the reduction factor when it shrinks, so
   downscaling is antialiased, and ``reducing_gap=None`` keeps it exact (no box pre-reduction). Bicubic
   rather than Lanczos because it rings less around sharp edges and is the filter ADM-style diffusion
   preprocessing uses; squares smaller than ``size`` are upscaled with the same filter. The result is
   rounded to 8 bits, as a PNG of it would be;
5. map the 8-bit values v to float32 ``v / 127.5 - 1`` in [-1, 1] (`pil_to_signed`, the one place this
   module converts pixel values).

Datasets:

* `ImageFolder`: the image files directly inside one folder (no recursion), sorted by file name; an
  image's id is its file stem. `load_dataset("folder:<path>")` builds one.
* `load_dataset("skimage-natural")`: the natural photographs bundled inside scikit-image's wheel (no
  download; see `SKIMAGE_NATURAL_COLOUR` and `SKIMAGE_NATURAL_GREY`).
* `load_dataset("kodak24")`: the Kodak photos at ../shared/data/kodak24 next to the repository, when present.
* `RandomCrops`: an endless stream of random-scale crops of a training folder, for the trainers.
* `manifest_sha256(folder)`: one hash over a folder's image files, for provenance records.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib.util
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from torch.utils.data import Dataset

__all__ = [
    "IMAGE_EXTENSIONS",
    "SKIMAGE_NATURAL_COLOUR",
    "SKIMAGE_NATURAL_GREY",
    "CropParams",
    "DatasetError",
    "ImageDataset",
    "ImageFolder",
    "ImageReadError",
    "RandomCrops",
    "available",
    "center_square",
    "list_image_files",
    "load_dataset",
    "manifest_sha256",
    "pil_to_signed",
    "read_image",
]

#: File name endings read as images (compared case-insensitively).
IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")

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

_REPO_ROOT = Path(__file__).resolve().parents[1]
#: Named datasets that are plain folders under ../shared/data next to the repository.
_SHARED_FOLDERS: dict[str, tuple[Path, str]] = {
    "kodak24": (_REPO_ROOT.parent / "shared" / "data" / "kodak24", "the 24 Kodak photos, held out for testing"),
}
_FOLDER_PREFIX = "folder:"
_SKIMAGE_NATURAL = "skimage-natural"

# Pillow's 16-bit greyscale modes; their full range is 0..65535.
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")


class DatasetError(ValueError):
    """A dataset cannot be built or read: the message names the problem and the fix."""


class ImageReadError(DatasetError):
    """One image file cannot be decoded; the message names the file."""


def _check_size_channels(size: int, channels: int) -> None:
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise DatasetError(f"image size must be a positive int, got {size!r}")
    if channels not in (1, 3):
        raise DatasetError(f"channels must be 1 (greyscale) or 3 (RGB), got {channels!r}")


def _to_mode(image: Image.Image, channels: int, path: Path) -> Image.Image:
    """Convert a decoded image to "L" (channels=1) or "RGB" (channels=3), 8 bits per channel."""
    target = "L" if channels == 1 else "RGB"
    if image.mode == target:
        return image
    if image.mode in _SIXTEEN_BIT_MODES or image.mode == "I":
        values = np.asarray(image, dtype=np.int64)
        if values.min() < 0 or values.max() > 65535:
            raise ImageReadError(
                f"image file '{path}' has 32-bit integer pixels outside 0..65535; save it as 8- or 16-bit PNG"
            )
        # 257 maps 65535 onto 255 exactly, as 8-bit = 16-bit >> 8 would not round.
        image = Image.fromarray(np.round(values / 257.0).astype(np.uint8))
        return image if target == "L" else image.convert("RGB")
    if image.mode == "F":
        raise ImageReadError(
            f"image file '{path}' has floating-point pixels with no defined range; save it as an 8- or 16-bit image"
        )
    return image.convert(target)


def read_image(path: str | Path, channels: int = 3) -> Image.Image:
    """Decode one image file into an upright 8-bit Pillow image in mode "RGB" (channels=3) or "L" (channels=1).

    Raises `ImageReadError` naming the file when it is missing, truncated or not an image.
    """
    path = Path(path)
    try:
        with Image.open(path) as opened:
            opened.load()
            upright = ImageOps.exif_transpose(opened)
        return _to_mode(upright, channels, path)
    except ImageReadError:
        raise
    # Pillow reports undecodable or truncated files as OSError, some plugins as SyntaxError or ValueError.
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise ImageReadError(
            f"could not read image file '{path}': {err}. Replace or remove the file "
            f"(readable formats: {', '.join(IMAGE_EXTENSIONS)})"
        ) from err


def center_square(image: Image.Image, size: int) -> Image.Image:
    """Crop the centred largest square of `image` and resize it to `size` x `size` (bicubic, see module doc)."""
    width, height = image.size
    side = min(width, height)
    left = (width - side) // 2
    top = (height - side) // 2
    square = image.crop((left, top, left + side, top + side))
    if side == size:
        return square
    return square.resize((size, size), Image.Resampling.BICUBIC, reducing_gap=None)


def pil_to_signed(image: Image.Image) -> torch.Tensor:
    """8-bit Pillow image ("L" or "RGB", H x W) -> float32 tensor (C, H, W) in [-1, 1], via v / 127.5 - 1."""
    # np.array copies, so the tensor owns writable memory.
    pixels = torch.from_numpy(np.array(image, dtype=np.uint8))
    if pixels.ndim == 2:
        pixels = pixels.unsqueeze(-1)
    return pixels.permute(2, 0, 1).to(torch.float32).contiguous() / 127.5 - 1.0


def list_image_files(folder: str | Path) -> list[Path]:
    """The image files directly inside `folder`, sorted by file name.

    Image files are those whose name ends in one of `IMAGE_EXTENSIONS` (any case); hidden files (name
    starting with ".") and sub-folders are skipped. Raises `DatasetError` when the folder does not exist,
    is a file, or holds no image files.
    """
    folder = Path(folder).expanduser()
    if not folder.exists():
        raise DatasetError(f"image folder '{folder}' does not exist; check the path")
    if not folder.is_dir():
        raise DatasetError(f"'{folder}' is a file, not a folder; give the folder that holds the images")
    entries = sorted(folder.iterdir(), key=lambda p: p.name)
    images = [p for p in entries if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS]
    if not images:
        others = [p.name for p in entries if not p.name.startswith(".")]
        held = f"it holds {len(others)} other entries, e.g. {others[:3]}" if others else "it is empty"
        raise DatasetError(
            f"no image files in folder '{folder}' ({held}); image files end in {', '.join(IMAGE_EXTENSIONS)}"
        )
    return images


def _check_n_images(n_images: int | None, available_count: int, where: str) -> int:
    if n_images is None:
        return available_count
    if isinstance(n_images, bool) or not isinstance(n_images, int) or n_images < 1:
        raise DatasetError(f"n_images must be a positive int or None (all images), got {n_images!r}")
    if n_images > available_count:
        raise DatasetError(
            f"asked for {n_images} images but {where} has only {available_count}; "
            f"pass n_images <= {available_count} or None for all of them"
        )
    return n_images


class ImageDataset(Dataset):
    """A fixed, ordered list of image files, each served as (image_id, tensor (C, size, size) in [-1, 1]).

    Images are decoded on access (nothing is cached); see the module docstring for the preprocessing.
    """

    def __init__(self, entries: Sequence[tuple[str, Path]], size: int, channels: int = 3, name: str = "") -> None:
        _check_size_channels(size, channels)
        if not entries:
            raise DatasetError(f"dataset '{name}' has no images")
        seen: dict[str, Path] = {}
        for image_id, path in entries:
            # Ids become file names of results, so ids that differ only in case would collide on some systems.
            key = image_id.lower()
            if key in seen:
                raise DatasetError(
                    f"two files share the image id '{image_id}': '{seen[key]}' and '{path}'; "
                    "image ids are file stems (compared ignoring case), so rename or remove one of them"
                )
            seen[key] = path
        self._entries = [(image_id, Path(path)) for image_id, path in entries]
        self.size = size
        self.channels = channels
        self.name = name

    @property
    def ids(self) -> list[str]:
        """Image ids in dataset order."""
        return [image_id for image_id, _ in self._entries]

    @property
    def paths(self) -> list[Path]:
        """Image files in dataset order."""
        return [path for _, path in self._entries]

    def __len__(self) -> int:
        return len(self._entries)

    def __getitem__(self, index: int) -> tuple[str, torch.Tensor]:
        """(image_id, image (C, size, size) float32 in [-1, 1])."""
        if not -len(self) <= index < len(self):
            raise IndexError(f"image index {index} out of range for {len(self)} images")
        image_id, path = self._entries[index]
        return image_id, pil_to_signed(center_square(read_image(path, self.channels), self.size))

    def __iter__(self) -> Iterator[tuple[str, torch.Tensor]]:
        for index in range(len(self)):
            yield self[index]

    def batches(self, batch_size: int) -> Iterator[tuple[list[str], torch.Tensor]]:
        """Yield (ids, images (B, C, size, size) in [-1, 1]) in dataset order; the last batch may be smaller."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise DatasetError(f"batch_size must be a positive int, got {batch_size!r}")
        for start in range(0, len(self), batch_size):
            items = [self[index] for index in range(start, min(start + batch_size, len(self)))]
            yield [image_id for image_id, _ in items], torch.stack([image for _, image in items])

    def describe(self) -> dict[str, object]:
        """JSON-able description of what this dataset serves, for result records."""
        return {
            "name": self.name,
            "n_images": len(self),
            "size": self.size,
            "channels": self.channels,
            "preprocessing": "center square crop, PIL bicubic resize (reducing_gap=None), 8-bit, v/127.5-1",
            "ids": self.ids,
        }

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, n_images={len(self)}, size={self.size}, channels={self.channels})"


class ImageFolder(ImageDataset):
    """The image files directly inside `path`, sorted by file name; ids are file stems.

    `n_images` keeps the first N files in that order (an error when the folder holds fewer). Two files with
    the same stem (e.g. a.png and a.jpg) are an error naming both.
    """

    def __init__(self, path: str | Path, size: int, channels: int = 3, n_images: int | None = None) -> None:
        _check_size_channels(size, channels)
        self.root = Path(path).expanduser()
        files = list_image_files(self.root)
        count = _check_n_images(n_images, len(files), f"folder '{self.root}'")
        # Duplicate stems are checked over the whole folder, not just the first N, so that the ids of a
        # folder do not depend on how many images are asked for.
        super().__init__([(p.stem, p) for p in files], size, channels, name=f"{_FOLDER_PREFIX}{self.root}")
        self._entries = self._entries[:count]


def _skimage_data_dir() -> Path:
    # find_spec locates the installed package without importing it (skimage's import is slow).
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        raise DatasetError(
            f"dataset '{_SKIMAGE_NATURAL}' needs scikit-image; install it with `pip install scikit-image`"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def _skimage_natural(size: int, channels: int, n_images: int | None) -> ImageDataset:
    data_dir = _skimage_data_dir()
    chosen = SKIMAGE_NATURAL_COLOUR + (SKIMAGE_NATURAL_GREY if channels == 1 else ())
    entries = [(image_id, data_dir / file_name) for image_id, file_name in chosen]
    missing = [str(path) for _, path in entries if not path.is_file()]
    if missing:
        raise DatasetError(
            f"scikit-image's bundled photos are missing: {missing}; reinstall it with "
            "`pip install --force-reinstall scikit-image`"
        )
    count = _check_n_images(n_images, len(entries), f"dataset '{_SKIMAGE_NATURAL}' (channels={channels})")
    return ImageDataset(entries[:count], size, channels, name=_SKIMAGE_NATURAL)


def available() -> list[tuple[str, str]]:
    """(spec pattern, description) for every dataset `load_dataset` accepts."""
    colour = ", ".join(image_id for image_id, _ in SKIMAGE_NATURAL_COLOUR)
    grey = ", ".join(image_id for image_id, _ in SKIMAGE_NATURAL_GREY)
    rows = [
        (
            _SKIMAGE_NATURAL,
            f"photos bundled with scikit-image, no download: {colour} (channels=1 adds {grey})",
        ),
        (f"{_FOLDER_PREFIX}<path>", "every image file directly inside <path>, sorted by name; ids are file stems"),
    ]
    for name, (folder, description) in _SHARED_FOLDERS.items():
        state = "present" if folder.is_dir() else "absent"
        rows.append((name, f"{description}; folder {folder} ({state})"))
    return rows


def load_dataset(spec: str, size: int, channels: int = 3, n_images: int | None = None) -> ImageDataset:
    """Build the dataset named by `spec` (see `available()`), serving images (C, size, size) in [-1, 1].

    `n_images` keeps the first N images in dataset order; None keeps all.
    """
    _check_size_channels(size, channels)
    spec = spec.strip()
    if spec.startswith(_FOLDER_PREFIX):
        folder = spec[len(_FOLDER_PREFIX) :].strip()
        if not folder:
            raise DatasetError(f"dataset spec '{spec}' names no folder; write it as '{_FOLDER_PREFIX}<path>'")
        return ImageFolder(folder, size, channels, n_images)
    if spec == _SKIMAGE_NATURAL:
        return _skimage_natural(size, channels, n_images)
    if spec in _SHARED_FOLDERS:
        folder, _ = _SHARED_FOLDERS[spec]
        if not folder.is_dir():
            raise DatasetError(
                f"dataset '{spec}' looks for its photos in '{folder}', which does not exist; put them there "
                f"or point at another copy with '{_FOLDER_PREFIX}<path>'"
            )
        dataset = ImageFolder(folder, size, channels, n_images)
        dataset.name = spec
        return dataset
    names = [_SKIMAGE_NATURAL, *_SHARED_FOLDERS]
    listing = f"(available: {', '.join(names)}, {_FOLDER_PREFIX}<path>)"
    if spec and Path(spec).expanduser().is_dir():
        raise DatasetError(
            f"unknown dataset '{spec}'; it is a folder: did you mean '{_FOLDER_PREFIX}{spec}'? {listing}"
        )
    close = difflib.get_close_matches(spec, [*names, _FOLDER_PREFIX], n=1, cutoff=0.5)
    if close:
        raise DatasetError(f"unknown dataset '{spec}'; did you mean '{close[0]}'? {listing}")
    raise DatasetError(f"unknown dataset '{spec}' {listing}")


@dataclass(frozen=True)
class CropParams:
    """One random crop: the square [left, left + side) x [top, top + side) of image `image_index`, in native pixels."""

    image_index: int
    left: int
    top: int
    side: int
    flip: bool


class RandomCrops:
    """Endless random-scale square crops of the images in a folder, for training.

    Each draw picks an image uniformly, a crop side s with log(s) uniform between log(min(size, short side))
    (a size x size window at native resolution) and log(short side) (the whole short side), a uniformly
    placed s x s square, and a horizontal flip with probability 1/2. The square is resized to size x size
    with the same bicubic filter as `ImageFolder`. All randomness comes from one torch.Generator (built from
    `seed` unless `generator` is given), so a seed fixes the whole stream.

    Every image is decoded once, at construction, and kept in memory as 8-bit pixels (313 photos of about
    500 x 500 take about 250 MB in RGB).
    """

    def __init__(
        self,
        path: str | Path,
        size: int,
        channels: int = 3,
        *,
        seed: int = 0,
        generator: torch.Generator | None = None,
        n_images: int | None = None,
    ) -> None:
        _check_size_channels(size, channels)
        self.root = Path(path).expanduser()
        files = list_image_files(self.root)
        files = files[: _check_n_images(n_images, len(files), f"folder '{self.root}'")]
        self.size = size
        self.channels = channels
        self.ids = [p.stem for p in files]
        self._images = [read_image(p, channels) for p in files]
        if generator is None:
            generator = torch.Generator().manual_seed(seed)
        self.generator = generator

    def __len__(self) -> int:
        """Number of source images (the stream itself is endless)."""
        return len(self._images)

    def _uniform(self) -> float:
        return float(torch.rand((), dtype=torch.float64, generator=self.generator))

    def _integer(self, high: int) -> int:
        """Uniform integer in [0, high]."""
        return int(torch.randint(high + 1, (), generator=self.generator))

    def draw_params(self) -> CropParams:
        """Draw the next crop's parameters from the generator."""
        image_index = int(torch.randint(len(self._images), (), generator=self.generator))
        width, height = self._images[image_index].size
        short = min(width, height)
        smallest = min(self.size, short)
        side = round(math.exp(math.log(smallest) + self._uniform() * (math.log(short) - math.log(smallest))))
        side = min(max(side, smallest), short)
        left = self._integer(width - side)
        top = self._integer(height - side)
        flip = self._uniform() < 0.5
        return CropParams(image_index, left, top, side, flip)

    def render(self, params: CropParams) -> torch.Tensor:
        """The crop described by `params` as a tensor (C, size, size) in [-1, 1]."""
        image = self._images[params.image_index]
        box = (params.left, params.top, params.left + params.side, params.top + params.side)
        crop = image.crop(box)
        if params.side != self.size:
            crop = crop.resize((self.size, self.size), Image.Resampling.BICUBIC, reducing_gap=None)
        tensor = pil_to_signed(crop)
        return torch.flip(tensor, dims=(-1,)) if params.flip else tensor

    def sample(self) -> tuple[torch.Tensor, CropParams]:
        """The next crop (C, size, size) in [-1, 1] and the parameters that made it."""
        params = self.draw_params()
        return self.render(params), params

    def batch(self, batch_size: int) -> torch.Tensor:
        """The next `batch_size` crops stacked as (B, C, size, size) in [-1, 1]."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise DatasetError(f"batch_size must be a positive int, got {batch_size!r}")
        return torch.stack([self.render(self.draw_params()) for _ in range(batch_size)])

    def __iter__(self) -> Iterator[torch.Tensor]:
        """Endless crops (C, size, size) in [-1, 1]; the stream continues across iterators."""
        while True:
            yield self.render(self.draw_params())


def manifest_sha256(folder: str | Path) -> str:
    """SHA-256 (hex) over the image files of `folder`, as `list_image_files` finds them.

    The hashed text is one line per file in name order, "<file sha256>  <relative path>\\n", the format
    of `sha256sum`, so `LC_ALL=C sha256sum <the image files> | sha256sum` reproduces it. Non-image files
    (e.g. a MANIFEST.tsv) do not affect it; renaming, adding, removing or editing an image does.
    """
    folder = Path(folder).expanduser()
    from bench.files import file_sha256

    lines = [f"{file_sha256(path)}  {path.relative_to(folder).as_posix()}\n" for path in list_image_files(folder)]
    return hashlib.sha256("".join(lines).encode("utf-8")).hexdigest()
