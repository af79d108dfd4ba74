"""What every dataset of `bench.data` shares: reading and converting image files, the ground-truth protocols and
their geometry, listing image files and file lists, `ImageDataset` and `ImageFolder`, and the small-image warning.

The preprocessing steps are described in the package docstring (`bench.data`). Not a dataset module: the
registry's discovery skips it.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path, PurePosixPath

import numpy as np
import torch
from PIL import Image, ImageOps
from torch.utils.data import Dataset

from bench.registry import closest

#: File name endings read as images (compared case-insensitively).
IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")

# How a folder spec starts; an `ImageFolder` is named "folder:<path>" after it.
FOLDER_PREFIX = "folder:"

#: Ground-truth protocols a `folder:` spec can name (``?protocol=<name>``), as name -> what it does (this
#: text goes into `ImageDataset.describe`). docs/datasets.md says which paper uses which and where it is
#: defined in their code.
PROTOCOLS: dict[str, str] = {
    "ours": "center square crop, PIL bicubic resize (reducing_gap=None), 8-bit, v/127.5-1",
    "ddrm": (
        "DDRM/DDNM ImageNet-1k: no EXIF rotation, centre square crop with offset int(round(margin / 2.0)) "
        "(torchvision center_crop, halves to even), PIL bilinear resize (torchvision Resize on PIL), 8-bit, v/127.5-1"
    ),
    "adm": (
        "guided-diffusion center_crop_arr: no EXIF rotation, BOX halving while short side >= 2*size, PIL bicubic "
        "resize of the short side to size (long side round()), centre crop with offset floor(margin / 2), 8-bit, v/127.5-1"
    ),
    "ddc": "DDC: no EXIF rotation, PIL bilinear resize to size x size (no crop), 8-bit, v/127.5-1",
    "dps": "DPS: no EXIF rotation, images used as they are (must already be size x size), 8-bit, v/127.5-1",
}
_DEFAULT_PROTOCOL = "ours"
# How a sub-folder separator is written inside an image id (ids become file names of results).
_ID_SEPARATOR = "__"

# Pillow's 16-bit greyscale modes; their full range is 0..65535.
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")


class DatasetError(ValueError):
    """A dataset cannot be built or read: the message names the problem and the fix."""


class ImageReadError(DatasetError):
    """One image file cannot be decoded; the message names the file."""


def check_size_channels(size: int, channels: int) -> None:
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


def read_image(path: str | Path, channels: int = 3, *, exif_transpose: bool = True) -> Image.Image:
    """Decode one image file into an 8-bit Pillow image in mode "RGB" (channels=3) or "L" (channels=1).

    The EXIF orientation tag is applied (the image stands upright) unless `exif_transpose` is False, as the
    papers' loaders (plain ``Image.open(...).convert("RGB")``) do. Raises `ImageReadError` naming the file
    when it is missing, truncated or not an image.
    """
    path = Path(path)
    try:
        with Image.open(path) as opened:
            opened.load()
            upright = ImageOps.exif_transpose(opened) if exif_transpose else opened.copy()
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


def ddrm_square(image: Image.Image, size: int) -> Image.Image:
    """DDRM/DDNM's ImageNet ground truth: `image` (W x H) -> `size` x `size`, same mode.

    Their ``CenterCropLongEdge`` is torchvision ``center_crop(img, min(img.size))``, whose offset is
    ``int(round(margin / 2.0))``: Python rounds halves to even, so an odd margin m leaves the extra pixel on
    the left/top when m = 3 (mod 4) (e.g. 500 x 333: offset 84) and on the right/bottom when m = 1 (mod 4)
    (e.g. 500 x 375: offset 62). Then ``transforms.Resize(size)`` on a PIL image is Pillow's bilinear
    resize, which widens its kernel when it shrinks (antialiased in every torchvision version; the
    ``antialias`` argument only concerns tensors). ``reducing_gap=None`` is Pillow's default there.
    """
    width, height = image.size
    side = min(width, height)
    left = int(round((width - side) / 2.0))
    top = int(round((height - side) / 2.0))
    square = image.crop((left, top, left + side, top + side))
    if side == size:
        return square  # torchvision's Resize returns the image untouched when it already has the size
    return square.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=None)


def adm_center_crop(image: Image.Image, size: int) -> Image.Image:
    """guided-diffusion's ``center_crop_arr``: `image` (W x H) -> `size` x `size`, same mode.

    While the short side is at least 2 * size, halve both sides (integer division) with Pillow's BOX
    filter; then bicubic-resize so the short side is `size` (each side becomes ``round(side * size /
    short)``, Python's half-to-even round); then crop the centred square with offset ``(margin) // 2``
    (the extra pixel of an odd margin goes to the right/bottom).
    """
    while min(image.size) >= 2 * size:
        image = image.resize(tuple(side // 2 for side in image.size), Image.Resampling.BOX)
    scale = size / min(image.size)
    image = image.resize(tuple(round(side * scale) for side in image.size), Image.Resampling.BICUBIC)
    left = (image.width - size) // 2
    top = (image.height - size) // 2
    return image.crop((left, top, left + size, top + size))


def _ddc_resize(image: Image.Image, size: int) -> Image.Image:
    """DDC's loader (torchvision ``Resize([size, size])`` on PIL): bilinear to `size` x `size`, no crop."""
    return image.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=None)


