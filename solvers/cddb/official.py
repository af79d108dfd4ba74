"""`python -m bench import-bridge`: a released I²SB / CDDB bridge (`latest.pt` + `options.pkl`) as a bridge folder.

What the official code writes (NVlabs/I2SB `train.py`, `i2sb/runner.py`, `i2sb/ckpt_util.py`; HJ-harry/CDDB
samples the same checkpoints):

* `latest.pt`: torch.save of {"net", "ema", "optimizer", "sched"}. "net" is the state of `Image256Net`, whose one
  parameterised child is the ADM, so every key starts with `diffusion_model.`; "ema" is torch_ema's state,
  {"decay", "num_updates", "shadow_params", "collected_params"}, with `shadow_params` a list in the order of
  `net.parameters()`. It holds only tensors, lists, dicts, numbers and None, so `torch.load(weights_only=True)`
  reads it. Sampling uses the EMA (`ema.average_parameters()`), so the EMA is what is imported.
* `options.pkl`: the training `argparse.Namespace` (task `corrupt`, `image_size`, `t0`, `T`, `interval`,
  `beta_max`, `cond_x1`, `ot_ode`, …, plus `pathlib` paths and whatever the user passed, W&B key included). It is
  read by a restricted unpickler that builds only plain values (Namespace -> dict, paths -> str) and refuses any
  other class, naming it; only the settings the bridge needs are kept.
* The ADM's architecture is not in options.pkl: I²SB builds it from `data/256x256_diffusion_{cond,uncond}_
  fixedsigma.pkl`, a dict of guided-diffusion `create_model` arguments that `ckpt_util.download_ckpt` writes from
  fixed values (the ImageNet-256 unconditional ADM with learn_sigma off, in_channels 6 when cond_x1). Those values
  are OFFICIAL_ADM below; `--adm-options` reads such a pickle instead (same restricted unpickler).

The network's time input is `torch.linspace(t0, T, interval) * interval` indexed by the step (0.1..1000 for the
released t0 = 1e-4, T = 1, interval = 1000), recorded in bridge.json as `time_input`.

Degradations: sr4x-pool is an exact 4×4 box average, sr4x-bicubic DDRM's SRConv bicubic; both are `sr4` options
(`kernel="pool"`, `kernel="ddrm-bicubic"`), and x₁ is y upsampled by nearest-neighbour (I²SB's `upsample(_img)`),
not A⁺y. jpeg-10 is DDRM-jpeg's torch codec, which this project does not implement: the bridge is imported with
`operator_mismatch` set, and the solver refuses to pair it with our Pillow-exact jpeg10.
"""

from __future__ import annotations

import json
import pathlib
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .network import ADM_CONFIG, ADM_WEIGHTS, BRIDGE_FILE

PREFIX = "diffusion_model."
CHECKPOINT_KEYS = {"net", "ema", "optimizer", "sched"}  # what I²SB's Runner.train saves
EMA_KEYS = {"decay", "num_updates", "shadow_params", "collected_params"}  # torch_ema's state_dict
# I²SB ckpt_util.create_argparser, through extract_model_kwargs, with learn_sigma off (the *_fixedsigma.pkl files).
OFFICIAL_ADM: dict[str, Any] = {
    "image_size": 256,
    "num_channels": 256,
    "num_res_blocks": 2,
    "channel_mult": "",
    "learn_sigma": False,
    "class_cond": False,
    "attention_resolutions": "32,16,8",
    "num_heads": 4,
    "num_head_channels": 64,
    "num_heads_upsample": -1,
    "use_scale_shift_norm": True,
    "dropout": 0.0,
    "resblock_updown": True,
    "use_new_attention_order": False,
}
# guided-diffusion create_model's channel_mult for channel_mult="" by image size
DEFAULT_CHANNEL_MULT = {512: (0.5, 1, 1, 2, 2, 4, 4), 256: (1, 1, 2, 2, 4, 4), 128: (1, 1, 2, 3, 4), 64: (1, 2, 3, 4)}
# settings of options.pkl copied into bridge.json (never the rest: it holds local paths and maybe API keys)
KEPT_OPTIONS = (
    "name",
    "corrupt",
    "image_size",
    "t0",
    "T",
    "interval",
    "beta_max",
    "ot_ode",
    "cond_x1",
    "add_x1_noise",
    "clip_denoise",
    "ema",
)
JPEG_MISMATCH = (
    "it was trained on I²SB's JPEG (DDRM-jpeg's torch code: float DCT, chroma taken from the top-left pixel of each "
    "2×2 block instead of averaged, no rounding or clipping of pixels, a measurement made of quantised DCT "
    "coefficients), not this project's Pillow-exact jpeg10 (libjpeg's integer codec); their x₁ differs from ours "
    "and this project has no implementation of their codec"
)


