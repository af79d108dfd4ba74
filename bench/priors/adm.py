"""The ADM ("guided-diffusion") UNet, written so that released checkpoints load unchanged.

The priors this benchmark uses most are the pixel-space DDPMs released with "Diffusion Models Beat GANs
on Image Synthesis" (Dhariwal & Nichol, 2021; ImageNet-256 unconditional) and the FFHQ-256 model from ILVR
that DPS adopted. Their checkpoints are plain state dicts in the original module layout. We rebuild that
network here, with exactly the same parameter names and shapes, instead of converting the weights into
diffusers' ``UNet2DModel``: a conversion step is one more place for a silent mistake (ADM's attention packs
q, k, v per head, a detail a remapping easily gets wrong while every shape still matches), and a strict
``load_state_dict`` against the unmodified file is a check we can trust. Depending on the original code
instead is not an option either: it is not on PyPI, and the copies that inverse-problem papers ship unpickle
checkpoints without ``weights_only`` and fall back to a randomly initialised network when loading fails.
This module is self-contained (torch only; safetensors when such a file is given).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

from bench.registry import closest

# ADM normalises with 32 groups everywhere, so every feature width must be a multiple of 32.
_NORM_GROUPS = 32


@dataclass(frozen=True)
class ADMConfig:
    """Hyper-parameters of an ADM UNet, named after guided-diffusion's command-line flags.

    ``attention_resolutions`` are feature-map sizes in pixels (the flag ``--attention_resolutions 32,16,8``
    means attention wherever the map is 32, 16 or 8 pixels wide for ``image_size`` inputs). The middle
    block always has attention. Heads have a fixed width of ``num_head_channels`` channels. Resampling is
    always done by residual blocks (``resblock_updown=True``) and the time embedding is injected through
    scale and shift of the second normalisation (``use_scale_shift_norm=True``) when that flag is set.
    """

    image_size: int
    model_channels: int
    num_res_blocks: int
    attention_resolutions: tuple[int, ...]
    channel_mult: tuple[float, ...]
    num_head_channels: int = 64
    in_channels: int = 3
    learn_sigma: bool = True
    use_scale_shift_norm: bool = True
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if self.image_size <= 0 or self.model_channels <= 0 or self.num_res_blocks <= 0:
            raise ValueError(f"image_size, model_channels and num_res_blocks must be positive, got {self}")
        if not self.channel_mult:
            raise ValueError("channel_mult must name at least one level, e.g. (1, 2)")
        widths = {self.level_channels(level) for level in range(len(self.channel_mult))}
        bad_widths = sorted(w for w in widths if w <= 0 or w % _NORM_GROUPS)
        if bad_widths:
            raise ValueError(
                f"feature widths {bad_widths} are not positive multiples of {_NORM_GROUPS} (GroupNorm groups); "
                "change model_channels or channel_mult"
            )
        reachable = {self.image_size >> level: level for level in range(len(self.channel_mult))}
        for res in self.attention_resolutions:
            if res not in reachable:
                raise ValueError(
                    f"attention resolution {res} is never reached; feature maps are {sorted(reachable)} pixels "
                    f"wide for image_size={self.image_size} and {len(self.channel_mult)} levels"
                )
            width = self.level_channels(reachable[res])
            if width % self.num_head_channels:
                raise ValueError(
                    f"attention at resolution {res} has {width} channels, not divisible by "
                    f"num_head_channels={self.num_head_channels}"
                )
        middle = self.level_channels(len(self.channel_mult) - 1)
        if middle % self.num_head_channels:
            raise ValueError(
                f"middle block width {middle} is not divisible by num_head_channels={self.num_head_channels}"
            )

    def level_channels(self, level: int) -> int:
        """Feature width at UNet level ``level`` (0 = full resolution)."""
        return int(self.channel_mult[level] * self.model_channels)

    @property
    def out_channels(self) -> int:
        """Output channels: eps, plus the variance-interpolation map v when ``learn_sigma``."""
        return 2 * self.in_channels if self.learn_sigma else self.in_channels

    @property
    def attention_levels(self) -> frozenset[int]:
        """UNet levels (0 = full resolution) whose blocks carry self-attention, middle block excluded."""
        levels = range(len(self.channel_mult))
        return frozenset(level for level in levels if self.image_size >> level in self.attention_resolutions)


@dataclass(frozen=True)
class ADMConfigWithOutputs(ADMConfig):
    """An ADMConfig whose output width is its own field instead of following ``in_channels`` and ``learn_sigma``:
    I²SB's conditional bridge takes [x_n, x₁] (6 channels) and predicts 3 (fixed variance).

    A subclass rather than a new ADMConfig field because ``asdict(ADMConfig)`` is part of every ADM prior's spec,
    hence of every stored result's key: a field there, even defaulted, would re-key all stored ADM results.
    """

    output_channels: int = 3

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.output_channels, bool) or not isinstance(self.output_channels, int) or self.output_channels < 1:
            raise ValueError(f"output_channels must be a positive integer, got {self.output_channels!r}")

    @property
    def out_channels(self) -> int:
        """Output channels, as set by ``output_channels``."""
        return self.output_channels


PRESETS: dict[str, ADMConfig] = {
    # 256x256_diffusion_uncond.pt: MODEL_FLAGS of the unconditional ImageNet-256 model in guided-diffusion's
    # README; channel_mult is create_model's default for image_size 256. 552,814,086 parameters.
    "imagenet256-uncond": ADMConfig(
        image_size=256,
        model_channels=256,
        num_res_blocks=2,
        attention_resolutions=(32, 16, 8),
        channel_mult=(1, 1, 2, 2, 4, 4),
        num_head_channels=64,
    ),
    # ffhq_10m.pt (trained by ILVR, used by DPS): the sampling flags in ILVR's README, identical to DPS's
    # configs/model_config.yaml (its num_heads: 4 is ignored because num_head_channels is set).
    "ffhq256": ADMConfig(
        image_size=256,
        model_channels=128,
        num_res_blocks=1,
        attention_resolutions=(16,),
        channel_mult=(1, 1, 2, 2, 4, 4),
        num_head_channels=64,
    ),
}


# The ImageNet-256 architecture at the narrowest widths GroupNorm(32) allows, for tests and CPU smoke runs of
# the paper's 256x256 setting: every block type, resampling step and attention resolution of the real network
# (about 1.7M parameters instead of 552.8M).
TINY_256 = ADMConfig(
    image_size=256,
    model_channels=32,
    num_res_blocks=1,
    attention_resolutions=(32, 16, 8),
    channel_mult=(1, 1, 1, 2, 2, 2),
    num_head_channels=32,
)


def random_adm(config: ADMConfig, seed: int = 0) -> ADMUNet:
    """An ADM UNet with random weights, for timing and tests: the checkpoint key layout, no checkpoint.

    ADM zero-initialises the last layer of every residual branch and the output convolution, so a fresh network
    predicts ε = 0 whatever its input; those layers get PyTorch's default initialisation instead, so that outputs
    depend on every weight (a test comparing two code paths compares something). `seed` fixes every weight
    without touching the global random stream.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = ADMUNet(config)
        for module in model.modules():
            if isinstance(module, nn.Conv1d | nn.Conv2d) and not any(p.abs().sum() for p in module.parameters()):
                module.reset_parameters()
    return model.eval()


