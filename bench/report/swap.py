"""Replace a folder as a whole: fill a hidden sibling, then swap it in with two renames.

(bench.training has a similar helper, but it imports torch at module level, which a report must not.)
"""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

__all__ = ["MARKER", "replace_folder"]

#: Written into every report folder, so that re-rendering only ever replaces a folder this code made.
MARKER = ".bench-report"
T = TypeVar("T")


def replace_folder(target: Path, write: Callable[[Path], T]) -> T:
    """Run `write(staging)`, then put the staging folder at `target`, replacing the old one.

    A reader sees the old folder or the new one, never a half-written one (between the two renames there is
    a moment with neither). If `write` fails, the old folder stays untouched and the staging folder is removed.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    tag = f"{os.getpid()}-{secrets.token_hex(4)}"
    staging = target.parent / f".{target.name}.tmp-{tag}"
    staging.mkdir()
    try:
        result = write(staging)
        (staging / MARKER).write_text("made by `python -m bench report`; re-rendering replaces this folder\n")
        retired = target.parent / f".{target.name}.old-{tag}"
        if target.exists():
            os.rename(target, retired)
        try:
            os.rename(staging, target)
        except OSError:
            if retired.exists():
                os.rename(retired, target)  # put the old report back
            raise
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    shutil.rmtree(retired, ignore_errors=True)
    return result
