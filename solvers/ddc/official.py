"""`python -m bench import-ddc`: the DDC authors' released φ ("Standard", "WoLPIPS") as one of our φ folders.

The authors release φ as a diffusers folder: `config.json` (a UNet2DModel config that also carries the EMA's
fields, `decay`, `optimization_step`, ...) and `diffusion_pytorch_model.safetensors`. `import_official` checks
that config (a 6 → 3 channel UNet2DModel once the EMA and private fields are dropped), loads the weights
strictly, and writes DEST as `solvers.ddc.network.load_phi` reads it: `unet/config.json`,
`unet/diffusion_pytorch_model.safetensors` (a byte copy of theirs) and a provenance.json stating the official
conventions, which the sampler then follows (solvers/ddc/sampler.py):

- clip_x0 false: the official code gives φ the prior's x̂₀ unclipped;
- y_to_image "replicate": the official `AdaptiveAvgPool2d` to 256² equals it on every built-in task;
- inpaint_unobserved "noise": the official code adds the measurement noise after masking;
- the prior: guided-diffusion's ADM ImageNet-256 unconditional model (`adm:` preset imagenet256-uncond), with its
  checkpoint's sha256 when `--prior-checkpoint` names the file, so that the sampler refuses other weights;
- t ~ U{0..999} in training (`timesteps` "uniform"), sampled at 800, 600, 400, 200, 0 (`sampler_timesteps`).

Nothing here downloads: the user fetches the authors' folder (docs/ddc/official-weights.md). Torch and diffusers
are imported inside the functions, as the CLI's other commands do.
"""

from __future__ import annotations

import datetime
import inspect
import json
import shutil
from pathlib import Path
from typing import Any

from bench.files import atomic_write_text, file_sha256, git_commit, replace_folder

from .network import PROVENANCE

__all__ = [
    "EMA_FIELDS",
    "OFFICIAL_ARCHITECTURE",
    "OFFICIAL_PARAMETERS",
    "VARIANTS",
    "ImportDDCError",
    "import_official",
    "official_config",
]

