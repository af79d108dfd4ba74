"""Priors built on diffusers' `UNet2DModel`: `diffusers:<folder or hub id>` and the embedded `natural64`.

Three folder layouts are understood:

* a pipeline folder (`model_index.json`, `unet/`, `scheduler/scheduler_config.json`), as written by
  `DDPMPipeline.save_pretrained`;
* a bare UNet folder (`config.json` + `diffusion_pytorch_model.{safetensors,bin}`), with the scheduler read
  from a `scheduler_config.json` beside it or `../scheduler/`, else DDPMScheduler's defaults (DDPM linear);
* this project's own format (`config.json` with "unet" and "scheduler" sections + `model.safetensors`),
  written by `save_unet` and read by `load_unet`, independent of diffusers' `from_pretrained`.

Loading is strict: a missing, unexpected or mis-shaped weight is an error naming it, never a random
initialisation. The scheduler config must describe an ε-prediction model; `variance_type: learned_range`
means the UNet's second half of channels is Improved DDPM's variance interpolation v.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .base import Prior
from .schedule import DDPM_BETA_END, DDPM_BETA_START, DDPM_NUM_TIMESTEPS, PriorError

__all__ = [
    "SCHEDULER_DEFAULTS",
    "DiffusersPrior",
    "betas_from_scheduler_config",
    "load_diffusers_prior",
    "load_unet",
    "load_unet_prior",
    "save_unet",
]

# DDPMScheduler's defaults (diffusers), which are DDPM's linear schedule and an ε-prediction, fixed-variance model.
SCHEDULER_DEFAULTS: dict[str, Any] = {
    "num_train_timesteps": DDPM_NUM_TIMESTEPS,
    "beta_start": DDPM_BETA_START,
    "beta_end": DDPM_BETA_END,
    "beta_schedule": "linear",
    "prediction_type": "epsilon",
    "variance_type": "fixed_small",
}

_BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
_FIXED_VARIANCES = ("fixed_small", "fixed_small_log", "fixed_large", "fixed_large_log")
# The file names of this project's own UNet format.
UNET_WEIGHTS = "model.safetensors"
UNET_CONFIG = "config.json"


# ----- schedules -----------------------------------------------------------------------------------
def _glide_cosine_betas(num_timesteps: int, max_beta: float = 0.999) -> Tensor:
    # Improved DDPM's cosine schedule (Nichol & Dhariwal 2021, Eq. 17, s = 0.008), β capped at 0.999.
    def alpha_bar(u: float) -> float:
        return math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2

    betas = [
        min(1.0 - alpha_bar((i + 1) / num_timesteps) / alpha_bar(i / num_timesteps), max_beta)
        for i in range(num_timesteps)
    ]
    return torch.tensor(betas, dtype=torch.float64)


def betas_from_scheduler_config(
    config: Mapping[str, Any], *, source: str = "the scheduler config"
) -> tuple[Tensor, bool, dict[str, Any]]:
    """(betas (T,) float64, learned_variance, normalised schedule) from a DDPMScheduler-style config.

    Supported: beta_schedule linear / scaled_linear / squaredcos_cap_v2 (or explicit trained_betas),
    prediction_type epsilon, variance_type fixed_* or learned_range. Missing keys take SCHEDULER_DEFAULTS.
    `source` (the file) is named in the error when a value has the wrong type.
    """
    merged = {**SCHEDULER_DEFAULTS, **{k: v for k, v in config.items() if not k.startswith("_")}}
    _check_types(merged, _SCHEDULER_TYPES, source)
    if merged["prediction_type"] != "epsilon":
        raise PriorError(
            f"the model predicts {merged['prediction_type']!r}, but priors here must predict the noise "
            "(scheduler prediction_type 'epsilon'); use an ε-prediction checkpoint"
        )
    variance_type = merged["variance_type"]
    if variance_type == "learned":
        raise PriorError(
            "variance_type 'learned' (the network outputs the variance itself) is not supported; priors with a "
            "learned variance must use Improved DDPM's interpolation, variance_type 'learned_range'"
        )
    if variance_type not in (*_FIXED_VARIANCES, "learned_range"):
        raise PriorError(
            f"unknown variance_type {variance_type!r} (supported: {', '.join(_FIXED_VARIANCES)}, learned_range)"
        )
    if merged.get("rescale_betas_zero_snr"):
        raise PriorError("rescale_betas_zero_snr is not supported (ᾱ_{T-1} = 0 makes ε-prediction undefined there)")
    num_timesteps = int(merged["num_train_timesteps"])
    beta_start, beta_end = float(merged["beta_start"]), float(merged["beta_end"])
    schedule = merged["beta_schedule"]
    trained = merged.get("trained_betas")
    normalised: dict[str, Any] = {
        "num_train_timesteps": num_timesteps,
        "beta_schedule": schedule,
        "beta_start": beta_start,
        "beta_end": beta_end,
        "prediction_type": "epsilon",
        "variance_type": variance_type,
    }
    if trained is not None:
        betas = torch.tensor(list(trained), dtype=torch.float64)
        normalised["beta_schedule"] = "trained_betas"
        normalised["trained_betas"] = [float(b) for b in trained]
        normalised["num_train_timesteps"] = len(betas)
    elif schedule == "linear":
        betas = torch.linspace(beta_start, beta_end, num_timesteps, dtype=torch.float64)
    elif schedule == "scaled_linear":
        betas = torch.linspace(beta_start**0.5, beta_end**0.5, num_timesteps, dtype=torch.float64) ** 2
    elif schedule == "squaredcos_cap_v2":
        betas = _glide_cosine_betas(num_timesteps)
        del normalised["beta_start"], normalised["beta_end"]  # unused by this schedule
    else:
        raise PriorError(f"unsupported beta_schedule {schedule!r} (supported: {', '.join(_BETA_SCHEDULES)})")
    return betas, variance_type == "learned_range", normalised


# ----- config value types ------------------------------------------------------------------------


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_list_of(check):
    return lambda value: isinstance(value, list | tuple) and all(check(item) for item in value)


# key -> (what it must be, check). A wrong type otherwise surfaces deep inside diffusers or int()/float() as
# "invalid literal for int()" or "not all arguments converted", naming neither the file nor the key.
_SCHEDULER_TYPES: dict[str, tuple[str, Any]] = {
    "num_train_timesteps": ("a positive integer", lambda v: _is_int(v) and v > 0),
    "beta_start": ("a number", _is_number),
    "beta_end": ("a number", _is_number),
    "beta_schedule": ("a string", lambda v: isinstance(v, str)),
    "prediction_type": ("a string", lambda v: isinstance(v, str)),
    "variance_type": ("a string", lambda v: isinstance(v, str)),
    "trained_betas": ("a list of numbers or null", lambda v: v is None or _is_list_of(_is_number)(v)),
}
_UNET_TYPES: dict[str, tuple[str, Any]] = {
    "sample_size": (
        "an integer or a list of two integers",
        lambda v: _is_int(v) or (_is_list_of(_is_int)(v) and len(v) == 2),
    ),
    "in_channels": ("a positive integer", lambda v: _is_int(v) and v > 0),
    "out_channels": ("a positive integer", lambda v: _is_int(v) and v > 0),
    "layers_per_block": ("a positive integer", lambda v: _is_int(v) and v > 0),
    "norm_num_groups": ("a positive integer or null", lambda v: v is None or (_is_int(v) and v > 0)),
    "block_out_channels": ("a list of positive integers", _is_list_of(lambda v: _is_int(v) and v > 0)),
    "down_block_types": ("a list of block names", _is_list_of(lambda v: isinstance(v, str))),
    "up_block_types": ("a list of block names", _is_list_of(lambda v: isinstance(v, str))),
    "attention_head_dim": (
        "an integer, a list of integers or null",
        lambda v: v is None or _is_int(v) or _is_list_of(_is_int)(v),
    ),
    "norm_eps": ("a number", _is_number),
    "downsample_padding": ("an integer", _is_int),
    "freq_shift": ("a number", _is_number),
    "flip_sin_to_cos": ("true or false", lambda v: isinstance(v, bool)),
    "center_input_sample": ("true or false", lambda v: isinstance(v, bool)),
}


def _check_types(config: Mapping[str, Any], types: Mapping[str, tuple[str, Any]], source: str | Path) -> None:
    """PriorError naming the file, the key and the expected type for the first value of the wrong type."""
    for key, (expected, check) in types.items():
        if key in config and not check(config[key]):
            raise PriorError(
                f"{source}: key '{key}' must be {expected}, got {json.dumps(config[key])}; fix the value (the "
                "model's original config file has the right one)"
            )


def _read_json(path: Path) -> Any:
    """A config file's JSON; PriorError naming the file and where it breaks, not just "Expecting ','"."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise PriorError(
            f"{path} is not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno}); fix it or put the "
            "model's original file back"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PriorError(f"could not read {path} ({exc})") from None


