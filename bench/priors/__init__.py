"""Diffusion priors: `load_prior(spec)` turns a spec string into a `Prior` (see `base.Prior`).

Spec syntax: ``<kind>[:<argument>][?<key>=<value>[&<key>=<value>...]]``; options may also be passed to
`load_prior` as keyword arguments (e.g. from a command-line flag). The kinds:

* ``natural64``: the embedded default, a diffusers UNet2DModel trained on natural photos at 3x64x64,
  shipped under ``bench/assets/natural64/`` (model.safetensors + config.json as written by `save_unet`,
  or a diffusers unet/ + scheduler/ folder).
* ``gaussian[:<size>][?channels=<1|3>&variant=<photo|lowvar>]``: the analytic Gaussian prior (default 3x16x16)
  with an exact denoiser and exact posteriors for linear operators, for testing solvers; ``variant=lowvar`` is a
  second prior with a varying mean, a steeper spectrum and pixel std ≈ 0.1.
* ``diffusers:<folder or hub id>``: a diffusers UNet2DModel with its DDPMScheduler config (a pipeline
  folder, a bare UNet folder or a `save_unet` folder); a hub id only from the cache or when online.
* ``adm:<checkpoint>[?preset=<name>]``: a guided-diffusion ADM checkpoint (.pt or .safetensors); presets
  imagenet256-uncond (default) and ffhq256; ``?attention=legacy`` runs ADM's einsum attention instead of SDPA.
* ``adm-random:<imagenet256|ffhq256|tiny>[?seed=<n>]``: the ADM architecture with random weights, for timing
  (`python -m bench speed`) and for 256x256 tests; ``tiny`` is the 256x256 network at its narrowest widths.

Every kind also takes the runtime options ``compile``, ``channels_last`` and ``checkpointing`` (``=1`` or ``=0``,
off by default; see `base.RUNTIME_OPTIONS`), in the spec or as keywords: load_prior(spec, compile=True).

The last '?' of a spec starts its options, so a path may not contain '?'. Installed packages add kinds by entry
point (group `diffusion_inverse_bench.priors`, see `bench.plugins` and `check_plugin`), listed after these.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from bench.files import asset
from bench.registry import Registry, closest

from .base import (
    PosteriorCoefficients,
    Prediction,
    Prior,
    PriorError,
    PriorStats,
    linear_betas,
    pop_runtime_options,
    resolve_dtype,
)

# hf imports diffusers only inside its functions, so these cost nothing at start-up.
from .hf import load_unet, save_unet

__all__ = [
    "NATURAL64_DIR",
    "PosteriorCoefficients",
    "Prediction",
    "Prior",
    "PriorKind",
    "PriorError",
    "PriorStats",
    "available",
    "linear_betas",
    "load_prior",
    "load_unet",
    "parse_spec",
    "save_unet",
]

# Where the embedded prior's weights ship (package data of `bench`).
NATURAL64_DIR = asset("natural64")


def parse_spec(spec: str) -> tuple[str, str | None, dict[str, str]]:
    """'kind:argument?key=value&...' -> (kind, argument or None, options)."""
    text = str(spec).strip()
    head, mark, query = text.rpartition("?")
    if not mark:
        head, query = text, ""
    kind, colon, argument = head.partition(":")
    options: dict[str, str] = {}
    for pair in filter(None, query.split("&")):
        key, equals, value = pair.partition("=")
        if not equals or not key:
            raise PriorError(f"bad option {pair!r} in prior spec {spec!r}; write options as '?key=value&key=value'")
        options[key.strip()] = value.strip()
    return kind.strip(), (argument.strip() if colon else None), options


@dataclass(frozen=True)
class PriorKind:
    """A registered prior kind: `load(argument, options, device, dtype) -> Prior`, the option names its specs
    accept, how a spec of it is written, and one line for `bench list priors`."""

    load: Callable[..., Prior]
    options: frozenset[str]
    pattern: str
    summary: str


_KINDS: Registry[PriorKind] = Registry(
    "prior", group="priors", check=lambda kind, loader: check_plugin(kind, loader), error=PriorError
)


def _kind(name: str, pattern: str, summary: str, options: tuple[str, ...] = ()) -> Callable[..., Any]:
    """Decorator: register a built-in kind's loader under `name`."""

    def register(load: Callable[..., Prior]) -> Callable[..., Prior]:
        _KINDS.register(name, PriorKind(load, frozenset(options), pattern, summary), summary=summary, module=__name__)
        return load

    return register