def _as_is(image: Image.Image, size: int) -> Image.Image:
    """DPS's loader: no crop, no resize; `ImageFolder` checks beforehand that every image is size x size."""
    if image.size != (size, size):
        raise DatasetError(
            f"protocol 'dps' uses images as they are, but this one is {image.width}x{image.height}, not "
            f"{size}x{size}; resize the files first or use protocol=ddc (resize only) or adm (crop)"
        )
    return image


# The geometric step of each protocol: (image W x H, size) -> size x size image of the same mode.
_GEOMETRY = {
    "ours": center_square,
    "ddrm": ddrm_square,
    "adm": adm_center_crop,
    "ddc": _ddc_resize,
    "dps": _as_is,
}


def check_protocol(protocol: str) -> None:
    if protocol not in PROTOCOLS:
        close = closest(str(protocol), list(PROTOCOLS), cutoff=0.5)
        hint = f"did you mean '{close}'? " if close else ""
        raise DatasetError(f"unknown ground-truth protocol {protocol!r}; {hint}(available: {', '.join(PROTOCOLS)})")


def pil_to_signed(image: Image.Image) -> torch.Tensor:
    """8-bit Pillow image ("L" or "RGB", H x W) -> float32 tensor (C, H, W) in [-1, 1], via v / 127.5 - 1."""
    # np.array copies, so the tensor owns writable memory.
    pixels = torch.from_numpy(np.array(image, dtype=np.uint8))
    if pixels.ndim == 2:
        pixels = pixels.unsqueeze(-1)
    return pixels.permute(2, 0, 1).to(torch.float32).contiguous() / 127.5 - 1.0


def _is_image_file(path: Path) -> bool:
    return path.is_file() and not path.name.startswith(".") and path.suffix.lower() in IMAGE_EXTENSIONS


def _check_folder(folder: Path) -> None:
    if not folder.exists():
        raise DatasetError(f"image folder '{folder}' does not exist; check the path")
    if not folder.is_dir():
        raise DatasetError(f"'{folder}' is a file, not a folder; give the folder that holds the images")


def _walk_image_files(folder: Path) -> list[Path]:
    """Every image file under `folder` at any depth, hidden files and folders skipped, sorted by relative path.

    Sorting compares the relative paths part by part, so a folder's files come together in name order
    (ImageNet's class folders in class order); symbolic links to folders are not followed (no loops).
    """
    found = []
    for parent, folders, files in os.walk(folder):
        folders[:] = [name for name in folders if not name.startswith(".")]
        found += [Path(parent) / name for name in files if _is_image_file(Path(parent) / name)]
    return sorted(found, key=lambda p: p.relative_to(folder).parts)


