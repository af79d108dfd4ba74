"""Named datasets that are plain folders under ../shared/data next to the repository: today "kodak24".

Each is an `ImageFolder` of its folder under the dataset's own name; `folder:<path>` reads another copy.
"""

from __future__ import annotations

from pathlib import Path

from bench.data import register_dataset
from bench.data.images import FOLDER_PREFIX, DatasetError, ImageDataset, ImageFolder, warn_small_images

# bench/data/shared.py -> the repository; the shared data folder is its sibling.
_REPO_ROOT = Path(__file__).resolve().parents[2]
#: Named datasets that are plain folders under ../shared/data next to the repository: name -> (folder, description).
SHARED_FOLDERS: dict[str, tuple[Path, str]] = {
    "kodak24": (_REPO_ROOT.parent / "shared" / "data" / "kodak24", "the 24 Kodak photos, held out for testing"),
}


def _register(name: str, folder: Path, description: str) -> None:
    @register_dataset(name, name, description, folder=folder)
    def load(
        argument: str | None, options: dict[str, str], size: int, channels: int, n_images: int | None
    ) -> ImageDataset:
        if not folder.is_dir():
            raise DatasetError(
                f"dataset '{name}' looks for its photos in '{folder}', which does not exist; put them there "
                f"or point at another copy with '{FOLDER_PREFIX}<path>'"
            )
        dataset = ImageFolder(folder, size, channels, n_images)
        dataset.name = name
        return warn_small_images(dataset)


for _name, (_folder, _description) in SHARED_FOLDERS.items():
    _register(_name, _folder, _description)