class GroupNorm32(nn.GroupNorm):
    """GroupNorm evaluated in float32 whatever the input dtype, as ADM does for half-precision stability."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = None if self.weight is None else self.weight.float()
        bias = None if self.bias is None else self.bias.float()
        return F.group_norm(x.float(), self.num_groups, weight, bias, self.eps).to(x.dtype)


def _norm(channels: int) -> GroupNorm32:
    return GroupNorm32(_NORM_GROUPS, channels)


def _zeroed(module: nn.Module) -> nn.Module:
    # ADM starts every residual branch's last layer at zero so each block begins as the identity.
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of (B,) timesteps (integer or fractional) -> (B, dim) float32, [cos | sin]."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


# "sdpa": torch's fused scaled_dot_product_attention (flash / memory-efficient kernels on GPUs, no T x T
# matrix kept for backward); "legacy": ADM's own einsum formulation, kept as the reference the fused path is
# tested against and for bit-level comparisons with the original code.
ATTENTION_IMPLEMENTATIONS = ("sdpa", "legacy")


def _split_heads(qkv: torch.Tensor, num_heads: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    batch, width, length = qkv.shape
    if width % (3 * num_heads):
        raise ValueError(f"qkv has {width} channels, not divisible by 3 * num_heads = {3 * num_heads}")
    head_channels = width // (3 * num_heads)
    q, k, v = qkv.reshape(batch * num_heads, 3 * head_channels, length).split(head_channels, dim=1)
    return q, k, v


def legacy_qkv_attention(qkv: torch.Tensor, num_heads: int, implementation: str = "sdpa") -> torch.Tensor:
    """Multi-head self-attention in ADM's legacy channel layout.

    ``qkv`` is (B, 3*H*C, T) with the channels grouped by head first: head h owns rows
    [h*3C, (h+1)*3C), and within them q, k, v are consecutive blocks of C rows. Returns (B, H*C, T), heads
    concatenated along channels. Attention logits are scaled by 1/sqrt(C). ``implementation`` is one of
    ATTENTION_IMPLEMENTATIONS; both compute the same function.
    """
    if implementation == "legacy":
        return legacy_qkv_attention_reference(qkv, num_heads)
    if implementation != "sdpa":
        raise ValueError(
            f"unknown attention implementation {implementation!r} (available: {', '.join(ATTENTION_IMPLEMENTATIONS)})"
        )
    batch, _, length = qkv.shape
    q, k, v = (_heads_first(x, batch, num_heads) for x in _split_heads(qkv, num_heads))
    out = F.scaled_dot_product_attention(q, k, v)  # (B, H, T, C)
    return out.permute(0, 1, 3, 2).reshape(batch, -1, length)


def _heads_first(x: torch.Tensor, batch: int, num_heads: int) -> torch.Tensor:
    """(B*H, C, T) -> (B, H, T, C), contiguous. CUDA's flash and memory-efficient SDPA kernels take only
    4-D (batch, heads, sequence, head_dim) inputs whose last dimension has stride 1; anything else falls
    back to the math kernel, which keeps the T x T matrix."""
    _, channels, length = x.shape
    return x.reshape(batch, num_heads, channels, length).transpose(2, 3).contiguous()


def legacy_qkv_attention_reference(qkv: torch.Tensor, num_heads: int) -> torch.Tensor:
    """ADM's QKVAttentionLegacy math, term by term: q and k each scaled by C^(-1/4) before their product
    (so the logits carry 1/sqrt(C) without overflowing half precision) and the softmax taken in float32,
    then cast back. Same layout and result as `legacy_qkv_attention`."""
    batch, _, length = qkv.shape
    q, k, v = _split_heads(qkv, num_heads)
    scale = 1.0 / math.sqrt(math.sqrt(q.shape[1]))
    logits = torch.einsum("bct,bcs->bts", q * scale, k * scale)
    weights = torch.softmax(logits.float(), dim=-1).to(logits.dtype)
    out = torch.einsum("bts,bcs->bct", weights, v)
    return out.reshape(batch, -1, length)


class ResBlock(nn.Module):
    """Residual block conditioned on the time embedding, optionally halving or doubling the resolution.

    When resampling, both branches are resampled (average pooling or nearest-neighbour, no weights) after
    the first normalisation and before the first convolution, so the convolution runs at the new size.
    """

    def __init__(
        self,
        in_channels: int,
        emb_channels: int,
        out_channels: int,
        *,
        use_scale_shift_norm: bool,
        dropout: float = 0.0,
        resample: str | None = None,
    ) -> None:
        super().__init__()
        if resample not in (None, "up", "down"):
            raise ValueError(f"resample must be None, 'up' or 'down', got {resample!r}")
        self.resample = resample
        self.use_scale_shift_norm = use_scale_shift_norm
        self.in_layers = nn.Sequential(
            _norm(in_channels), nn.SiLU(), nn.Conv2d(in_channels, out_channels, 3, padding=1)
        )
        emb_out = 2 * out_channels if use_scale_shift_norm else out_channels
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, emb_out))
        # The Dropout keeps the original indices: the last convolution is out_layers.3.
        self.out_layers = nn.Sequential(
            _norm(out_channels),
            nn.SiLU(),
            nn.Dropout(dropout),
            _zeroed(nn.Conv2d(out_channels, out_channels, 3, padding=1)),
        )
        self.skip_connection = nn.Identity() if in_channels == out_channels else nn.Conv2d(in_channels, out_channels, 1)

    def _resample(self, x: torch.Tensor) -> torch.Tensor:
        if self.resample == "down":
            return F.avg_pool2d(x, kernel_size=2, stride=2)
        if self.resample == "up":
            return F.interpolate(x, scale_factor=2, mode="nearest")
        return x

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        norm_act, conv = self.in_layers[:-1], self.in_layers[-1]
        h = conv(self._resample(norm_act(x)))
        x = self._resample(x)
        emb_out = self.emb_layers(emb).to(h.dtype)[:, :, None, None]
        if self.use_scale_shift_norm:
            scale, shift = emb_out.chunk(2, dim=1)
            h = self.out_layers[0](h) * (1 + scale) + shift
            h = self.out_layers[1:](h)
        else:
            h = self.out_layers(h + emb_out)
        return self.skip_connection(x) + h


class AttentionBlock(nn.Module):
    """Spatial self-attention over all H*W positions, heads of ``head_channels`` channels, residual."""

    def __init__(self, channels: int, head_channels: int) -> None:
        super().__init__()
        self.num_heads = channels // head_channels
        self.norm = _norm(channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj_out = _zeroed(nn.Conv1d(channels, channels, 1))
        self.attention = "sdpa"  # see ATTENTION_IMPLEMENTATIONS; set for the whole network by ADMUNet.set_attention

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        flat = x.reshape(b, c, h * w)
        attended = legacy_qkv_attention(self.qkv(self.norm(flat)), self.num_heads, self.attention)
        return (flat + self.proj_out(attended)).reshape(b, c, h, w)


class _EmbedSequential(nn.ModuleList):
    """A chain of layers in which ResBlocks also receive the time embedding; numbered like nn.Sequential."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        for layer in self:
            x = layer(x, emb) if isinstance(layer, ResBlock) else layer(x)
        return x