def list_image_files(folder: str | Path, *, recursive: bool = False) -> list[Path]:
    """The image files directly inside `folder` (or at any depth when `recursive`), sorted by name.

    Image files are those whose name ends in one of `IMAGE_EXTENSIONS` (any case); hidden files (name
    starting with ".") are skipped, and so are sub-folders unless `recursive` (then hidden sub-folders are
    skipped and files sort by relative path, part by part). Raises `DatasetError` when the folder does not
    exist, is a file, or holds no image files.
    """
    folder = Path(folder).expanduser()
    _check_folder(folder)
    entries = sorted(folder.iterdir(), key=lambda p: p.name)
    images = _walk_image_files(folder) if recursive else [p for p in entries if _is_image_file(p)]
    # a link whose target is gone is neither a file nor a folder: name it as what it is
    broken = [p for p in entries if p.is_symlink() and not p.exists() and not p.name.startswith(".")]
    links = ", ".join(f"'{p.name}' -> '{os.readlink(p)}'" for p in broken[:3])
    if not images:
        others = [p.name for p in entries if not p.name.startswith(".") and p not in broken]
        held = [f"{len(broken)} broken symbolic link(s), whose targets do not exist: {links}"] if broken else []
        held += [f"{len(others)} other entries, e.g. {others[:3]}"] if others else []
        held_text = "it holds " + " and ".join(held) if held else "it is empty"
        where = "folder or its sub-folders" if recursive else "folder"
        raise DatasetError(
            f"no image files in {where} '{folder}' ({held_text}); image files end in {', '.join(IMAGE_EXTENSIONS)}"
        )
    if broken:
        print(f"warning: skipped {len(broken)} broken symbolic link(s) in '{folder}': {links}", file=sys.stderr)
    return images


def check_n_images(n_images: int | None, available_count: int, where: str) -> int:
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

    def __init__(
        self,
        entries: Sequence[tuple[str, Path]],
        size: int,
        channels: int = 3,
        name: str = "",
        *,
        protocol: str = _DEFAULT_PROTOCOL,
    ) -> None:
        check_size_channels(size, channels)
        check_protocol(protocol)
        if not entries:
            raise DatasetError(f"dataset '{name}' has no images")
        seen: dict[str, Path] = {}
        for image_id, path in entries:
            # Ids become file names of results, so ids that differ only in case would collide on some systems.
            key = image_id.lower()
            if key in seen:
                raise DatasetError(
                    f"two files share the image id '{image_id}': '{seen[key]}' and '{path}'; image ids are "
                    "file names without extension (compared ignoring case), so rename or remove one of them"
                )
            seen[key] = path
        self._entries = [(image_id, Path(path)) for image_id, path in entries]
        self.size = size
        self.channels = channels
        self.name = name
        self.protocol = protocol

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
        # Only our protocol stands photos upright; the papers' loaders ignore the EXIF orientation.
        image = read_image(path, self.channels, exif_transpose=self.protocol == _DEFAULT_PROTOCOL)
        try:
            return image_id, pil_to_signed(_GEOMETRY[self.protocol](image, self.size))
        except DatasetError as error:
            raise DatasetError(f"image '{path}': {error}") from None

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
            "preprocessing": PROTOCOLS[self.protocol],
            "ids": self.ids,
        }

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, n_images={len(self)}, size={self.size}, channels={self.channels})"


def _relative_id(relative: PurePosixPath) -> str:
    """Image id of a file or list name relative to the folder: the path without its image extension, with
    "/" written "__" ("n01440764/ILSVRC2012_val_00000293.JPEG" -> "n01440764__ILSVRC2012_val_00000293").
    A file directly in the folder gets its stem, as before there were options."""
    if relative.suffix.lower() in IMAGE_EXTENSIONS:
        relative = relative.with_suffix("")
    return _ID_SEPARATOR.join(relative.parts)