class UnsafePickleError(ValueError):
    """A pickle asked for something other than plain values; it was not executed."""


class _PlainNamespace:
    """Stands in for argparse.Namespace while unpickling: keeps the attribute dict and nothing else."""

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, dict):
            raise UnsafePickleError(f"a Namespace's state must be a dict, got {type(state).__name__}")
        self.values = state


def _path_string(*parts: Any) -> str:
    """A pickled pathlib path (reduced to its parts) as a plain string."""
    if not all(isinstance(p, str) for p in parts):
        raise UnsafePickleError("a pickled path must be made of strings")
    return str(pathlib.PurePosixPath(*parts))


# (module, name) -> the harmless stand-in the unpickler builds instead
_ALLOWED_GLOBALS = {
    ("argparse", "Namespace"): _PlainNamespace,
    **{
        ("pathlib", name): _path_string
        for name in ("Path", "PosixPath", "PurePosixPath", "WindowsPath", "PureWindowsPath")
    },
}


class _PlainUnpickler(pickle.Unpickler):
    """Builds plain types only; every global other than _ALLOWED_GLOBALS is refused before it is imported."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED_GLOBALS:
            return _ALLOWED_GLOBALS[(module, name)]
        raise UnsafePickleError(
            f"refused to unpickle {module}.{name}: only plain values (dict, list, tuple, str, numbers, bool, None, "
            "argparse.Namespace, pathlib paths) are read from I²SB's option files; this file is not one of them"
        )

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(f"refused a persistent id ({pid!r}) in an option pickle")


def _plain(value: Any, where: str) -> Any:
    """`value` with Namespaces turned into dicts, checked to hold only plain types."""
    if isinstance(value, _PlainNamespace):
        value = value.values
    if isinstance(value, dict):
        return {str(k): _plain(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if value is None or isinstance(value, str | int | float | bool | bytes):
        return value
    raise UnsafePickleError(f"{where} is a {type(value).__name__}, not a plain value")


def read_plain_pickle(path: str | Path) -> Any:
    """The plain content of a pickle (argparse.Namespace -> dict, paths -> str); UnsafePickleError for anything
    else, raised before the class is imported or anything is called."""
    path = Path(path)
    with open(path, "rb") as handle:
        try:
            value = _PlainUnpickler(handle).load()
        except UnsafePickleError as error:
            raise UnsafePickleError(f"{path}: {error}") from None
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as error:
            raise ValueError(f"{path} is not a readable pickle ({type(error).__name__}: {error})") from None
    return _plain(value, path.name)


def read_options(path: str | Path) -> dict[str, Any]:
    """options.pkl as a dict of plain values; ValueError naming what is missing for a bridge."""
    options = read_plain_pickle(path)
    if not isinstance(options, dict):
        raise ValueError(f"{path} holds a {type(options).__name__}, not I²SB's options Namespace")
    missing = [k for k in ("corrupt", "image_size", "t0", "T", "interval", "beta_max", "cond_x1") if k not in options]
    if missing:
        raise ValueError(f"{path} lacks {', '.join(missing)}: it is not an I²SB/CDDB options.pkl")
    return options


# ----- latest.pt --------------------------------------------------------------------------------------------
def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """latest.pt through torch.load(weights_only=True) (memory-mapped when the file allows it)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; download the bridge with the repository's download script")
    try:
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as error:
            if "mmap" not in str(error):
                raise
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)  # a legacy (non-zip) file
    except Exception as error:  # unpickling errors come in many types; none may fall back to a full unpickle
        raise ValueError(
            f"{path} could not be read with torch.load(weights_only=True) ({type(error).__name__}: {error}); "
            "it is not a plain I²SB checkpoint and is not unpickled any further"
        ) from None
    if not isinstance(checkpoint, Mapping) or not {"net", "ema"} <= set(checkpoint):
        found = sorted(checkpoint) if isinstance(checkpoint, Mapping) else type(checkpoint).__name__
        raise ValueError(f"{path} is not an I²SB checkpoint: expected keys net and ema, found {found}")
    unexpected = sorted(set(checkpoint) - CHECKPOINT_KEYS)
    if unexpected:
        raise ValueError(f"{path} has unexpected top-level keys {unexpected} (I²SB saves {sorted(CHECKPOINT_KEYS)})")
    return dict(checkpoint)