@_kind(
    "natural64",
    "natural64",
    "embedded default: diffusers UNet2DModel trained on natural photos, 3x64x64 (bench/assets/natural64)",
)
def _natural64(argument: str | None, options: dict[str, str], device: Any, dtype: Any) -> Prior:
    if argument:
        raise PriorError(f"'natural64' takes no argument, got 'natural64:{argument}'")
    from .hf import load_diffusers_prior, load_unet_prior

    own_format = [NATURAL64_DIR / "model.safetensors", NATURAL64_DIR / "config.json"]
    if all(p.is_file() for p in own_format):
        return load_unet_prior(NATURAL64_DIR, kind="natural64", device=device, dtype=dtype)
    # The trainer (bench.priors.train) writes a diffusers pipeline folder; shipping that as-is works too.
    if (NATURAL64_DIR / "unet").is_dir():
        return load_diffusers_prior(str(NATURAL64_DIR), kind="natural64", device=device, dtype=dtype)
    raise PriorError(
        f"the embedded prior 'natural64' has not been trained and shipped yet: {NATURAL64_DIR} holds neither "
        "model.safetensors + config.json nor a diffusers unet/ + scheduler/ folder. Use another prior meanwhile: "
        "'gaussian' (analytic, 3x16x16), 'diffusers:<folder or hub id>' or 'adm:<checkpoint.pt>?preset=imagenet256-uncond'"
    )


@_kind(
    "gaussian",
    "gaussian[:<size>][?channels=<1|3>&variant=<photo|lowvar>]",
    "analytic Gaussian prior (default 3x16x16): exact denoiser and exact posteriors of linear operators",
    options=("channels", "variant"),
)
def _gaussian(argument: str | None, options: dict[str, str], device: Any, dtype: Any) -> Prior:
    from .gaussian import GaussianPrior

    kwargs: dict[str, int] = {}
    for name, text in (("size", argument), ("channels", options.get("channels"))):
        if text:
            try:
                kwargs[name] = int(text)
            except ValueError as exc:
                raise PriorError(
                    f"gaussian prior {name} must be an integer, got {text!r} (e.g. 'gaussian:16?channels=3')"
                ) from exc
    variant = options.get("variant", "photo")
    return GaussianPrior(**kwargs, variant=variant, device=device, dtype=dtype)


@_kind(
    "diffusers",
    "diffusers:<folder or hub id>",
    "diffusers UNet2DModel + DDPMScheduler config (ε-prediction; learned_range variance supported)",
)
def _diffusers(argument: str | None, options: dict[str, str], device: Any, dtype: Any) -> Prior:
    if not argument:
        raise PriorError(
            "'diffusers' needs a folder or hub id: 'diffusers:<folder>' or 'diffusers:google/ddpm-celebahq-256'"
        )
    from .hf import load_diffusers_prior

    return load_diffusers_prior(argument, device=device, dtype=dtype)


@_kind(
    "adm",
    "adm:<checkpoint.pt>[?preset=<name>]",
    "guided-diffusion ADM UNet, linear β, learned variance; presets imagenet256-uncond (default), ffhq256",
    options=("preset", "attention"),
)
def _adm(argument: str | None, options: dict[str, str], device: Any, dtype: Any) -> Prior:
    from .adm_prior import ADM_DEFAULT_PRESET, load_adm_prior

    if not argument:
        raise PriorError("'adm' needs a checkpoint path: 'adm:<checkpoint.pt>?preset=imagenet256-uncond'")
    return load_adm_prior(
        argument,
        options.get("preset") or ADM_DEFAULT_PRESET,
        device=device,
        dtype=dtype,
        attention=options.get("attention", "sdpa"),
    )


@_kind(
    "adm-random",
    "adm-random:<imagenet256|ffhq256|tiny>[?seed=<n>]",
    "ADM architecture with random weights, for timing and 256x256 tests (tiny: narrowest widths)",
    options=("seed", "attention"),
)
def _adm_random(argument: str | None, options: dict[str, str], device: Any, dtype: Any) -> Prior:
    from .adm_prior import load_random_adm_prior

    if not argument:
        raise PriorError("'adm-random' needs an architecture: 'adm-random:imagenet256' or 'adm-random:tiny'")
    seed = options.get("seed", "0")
    if not seed.isdigit():
        raise PriorError(f"adm-random seed must be a non-negative integer, got {seed!r} (e.g. '?seed=1')")
    return load_random_adm_prior(
        argument, seed=int(seed), device=device, dtype=dtype, attention=options.get("attention", "sdpa")
    )


