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
   package converts pixel values).

Steps 1, 3 and 4 are the ``ours`` protocol. A `folder:` spec may instead name the ground-truth protocol of a
paper (`PROTOCOLS`; docs/datasets.md): ``ddrm`` (DDRM/DDNM ImageNet-1k), ``adm`` (guided-diffusion's
``center_crop_arr``), ``ddc`` (resize only) and ``dps`` (images used as they are). The papers' loaders do
not apply the EXIF orientation, so these protocols skip it too; steps 2 and 5 are shared by all.

Datasets (`load_dataset(spec)`, spec ``<name>[:<argument>][?<key>=<value>&...]``), one module each:

* `ImageFolder` (`images`): the image files directly inside one folder (no recursion), sorted by file name;
  an image's id is its file stem. `load_dataset("folder:<path>")` (`folder`) builds one; the spec's options
  ``?protocol=<name>&recursive=1&list=<file>`` pick the protocol, take sub-folders too (ids are relative
  paths without extension, "/" written "__") or take the images a file list names, in its order.
* `load_dataset("skimage-natural")` (`skimage_natural`): the natural photographs bundled inside
  scikit-image's wheel (no download; see `SKIMAGE_NATURAL_COLOUR` and `SKIMAGE_NATURAL_GREY`).
* `load_dataset("kodak24")` (`shared`): the Kodak photos at ../shared/data/kodak24 next to the repository,
  when present.
* `RandomCrops` (`crops`): an endless stream of random-scale crops of a training folder, for the trainers.
* `manifest_sha256(folder)` (`crops`): one hash over a folder's image files, for provenance records.

A built-in dataset is one module of this package that registers its loader with `@register_dataset`; the
registry finds it by importing the package's modules (`bench.registry`), so adding one needs no other edit.
`images` and `crops` are the shared code, not datasets. `first` orders `available()` (and `bench list
datasets`); any other module follows by name.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.registry import Registry, closest

from .crops import CropParams, RandomCrops, manifest_sha256
from .images import (
    FOLDER_PREFIX,
    IMAGE_EXTENSIONS,
    PROTOCOLS,
    SMALL_IMAGE_SHARE,
    DatasetError,
    ImageDataset,
    ImageFolder,
    ImageReadError,
    adm_center_crop,
    center_square,
    check_size_channels,
    ddrm_square,
    list_image_files,
    pil_to_signed,
    read_file_list,
    read_image,
)

__all__ = [
    "IMAGE_EXTENSIONS",
    "SKIMAGE_NATURAL_COLOUR",
    "SKIMAGE_NATURAL_GREY",
    "SMALL_IMAGE_SHARE",
    "CropParams",
    "DatasetError",
    "DatasetKind",
    "ImageDataset",
    "ImageFolder",
    "ImageReadError",
    "PROTOCOLS",
    "RandomCrops",
    "adm_center_crop",
    "available",
    "center_square",
    "ddrm_square",
    "list_image_files",
    "load_dataset",
    "manifest_sha256",
    "parse_spec",
    "pil_to_signed",
    "read_file_list",
    "read_image",
    "register_dataset",
]

#: A dataset's loader: `load(argument, options, size, channels, n_images) -> ImageDataset`. `argument` is the
#: text after "<name>:" (None without a colon), `options` the spec's ``?key=value&...`` pairs (names already
#: checked against the dataset's accepted options); `size` and `channels` are checked before it is called.
DatasetLoader = Callable[[str | None, dict[str, str], int, int, int | None], ImageDataset]


@dataclass(frozen=True)
class DatasetKind:
    """A registered dataset: its loader, how a spec of it is written (`pattern`, as `bench list datasets`
    shows it), one line of description, the option names its specs accept (none: options are an error), an
    example spec with options for error messages, and the folder it reads when it is a plain folder (named in
    the listing with whether it is present, and in hints)."""

    load: DatasetLoader
    pattern: str
    description: str
    options: tuple[str, ...] = ()
    example: str = ""
    folder: Path | None = None

    @property
    def takes_argument(self) -> bool:
        """Whether a spec of it has a ":<argument>": its pattern says so ("folder:<path>", "x[:<n>]")."""
        name = self.pattern.partition(":")[0].partition("[")[0]
        return self.pattern[len(name) :].lstrip("[").startswith(":")

    def describe(self) -> str:
        """The description, and for a plain folder where it is and whether it is there."""
        if self.folder is None:
            return self.description
        state = "present" if self.folder.is_dir() else "absent"
        return f"{self.description}; folder {self.folder} ({state})"


# Built-in datasets register in their own modules (`register_dataset`); `images` and `crops` are shared code.
_DATASETS: Registry[DatasetKind] = Registry(
    "dataset",
    package=__name__,
    first=("skimage_natural", "folder", "shared"),
    skip=("images", "crops"),
    group=None,  # bench.plugins has no dataset group: datasets are built-in modules or folder: specs
    error=DatasetError,
)


