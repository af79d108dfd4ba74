"""Replace a report folder as a whole (`bench.files.replace_folder`), marked as made by the report."""

from __future__ import annotations

import os
import re
import shutil
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

    remove_stale(target)
    return files.replace_folder(target, write_marked)


def remove_stale(target: Path) -> list[Path]:
    """Remove the staging and retired folders of `target` that a killed render left beside it; returns them.

    `files.replace_folder` names them .<name>.tmp-<pid>-<hex> and .<name>.old-<pid>-<hex>, and removes them
    itself unless its process is killed. Only folders of that exact name whose process no longer runs are
    removed, so a render in progress (into the same folder, from another shell) keeps its staging folder.
    """
    pattern = re.compile(rf"^\.{re.escape(target.name)}\.(?:tmp|old)-(\d+)-[0-9a-f]+$")
    removed = []
    parent = target.parent
    for entry in parent.iterdir() if parent.is_dir() else ():
        match = pattern.match(entry.name)
        if match and entry.is_dir() and not entry.is_symlink() and not _running(int(match.group(1))):
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    return removed


def _running(pid: int) -> bool:
    """Whether process `pid` runs on this machine (this process counts as running)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)  # signal 0: only checks that the process exists
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: it exists, under another user
        return True
    return True
