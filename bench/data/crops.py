"""The trainers' data: `RandomCrops`, an endless stream of random-scale crops of a training folder, and
`manifest_sha256`, one hash over a folder's image files for provenance records. Not a dataset module: the
registry's discovery skips it.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from .images import DatasetError, check_n_images, check_size_channels, list_image_files, pil_to_signed, read_image


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
        check_size_channels(size, channels)
        self.root = Path(path).expanduser()
        files = list_image_files(self.root)
        files = files[: check_n_images(n_images, len(files), f"folder '{self.root}'")]
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