def ema_state_dict(checkpoint: Mapping[str, Any], where: str = "latest.pt") -> dict[str, Tensor]:
    """The ADM's state dict with the EMA weights: shadow_params[i] goes to the i-th key of "net" (the official
    network's parameters() order, which its state_dict follows: the ADM has no buffers), `diffusion_model.`
    stripped. ValueError when the count or any shape differs, or a key lacks the prefix."""
    net, ema = checkpoint["net"], checkpoint["ema"]
    if not isinstance(net, Mapping) or not all(isinstance(v, Tensor) for v in net.values()):
        raise ValueError(f"{where}: 'net' is not a state dict of tensors")
    if not isinstance(ema, Mapping) or "shadow_params" not in ema:
        raise ValueError(f"{where}: 'ema' is not torch_ema's state (no shadow_params)")
    unexpected = sorted(set(ema) - EMA_KEYS)
    if unexpected:
        raise ValueError(f"{where}: 'ema' has unexpected keys {unexpected} (torch_ema saves {sorted(EMA_KEYS)})")
    unprefixed = [k for k in net if not k.startswith(PREFIX)]
    if unprefixed:
        raise ValueError(f"{where}: 'net' keys without the {PREFIX!r} prefix: {unprefixed[:5]}")
    shadow = ema["shadow_params"]
    if not isinstance(shadow, list | tuple) or not all(isinstance(t, Tensor) for t in shadow):
        raise ValueError(f"{where}: ema.shadow_params is not a list of tensors")
    if len(shadow) != len(net):
        raise ValueError(
            f"{where}: ema.shadow_params has {len(shadow)} tensors but the network {len(net)} parameters; "
            "the EMA does not belong to this network"
        )
    state = {}
    for i, ((key, param), average) in enumerate(zip(net.items(), shadow, strict=True)):
        if tuple(param.shape) != tuple(average.shape):
            raise ValueError(
                f"{where}: ema.shadow_params[{i}] has shape {tuple(average.shape)} but parameter {i} ({key}) "
                f"{tuple(param.shape)}; the EMA is not in the network's parameters() order"
            )
        state[key.removeprefix(PREFIX)] = average.detach().to(torch.float32).contiguous()
    return state


# ----- the ADM ----------------------------------------------------------------------------------------------
def _ints(text: str, what: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in str(text).split(",") if v.strip())
    except ValueError:
        raise ValueError(f"{what} must be integers separated by commas, got {text!r}") from None