class ADMUNet(nn.Module):
    """ADM noise-prediction UNet; ``state_dict()`` matches guided-diffusion's ``UNetModel`` key for key.

    ``forward(x, t)``: x is (B, in_channels, H, W), the noisy image x_t in the diffusion's [-1, 1] scale, with
    H and W divisible by 2**(levels - 1); t is (B,) (or a scalar) training-schedule timesteps, integer or
    fractional, in [0, 1000) for the released models. Returns (B, out_channels, H, W): predicted noise eps
    in the first ``in_channels`` channels and, with ``learn_sigma``, the raw variance output v in the rest
    (the log-variance is frac * log(beta_t) + (1 - frac) * log(posterior variance), frac = (v + 1) / 2).
    """

    def __init__(self, config: ADMConfig) -> None:
        super().__init__()
        self.config = config
        cfg = config
        emb_dim = 4 * cfg.model_channels
        self.time_embed = nn.Sequential(nn.Linear(cfg.model_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))

        def res(cin: int, cout: int, resample: str | None = None) -> ResBlock:
            return ResBlock(
                cin,
                emb_dim,
                cout,
                use_scale_shift_norm=cfg.use_scale_shift_norm,
                dropout=cfg.dropout,
                resample=resample,
            )

        def attn(channels: int) -> AttentionBlock:
            return AttentionBlock(channels, cfg.num_head_channels)

        last_level = len(cfg.channel_mult) - 1
        ch = cfg.level_channels(0)
        self.input_blocks = nn.ModuleList([_EmbedSequential([nn.Conv2d(cfg.in_channels, ch, 3, padding=1)])])
        # Widths of the activations the encoder hands to the decoder's skip connections, in order.
        skip_widths = [ch]
        for level in range(last_level + 1):
            width = cfg.level_channels(level)
            for _ in range(cfg.num_res_blocks):
                layers: list[nn.Module] = [res(ch, width)]
                ch = width
                if level in cfg.attention_levels:
                    layers.append(attn(ch))
                self.input_blocks.append(_EmbedSequential(layers))
                skip_widths.append(ch)
            if level != last_level:
                self.input_blocks.append(_EmbedSequential([res(ch, ch, "down")]))
                skip_widths.append(ch)

        self.middle_block = _EmbedSequential([res(ch, ch), attn(ch), res(ch, ch)])

        self.output_blocks = nn.ModuleList()
        for level in reversed(range(last_level + 1)):
            width = cfg.level_channels(level)
            for i in range(cfg.num_res_blocks + 1):
                layers = [res(ch + skip_widths.pop(), width)]
                ch = width
                if level in cfg.attention_levels:
                    layers.append(attn(ch))
                if level != 0 and i == cfg.num_res_blocks:
                    layers.append(res(ch, ch, "up"))
                self.output_blocks.append(_EmbedSequential(layers))

        self.out = nn.Sequential(_norm(ch), nn.SiLU(), _zeroed(nn.Conv2d(ch, cfg.out_channels, 3, padding=1)))
        # Recompute each block's activations during backward instead of keeping them (see `_run_block`).
        self.gradient_checkpointing = False

    @property
    def out_channels(self) -> int:
        return self.config.out_channels

    def set_attention(self, implementation: str) -> ADMUNet:
        """Use `implementation` (one of ATTENTION_IMPLEMENTATIONS) in every attention block; returns self."""
        if implementation not in ATTENTION_IMPLEMENTATIONS:
            raise ValueError(
                f"unknown attention implementation {implementation!r} (available: {', '.join(ATTENTION_IMPLEMENTATIONS)})"
            )
        for module in self.modules():
            if isinstance(module, AttentionBlock):
                module.attention = implementation
        return self

    def _run_block(self, block: nn.Module, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        # Checkpointing only pays where a backward pass will follow: a sampler under no_grad keeps nothing
        # anyway. Per block, the memory of a DPS step falls from every activation of the UNet to the block
        # inputs plus one block's activations, for one extra forward pass.
        if self.gradient_checkpointing and torch.is_grad_enabled() and (h.requires_grad or emb.requires_grad):
            return torch.utils.checkpoint.checkpoint(block, h, emb, use_reentrant=False)
        return block(h, emb)

    def _check_inputs(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        if x.ndim != 4 or x.shape[1] != cfg.in_channels:
            raise ValueError(f"expected x of shape (B, {cfg.in_channels}, H, W), got {tuple(x.shape)}")
        factor = 2 ** (len(cfg.channel_mult) - 1)
        if x.shape[2] % factor or x.shape[3] % factor:
            raise ValueError(
                f"H and W must be divisible by {factor} (the UNet halves the resolution "
                f"{len(cfg.channel_mult) - 1} times), got {tuple(x.shape[2:])}; pad or resize the image"
            )
        t = torch.as_tensor(t, device=x.device)
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        if t.shape != (x.shape[0],):
            raise ValueError(f"expected t of shape ({x.shape[0]},) or a scalar, got {tuple(t.shape)}")
        return t

    def forward(self, x: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
        t = self._check_inputs(x, t)
        param_dtype = self.time_embed[0].weight.dtype
        emb = self.time_embed(timestep_embedding(t, self.config.model_channels).to(param_dtype))
        h = x.to(param_dtype)
        skips = []
        for block in self.input_blocks:
            h = self._run_block(block, h, emb)
            skips.append(h)
        h = self._run_block(self.middle_block, h, emb)
        for block in self.output_blocks:
            h = self._run_block(block, torch.cat([h, skips.pop()], dim=1), emb)
        return self.out(h).to(x.dtype)


class CheckpointMismatchError(ValueError):
    """A checkpoint's keys or shapes differ from the network it is loaded into."""


def _list_some(keys: list[str], limit: int = 5) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def describe_state_dict_mismatch(expected: Mapping[str, torch.Tensor], found: Mapping[str, torch.Tensor]) -> str | None:
    """Human-readable differences between two state dicts' keys and shapes, or None when they agree."""
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    mismatched = [
        f"{k}: expected {tuple(expected[k].shape)}, found {tuple(found[k].shape)}"
        for k in expected
        if k in found and tuple(expected[k].shape) != tuple(found[k].shape)
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s): {_list_some(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s): {_list_some(unexpected)}")
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatch(es): {_list_some(mismatched)}")
    return "; ".join(problems) or None


def _resolve_config(preset: str | ADMConfig) -> ADMConfig:
    if isinstance(preset, ADMConfig):
        return preset
    if preset in PRESETS:
        return PRESETS[preset]
    close = closest(str(preset), PRESETS)
    hint = f"did you mean {close!r}? " if close else ""
    raise ValueError(f"unknown ADM preset {preset!r}; {hint}(available: {', '.join(sorted(PRESETS))})")


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise FileNotFoundError(f"ADM checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path), device="cpu")
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # unpickling errors come in many types; report them uniformly
            raise CheckpointMismatchError(
                f"could not read {path} as a weights-only torch checkpoint ({type(exc).__name__}: {exc})"
            ) from exc
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointMismatchError(
            f"{path} does not hold a flat state dict of tensors (found {type(state).__name__}); "
            "save model.state_dict() itself"
        )
    return dict(state)


def load_adm(path: str | Path, preset: str | ADMConfig) -> ADMUNet:
    """Build the ADM UNet for ``preset`` (a name in PRESETS or an ADMConfig) and load ``path`` strictly.

    ``path`` is a ``.pt``/``.pth`` state dict (read with ``weights_only=True``) or a ``.safetensors`` file.
    Any missing, unexpected or mis-shaped key raises CheckpointMismatchError naming them; no parameter is ever
    left randomly initialised. Returns the model in float32, eval mode, on the CPU.
    """
    config = _resolve_config(preset)
    path = Path(path)
    state = _read_state_dict(path)
    # Built on the meta device, the network costs no memory or init time; the checkpoint's tensors are
    # then assigned as its parameters.
    with torch.device("meta"):
        model = ADMUNet(config)
    problem = describe_state_dict_mismatch(model.state_dict(), state)
    if problem is not None:
        name = preset if isinstance(preset, str) else "the given ADMConfig"
        raise CheckpointMismatchError(f"{path} does not match ADM preset {name}: {problem}")
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval()
