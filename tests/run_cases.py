"""What the end-to-end run tests share: small crops of real photos and a call of the CLI that captures its output.

Runs use the analytic Gaussian prior at 3x32x32 (the smallest size LPIPS accepts) and 48x48 crops of
scikit-image's bundled photos, so that a run of a few units takes a second.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from bench.cli import main
from bench.data.skimage_natural import SKIMAGE_NATURAL_COLOUR, _skimage_data_dir

PRIOR = "gaussian:32"


def write_photo_crops(folder: Path, count: int = 5, size: int = 48) -> Path:
    """The top-left quarter of the first `count` bundled photos, resized to size x size, as PNG files."""
    for image_id, file_name in SKIMAGE_NATURAL_COLOUR[:count]:
        with Image.open(_skimage_data_dir() / file_name) as photo:
            rgb = photo.convert("RGB")
        side = min(rgb.size) // 2
        rgb.crop((0, 0, side, side)).resize((size, size), Image.Resampling.BICUBIC).save(folder / f"{image_id}.png")
    return folder


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    """`python -m bench <argv>` in this process: (exit code, stdout, stderr)."""
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def pinv_run(out: Path, photos: Path, *extra: str) -> list[str]:
    """`bench run` arguments for A⁺y on sr4 over `photos` into `out`: a run of a second; `extra` override."""
    return ["run", "--prior", PRIOR, "--dataset", f"folder:{photos}", "--out", str(out), "--no-progress",
            "--solvers", "pinv", "--tasks", "sr4", *extra]  # fmt: skip
