"""Screenshot a report's index.html in headless Chromium, to check that the page renders offline.

    python scripts/screenshot_report.py reports/quickstart/index.html /tmp/report.png [--window-size 1400,3000]

Exits 0 with the PNG written and not blank, 1 when Chromium fails or draws a blank page, 2 when Chromium is
not installed (Debian: `apt-get install chromium`). Chromium runs with networking features off and a
throw-away profile, so the page can only show what is in the report folder.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = [
    "--headless",
    "--no-sandbox",  # containers and CI runners often forbid the sandbox's namespaces
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",  # /dev/shm is tiny in containers
    "--hide-scrollbars",
]


def screenshot(page: Path, png: Path, window: str = "1400,3000", timeout: float = 120.0) -> None:
    """Render `page` into `png`; raises RuntimeError with Chromium's output when no PNG comes out."""
    png = png.resolve()
    png.parent.mkdir(parents=True, exist_ok=True)
    png.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        command = [
            str(CHROMIUM),
            *FLAGS,
            f"--user-data-dir={profile}",
            f"--screenshot={png}",
            f"--window-size={window}",
            page.resolve().as_uri(),
        ]
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    if not png.is_file() or png.stat().st_size == 0:
        raise RuntimeError(f"chromium wrote no screenshot (exit {done.returncode}):\n{done.stderr[-2000:]}")


def is_blank(png: Path) -> bool:
    """True when the picture has (almost) one colour: a page that did not render."""
    from PIL import Image

    with Image.open(png) as image:
        colours = image.convert("RGB").getcolors(maxcolors=1 << 16)
    # getcolors gives None above maxcolors: plenty of colours, so not blank
    return colours is not None and len(colours) < 8


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("page", type=Path, help="the report's index.html")
    parser.add_argument("png", type=Path, help="where to write the screenshot")
    parser.add_argument("--window-size", default="1400,3000", help="width,height in pixels (default: %(default)s)")
    args = parser.parse_args(argv)
    if not CHROMIUM.exists():
        print(f"error: {CHROMIUM} not found; install Debian's chromium package", file=sys.stderr)
        return 2
    if not args.page.is_file():
        print(f"error: page '{args.page}' does not exist; render it with `python -m bench report`", file=sys.stderr)
        return 1
    try:
        screenshot(args.page, args.png, args.window_size)
    except (RuntimeError, subprocess.TimeoutExpired) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    if is_blank(args.png):
        print(f"error: the screenshot {args.png} is blank: the page did not render", file=sys.stderr)
        return 1
    print(args.png)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