def adm_config(model_options: Mapping[str, Any], cond_x1: bool):
    """The ADMConfigWithOutputs that guided-diffusion's create_model(**model_options) builds, for I²SB's network
    with `cond_x1` (6 input channels) or not (3); ValueError for options bench.priors.adm does not implement."""
    from bench.priors.adm import ADMConfigWithOutputs

    o = {**OFFICIAL_ADM, **model_options}
    unsupported = {
        "class_cond": (o.get("class_cond"), False),
        "resblock_updown": (o.get("resblock_updown"), True),
        "use_new_attention_order": (o.get("use_new_attention_order"), False),
        "learn_sigma": (o.get("learn_sigma"), False),
    }
    for key, (value, needed) in unsupported.items():
        if bool(value) != needed:
            raise ValueError(f"ADM option {key}={value!r} is not supported for bridges (needs {needed})")
    if int(o["num_head_channels"]) <= 0:
        raise ValueError("ADM option num_head_channels must be set (> 0): bench.priors.adm uses fixed-width heads")
    size = int(o["image_size"])
    if o["channel_mult"] in ("", None):
        if size not in DEFAULT_CHANNEL_MULT:
            raise ValueError(f"no default channel_mult for image_size {size}; give channel_mult explicitly")
        mult = DEFAULT_CHANNEL_MULT[size]
    else:
        mult = _ints(o["channel_mult"], "channel_mult")
    in_channels = int(o.get("in_channels", 6 if cond_x1 else 3))
    if in_channels != (6 if cond_x1 else 3):
        raise ValueError(f"the ADM options give in_channels={in_channels} but options.pkl has cond_x1={cond_x1}")
    return ADMConfigWithOutputs(
        image_size=size,
        model_channels=int(o["num_channels"]),
        num_res_blocks=int(o["num_res_blocks"]),
        attention_resolutions=_ints(o["attention_resolutions"], "attention_resolutions"),
        channel_mult=mult,
        num_head_channels=int(o["num_head_channels"]),
        in_channels=in_channels,
        learn_sigma=False,
        use_scale_shift_norm=bool(o["use_scale_shift_norm"]),
        dropout=float(o["dropout"]),
        output_channels=3,  # create_model: out_channels = 3 without learn_sigma, whatever in_channels is
    )


def check_state(config, state: Mapping[str, Tensor], where: str) -> None:
    """ValueError naming every missing, unexpected or mis-shaped key of `state` for the ADM of `config`."""
    from bench.priors.adm import ADMUNet, describe_state_dict_mismatch

    with torch.device("meta"):
        expected = ADMUNet(config).state_dict()
    problem = describe_state_dict_mismatch(expected, state)
    if problem:
        raise ValueError(
            f"{where} does not fit the ADM built from the options ({problem}); pass the right "
            "--adm-options (I²SB's data/256x256_diffusion_*_fixedsigma.pkl)"
        )


# ----- the record -------------------------------------------------------------------------------------------
def degradation(corrupt: str, size: int) -> dict[str, Any]:
    """What the official `corrupt` setting means here: task, operator spec, how x₁ is formed, any mismatch."""
    import operators

    shape = (3, size, size)
    if corrupt in ("sr4x-pool", "sr4x-bicubic"):
        task = "sr4-pool" if corrupt == "sr4x-pool" else "sr4-ddrm"  # the registered tasks of their degradations
        spec = operators.build(task, shape=shape).spec()
        return {"task": task, "operator": spec, "x1": "nearest-upsample", "operator_mismatch": None}
    if corrupt == "jpeg-10":
        spec = {"task": "jpeg10", "shape": list(shape), "quality": 10, "codec": "i2sb-ddrm-jpeg-torch"}
        return {"task": "jpeg10", "operator": spec, "x1": "decoded", "operator_mismatch": JPEG_MISMATCH}
    raise ValueError(
        f"options.pkl has corrupt={corrupt!r}; this project imports sr4x-pool, sr4x-bicubic and jpeg-10 bridges "
        "(its sr4 and jpeg10 tasks; blur and inpainting bridges use the OT-ODE sampler, which solvers.cddb lacks)"
    )


