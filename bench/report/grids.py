"""Image grids per task and σ: ground truth | measurement (A⁺y) | each method, a few images, from the PNGs.

Composed with Pillow (fast, pixel-exact): small images are enlarged by an integer factor with nearest
neighbour, so what is shown is what the solver produced; labels use matplotlib's bundled DejaVu Sans.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pandas as pd

from bench.report.figures import Figure
from bench.report.load import sigma_label, sort_tasks

__all__ = ["grid_figures"]

TILE_MIN, TILE_MAX = 128, 256  # pixels: small images are enlarged up to this, large ones reduced
GAP, HEADER, LEFT = 4, 40, 96
BACKGROUND, EMPTY, INK = (255, 255, 255), (225, 225, 225), (30, 30, 30)
MAX_IMAGES = 4


def _font(size: int):
    from matplotlib import font_manager
    from PIL import ImageFont

    try:
        return ImageFont.truetype(font_manager.findfont("DejaVu Sans"), size)
    except OSError:  # no FreeType: Pillow's own font still draws ASCII
        return ImageFont.load_default()


def _tile_size(native: int) -> int:
    if native >= TILE_MIN:
        return min(native, TILE_MAX)
    return native * -(-TILE_MIN // native)  # the smallest integer enlargement reaching TILE_MIN


def _load(path: Path, size: int):
    from PIL import Image

    with Image.open(path) as image:
        image = image.convert("RGB")
        if image.size == (size, size):
            return image.copy()
        enlarge = image.width < size
        return image.resize((size, size), Image.Resampling.NEAREST if enlarge else Image.Resampling.LANCZOS)


def _placeholder(size: int, text: str, font):
    from PIL import Image, ImageDraw

    tile = Image.new("RGB", (size, size), EMPTY)
    ImageDraw.Draw(tile).text((size / 2, size / 2), text, fill=INK, font=font, anchor="mm")
    return tile


def _grid(columns: list[tuple[str, list[Path | str]]], ids: list[str], size: int):
    """Columns of (header, one PNG path or placeholder text per image) -> one picture."""
    from PIL import Image, ImageDraw

    font, small = _font(13), _font(11)
    width = LEFT + len(columns) * (size + GAP)
    height = HEADER + len(ids) * (size + GAP)
    canvas = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    chars = max(8, size // 8)
    for c, (header, cells) in enumerate(columns):
        x = LEFT + c * (size + GAP)
        label = "\n".join(textwrap.wrap(header, chars)[:2])
        draw.multiline_text((x + size / 2, HEADER / 2), label, fill=INK, font=font, anchor="mm", align="center")
        for r, cell in enumerate(cells):
            y = HEADER + r * (size + GAP)
            tile = _load(cell, size) if isinstance(cell, Path) else _placeholder(size, cell, small)
            canvas.paste(tile, (x, y))
    for r, image_id in enumerate(ids):
        y = HEADER + r * (size + GAP) + size / 2
        draw.text((LEFT - 8, y), textwrap.shorten(image_id, 14, placeholder="…"), fill=INK, font=small, anchor="rm")
    return canvas


def grid_figures(images: Path, units: pd.DataFrame, methods: list[str], out: Path) -> list[Figure]:
    """One grid per (task, σ) whose reference PNGs exist; `units` are the rows to show (no reference solvers).

    Every cell is read from its row's own PNG (`bench.pipeline.store.row_image_paths`); the ground truth and the
    measurement of an image come from its latest row, so a store holding two datasets or priors shows each
    image beside its own reference."""
    from bench.pipeline.store import row_image_paths

    root = images.parent
    figures = []
    rank = {task: i for i, task in enumerate(sort_tasks(list(units["task"].unique())))}
    for (task, sigma), rows in sorted(units.groupby(["task", "sigma"]), key=lambda g: (rank[g[0][0]], g[0][1])):
        newest = {r["image_id"]: r for r in rows.sort_values("part").to_dict("records")}  # the latest run's row
        paths = {i: row_image_paths(root, row) for i, row in newest.items()}
        available = sorted(i for i, (_, reference, _) in paths.items() if reference.is_file())
        ids = available[:MAX_IMAGES]
        if not ids:
            continue
        folder = sigma_label(sigma)
        columns: list[tuple[str, list[Path | str]]] = [
            ("ground truth", [paths[i][1] for i in ids]),
            ("measurement (A⁺y)", [_existing(paths[i][2]) for i in ids]),
        ]
        columns += _solver_columns(root, rows, methods, ids)
        if len(columns) == 2:
            continue
        with _open(columns[0][1][0]) as first:
            size = _tile_size(max(first.size))
        path = out / f"{task}_sigma{folder}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        _grid(columns, ids, size).save(path, format="PNG", optimize=False)
        shown = f"all {len(ids)} images" if len(ids) == len(available) else f"the first {len(ids)} of {len(available)} images"
        caption = (
            f"{task}, σ = {folder}: ground truth, the measurement shown as A⁺y, each solver's reconstruction; "
            f"{shown} (sorted by id)."
        )
        figures.append(Figure(path, f"{task} (σ = {folder})", caption))
    return figures


def _solver_columns(
    root: Path, rows: pd.DataFrame, methods: list[str], ids: list[str]
) -> list[tuple[str, list[Path | str]]]:
    """One column per method (a solver and its config) that finished an image here, each cell its row's own
    PNG, so two configs of a solver show side by side."""
    from bench.pipeline.store import row_image_paths

    latest = rows.sort_values("part").drop_duplicates(["method", "image_id"], keep="last")
    order = {m: i for i, m in enumerate(methods)}
    columns = []
    for method, mine in sorted(latest.groupby("method"), key=lambda g: order.get(g[0], len(order))):
        by_id = {r["image_id"]: r for r in mine.to_dict("records")}
        if not any(r["status"] == "ok" for r in by_id.values()):
            continue
        cells: list[Path | str] = []
        for i in ids:
            row = by_id.get(i)
            if row is None or row["status"] != "ok":
                cells.append("missing" if row is None else row["status"])
            else:
                cells.append(_existing(row_image_paths(root, row)[0]))
        columns.append((method, cells))
    return columns


def _existing(path: Path | None) -> Path | str:
    return path if path is not None and path.is_file() else "no PNG"


def _open(path: Path):
    from PIL import Image

    return Image.open(path)
