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

from .base import DDPM_BETA_END, DDPM_BETA_START, DDPM_NUM_TIMESTEPS, Prior, PriorError

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


def betas_from_scheduler_config(config: Mapping[str, Any]) -> tuple[Tensor, bool, dict[str, Any]]:
    """(betas (T,) float64, learned_variance, normalised schedule) from a DDPMScheduler-style config.

    Supported: beta_schedule linear / scaled_linear / squaredcos_cap_v2 (or explicit trained_betas),
    prediction_type epsilon, variance_type fixed_* or learned_range. Missing keys take SCHEDULER_DEFAULTS.
    """
    merged = {**SCHEDULER_DEFAULTS, **{k: v for k, v in config.items() if not k.startswith("_")}}
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
        f"{label}: {', '.join(keys[:8])}{f', ... ({len(keys) - 8} more)' if len(keys) > 8 else ''}"
        for label, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", reshaped))
        if keys
    ]
    return "; ".join(problems) or None


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
    try:
        config = json.loads(config_path.read_text())
    except json.JSONDecodeError as exc:
        raise PriorError(f"{config_path} is not valid JSON ({exc})") from exc
    if not isinstance(config, dict) or not isinstance(config.get("unet"), dict) or "scheduler" not in config:
        raise PriorError(f"{config_path} must hold 'unet' and 'scheduler' sections (as written by save_unet)")
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
    try:
        class_name = json.loads(config_path.read_text()).get("_class_name", "UNet2DModel")
    except (OSError, json.JSONDecodeError) as exc:
        raise PriorError(f"could not read {config_path} ({exc})") from exc
    if class_name != "UNet2DModel":
        raise PriorError(f"{unet_dir} holds a {class_name}; only unconditional UNet2DModel priors are supported")
    weights = _weight_files(unet_dir)
    if not weights:
        raise PriorError(f"{unet_dir} has no diffusion_pytorch_model.safetensors (or .bin) weights")
    from diffusers import UNet2DModel

    try:
        # low_cpu_mem_usage=False and the loading info: missing weights would otherwise be initialised at
        # random with only a logged warning.
        unet, info = UNet2DModel.from_pretrained(unet_dir, low_cpu_mem_usage=False, output_loading_info=True)
    except (OSError, ValueError, RuntimeError) as exc:
        raise PriorError(f"could not load a UNet2DModel from {unet_dir}: {exc}") from exc
    problems = [
        f"{label}: {', '.join(map(str, keys))}"
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
    scheduler = json.loads(scheduler_path.read_text()) if scheduler_path is not None else {}
    return _make_prior(unet, scheduler, kind=kind, weights=weights, source=source, device=device, dtype=dtype)