def bridge_record(options: Mapping[str, Any], sources: dict[str, Any], ema: Mapping[str, Any]) -> dict[str, Any]:
    """bridge.json for an imported bridge (the keys solvers.cddb checks, plus provenance)."""
    for key, bad in (("ot_ode", True), ("add_x1_noise", True)):
        if bool(options.get(key, False)) == bad:
            raise ValueError(
                f"options.pkl has {key}=True; solvers.cddb samples the stochastic bridge from a clean x₁ only"
            )
    size = int(options["image_size"])
    found = degradation(str(options["corrupt"]), size)
    interval = int(options["interval"])
    return {
        "task": found["task"],
        "operator": found["operator"],
        "image_shape": [3, size, size],
        "sigma": 0.0,  # I²SB trains noise-free (its corruption adds no noise)
        "schedule": {"steps": interval, "beta_min": 1e-4, "beta_max": float(options["beta_max"])},
        "cond_x1": bool(options["cond_x1"]),
        "network": "adm",
        "official": True,
        "time_input": {"kind": "i2sb", "t0": float(options["t0"]), "T": float(options["T"]), "interval": interval},
        "x1": found["x1"],
        "operator_mismatch": found["operator_mismatch"],
        "source": {
            **sources,
            "options": {k: options[k] for k in KEPT_OPTIONS if k in options},
            "ema": {k: ema.get(k) for k in ("decay", "num_updates")},
        },
    }


def import_bridge(
    src: str | Path, dest: str | Path, *, task: str | None = None, adm_options: str | Path | None = None
) -> Path:
    """Read SRC/latest.pt and SRC/options.pkl, write a bridge folder at `dest` (replaced whole); returns dest."""
    from safetensors.torch import save_file

    from bench.files import atomic_write_text, file_sha256, git_commit, replace_folder

    src, dest = Path(src), Path(dest)
    options_path, checkpoint_path = src / "options.pkl", src / "latest.pt"
    for path in (options_path, checkpoint_path):
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing; SRC must be the folder holding latest.pt and options.pkl")
    options = read_options(options_path)
    model_options = read_plain_pickle(adm_options) if adm_options else {}
    if not isinstance(model_options, dict):
        raise ValueError(f"{adm_options} holds a {type(model_options).__name__}, not a dict of ADM options")
    sources = {
        "latest.pt_sha256": file_sha256(checkpoint_path),
        "options.pkl_sha256": file_sha256(options_path),
        "adm_options": {"sha256": file_sha256(adm_options)} if adm_options else "I2SB ckpt_util defaults",
    }
    checkpoint = read_checkpoint(checkpoint_path)
    record = bridge_record(options, sources, checkpoint["ema"] if isinstance(checkpoint["ema"], Mapping) else {})
    if task is not None and task not in (record["task"], record["task"].partition("-")[0]):  # sr4: either x4 one
        raise ValueError(f"--task {task} but options.pkl has corrupt={options['corrupt']!r}, a {record['task']} bridge")
    config = adm_config(model_options, record["cond_x1"])
    if config.image_size != int(options["image_size"]):
        raise ValueError(f"the ADM is {config.image_size}² but options.pkl has image_size {options['image_size']}")
    state = ema_state_dict(checkpoint, str(checkpoint_path))
    check_state(config, state, f"{checkpoint_path} (EMA)")
    del checkpoint

    def write(folder: Path) -> None:
        import dataclasses

        (folder / ADM_WEIGHTS).parent.mkdir(parents=True)
        save_file(state, str(folder / ADM_WEIGHTS))
        atomic_write_text(folder / ADM_CONFIG, json.dumps(dataclasses.asdict(config), indent=2) + "\n")
        atomic_write_text(folder / BRIDGE_FILE, json.dumps(record, indent=2) + "\n")
        provenance = {"kind": "imported I2SB/CDDB bridge (EMA weights)", "git_commit": git_commit(), "bridge": record}
        atomic_write_text(folder / "provenance.json", json.dumps(provenance, indent=2) + "\n")

    replace_folder(dest, write)
    return dest