def read_file_list(path: str | Path) -> list[str]:
    """The image names of a file list, in its order.

    The format is DDRM's ``imagenet_val_1k.txt`` (from deep-generative-prior): one image per line, its name
    relative to the image folder, optionally followed by whitespace and a class label, which is ignored
    (``ILSVRC2012_val_00000293.JPEG 0`` or ``n01440764/ILSVRC2012_val_00000293.JPEG 0``). Names therefore
    hold no spaces. Blank lines and lines starting with "#" are skipped. Raises `DatasetError` when the
    file is missing or empty, a name is absolute or climbs out with "..", or a name repeats.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise DatasetError(f"file list '{path}' does not exist or is not a file; check the path given as list=<file>")
    names: list[str] = []
    first_line: dict[str, int] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        fields = line.split()
        if not fields or fields[0].startswith("#"):
            continue
        name = fields[0]
        parts = PurePosixPath(name).parts
        if name.startswith("/") or ".." in parts:
            raise DatasetError(
                f"file list '{path}' line {number}: '{name}' is not a path inside the image folder; "
                "write names relative to the folder (e.g. n01440764/ILSVRC2012_val_00000293.JPEG)"
            )
        if name in first_line:
            raise DatasetError(
                f"file list '{path}' names '{name}' twice (lines {first_line[name]} and {number}); remove one"
            )
        first_line[name] = number
        names.append(name)
    if not names:
        raise DatasetError(f"file list '{path}' names no images; write one '<name> [<label>]' per line")
    return names


class _FileIndex:
    """The image files under a folder at any depth, looked up by a file list's names (see `_find_listed`)."""

    def __init__(self, root: Path) -> None:
        self._by_key: dict[tuple[str, str], list[Path]] = {}
        for path in _walk_image_files(root):
            relative = PurePosixPath(path.relative_to(root).as_posix())
            keys = (
                ("path", relative.as_posix()),
                ("path-stem", relative.with_suffix("").as_posix()),
                ("name", relative.name),
                ("name-stem", relative.stem),
            )
            for key in keys:
                self._by_key.setdefault(key, []).append(path)

    def find(self, name: str) -> list[Path]:
        """Files matching list name `name`: the path itself; a bare file name at any depth; without an image
        extension, any file with that stem (DDRM appends an extension to the names of its list)."""
        relative = PurePosixPath(name)
        nested = len(relative.parts) > 1
        kinds = ["path"] if nested else ["path", "name"]
        if relative.suffix.lower() not in IMAGE_EXTENSIONS:
            kinds += ["path-stem"] if nested else ["path-stem", "name-stem"]
        for kind in kinds:
            matches = self._by_key.get((kind, relative.as_posix()), [])
            if matches:
                return matches
        return []


def _find_listed(root: Path, names: Sequence[str], list_path: Path) -> list[tuple[str, Path]]:
    """(id, file) for each list name, in list order; ids come from the names (see `_relative_id`).

    A name is first taken as a path relative to `root`; only when some are not there is the folder walked
    once (50,000 ImageNet files take about a second), so a bare name also finds the file in a class folder.
    """
    _check_folder(root)
    entries: list[tuple[str, Path]] = []
    missing: list[str] = []
    index: _FileIndex | None = None
    for name in names:
        direct = root / name
        if _is_image_file(direct):
            entries.append((_relative_id(PurePosixPath(name)), direct))
            continue
        index = index or _FileIndex(root)
        matches = index.find(name)
        if len(matches) > 1:
            shown = ", ".join(str(p.relative_to(root)) for p in matches[:3])
            raise DatasetError(
                f"file list '{list_path}' name '{name}' matches {len(matches)} files under '{root}' ({shown}); "
                "write the name with its sub-folder so that it names one file"
            )
        if matches:
            entries.append((_relative_id(PurePosixPath(name)), matches[0]))
        else:
            missing.append(name)
    if missing:
        raise DatasetError(
            f"{len(missing)} of the {len(names)} images named in file list '{list_path}' are not under "
            f"'{root}', e.g. {missing[:5]}; check that list=<file> and the folder belong together (names are "
            "paths relative to the folder, or bare file names found in any sub-folder)"
        )
    return entries


def _check_native_size(paths: Sequence[Path], size: int) -> None:
    """For protocol 'dps': every file must already be size x size (read from the headers, no decoding)."""
    wrong = []
    for path in paths:
        try:
            with Image.open(path) as opened:
                if opened.size != (size, size):
                    wrong.append(f"{path.name} ({opened.width}x{opened.height})")
        except (OSError, SyntaxError, ValueError) as err:
            raise ImageReadError(f"could not read image file '{path}': {err}. Replace or remove the file") from err
    if wrong:
        raise DatasetError(
            f"protocol 'dps' uses images as they are, but {len(wrong)} of {len(paths)} are not {size}x{size}, "
            f"e.g. {wrong[:5]}; resize the files first or use protocol=ddc (resize only) or adm (crop)"
        )


