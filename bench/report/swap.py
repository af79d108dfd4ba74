"""Replace a report folder as a whole (`bench.files.replace_folder`), marked as made by the report."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from bench import files

__all__ = ["MARKER", "replace_folder"]

#: Written into every report folder, so that re-rendering only ever replaces a folder this code made.
MARKER = ".bench-report"
T = TypeVar("T")


def replace_folder(target: Path, write: Callable[[Path], T]) -> T:
    """Run `write(staging)`, mark the staging folder with `MARKER`, then put it at `target`, replacing the old one.

    A reader sees the old folder or the new one, never a half-written one. If `write` fails, the old folder
    stays untouched and the staging folder is removed.
    """

    def write_marked(staging: Path) -> T:
        result = write(staging)
        (staging / MARKER).write_text("made by `python -m bench report`; re-rendering replaces this folder\n")
        return result

    return files.replace_folder(target, write_marked)
