"""The catalogue: what `bench list` and `bench matrix` print and the names a run accepts, kept in a shipped JSON
file so that they answer without importing torch (a second or more of a first command's wait).

The file is derived, never edited: `python -m bench.tools.catalogue` writes it from the registries, and
`tests/test_catalogue.py` fails while it differs from what the code gives. It is used only while it is current:
it records a fingerprint of the source files it is derived from, and a checkout whose files differ (a solver
edited, a module added) or that has plug-ins installed (entry points) gets the live answer, which imports the
registries. Where a dataset is a folder, whether the folder is there is looked up when the line is printed.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.files import asset
from bench.registry import unknown_name

__all__ = ["FILE", "build", "current", "dataset_lines", "task_choices", "unknown_run_name", "write"]

FILE = asset("catalogue.json")
_ROOT = Path(__file__).resolve().parents[2]
# What the catalogue is derived from, as (package, path inside it): a change to any of these files makes it stale.
_SOURCES = (("solvers", ""), ("operators", ""), ("bench", "data"), ("bench", "metrics"), ("bench", "priors/__init__.py"),
            ("bench", "tools/matrix.py"), ("bench", "cli.py"), ("bench", "registry.py"))  # fmt: skip
# The `bench list` sections whose text is stored as printed (datasets are stored as rows: see module docstring).
TEXT_SECTIONS = ("tasks", "solvers", "priors", "metrics")


def _package_folder(package: str) -> Path:
    """Where `package` is imported from, found without importing it (a copy earlier on sys.path counts)."""
    import importlib.util

    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"no package {package!r} on the path")
    return Path(list(spec.submodule_search_locations)[0]).resolve()


def fingerprint() -> str:
    """SHA-256 over the relative paths and contents of the source files (`_SOURCES`) of the packages as they are
    imported, in sorted order."""
    digest = hashlib.sha256()
    for package, inside in _SOURCES:
        folder = _package_folder(package)
        path = folder / inside if inside else folder
        files = sorted(path.rglob("*.py")) if path.is_dir() else [path]
        for file in files:
            if "__pycache__" in file.parts or not file.is_file():
                continue
            name = f"{package}/{file.relative_to(folder).as_posix()}"
            digest.update(name.encode() + b"\0" + file.read_bytes() + b"\0")
    return digest.hexdigest()


def _plugins_installed() -> bool:
    from bench import plugins

    return any(plugins._entry_points(kind) for kind in plugins.GROUPS)


def current() -> dict[str, Any] | None:
    """The shipped catalogue when it matches this checkout and no plug-in is installed; else None."""
    try:
        catalogue = json.loads(FILE.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if catalogue.get("fingerprint") != fingerprint() or _plugins_installed():
        return None
    return catalogue


def build() -> dict[str, Any]:
    """The catalogue from the registries (imports every solver, operator, prior kind, dataset and metric)."""
    import operators
    import solvers
    from bench import cli
    from bench.data import _DATASETS
    from bench.tools.matrix import support_matrix

    text = {}
    for section in TEXT_SECTIONS:
        with contextlib.redirect_stdout(io.StringIO()) as printed:
            cli.print_list_section(section, plugin_failures=False)  # where it is used no plug-in is installed
        text[section] = printed.getvalue()
    datasets = [
        {
            "pattern": entry.value.pattern,
            "description": entry.value.description,
            "folder": None if entry.value.folder is None else os.path.relpath(entry.value.folder, _ROOT),
        }
        for entry in _DATASETS.entries()
    ]
    return {
        "fingerprint": fingerprint(),
        "list": text,
        "datasets": datasets,
        "matrix": support_matrix(),
        "solvers": solvers.available(),
        "tasks": operators.available(),
        "task_suites": [*operators.SUITES, "every"],
    }


def dataset_lines(catalogue: dict[str, Any]) -> list[tuple[str, str]]:
    """(pattern, description) of each dataset, as `bench.data.available()` gives them, from the catalogue."""
    rows = []
    for row in catalogue["datasets"]:
        description = row["description"]
        if row["folder"] is not None:
            folder = Path(os.path.normpath(_ROOT / row["folder"]))
            description += f"; folder {folder} ({'present' if folder.is_dir() else 'absent'})"
        rows.append((row["pattern"], description))
    return rows


def task_choices(catalogue: dict[str, Any]) -> list[str]:
    return [*catalogue["tasks"], *catalogue["task_suites"]]


def unknown_run_name(catalogue: dict[str, Any], solver_names: Sequence[str], task_names: Sequence[str]) -> str | None:
    """The message `bench run` gives for the first unknown solver or task name (the registries' own wording),
    or None when every name is known."""
    for name in solver_names:
        if name != "all" and name not in catalogue["solvers"]:
            return unknown_name("solver", name, catalogue["solvers"])
    for name in task_names:
        if name not in task_choices(catalogue):
            return unknown_name("task", name, task_choices(catalogue))
    return None


def write(path: Path = FILE) -> Path:
    from bench.files import atomic_write_text

    atomic_write_text(path, json.dumps(build(), indent=1, ensure_ascii=False) + "\n")
    return path


if __name__ == "__main__":
    print(f"catalogue written to {write()}")