CONFIG = "config.json"
WEIGHTS = "diffusion_pytorch_model.safetensors"
# Written by diffusers' EMAModel into the released config; none of them is a UNet2DModel argument.
EMA_FIELDS = (
    "decay",
    "inv_gamma",
    "min_decay",
    "optimization_step",
    "power",
    "update_after_step",
    "use_ema_warmup",
)
# The released φ's architecture (docs: SOLVERS.md, "Released weights and their layouts").
OFFICIAL_ARCHITECTURE: dict[str, Any] = {
    "sample_size": 256,
    "in_channels": 6,
    "out_channels": 3,
    "layers_per_block": 2,
    "block_out_channels": [128, 128, 256, 256, 512, 512],
    "down_block_types": ["DownBlock2D"] * 4 + ["AttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "AttnUpBlock2D"] + ["UpBlock2D"] * 4,
}
OFFICIAL_PARAMETERS = 113_676_675
# variant -> (the paper's name, LPIPS weight of its loss): DDC paper Sec. 3.3 and its "w/o LPIPS" ablation.
VARIANTS = {"standard": ("Standard", 0.1), "wolpips": ("WoLPIPS", 0.0)}
OFFICIAL_TASKS = ["sr4", "sr8", "gblur", "inpaint", "jpeg10"]  # the code's training tasks (92% inpainting)
OFFICIAL_SAMPLER_TIMESTEPS = [800, 600, 400, 200, 0]
PRIOR_PRESET = "imagenet256-uncond"  # bench.priors.adm_prior.ADM_DEFAULT_PRESET: 256x256_diffusion_uncond.pt


class ImportDDCError(ValueError):
    """The authors' folder does not hold what the importer expects: the message names the problem and the fix."""


def official_config(src: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(UNet2DModel config, dropped fields) from the released `config.json` in `src`.

    Dropped: the EMA's fields (`EMA_FIELDS`) and diffusers' private ones (`_class_name`, `_diffusers_version`,
    ...). Any other key UNet2DModel does not take is an error, as is a class other than UNet2DModel or channels
    other than 6 in (x̂₀ and y, 3 each) and 3 out (Δ).
    """
    from diffusers import UNet2DModel

    path = Path(src) / CONFIG
    if not path.is_file():
        nested = sorted(str(p.parent) for p in Path(src).glob(f"*/{CONFIG}")) if Path(src).is_dir() else []
        hint = f"; found one in {', '.join(nested)}: pass that folder" if nested else ""
        raise ImportDDCError(
            f"import-ddc: no {CONFIG} in {src}; SRC must be the authors' φ folder holding {CONFIG} and {WEIGHTS}{hint}"
        )
    try:
        raw = json.loads(path.read_text())
    except ValueError as error:
        raise ImportDDCError(f"import-ddc: {path} is not valid JSON ({error}); download it again") from None
    if not isinstance(raw, dict):
        raise ImportDDCError(f"import-ddc: {path} must hold a JSON object (a diffusers config)")
    class_name = raw.get("_class_name", "UNet2DModel")
    if class_name != "UNet2DModel":
        raise ImportDDCError(
            f"import-ddc: {path} describes a {class_name}, not the UNet2DModel the DDC authors release; "
            "pass the folder of their φ network"
        )
    dropped = {k: v for k, v in raw.items() if k in EMA_FIELDS or k.startswith("_")}
    config = {k: v for k, v in raw.items() if k not in dropped}
    accepted = set(inspect.signature(UNet2DModel.__init__).parameters) - {"self"}
    unknown = sorted(set(config) - accepted)
    if unknown:
        raise ImportDDCError(
            f"import-ddc: {path} has keys that are neither UNet2DModel arguments nor EMA fields: {unknown}; "
            f"this importer knows the authors' layout (EMA fields: {', '.join(EMA_FIELDS)}) and will not guess"
        )
    channels = (config.get("in_channels"), config.get("out_channels"))
    if channels != (6, 3):
        raise ImportDDCError(
            f"import-ddc: {path} has in_channels={channels[0]}, out_channels={channels[1]}; DDC's φ takes "
            "[x̂₀, y] (6 channels) and returns Δ (3): this is not a DDC φ network"
        )
    return config, dropped


def load_official_unet(src: str | Path, config: dict[str, Any]):
    """The UNet2DModel of `config` with the released weights loaded strictly (every key, every shape)."""
    from diffusers import UNet2DModel
    from safetensors.torch import load_file

    from bench.weights import WeightsError, load_exact

    weights = Path(src) / WEIGHTS
    if not weights.is_file():
        pickled = [p.name for p in Path(src).glob("diffusion_pytorch_model*.bin")]
        hint = f" ({', '.join(pickled)} found: pickles are not loaded, convert to safetensors first)" if pickled else ""
        raise ImportDDCError(f"import-ddc: no {WEIGHTS} in {src}{hint}")
    unet = UNet2DModel.from_config(config)
    try:
        load_exact(unet, load_file(str(weights), device="cpu"))
    except WeightsError as error:
        raise ImportDDCError(
            f"import-ddc: {weights} does not fit its {CONFIG}: {error}; the two files must come from the same "
            "release (download both again)"
        ) from None
    return unet


def official_architecture(config: dict[str, Any]) -> bool:
    """Whether `config` has the released φ's architecture numbers (`OFFICIAL_ARCHITECTURE`)."""
    return all(_plain(config.get(key)) == value for key, value in OFFICIAL_ARCHITECTURE.items())


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def official_provenance(
    variant: str,
    source: dict[str, str],
    dropped: dict[str, Any],
    parameters: int,
    official_layout: bool,
    prior_sha256: str | None,
) -> dict[str, Any]:
    """provenance.json of an imported φ: where it came from and the official conventions the sampler follows."""
    paper_name, w_lpips = VARIANTS[variant]
    return {
        "kind": "DDC data-consistency network",
        "official": True,
        "variant": variant,
        "source": f"DDC authors' released φ '{paper_name}' (Chen et al. 2024, Hanyu-Chen373/DeepDataConsistency)",
        "source_sha256": source,
        "dropped_config_fields": dropped,
        "training_steps": dropped.get("optimization_step"),
        "objective": "MSE + w_lpips LPIPS-alex + w_kl KL (DDC Alg. 2, Eq. 11)",
        "w_lpips": w_lpips,
        "w_kl": 1e-3,
        "tasks": OFFICIAL_TASKS,
        "sigma_max": 0.05,
        "parameters": parameters,
        "official_architecture": official_layout,
        # The conventions solvers/ddc/sampler.py follows (each one a DDCConfig option).
        "clip_x0": False,
        "y_to_image": "replicate",
        "y_to_image_official": "AdaptiveAvgPool2d to image size (equal to 'replicate' on every built-in task)",
        "inpaint_unobserved": "noise",
        "timesteps": "uniform",  # trained on t ~ U{0..999}: every step count is in its training range
        "sampler_steps": len(OFFICIAL_SAMPLER_TIMESTEPS),
        "sampler_timesteps": OFFICIAL_SAMPLER_TIMESTEPS,
        "prior": {
            "kind": "adm",
            "config": {"preset": PRIOR_PRESET},
            "checkpoint_sha256": prior_sha256,
            "spec": f"adm:<256x256_diffusion_uncond.pt>?preset={PRIOR_PRESET}",
            "note": "guided-diffusion's unconditional ImageNet-256 ADM, by the paper and the architecture",
        },
        "output_dc": False,
        "imported": {
            "git_commit": git_commit(),
            "created": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        },
    }


def import_official(
    src: str | Path,
    dest: str | Path,
    *,
    variant: str = "standard",
    prior_checkpoint: str | Path | None = None,
    force: bool = False,
) -> tuple[Path, dict[str, Any]]:
    """Check the released φ in `src` and write it to `dest` as one of our φ folders; (dest, provenance).

    `dest` appears whole or not at all (`bench.files.replace_folder`); an existing `dest` is replaced only
    with force=True. prior_checkpoint: the user's copy of 256x256_diffusion_uncond.pt, whose sha256 the
    provenance records so that the sampler refuses other prior weights.
    """
    if variant not in VARIANTS:
        raise ImportDDCError(f"import-ddc: unknown --variant {variant!r} (available: {', '.join(VARIANTS)})")
    src, dest = Path(src), Path(dest)
    if dest.resolve() == src.resolve():
        raise ImportDDCError("import-ddc: DEST must differ from SRC (SRC is read, DEST is written as a new folder)")
    if dest.exists() and not force:
        raise ImportDDCError(f"import-ddc: {dest} already exists; choose another DEST or pass --force to replace it")
    prior_sha256 = None
    if prior_checkpoint is not None:
        if not Path(prior_checkpoint).is_file():
            raise ImportDDCError(
                f"import-ddc: --prior-checkpoint {prior_checkpoint} is not a file; pass guided-diffusion's "
                "256x256_diffusion_uncond.pt (or leave the option out)"
            )
        prior_sha256 = file_sha256(prior_checkpoint)
    config, dropped = official_config(src)
    unet = load_official_unet(src, config)
    source = {CONFIG: file_sha256(src / CONFIG), WEIGHTS: file_sha256(src / WEIGHTS)}
    parameters = sum(p.numel() for p in unet.parameters())
    provenance = official_provenance(variant, source, dropped, parameters, official_architecture(config), prior_sha256)

    def write(folder: Path) -> None:
        (folder / "unet").mkdir()
        unet.save_config(folder / "unet")  # the config UNet2DModel was built from, without the EMA fields
        shutil.copyfile(src / WEIGHTS, folder / "unet" / WEIGHTS)
        # The copy is what runs; its digest must be the one just checked and recorded.
        if file_sha256(folder / "unet" / WEIGHTS) != source[WEIGHTS]:
            raise ImportDDCError(f"import-ddc: {src / WEIGHTS} changed while it was imported; run the import again")
        atomic_write_text(folder / PROVENANCE, json.dumps(provenance, indent=2) + "\n")

    replace_folder(dest, write)
    return dest, provenance