def _shown(keys: list[str]) -> str:
    """The first few keys and how many there are in all: a config that does not fit its weights mismatches
    hundreds of keys, and listing them all (tens of kilobytes) hides the few that say what is wrong."""
    from bench.weights import SHOWN_KEYS

    more = f", … ({len(keys)} in all)" if len(keys) > SHOWN_KEYS else ""
    return ", ".join(map(str, keys[:SHOWN_KEYS])) + more


# ----- the prior -----------------------------------------------------------------------------------
def _json_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """A diffusers model config without its private keys (version, local path), as plain JSON types."""
    public = {k: v for k, v in dict(config).items() if not k.startswith("_")}
    return json.loads(json.dumps(public, default=list))


class DiffusersPrior(Prior):
    """A `UNet2DModel` ε-prediction network (unconditional) with its DDPM schedule."""

    def _network_output(self, x: Tensor, t: Tensor) -> Tensor:
        return self.network(x, t).sample


def _make_prior(
    unet: nn.Module,
    scheduler: Mapping[str, Any],
    *,
    kind: str,
    weights: list[Path],
    source: str,
    device: str | torch.device,
    dtype: torch.dtype | str,
) -> DiffusersPrior:
    betas, learned_variance, schedule = betas_from_scheduler_config(scheduler)
    unet_config = _json_config(unet.config)
    if unet_config.get("num_class_embeds") or unet_config.get("class_embed_type"):
        raise PriorError(f"{source}: class-conditional UNets are not supported; use an unconditional model")
    channels = int(unet_config["in_channels"])
    expected_out = 2 * channels if learned_variance else channels
    if int(unet_config["out_channels"]) != expected_out:
        raise PriorError(
            f"{source}: the UNet outputs {unet_config['out_channels']} channels but a "
            f"{'learned' if learned_variance else 'fixed'}-variance model with {channels} input channels needs "
            f"{expected_out}; check the scheduler's variance_type ('learned_range' for ε + v outputs)"
        )
    size = unet_config["sample_size"]
    height, width = (size, size) if isinstance(size, int) else size
    config = {"unet": unet_config, "scheduler": schedule}
    return DiffusersPrior(
        unet,
        betas,
        (channels, int(height), int(width)),
        kind=kind,
        config=config,
        learned_variance=learned_variance,
        checkpoint_files=weights,
        device=device,
        dtype=dtype,
    )


