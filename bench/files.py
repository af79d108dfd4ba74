"""Files written so that a reader never sees half of them, their checksums, and the code's git commit.

Torch-free on purpose: the report (which must render without PyTorch) writes its folders through here too.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

__all__ = ["atomic_write_bytes", "atomic_write_text", "file_sha256", "git_commit", "replace_folder"]

T = TypeVar("T")
_ROOT = Path(__file__).resolve().parents[1]


ASSETS = Path(__file__).resolve().parent / "assets"


def asset(name: str) -> Path:
    """The shipped asset folder `name` (natural64, ddc-natural64, dncnn, cddb-sr4-64, ...): bench/assets/<name>,
    wherever the package is installed. The one place that knows where shipped weights live."""
    return ASSETS / name


def file_sha256(path: str | Path, chunk_bytes: int = 1 << 22) -> str:
    """Hex SHA-256 of a file's bytes, read in chunks (weight files are hundreds of megabytes)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def _hidden_sibling(path: Path, kind: str) -> Path:
    """A hidden name beside `path`, unique across processes, which readers globbing for real names skip."""
    return path.with_name(f".{path.name}.{kind}-{os.getpid()}-{secrets.token_hex(4)}")


def atomic_write_bytes(path: str | Path, data: bytes, mode: int | None = None) -> None:
    """Write `data` to `path` through a temporary file in the same folder, flushed to disk, and an atomic rename.

    `mode`: permission bits for the file (None keeps the temporary file's, i.e. the umask's)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _hidden_sibling(path, "tmp")
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: str | Path, text: str) -> None:
    """`atomic_write_bytes` of UTF-8 text."""
    atomic_write_bytes(path, text.encode("utf-8"))


def prove_writable(folder: Path) -> None:
    """Create `folder` if needed and write and remove a probe file in it; raises the OSError if that fails, so
    that a command names the folder before it does any work instead of failing later on a hidden temp file."""
    folder.mkdir(parents=True, exist_ok=True)
    probe = folder / f".write-test-{os.getpid()}"
    probe.write_bytes(b"")
    probe.unlink()


def atomic_write_json(path: str | Path, value: object) -> Path:
    """`value` as indented JSON (UTF-8, a final newline), written atomically; returns the path."""
    import json

    path = Path(path)
    atomic_write_text(path, json.dumps(value, indent=2, ensure_ascii=False) + "\n")
    return path


def replace_folder(target: Path, write: Callable[[Path], T]) -> T:
    """Run `write(staging)` on an empty hidden sibling folder, then put it at `target`, replacing the old one.

    A reader sees the old folder or the new one, never a half-written one (between the two renames there is
    a moment with neither). If `write` fails, the old folder stays untouched and the staging folder is removed.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = _hidden_sibling(target, "tmp")
    staging.mkdir()
    retired = _hidden_sibling(target, "old")
    try:
        result = write(staging)
        if target.exists():
            os.rename(target, retired)
        try:
            os.rename(staging, target)
        except OSError:
            if retired.exists():
                os.rename(retired, target)  # put the old folder back
            raise
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    shutil.rmtree(retired, ignore_errors=True)
    return result


def git_commit(dirty_mark: bool = True) -> str | None:
    """The checked-out commit of this code, with "+dirty" when tracked files differ from it (`dirty_mark`);
    None where git or the repository is not there (an installed copy)."""
    try:
        commit = subprocess.run(
            ["git", "-C", str(_ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        if not commit:
            return None
        if not dirty_mark:
            return commit
        dirty = subprocess.run(
            ["git", "-C", str(_ROOT), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{commit}+dirty" if dirty else commit
