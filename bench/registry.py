"""What the registries share (solvers, operators, priors, datasets, metrics, weights): the message for a name
that is not registered, with the closest registered one. Torch-free, so the store and the report can use it."""

from __future__ import annotations

import difflib
from collections.abc import Sequence

__all__ = ["unknown_name"]


def unknown_name(kind: str, name: str, valid: Sequence[str]) -> str:
    """"unknown metric 'lpip'; did you mean 'lpips'? (available: psnr, ssim, ...)"."""
    close = difflib.get_close_matches(name, list(valid), n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return f"unknown {kind} '{name}'{hint} (available: {', '.join(valid)})"