def _folder_name(root: Path, protocol: str, recursive: bool, file_list: Path | None) -> str:
    """The dataset's name (a key of every result): 'folder:<root>' plus its non-default options, in a fixed
    order, so the default spec keeps the name it always had and equal options give equal names."""
    options = []
    if protocol != _DEFAULT_PROTOCOL:
        options.append(f"protocol={protocol}")
    if recursive and file_list is None:  # a list is looked up at any depth anyway
        options.append("recursive=1")
    if file_list is not None:
        options.append(f"list={file_list}")
    return f"{FOLDER_PREFIX}{root}" + (f"?{'&'.join(options)}" if options else "")


class ImageFolder(ImageDataset):
    """The image files directly inside `path`, sorted by file name; ids are file stems.

    `n_images` keeps the first N files in that order (an error when the folder holds fewer). Two files with
    the same stem (e.g. a.png and a.jpg) are an error naming both.

    Options (all off by default, which keeps the behaviour and names above):

    * `protocol`: the ground-truth preprocessing, one of `PROTOCOLS` ("ours" by default);
    * `recursive`: also take the image files in sub-folders at any depth, sorted by relative path; ids are
      the relative paths without extension, "/" written "__" (files directly inside keep their stems);
    * `file_list`: take exactly the images a file list names (`read_file_list`), in its order, found at any
      depth; ids come from the names the same way. Names not found are one error listing the first few.
    """

    def __init__(
        self,
        path: str | Path,
        size: int,
        channels: int = 3,
        n_images: int | None = None,
        *,
        protocol: str = _DEFAULT_PROTOCOL,
        recursive: bool = False,
        file_list: str | Path | None = None,
    ) -> None:
        check_size_channels(size, channels)
        check_protocol(protocol)
        self.root = Path(path).expanduser()
        list_path = None if file_list is None else Path(file_list).expanduser()
        if list_path is None:
            files = list_image_files(self.root, recursive=recursive)
            entries = [(_relative_id(PurePosixPath(p.relative_to(self.root).as_posix())), p) for p in files]
        else:
            entries = _find_listed(self.root, read_file_list(list_path), list_path)
        count = check_n_images(n_images, len(entries), f"folder '{self.root}'")
        name = _folder_name(self.root, protocol, recursive, list_path)
        # Duplicate stems are checked over the whole folder, not just the first N, so that the ids of a
        # folder do not depend on how many images are asked for.
        super().__init__(entries, size, channels, name=name, protocol=protocol)
        self._entries = self._entries[:count]
        if protocol == "dps":
            _check_native_size(self.paths, size)  # fail before a run starts, not at its first odd image


# An image whose short side is below this share of the prior's size is upscaled more than 2x: its ground truth
# is a blurred image, which every solver restores easily, so its metrics flatter them.
SMALL_IMAGE_SHARE = 0.5
_WARNED_SMALL: set[tuple[str, int]] = set()  # (dataset name, size): warn once per process (a run loads twice)


def warn_small_images(dataset: ImageDataset) -> ImageDataset:
    """Print one warning with the count of `dataset`'s images far smaller than its size; returns `dataset`."""
    limit = SMALL_IMAGE_SHARE * dataset.size
    small = []
    for path in dataset.paths:
        try:
            with Image.open(path) as opened:  # the header only: nothing is decoded
                width, height = opened.size
        except (OSError, SyntaxError, ValueError):
            continue  # an unreadable file fails with its own message when it is read
        if min(width, height) < limit:
            small.append(f"{path.name} ({width}x{height})")
    if small and (dataset.name, dataset.size) not in _WARNED_SMALL:
        _WARNED_SMALL.add((dataset.name, dataset.size))
        print(
            f"warning: {len(small)} of {len(dataset)} images of dataset '{dataset.name}' are far smaller than the "
            f"prior's {dataset.size}x{dataset.size} (short side below {limit:g} pixels, e.g. {', '.join(small[:3])}): "
            "they are upscaled more than 2x, so their ground truth is blurry and the metrics flatter every solver; "
            "use larger images, or a prior of their size",
            file=sys.stderr,
        )
    return dataset
