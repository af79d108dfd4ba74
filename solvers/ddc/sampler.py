"""Deep Data Consistency (DDC, Chen et al. 2024): a learned correction of the Tweedie estimate, 5 steps.

A network φ sees the prior's Tweedie estimate x̂₀, the measurement y brought to image size and the timestep,
and predicts a residual Δ that moves x̂₀ toward data consistency (paper Eq. 7):

    x̂₀,y = x̂₀ − Δφ(x̂₀, y, t).

The reverse step is the DDPM posterior q(x_s | x_t, x̂₀,y) with the corrected estimate (paper Eq. 22), with the
prior's learned variance where it has one. φ (solvers/ddc/network.py) is trained by
`python -m bench train-ddc` (solvers/ddc/train.py).

Each φ folder's provenance.json states the conventions its network was trained with, and the sampler follows
them (`DDCConfig` options left at None); an explicit option that contradicts them is an error naming the fix, and
a folder without provenance.json is refused (the DDC authors' released φ gets one from `python -m bench
import-ddc`, solvers/ddc/official.py). The conventions:

- clip_x0: φ sees x̂₀ clipped to [-1, 1] (our trained networks, see solvers.ddc.train.CLIP_X0) or unclipped (the
  official code and its released φ).
- y_to_image: how y reaches image size (see `measurement_to_image`).
- inpaint_unobserved: what φ sees where the measurement observes nothing. `Operator.measure` zeroes those
  pixels ("zero", how our first φ were trained); the official code adds the noise after masking, so they hold
  noise of the measurement's std ("noise", drawn from the solver's per-image generators, see
  `fill_unobserved`); "mean" fills them with the observed pixels' per-image channel means (`mean_fill`), a
  departure of ours that hands φ the image's colour at every pixel (docs/ddc/natural64.md, "Blocks and grey").

Two names share this sampler: `ddc` (φ trained with the LPIPS term) and `ddc-nolpips` (the paper's "DDC w/o
LPIPS" ablation). Their default networks, bench/assets/ddc-natural64-pinv and ddc-natural64-nolpips-pinv, see A⁺y
on SR and mean-filled inpainting holes, which removes the block mosaic and the grey that the official input
conventions gave (docs/ddc/natural64.md, "Blocks and grey"). The networks trained with the official conventions
stay available: `--set ddc.network=natural64`, `--set ddc-nolpips.network=natural64-nolpips`.

A result's key holds the sha256 of φ's weight files (`spec`), so that retrained weights under the same name never
reuse results of the old ones.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from bench.sampling import posterior_step
from operators import Cap, Operator, randn_per_image
from operators.base import noise_std

from .. import register
from ..base import Solver, SolverConfig, SolverError, StepCallback
from .network import (
    DC_WEIGHTS,
    PAPER_PHI_CHANNELS,
    PROVENANCE,
    Phi,
    load_phi,
    network_folder,
    paper_phi,
    read_provenance,
)

Y_TO_IMAGE = ("replicate", "pinv", "pinv-if-smaller")
INPAINT_UNOBSERVED = ("zero", "noise", "mean")
# What a φ without a recorded convention gets: our trainer's choices (a φ injected as a function has no folder).
# clip_x0 False for a provenance.json that predates the key: those networks were trained unclipped.
DEFAULT_CONVENTIONS = {"y_to_image": "replicate", "clip_x0": True, "inpaint_unobserved": "zero"}
LEGACY_PROVENANCE = {"y_to_image": "replicate", "clip_x0": False, "inpaint_unobserved": "zero"}


@dataclasses.dataclass(frozen=True)
class DDCConfig(SolverConfig):
    steps: int = 5  # DDC paper Sec. 4 / Appendix B: 5 steps (official schedule 800, 600, 400, 200, 0)
    # φ weights: a folder under bench/assets/ddc-<name>/, or a path to such a folder. The default sees A⁺y on SR and
    # mean-filled holes (departures of ours, no block mosaic or grey); "natural64" has the official conventions.
    network: str = "natural64-pinv"
    # The conventions below default to None: "as the network's provenance.json says" (see the module docstring).
    # "replicate" equals the official adaptive average pooling on every built-in task (see measurement_to_image).
    y_to_image: str | None = None  # "replicate", "pinv" or "pinv-if-smaller"
    clip_x0: bool | None = None  # True: φ sees x̂₀ clipped to [-1, 1] (ours); False: unclipped (official)
    # A φ trained at the sampler's timesteps only refuses other step counts; true runs it anyway (steps ablation).
    off_schedule: bool = False
    inpaint_unobserved: str | None = None  # "zero" (Operator.measure), "noise" (official) or "mean": see phi_input


def measurement_to_image(y: Tensor, op: Operator, mode: str = "replicate") -> Tensor:
    """y (B, *op.measurement_shape) brought to the image shape (B, C, H, W): φ's second input.

    "replicate": image-sized measurements (blur, inpainting, JPEG, denoising) are used as they are; a
        measurement smaller by an integer factor (super-resolution) is replicated nearest-neighbour. The
        official code's `AdaptiveAvgPool2d` to image size does exactly this whenever the size ratio is an
        integer (each output pixel's pooling window holds one input pixel; identity at equal size), i.e. on
        every built-in task (tests/test_ddc_official.py checks it bit for bit); shapes that it would average,
        not replicate, are refused here.
    "pinv": A⁺y, the pseudo-inverse's image.
    "pinv-if-smaller": A⁺y where the measurement is smaller than the image (super-resolution), y itself where it
        has the image's shape. A departure of ours: replication hands φ a mosaic of flat blocks, which a small φ
        copies into its output (docs/ddc/natural64.md, "Blocks and grey"); A⁺y of a blur or of JPEG would hand
        it an amplified-noise deconvolution instead, so those keep y.
    """
    if mode not in Y_TO_IMAGE:
        raise SolverError(f"ddc: unknown y_to_image '{mode}' (available: {', '.join(Y_TO_IMAGE)})")
    image, measured = tuple(op.input_shape), tuple(op.measurement_shape)
    if mode == "pinv" or (mode == "pinv-if-smaller" and measured != image):
        return op.pinv(y)
    if measured == image:
        return y
    if len(measured) == 3 and measured[0] == image[0]:
        (_, h, w), (_, height, width) = measured, image
        if height % h == 0 and width % w == 0 and height // h == width // w:
            return torch.nn.functional.interpolate(y, scale_factor=height // h, mode="nearest")
    raise SolverError(
        f"ddc: cannot replicate a {measured} measurement of {op.task} to a {image} image; use --set ddc.y_to_image=pinv"
    )


def unobserved_mask(op: Operator, like: Tensor) -> Tensor:
    """(B, *op.measurement_shape) bool: the entries `op.restrict` zeroes, i.e. that y observes nothing of.

    Inpainting's hidden pixels; all False for operators that observe every entry of their measurement.
    """
    return op.restrict(torch.ones_like(like)) == 0


def fill_unobserved(y: Tensor, op: Operator, sigma: float, generators: Sequence[torch.Generator]) -> Tensor:
    """y (B, *op.measurement_shape) with its unobserved entries replaced by N(0, noise_std(σ)²) noise.

    The official DDC code adds the measurement noise after masking, so the pixels inpainting hides hold noise;
    `Operator.measure` zeroes them. This gives φ the measurement it was trained on. Image b's noise comes from
    generators[b] alone (one draw of the measurement's shape per image), so it does not depend on the batch.
    """
    hidden = unobserved_mask(op, y)
    if not hidden.any():
        return y
    noise = randn_per_image(tuple(y.shape[1:]), generators, dtype=y.dtype, device=y.device)
    return torch.where(hidden, noise_std(float(sigma)) * noise, y)


def mean_fill(y_image: Tensor, y: Tensor, op: Operator) -> Tensor:
    """φ's image-sized input with the pixels y does not observe set to the per-image, per-channel mean of the
    pixels it does (inpainting); unchanged where y observes every entry or is not image-sized.

    A zero hole reads to φ as black, and 92% of it pulls the image's mean toward grey: φ must infer the colour
    from the 8% it sees through a network whose last normalisation removes per-image means. The fill states it.
    """
    if tuple(y.shape[1:]) != tuple(y_image.shape[1:]):
        return y_image
    hidden = unobserved_mask(op, y)
    if not hidden.any():
        return y_image
    seen = (~hidden).to(y_image.dtype)
    dims = tuple(range(2, y_image.ndim))
    mean = (y_image * seen).sum(dims, keepdim=True) / seen.sum(dims, keepdim=True).clamp_min(1.0)
    return torch.where(hidden, mean.expand_as(y_image), y_image)


def phi_input(y: Tensor, op: Operator, y_to_image: str, inpaint_unobserved: str) -> Tensor:
    """φ's second input from y: brought to image size (`measurement_to_image`), then, for "mean", the unobserved
    pixels filled (`mean_fill`). The "noise" fill draws from the solver's generators and happens before, on y."""
    y_image = measurement_to_image(y, op, y_to_image)
    return mean_fill(y_image, y, op) if inpaint_unobserved == "mean" else y_image


def corrected_prediction(prior, phi: nn.Module | Phi, x_t: Tensor, t: int, y_image: Tensor, *, clip_x0: bool):
    """One call of the prior and one of φ at x_t: the prior's `Prediction` with x̂₀ replaced by x̂₀,y (Eq. 7).

    Shared by the sampler and by training on the sampler's own trajectory (solvers.ddc.train), so both take the
    same step.
    """
    prediction = prior.predict(x_t, t)
    t_batch = torch.full((x_t.shape[0],), t, dtype=torch.long, device=x_t.device)
    x0_hat = prediction.x0.clamp(-1, 1) if clip_x0 else prediction.x0
    # φ runs in the prior's network precision (--dtype); Δ is subtracted in x̂₀'s float32, not in bf16.
    precision = prior.network_precision() if hasattr(prior, "network_precision") else contextlib.nullcontext()
    with precision:
        delta = phi(x0_hat, y_image.to(x0_hat.dtype), t_batch)
    x0_y = x0_hat - delta.to(x0_hat.dtype)
    return dataclasses.replace(prediction, x0=x0_y)


def trained_conventions(provenance: dict[str, Any]) -> dict[str, Any]:
    """The conventions (y_to_image, clip_x0, inpaint_unobserved) a φ was trained with, from its provenance;
    keys the record lacks take `LEGACY_PROVENANCE`'s values (networks saved before the key existed)."""
    return {key: provenance.get(key, default) for key, default in LEGACY_PROVENANCE.items()}


@register
class DDC(Solver):
    name = "ddc"
    Config = DDCConfig
    requires = frozenset({Cap.FORWARD, Cap.PINV})
    summary = "learned data-consistency correction of the Tweedie estimate (Chen et al. 2024), 5 steps"
    injectable_networks = ("phi",)  # tools may pass a φ (`stand_in_networks`: a random paper-size one)
    # "zero" is how the networks that predate the option were trained: their stored results keep their keys
    options_keyed_off_default = {"inpaint_unobserved": "zero"}

    @classmethod
    def stand_in_networks(cls, image_shape: Sequence[int], widths: Sequence[int] | None = None) -> dict[str, Any]:
        """φ at the paper's size (113.7 M parameters at 256²: `paper_phi`) with random weights, or at `widths`."""
        channels, size = int(image_shape[0]), int(image_shape[-1])
        return {"phi": paper_phi(size, channels, tuple(widths) if widths else PAPER_PHI_CHANNELS)}

    def __init__(self, config: SolverConfig | None = None, *, phi: nn.Module | Phi | None = None, **overrides: Any):
        """`self.requested` keeps the options as given (None: follow the provenance); `self.config` holds them
        resolved against the network's provenance.json, so that code reading `config.clip_x0` sees what runs."""
        super().__init__(config, **overrides)
        self.requested = self.config
        self._provenance: dict[str, Any] | None = None
        if self.requested.y_to_image is not None and self.requested.y_to_image not in Y_TO_IMAGE:
            raise SolverError(
                f"ddc: unknown y_to_image '{self.requested.y_to_image}' (available: {', '.join(Y_TO_IMAGE)})"
            )
        unobserved = self.requested.inpaint_unobserved
        if unobserved is not None and unobserved not in INPAINT_UNOBSERVED:
            raise SolverError(
                f"ddc: unknown inpaint_unobserved '{unobserved}' (available: {', '.join(INPAINT_UNOBSERVED)})"
            )
        if int(self.config.steps) < 1:
            raise SolverError(f"ddc: steps must be >= 1, got {self.config.steps}")
        self._phi = phi
        self._injected = phi is not None  # spec(): an injected φ has no weight files to hash
        self._trained_for: dict[str, Any] | None = None  # the prior spec φ was trained with, from its provenance
        # Before φ loads, from provenance.json alone (result keys are computed before any weights load).
        on_disk = None if phi is not None else read_provenance(network_folder(self.config.network))
        self._trained_tasks = (on_disk or {}).get("tasks")
        self.config = self._resolved(on_disk)

    def unsupported(self, op: Operator, sigma: float) -> str | None:
        """Besides the capabilities: a task φ was not trained for (its provenance lists them), and a measurement
        that the chosen y_to_image cannot bring to the image's size (colourisation's one channel, replicated)."""
        reason = super().unsupported(op, sigma)
        if reason:
            return reason
        trained = self._trained_tasks
        if trained and op.task not in trained:
            return (
                f"{self.name}: the φ network '{self.config.network}' was trained for {', '.join(trained)}, not "
                f"{op.task}; train one with `python -m bench train-ddc --tasks {','.join([*trained, op.task])} ...` "
                f"and pass it with --set {self.name}.network=<folder>"
            )
        try:
            # on an operator bound to one probe image: per-image operators (inpainting masks) have no A⁺ unbound
            probe = op.for_images(["probe"], 0)
            measurement_to_image(torch.zeros(1, *probe.measurement_shape), probe, self.config.y_to_image)
        except SolverError as error:
            return f"{self.name}: {str(error).removeprefix('ddc: ')}".replace("--set ddc.", f"--set {self.name}.")
        return None

    def _resolved(self, provenance: dict[str, Any] | None) -> DDCConfig:
        """The requested config with each convention left at None taken from `provenance` (None: no record,
        e.g. an injected φ or a folder not there yet, whose conventions are `DEFAULT_CONVENTIONS`)."""
        known = DEFAULT_CONVENTIONS if provenance is None else trained_conventions(provenance)
        chosen = {key: getattr(self.requested, key) for key in DEFAULT_CONVENTIONS}
        return dataclasses.replace(
            self.requested, **{key: known[key] if value is None else value for key, value in chosen.items()}
        )

    def spec(self) -> dict[str, Any]:
        """The resolved config and the sha256 of φ's weight files (an injected φ: its type)."""
        spec = super().spec()
        if self._injected:
            spec["phi"] = f"callable:{getattr(self._phi, '__qualname__', type(self._phi).__name__)}"
        else:
            spec["phi_sha256"] = _weights_sha256(network_folder(self.config.network))
        return spec

    def missing_weights(self) -> str | None:
        if self._phi is not None:
            return None
        folder = network_folder(self.config.network)
        if not (folder / "unet" / "diffusion_pytorch_model.safetensors").is_file():
            return f"ddc: no trained φ network at {folder}; train one with `python -m bench train-ddc`"
        if not (folder / PROVENANCE).is_file():
            return _unprovenanced(folder)
        return None

    def phi(self, device: torch.device) -> nn.Module | Phi:
        """The φ network: the injected one, else loaded (once) from `config.network`, whose provenance must
        agree with every convention set explicitly."""
        if self._phi is None:
            folder = network_folder(self.config.network)
            network, _ = load_phi(folder)
            provenance = read_provenance(folder)
            if provenance is None:
                raise SolverError(_unprovenanced(folder))
            self._check_conventions(trained_conventions(provenance))
            self.config = self._resolved(provenance)
            self._phi = network
            self._provenance = provenance
            self._trained_for = provenance.get("prior") if isinstance(provenance.get("prior"), dict) else None
        if isinstance(self._phi, nn.Module):
            self._phi.to(device)
        return self._phi

    def _check_conventions(self, trained: dict[str, Any]) -> None:
        """An explicit option that contradicts the provenance is an error: φ would see inputs unlike its training's."""
        for key, value in trained.items():
            asked = getattr(self.requested, key)
            if asked is not None and asked != value:
                shown = str(value).lower() if isinstance(value, bool) else value
                raise SolverError(
                    f"ddc: the network at {self.config.network} was trained with {key}={value}; "
                    f"use --set ddc.{key}={shown} (or leave ddc.{key} unset to follow its provenance.json)"
                )

    def _check_prior(self, prior) -> None:
        """φ corrects one prior's x̂₀: refuse a network whose provenance names another prior's weights, or
        another architecture preset (the official φ: ADM ImageNet-256)."""
        preset = ((self._trained_for or {}).get("config") or {}).get("preset")
        current = prior.spec() if hasattr(prior, "spec") else {}
        current_preset = (current.get("config") or {}).get("preset")
        if preset and current_preset != preset:
            raise SolverError(
                f"ddc: the φ network '{self.config.network}' was trained for an ADM prior of preset '{preset}', "
                f"not this one ({current.get('kind')}, preset {current_preset}); run it with "
                f"--prior adm:<checkpoint>?preset={preset} (adm-random:<architecture> for tests)"
            )
        trained = (self._trained_for or {}).get("checkpoint_sha256")
        current = prior.spec().get("checkpoint_sha256") if hasattr(prior, "spec") else None
        if trained and current and trained != current:
            raise SolverError(
                f"ddc: the φ network '{self.config.network}' was trained for the prior with checkpoint sha256 "
                f"{trained[:12]}…, not this one ({current[:12]}…); train one for this prior with "
                "`python -m bench train-ddc --prior <spec>` and pass it with --set ddc.network=<folder>"
            )

    def solve(
        self,
        y: Tensor,
        op: Operator,
        prior,
        *,
        sigma: float,
        generators: Sequence[torch.Generator],
        callback: StepCallback | None = None,
    ) -> Tensor:
        """Algorithm 1 of the paper: per step one prior call, one φ call (Eq. 7), one posterior step (Eq. 22).

        The callback receives the prior's ε̂ and the corrected estimate x̂₀,y as x0.
        """
        shape, device = prior.image_shape, prior.device
        phi = self.counted("phi", self.phi(device))
        self._check_prior(prior)
        ts = prior.timesteps(self.config.steps)
        self._check_schedule(ts)
        x = randn_per_image(shape, generators, dtype=torch.float32, device=device)
        y = y.to(device)
        if self.config.inpaint_unobserved == "noise":  # drawn after x_T, which stays the one "zero" draws
            y = fill_unobserved(y, op, sigma, generators)
        y_image = phi_input(y, op, self.config.y_to_image, self.config.inpaint_unobserved)
        for i, (t, s) in enumerate(zip(ts, [*ts[1:], -1], strict=True)):
            with torch.no_grad():
                corrected = corrected_prediction(prior, phi, x, t, y_image, clip_x0=self.config.clip_x0)
            if callback is not None:
                callback(step=i, t=t, x_t=x, eps=corrected.eps, x0=corrected.x0)
            noise = randn_per_image(shape, generators, dtype=x.dtype, device=device)
            x = posterior_step(prior, x, corrected, t, s, noise)
        return x

    def _check_schedule(self, timesteps: Sequence[int]) -> None:
        """A φ trained only at the sampler's timesteps (`train-ddc --timesteps sampler`) has never seen others."""
        trained = (self._provenance or {}).get("sampler_timesteps")
        if trained is None or (self._provenance or {}).get("timesteps") != "sampler" or self.config.off_schedule:
            return
        unseen = sorted(set(timesteps) - set(trained), reverse=True)
        if unseen:
            raise SolverError(
                f"ddc: the φ network '{self.config.network}' was trained only at the timesteps {trained} of the "
                f"{len(trained)}-step sampler, and {self.config.steps} steps visit {unseen[:6]} too; run "
                f"ddc.steps={len(trained)}, or --set ddc.off_schedule=true to run it off its training schedule"
            )


def _unprovenanced(folder: Path) -> str:
    return (
        f"ddc: the φ network at {folder} has no {PROVENANCE}, so the conventions it was trained with (x̂₀ clipped "
        "or not, how y reaches image size, inpainting's unobserved pixels) are unknown and it is not run; for "
        "the DDC authors' released φ run `python -m bench import-ddc <their folder> <new folder>` and pass the "
        "new folder; a φ of ours gets its provenance.json from `python -m bench train-ddc`"
    )


def _weights_sha256(folder: Path) -> dict[str, str]:
    """sha256 of each weight file a φ folder holds (relative path → digest); {} where none is there yet."""
    from bench.files import file_sha256

    files = [folder / "unet" / "diffusion_pytorch_model.safetensors", folder / DC_WEIGHTS]
    return {path.relative_to(folder).as_posix(): file_sha256(path) for path in files if path.is_file()}


@dataclasses.dataclass(frozen=True)
class DDCNoLpipsConfig(DDCConfig):
    network: str = "natural64-nolpips-pinv"  # φ trained without the LPIPS term (`train-ddc --no-lpips`)


@register
class DDCNoLpips(DDC):
    """The paper's "DDC w/o LPIPS" ablation as its own name, so one run can hold both variants side by side."""

    name = "ddc-nolpips"
    Config = DDCNoLpipsConfig
    summary = "DDC with φ trained on MSE + KL only, without the LPIPS term (paper's 'DDC w/o LPIPS')"
