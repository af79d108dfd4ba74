"""The dataset "folder:<path>[?protocol=<name>&recursive=1&list=<file>]": the image files of any folder, as an
`ImageFolder` (bench.data.images), with the ground-truth protocol, sub-folders and file list its options pick."""

from __future__ import annotations

from typing import Any

from bench.data import register_dataset
from bench.data.images import (
    FOLDER_PREFIX,
    PROTOCOLS,
    DatasetError,
    ImageDataset,
    ImageFolder,
    check_protocol,
    warn_small_images,
)

_TRUE_WORDS = ("1", "true", "yes")
_FALSE_WORDS = ("0", "false", "no")


def _parse_flag(key: str, value: str, spec: str) -> bool:
    word = value.lower()
    if word in _TRUE_WORDS or word in _FALSE_WORDS:
        return word in _TRUE_WORDS
    raise DatasetError(f"option {key}={value!r} in dataset spec '{spec}' must be 1 or 0")


@register_dataset(
    "folder",
    f"{FOLDER_PREFIX}<path>",
    "every image file directly inside <path>, sorted by name; ids are file stems. Options "
    f"?protocol=<{'|'.join(PROTOCOLS)}>&recursive=1&list=<file> (docs/datasets.md)",
    options=("protocol", "recursive", "list"),
    example=f"{FOLDER_PREFIX}<path>?protocol=ddrm&recursive=1&list=<file>",
)
def load(argument: str | None, options: dict[str, str], size: int, channels: int, n_images: int | None) -> ImageDataset:
    folder = (argument or "").strip()
    query = "&".join(f"{key}={value}" for key, value in options.items())
    spec = ("folder" if argument is None else f"{FOLDER_PREFIX}{folder}") + (f"?{query}" if query else "")
    if not folder:
        raise DatasetError(f"dataset spec '{spec}' names no folder; write it as '{FOLDER_PREFIX}<path>'")
    keywords: dict[str, Any] = {}
    if "protocol" in options:
        check_protocol(options["protocol"])
        keywords["protocol"] = options["protocol"]
    if "recursive" in options:
        keywords["recursive"] = _parse_flag("recursive", options["recursive"], spec)
    if "list" in options:
        keywords["file_list"] = options["list"]
    return warn_small_images(ImageFolder(folder, size, channels, n_images, **keywords))