# ----- this project's own format (the embedded natural64 prior and its trainer) ---------------------
def save_unet(
    unet: nn.Module,
    folder: str | Path,
    *,
    scheduler: Mapping[str, Any] | None = None,
    info: Mapping[str, Any] | None = None,
) -> Path:
    """Write a diffusers `UNet2DModel` as `folder/model.safetensors` + `folder/config.json`; returns the folder.

    config.json holds {"unet": the UNet2DModel config, "scheduler": DDPMScheduler-style schedule (defaults:
    SCHEDULER_DEFAULTS), "info": free-form provenance such as training data and steps}. The schedule is
    validated here so that an unusable folder is never written.
    """
    folder = Path(folder)
    _, _, schedule = betas_from_scheduler_config(dict(scheduler or {}))
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    state = {key: value.detach().to("cpu").contiguous() for key, value in unet.state_dict().items()}
    save_file(state, str(folder / UNET_WEIGHTS), metadata={"format": "pt"})
    config = {"unet": _json_config(unet.config), "scheduler": schedule, "info": dict(info or {})}
    (folder / UNET_CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return folder


def _describe_mismatch(expected: Mapping[str, Tensor], found: Mapping[str, Tensor]) -> str | None:
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    reshaped = sorted(
        f"{k} (expected {tuple(expected[k].shape)}, found {tuple(found[k].shape)})"
        for k in set(expected) & set(found)
        if expected[k].shape != found[k].shape
    )
    problems = [
        f"{label}: {_shown(keys)}"
        for label, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", reshaped))
        if keys
    ]
    return "; ".join(problems) or None


def _file_state(weights: list[Path]) -> dict[str, Tensor]:
    """The tensors of a diffusers UNet's weight files (safetensors, or .bin read without unpickling code)."""
    state: dict[str, Tensor] = {}
    for path in weights:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state.update(load_file(str(path), device="cpu"))
        else:
            state.update(torch.load(path, map_location="cpu", weights_only=True))
    return state


def _is_own_format(folder: Path) -> bool:
    config_path = folder / UNET_CONFIG
    if not (folder / UNET_WEIGHTS).is_file() or not config_path.is_file():
        return False
    try:
        config = json.loads(config_path.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return isinstance(config, dict) and "unet" in config and "scheduler" in config


def load_unet(folder: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """Read a `save_unet` folder strictly: (UNet2DModel in eval mode on the CPU, the parsed config.json)."""
    folder = Path(folder)
    config_path, weights_path = folder / UNET_CONFIG, folder / UNET_WEIGHTS
    missing = [p.name for p in (config_path, weights_path) if not p.is_file()]
    if missing:
        raise PriorError(f"{folder} is not a saved UNet: {', '.join(missing)} missing (write one with save_unet)")
    config = _read_json(config_path)
    if not isinstance(config, dict) or not isinstance(config.get("unet"), dict) or "scheduler" not in config:
        raise PriorError(f"{config_path} must hold 'unet' and 'scheduler' sections (as written by save_unet)")
    _check_types(config["unet"], _UNET_TYPES, f"{config_path} ('unet' section)")
    if not isinstance(config["scheduler"], dict):
        raise PriorError(f"{config_path}: the 'scheduler' section must be a table of settings (as save_unet writes)")
    _check_types(config["scheduler"], _SCHEDULER_TYPES, f"{config_path} ('scheduler' section)")
    from diffusers import UNet2DModel
    from safetensors.torch import load_file

    try:
        unet = UNet2DModel.from_config(config["unet"])
    except (TypeError, ValueError) as exc:
        raise PriorError(f"{config_path}: the 'unet' section is not a valid UNet2DModel config ({exc})") from exc
    state = load_file(str(weights_path), device="cpu")
    problem = _describe_mismatch(unet.state_dict(), state)
    if problem is not None:
        raise PriorError(f"{weights_path} does not match the UNet in {config_path.name}: {problem}")
    unet.load_state_dict(state, strict=True)
    return unet.eval(), config


def load_unet_prior(
    folder: str | Path,
    *,
    kind: str = "diffusers",
    device: str | torch.device = "cpu",
    dtype: torch.dtype | str = torch.float32,
) -> DiffusersPrior:
    """A prior from a `save_unet` folder (the embedded natural64 prior uses this)."""
    folder = Path(folder)
    unet, config = load_unet(folder)
    return _make_prior(
        unet,
        config["scheduler"],
        kind=kind,
        weights=[folder / UNET_WEIGHTS],
        source=str(folder),
        device=device,
        dtype=dtype,
    )


# ----- diffusers folders and hub ids ----------------------------------------------------------------
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def _download_hint(repo_id: str) -> str:
    return (
        f"download it once with `hf download {repo_id} --local-dir <folder>` (older huggingface_hub: "
        f"`huggingface-cli download {repo_id} --local-dir <folder>`) and pass 'diffusers:<folder>'"
    )


def _hub_folder(repo_id: str) -> Path:
    """The local snapshot of a hub repository: the cache first, a download only when online."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError as exc:  # pragma: no cover - diffusers depends on huggingface_hub
        raise PriorError(f"'{repo_id}' looks like a hub id but huggingface_hub is not installed") from exc
    try:
        return Path(snapshot_download(repo_id, local_files_only=True))
    except Exception:  # noqa: BLE001 - any cache miss falls through to the download below
        pass
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        raise PriorError(
            f"'{repo_id}' is not a local folder, not in the hub cache, and HF_HUB_OFFLINE is set; {_download_hint(repo_id)}"
        )
    try:
        return Path(snapshot_download(repo_id))
    except Exception as exc:  # noqa: BLE001 - network and authorisation errors come in many types
        raise PriorError(
            f"'{repo_id}' is not a local folder and could not be fetched from the hub "
            f"({type(exc).__name__}: {exc}); {_download_hint(repo_id)}"
        ) from exc


def _locate(source: str) -> tuple[Path, Path | None]:
    """(UNet folder, scheduler config file or None for the defaults) for a folder or a hub id."""
    path = Path(source).expanduser()
    if not path.exists():
        if _HUB_ID.match(source) and not source.startswith("."):
            path = _hub_folder(source)
        else:
            raise PriorError(
                f"diffusers model folder not found: {path} (give a folder or a hub id such as google/ddpm-celebahq-256)"
            )
    if not path.is_dir():
        raise PriorError(f"{path} is a file; 'diffusers:' expects a folder holding the model")
    if (path / "unet").is_dir():
        scheduler = path / "scheduler" / "scheduler_config.json"
        if not scheduler.is_file():
            raise PriorError(f"{path} has unet/ but no scheduler/scheduler_config.json; the noise schedule is unknown")
        return path / "unet", scheduler
    if (path / "config.json").is_file():
        for candidate in (path / "scheduler_config.json", path.parent / "scheduler" / "scheduler_config.json"):
            if candidate.is_file():
                return path, candidate
        return path, None
    raise PriorError(
        f"{path} holds no diffusers model: expected model_index.json with unet/ and scheduler/, or a UNet folder "
        "with config.json and diffusion_pytorch_model.safetensors"
    )


def _weight_files(unet_dir: Path) -> list[Path]:
    # diffusers prefers safetensors when both exist; sharded checkpoints are numbered files.
    for suffix in ("safetensors", "bin"):
        files = sorted(unet_dir.glob(f"diffusion_pytorch_model*.{suffix}"))
        single = unet_dir / f"diffusion_pytorch_model.{suffix}"
        if single in files:
            return [single]
        shards = [f for f in files if re.search(r"-\d+-of-\d+\.", f.name)]
        if shards:
            return shards
    return []


def load_diffusers_prior(
    source: str,
    *,
    kind: str = "diffusers",
    device: str | torch.device = "cpu",
    dtype: torch.dtype | str = torch.float32,
) -> DiffusersPrior:
    """A prior from a diffusers folder (pipeline or bare UNet), a `save_unet` folder, or a hub id.

    Weights load strictly: any missing, unexpected or mis-shaped key raises PriorError naming it.
    """
    path = Path(source).expanduser()
    if path.is_dir() and _is_own_format(path):
        return load_unet_prior(path, kind=kind, device=device, dtype=dtype)
    unet_dir, scheduler_path = _locate(source)
    config_path = unet_dir / "config.json"
    unet_config = _read_json(config_path)
    if not isinstance(unet_config, dict):
        raise PriorError(f"{config_path} must hold a table of UNet settings, not {type(unet_config).__name__}")
    class_name = unet_config.get("_class_name", "UNet2DModel")
    if class_name != "UNet2DModel":
        raise PriorError(f"{unet_dir} holds a {class_name}; only unconditional UNet2DModel priors are supported")
    weights = _weight_files(unet_dir)
    if not weights:
        raise PriorError(f"{unet_dir} has no diffusion_pytorch_model.safetensors (or .bin) weights")
    _check_types(unet_config, _UNET_TYPES, config_path)
    scheduler = _read_json(scheduler_path) if scheduler_path is not None else {}
    if not isinstance(scheduler, dict):
        raise PriorError(f"{scheduler_path} must hold a table of scheduler settings, not {type(scheduler).__name__}")
    _check_types(scheduler, _SCHEDULER_TYPES, scheduler_path)
    from diffusers import UNet2DModel

    try:
        # low_cpu_mem_usage=False and the loading info: missing weights would otherwise be initialised at
        # random with only a logged warning.
        unet, info = UNet2DModel.from_pretrained(unet_dir, low_cpu_mem_usage=False, output_loading_info=True)
    except RuntimeError as exc:
        # torch's load_state_dict message lists every mismatched tensor: tens of kilobytes for a wrong config
        misfit = _misfit(unet_config, weights, config_path)
        raise PriorError(misfit or f"could not load a UNet2DModel from {unet_dir}: {exc}") from None
    except (OSError, ValueError, TypeError) as exc:
        raise PriorError(f"could not load a UNet2DModel from {unet_dir} (config {config_path}): {exc}") from exc
    problems = [
        f"{label}: {_shown(list(map(str, keys)))}"
        for label, keys in (
            ("missing keys", info.get("missing_keys", [])),
            ("unexpected keys", info.get("unexpected_keys", [])),
            ("shape mismatches", info.get("mismatched_keys", [])),
            ("errors", info.get("error_msgs", [])),
        )
        if keys
    ]
    if problems:
        raise PriorError(f"{unet_dir}: the weights do not match the UNet config ({'; '.join(problems)})")
    return _make_prior(unet, scheduler, kind=kind, weights=weights, source=source, device=device, dtype=dtype)


def _misfit(unet_config: dict[str, Any], weights: list[Path], config_path: Path) -> str | None:
    """Which keys of the weight files do not fit the UNet that `config_path` describes, in a few lines."""
    from diffusers import UNet2DModel

    try:
        expected = UNet2DModel.from_config(unet_config).state_dict()
        problem = _describe_mismatch(expected, _file_state(weights))
    except Exception:  # noqa: BLE001 - only a better message is at stake; the caller falls back to torch's
        return None
    if problem is None:
        return None
    return (
        f"the weights in {weights[0].parent} do not fit the UNet that {config_path} describes ({problem}); "
        "the config is for another model: put back the config.json that came with these weights"
    )