def check_plugin(kind: str, loader: Any) -> PriorKind:
    """A prior plug-in: a loader `load(argument, options, device, dtype) -> Prior` (as `_gaussian` here), with
    optional attributes `options` (the option names its specs accept), `pattern` (how a spec of it is written)
    and `summary` (else its docstring's first line, which is then required). Returns its registry entry."""
    where = f"{getattr(loader, '__module__', '?')}.{getattr(loader, '__qualname__', repr(loader))}"
    if not callable(loader) or isinstance(loader, type):
        raise TypeError(f"it names {loader!r}; a prior plug-in is a function load(argument, options, device, dtype)")
    try:
        inspect.signature(loader).bind(None, {}, "cpu", torch.float32)
    except TypeError as error:
        raise TypeError(f"{where} must take (argument, options, device, dtype): {error}") from error
    accepted = getattr(loader, "options", ())
    if isinstance(accepted, str) or not all(isinstance(o, str) for o in accepted):
        raise TypeError(f"{where}.options must be a collection of option names, got {accepted!r}")
    summary = getattr(loader, "summary", None) or (loader.__doc__ or "").strip()
    if not summary:
        raise TypeError(f"{where} needs a one-line description: a `summary` attribute or a docstring")
    pattern = getattr(loader, "pattern", None) or f"{kind}[:<argument>]"
    return PriorKind(_checked_loader(kind, loader), frozenset(accepted), str(pattern), summary.splitlines()[0].strip())


def _checked_loader(kind: str, loader: Callable[..., Any]) -> Callable[..., Prior]:
    def load(argument: str | None, options: dict[str, str], device: Any, dtype: Any) -> Prior:
        prior = loader(argument, options, device, dtype)
        if not isinstance(prior, Prior):
            raise PriorError(f"prior plug-in '{kind}' returned {type(prior).__name__}, not a bench.priors.Prior")
        return prior

    return load


def is_plugin(kind: str) -> bool:
    return _KINDS.is_plugin(kind)


def available() -> list[tuple[str, str]]:
    """(spec pattern, description) of every prior kind: the built-ins, then plug-ins sorted by name."""
    return [(entry.value.pattern, entry.value.summary) for entry in _KINDS.entries()]


def load_prior(
    spec: str, device: str | torch.device = "cpu", dtype: torch.dtype | str = torch.float32, **options: Any
) -> Prior:
    """The prior named by `spec` (see the module docstring), its network frozen on `device` in `dtype`.

    Keyword options (None values are ignored) join the spec's own, e.g. load_prior('adm:x.pt', preset='ffhq256');
    the runtime options take booleans: load_prior('adm-random:tiny', dtype='bf16', compile=True).
    """
    kind, argument, spec_options = parse_spec(spec)
    if kind not in _KINDS:
        close = closest(kind, _KINDS.names())
        hint = f"; did you mean '{close}'?" if close else ""
        patterns = ", ".join(pattern for pattern, _ in available())
        raise PriorError(f"unknown prior '{kind}'{hint} (available: {patterns})")
    chosen = _KINDS.get(kind)
    loader, accepted, pattern = chosen.load, chosen.options, chosen.pattern
    runtime = pop_runtime_options(spec_options, options)
    for key, value in options.items():
        if value is None:
            continue
        if key in spec_options and spec_options[key] != str(value):
            raise PriorError(
                f"option {key!r} given twice with different values: {spec_options[key]!r} in the spec, {value!r}"
            )
        spec_options[key] = str(value)
    for key in spec_options:
        if key not in accepted:
            close = closest(key, sorted(accepted))
            hint = f"; did you mean '{close}'?" if close else ""
            known = ", ".join(sorted(accepted)) or "none"
            raise PriorError(f"unknown option '{key}' for prior '{kind}'{hint} (accepted: {known}; spec: {pattern})")
    return loader(argument, spec_options, device, resolve_dtype(dtype)).configure(**runtime)