def register_dataset(
    name: str,
    pattern: str,
    description: str,
    options: Sequence[str] = (),
    *,
    example: str | None = None,
    folder: Path | None = None,
) -> Callable[[DatasetLoader], DatasetLoader]:
    """Decorator: register a built-in dataset's loader under `name` (a module of this package does this).

    pattern: how a spec is written, as `bench list datasets` shows it ("name", or "name:<argument>" when it takes
    one). description: one line for the listing. options: the option names its specs accept after "?".
    example: a spec with options for error messages (default: the pattern with each option "=<value>").
    folder: the folder it reads, when it is a plain folder."""
    accepted = tuple(options)
    if example is None:
        example = f"{pattern}?{'&'.join(f'{key}=<value>' for key in accepted)}" if accepted else pattern

    def register(load: DatasetLoader) -> DatasetLoader:
        kind = DatasetKind(load, pattern, description, accepted, example, folder)
        _DATASETS.register(name, kind, summary=description, module=load.__module__)
        return load

    return register


def parse_spec(spec: str) -> tuple[str, str | None, str | None]:
    """'name[:argument][?options]' -> (name, argument or None without a colon, options text or None without "?").

    The name ends at the first ":" or "?". After a colon the last "?" starts the options, so an argument may not
    hold "?" -- unless the whole text after the colon is an existing folder, which keeps any folder spec that
    worked before options existed working the same.
    """
    text = spec.strip()
    ends = [i for i in (text.find(":"), text.find("?")) if i >= 0]
    end = min(ends, default=len(text))
    name, rest = text[:end], text[end:]
    if not rest.startswith(":"):
        return name, None, (rest[1:] if rest else None)
    body = rest[1:].strip()
    head, mark, query = body.rpartition("?")
    if not mark or Path(body).expanduser().is_dir():
        return name, body, None
    return name, head, query


def _options(name: str, kind: DatasetKind, query: str | None, spec: str) -> dict[str, str]:
    """The spec's options text -> {key: value}, every key one the dataset accepts (a later repeat wins)."""
    if query is None:
        return {}
    if not kind.options:
        takers = [other for other in _DATASETS.names() if _DATASETS.get(other).options]
        where = f"options belong to {' and '.join(takers)} specs" if takers else "no dataset takes options"
        hint = f": '{FOLDER_PREFIX}{kind.folder}?{query}'" if kind.folder is not None else ""
        raise DatasetError(f"dataset '{name}' takes no options; {where}{hint}")
    options: dict[str, str] = {}
    for pair in filter(None, query.split("&")):
        key, equals, value = (part.strip() for part in pair.partition("="))
        if not equals or not key or not value:
            raise DatasetError(f"bad option {pair!r} in dataset spec '{spec}'; write options as '{kind.example}'")
        if key not in kind.options:
            close = closest(key, kind.options, cutoff=0.5)
            hint = f"did you mean '{close}'? " if close else ""
            raise DatasetError(
                f"unknown option '{key}' in dataset spec '{spec}'; {hint}(options: {', '.join(kind.options)})"
            )
        options[key] = value
    return options


def _unknown(spec: str, name: str) -> DatasetError:
    """The error of a spec whose name is not registered, with the closest name or the folder it may mean."""
    listing = f"(available: {', '.join(pattern for pattern, _ in available())})"
    if spec and Path(spec).expanduser().is_dir():
        return DatasetError(
            f"unknown dataset '{spec}'; it is a folder: did you mean '{FOLDER_PREFIX}{spec}'? {listing}"
        )
    close = closest(name, _DATASETS.names(), cutoff=0.5)
    if close:
        rest = spec[len(name) :]
        suggestion = close + rest if rest else _DATASETS.get(close).pattern
        return DatasetError(f"unknown dataset '{spec}'; did you mean '{suggestion}'? {listing}")
    return DatasetError(f"unknown dataset '{spec}' {listing}")


def available() -> list[tuple[str, str]]:
    """(spec pattern, description) for every dataset `load_dataset` accepts, in registry order."""
    return [(entry.value.pattern, entry.value.describe()) for entry in _DATASETS.entries()]


def load_dataset(spec: str, size: int, channels: int = 3, n_images: int | None = None) -> ImageDataset:
    """Build the dataset named by `spec` (see `available()`), serving images (C, size, size) in [-1, 1].

    `n_images` keeps the first N images in dataset order; None keeps all.
    """
    check_size_channels(size, channels)
    spec = spec.strip()
    name, argument, query = parse_spec(spec)
    if name not in _DATASETS:
        raise _unknown(spec, name)
    kind = _DATASETS.get(name)
    if argument is not None and not kind.takes_argument:
        raise DatasetError(f"dataset '{name}' takes no argument, got '{spec}'; write it as '{kind.pattern}'")
    return kind.load(argument, _options(name, kind, query, spec), size, channels, n_images)


# Re-exported for `from bench.data import SKIMAGE_NATURAL_COLOUR`; imported last, as that module registers itself
# through `register_dataset` above.
from .skimage_natural import SKIMAGE_NATURAL_COLOUR, SKIMAGE_NATURAL_GREY  # noqa: E402
