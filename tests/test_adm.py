"""Tests for the ADM UNet: checkpoint key layout, strict loading, and the arithmetic of its building blocks."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from bench.priors.adm import (
    PRESETS,
    TINY_256,
    ADMConfig,
    ADMUNet,
    AttentionBlock,
    CheckpointMismatchError,
    ResBlock,
    legacy_qkv_attention,
    legacy_qkv_attention_reference,
    load_adm,
    random_adm,
    timestep_embedding,
)

# 32x32 images, two levels (32 and 64 channels), attention (four 16-channel heads) at the 16x16 level.
TINY = ADMConfig(
    image_size=32,
    model_channels=32,
    num_res_blocks=1,
    attention_resolutions=(16,),
    channel_mult=(1, 2),
    num_head_channels=16,
)


def _resblock_shapes(prefix: str, cin: int, cout: int, emb: int) -> dict[str, tuple[int, ...]]:
    """guided-diffusion ResBlock parameters with use_scale_shift_norm=True (emb projects to scale and shift)."""
    shapes = {
        f"{prefix}.in_layers.0.weight": (cin,),
        f"{prefix}.in_layers.0.bias": (cin,),
        f"{prefix}.in_layers.2.weight": (cout, cin, 3, 3),
        f"{prefix}.in_layers.2.bias": (cout,),
        f"{prefix}.emb_layers.1.weight": (2 * cout, emb),
        f"{prefix}.emb_layers.1.bias": (2 * cout,),
        f"{prefix}.out_layers.0.weight": (cout,),
        f"{prefix}.out_layers.0.bias": (cout,),
        f"{prefix}.out_layers.3.weight": (cout, cout, 3, 3),
        f"{prefix}.out_layers.3.bias": (cout,),
    }
    if cin != cout:
        shapes[f"{prefix}.skip_connection.weight"] = (cout, cin, 1, 1)
        shapes[f"{prefix}.skip_connection.bias"] = (cout,)
    return shapes


def _attention_shapes(prefix: str, c: int) -> dict[str, tuple[int, ...]]:
    return {
        f"{prefix}.norm.weight": (c,),
        f"{prefix}.norm.bias": (c,),
        f"{prefix}.qkv.weight": (3 * c, c, 1),
        f"{prefix}.qkv.bias": (3 * c,),
        f"{prefix}.proj_out.weight": (c, c, 1),
        f"{prefix}.proj_out.bias": (c,),
    }


def _tiny_expected_shapes() -> dict[str, tuple[int, ...]]:
    """The original layout for TINY, block by block, written out by hand (time embedding width 4 * 32)."""
    emb = 128
    shapes = {
        "time_embed.0.weight": (emb, 32),
        "time_embed.0.bias": (emb,),
        "time_embed.2.weight": (emb, emb),
        "time_embed.2.bias": (emb,),
        "input_blocks.0.0.weight": (32, 3, 3, 3),
        "input_blocks.0.0.bias": (32,),
        "out.0.weight": (32,),
        "out.0.bias": (32,),
        "out.2.weight": (6, 32, 3, 3),
        "out.2.bias": (6,),
    }
    shapes |= _resblock_shapes("input_blocks.1.0", 32, 32, emb)  # level 0
    shapes |= _resblock_shapes("input_blocks.2.0", 32, 32, emb)  # downsampling ResBlock
    shapes |= _resblock_shapes("input_blocks.3.0", 32, 64, emb)  # level 1 (16x16): attention follows
    shapes |= _attention_shapes("input_blocks.3.1", 64)
    shapes |= _resblock_shapes("middle_block.0", 64, 64, emb)
    shapes |= _attention_shapes("middle_block.1", 64)
    shapes |= _resblock_shapes("middle_block.2", 64, 64, emb)
    # Decoder inputs are the running features concatenated with the encoder skips 64, 32, 32, 32 (popped).
    shapes |= _resblock_shapes("output_blocks.0.0", 64 + 64, 64, emb)
    shapes |= _attention_shapes("output_blocks.0.1", 64)
    shapes |= _resblock_shapes("output_blocks.1.0", 64 + 32, 64, emb)
    shapes |= _attention_shapes("output_blocks.1.1", 64)
    shapes |= _resblock_shapes("output_blocks.1.2", 64, 64, emb)  # upsampling ResBlock
    shapes |= _resblock_shapes("output_blocks.2.0", 64 + 32, 32, emb)
    shapes |= _resblock_shapes("output_blocks.3.0", 32 + 32, 32, emb)
    return shapes


def _shapes(model: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _random_state_dict(config: ADMConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights (including the zero-initialised layers) so every path contributes to the output."""
    gen = torch.Generator().manual_seed(seed)
    shapes = _shapes(ADMUNet(config))
    return {k: 0.2 * torch.randn(s, generator=gen) for k, s in shapes.items()}


def test_adm_tiny_state_dict_matches_original_layout() -> None:
    assert _shapes(ADMUNet(TINY)) == _tiny_expected_shapes()


def test_adm_imagenet_preset_has_released_parameter_count_and_keys() -> None:
    # 552,814,086 float32 values = 2,211,256,344 bytes; the released 256x256_diffusion_uncond.pt is
    # 2,211,383,297 bytes, the difference being the zip/pickle container.
    with torch.device("meta"):
        shapes = _shapes(ADMUNet(PRESETS["imagenet256-uncond"]))
    assert sum(math.prod(s) for s in shapes.values()) == 552_814_086
    assert shapes["input_blocks.0.0.weight"] == (256, 3, 3, 3)
    assert shapes["middle_block.1.qkv.weight"] == (3 * 1024, 1024, 1)
    assert shapes["input_blocks.12.0.in_layers.2.weight"] == (512, 512, 3, 3)  # downsampling 32x32 -> 16x16
    assert shapes["input_blocks.10.1.qkv.weight"] == (3 * 512, 512, 1)  # first attention, at 32x32
    assert shapes["output_blocks.17.0.skip_connection.weight"] == (256, 512, 1, 1)
    assert shapes["output_blocks.14.1.in_layers.2.weight"] == (256, 256, 3, 3)  # upsampling 128 -> 256
    assert shapes["out.2.weight"] == (6, 256, 3, 3)
    assert max(int(k.split(".")[1]) for k in shapes if k.startswith("output_blocks.")) == 17
    # Full-resolution decoder blocks have neither attention nor an upsampler.
    assert not any(k.startswith("output_blocks.17.1.") for k in shapes)
    # Blocks at 64x64 and above have no attention.
    assert not any(k.startswith("input_blocks.7.1.") for k in shapes)


def test_adm_ffhq_preset_has_released_parameter_count_and_keys() -> None:
    # ffhq_10m.pt as released with ILVR: 362 tensors, 93,563,910 parameters.
    with torch.device("meta"):
        shapes = _shapes(ADMUNet(PRESETS["ffhq256"]))
    assert len(shapes) == 362
    assert sum(math.prod(s) for s in shapes.values()) == 93_563_910
    assert shapes["input_blocks.0.0.weight"] == (128, 3, 3, 3)
    assert shapes["input_blocks.9.1.qkv.weight"] == (3 * 512, 512, 1)  # the only encoder attention (16x16)
    assert [k for k in shapes if k.endswith(".qkv.weight")] == [
        "input_blocks.9.1.qkv.weight",
        "middle_block.1.qkv.weight",
        "output_blocks.2.1.qkv.weight",
        "output_blocks.3.1.qkv.weight",
    ]
    assert shapes["middle_block.1.qkv.weight"] == (3 * 512, 512, 1)
    assert shapes["output_blocks.11.0.skip_connection.weight"] == (128, 256, 1, 1)
    assert shapes["out.2.weight"] == (6, 128, 3, 3)


def test_adm_load_pt_roundtrip_runs(tmp_path: Path) -> None:
    state = _random_state_dict(TINY)
    path = tmp_path / "tiny.pt"
    torch.save(state, path)
    model = load_adm(path, TINY)
    assert not model.training
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key
    torch.manual_seed(0)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out = model(x, torch.tensor([10, 900]))
        out_other_t = model(x, torch.tensor([500, 500]))
    assert out.shape == (2, 6, 32, 32)
    assert torch.isfinite(out).all()
    assert out.abs().mean() > 1e-3  # random non-zero weights must give a non-trivial output
    assert not torch.allclose(out, out_other_t)  # the timestep conditions the output


def test_adm_load_safetensors_matches_pt(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    state = _random_state_dict(TINY, seed=1)
    torch.save(state, tmp_path / "tiny.pt")
    save_file(state, str(tmp_path / "tiny.safetensors"))
    from_pt = load_adm(tmp_path / "tiny.pt", TINY)
    from_st = load_adm(tmp_path / "tiny.safetensors", TINY)
    for key, value in from_st.state_dict().items():
        assert torch.equal(value, state[key]), key
    x = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        # Identical weights; buffers at different addresses may take different SIMD paths, hence not bitwise.
        torch.testing.assert_close(from_st(x, torch.tensor([42])), from_pt(x, torch.tensor([42])))


@pytest.mark.parametrize(
    ("edit", "expected_fragments"),
    [
        (lambda sd: sd.pop("middle_block.1.qkv.weight"), ["1 missing key", "middle_block.1.qkv.weight"]),
        (
            lambda sd: sd.__setitem__("input_blocks.1.0.extra.weight", torch.zeros(3)),
            ["1 unexpected key", "input_blocks.1.0.extra.weight"],
        ),
        (
            lambda sd: sd.__setitem__("out.2.weight", torch.zeros(3, 32, 3, 3)),
            ["1 shape mismatch", "out.2.weight", "(6, 32, 3, 3)", "(3, 32, 3, 3)"],
        ),
    ],
    ids=["missing", "unexpected", "shape"],
)
def test_adm_load_mismatch_names_the_key(tmp_path: Path, edit, expected_fragments: list[str]) -> None:
    state = _random_state_dict(TINY)
    edit(state)
    path = tmp_path / "broken.pt"
    torch.save(state, path)
    with pytest.raises(CheckpointMismatchError) as info:
        load_adm(path, TINY)
    for fragment in expected_fragments:
        assert fragment in str(info.value)


def test_adm_load_wrong_preset_reports_counts(tmp_path: Path) -> None:
    path = tmp_path / "tiny.pt"
    torch.save(_random_state_dict(TINY), path)
    with pytest.raises(CheckpointMismatchError, match=r"ffhq256: \d+ missing key\(s\): .*\(\d+ more\); \d+ unexpected"):
        load_adm(path, "ffhq256")


def test_adm_load_rejects_nested_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "nested.pt"
    torch.save({"model": _random_state_dict(TINY), "step": 3}, path)
    with pytest.raises(CheckpointMismatchError, match="flat state dict"):
        load_adm(path, TINY)


def test_adm_load_unknown_preset_lists_presets(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"did you mean 'ffhq256'.*imagenet256-uncond"):
        load_adm(tmp_path / "unused.pt", "ffhq")


def test_adm_load_missing_file_is_clear(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nowhere.pt"):
        load_adm(tmp_path / "nowhere.pt", TINY)


def test_legacy_attention_splits_q_k_v_within_each_head() -> None:
    torch.manual_seed(0)
    batch, heads, c, length = 2, 2, 4, 5
    qkv = torch.randn(batch, heads * 3 * c, length)
    expected = torch.empty(batch, heads * c, length)
    for b in range(batch):
        for h in range(heads):
            base = h * 3 * c
            q, k, v = qkv[b, base : base + c], qkv[b, base + c : base + 2 * c], qkv[b, base + 2 * c : base + 3 * c]
            weights = torch.softmax(q.T @ k / math.sqrt(c), dim=-1)  # (query position, key position)
            expected[b, h * c : (h + 1) * c] = v @ weights.T
    out = legacy_qkv_attention(qkv, heads)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)

    # The [all q | all k | all v] reading of the same tensor is a different function: the check above
    # distinguishes the two layouts.
    q_all, k_all, v_all = qkv.chunk(3, dim=1)
    regrouped = torch.cat(
        [torch.cat([q_all[:, h * c : (h + 1) * c], k_all[:, h * c : (h + 1) * c], v_all[:, h * c : (h + 1) * c]], 1)
         for h in range(heads)],
        dim=1,
    )  # fmt: skip
    assert not torch.allclose(legacy_qkv_attention(regrouped, heads), expected, atol=1e-3)


def test_timestep_embedding_is_cos_then_sin_of_geometric_frequencies() -> None:
    t = torch.tensor([0.0, 7.0, 123.5])
    emb = timestep_embedding(t, 32)
    freqs = torch.tensor([10000.0 ** (-i / 16) for i in range(16)], dtype=torch.float64)
    args = t.double()[:, None] * freqs[None]
    torch.testing.assert_close(emb.double(), torch.cat([args.cos(), args.sin()], dim=1), rtol=0, atol=1e-5)


@pytest.mark.parametrize("resample", ["down", "up"])
def test_resblock_resamples_between_norm_and_conv(resample: str) -> None:
    torch.manual_seed(0)
    block = ResBlock(32, 16, 64, use_scale_shift_norm=True, resample=resample)
    for p in block.parameters():
        torch.nn.init.normal_(p, std=0.2)
    x, emb = torch.randn(2, 32, 8, 8), torch.randn(2, 16)

    def resize(z: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(z, 2) if resample == "down" else F.interpolate(z, scale_factor=2, mode="nearest")

    sd = {k: v.detach() for k, v in block.state_dict().items()}
    h = F.silu(F.group_norm(x, 32, sd["in_layers.0.weight"], sd["in_layers.0.bias"]))
    h = F.conv2d(resize(h), sd["in_layers.2.weight"], sd["in_layers.2.bias"], padding=1)
    scale_shift = F.linear(F.silu(emb), sd["emb_layers.1.weight"], sd["emb_layers.1.bias"])
    scale, shift = scale_shift[:, :64, None, None], scale_shift[:, 64:, None, None]
    h = F.group_norm(h, 32, sd["out_layers.0.weight"], sd["out_layers.0.bias"]) * (1 + scale) + shift
    h = F.conv2d(F.silu(h), sd["out_layers.3.weight"], sd["out_layers.3.bias"], padding=1)
    expected = F.conv2d(resize(x), sd["skip_connection.weight"], sd["skip_connection.bias"]) + h

    with torch.no_grad():
        torch.testing.assert_close(block(x, emb), expected, rtol=1e-4, atol=1e-5)


def test_adm_forward_in_bfloat16_returns_input_dtype() -> None:
    model = ADMUNet(TINY)
    model.load_state_dict(_random_state_dict(TINY))
    x = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        reference = model(x, torch.tensor([250]))
        low = model.to(torch.bfloat16)(x, torch.tensor([250]))
    assert low.dtype == torch.float32
    assert (low - reference).abs().max() < 0.1 * reference.abs().max()


def test_adm_forward_is_differentiable_in_x() -> None:
    # Posterior-sampling solvers backpropagate through the network to the noisy image.
    model = ADMUNet(TINY)
    model.load_state_dict(_random_state_dict(TINY))
    model.requires_grad_(False)
    x = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(4), requires_grad=True)
    model(x, 300.0).square().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_adm_forward_rejects_bad_shapes() -> None:
    model = ADMUNet(TINY)
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        model(torch.zeros(1, 1, 32, 32), torch.tensor([0]))
    with pytest.raises(ValueError, match="divisible by 2"):
        model(torch.zeros(1, 3, 31, 32), torch.tensor([0]))
    with pytest.raises(ValueError, match=r"t of shape \(2,\)"):
        model(torch.zeros(2, 3, 32, 32), torch.tensor([0, 1, 2]))


def test_adm_config_rejects_unreachable_attention_resolution() -> None:
    with pytest.raises(ValueError, match="attention resolution 8 is never reached"):
        ADMConfig(image_size=32, model_channels=32, num_res_blocks=1, attention_resolutions=(8,), channel_mult=(1, 2))


# ----- attention implementations, random networks, gradient checkpointing --------------------------------
@pytest.mark.parametrize(("heads", "channels", "length"), [(1, 64, 64), (4, 64, 256), (2, 32, 1024), (3, 8, 7)])
def test_sdpa_attention_matches_adm_legacy_einsum(heads: int, channels: int, length: int) -> None:
    generator = torch.Generator().manual_seed(heads * 1000 + length)
    # Logits of order 10 put the softmax far from uniform, where a wrong scale or layout would show.
    qkv = 2.0 * torch.randn(2, 3 * heads * channels, length, generator=generator)
    fused = legacy_qkv_attention(qkv, heads)
    reference = legacy_qkv_attention_reference(qkv, heads)
    assert fused.shape == reference.shape == (2, heads * channels, length)
    # 2e-5: 4-D inputs select torch's blockwise (flash) CPU kernel, whose float32 sums differ from the
    # einsum's by ~1e-5 over 1024 positions; each is as close to a float64 evaluation as the other.
    assert (fused - reference).abs().max() < 2e-5
    # The reference is ADM's formula, not a copy of the fused call: q·k scaled by 1/C instead of 1/sqrt(C)
    # gives different attention.
    q, k, v = qkv.reshape(2 * heads, 3 * channels, length).split(channels, dim=1)
    wrong = torch.einsum("bts,bcs->bct", torch.softmax(torch.einsum("bct,bcs->bts", q, k) / channels, -1), v)
    assert (wrong.reshape(2, -1, length) - reference).abs().max() > 1e-3
    with pytest.raises(ValueError, match="available: sdpa, legacy"):
        legacy_qkv_attention(qkv, heads, "flash")


def test_sdpa_gets_4d_inputs_with_heads_on_dim_1(monkeypatch: pytest.MonkeyPatch) -> None:
    # CUDA's flash / memory-efficient kernels need (B, H, T, D) with a unit last stride; 3-D inputs would
    # silently fall back to the math kernel, which a CPU run cannot notice, hence this shape check.
    real = F.scaled_dot_product_attention
    seen: list[list[tuple[int, ...]]] = []

    def recorder(query, key, value, *args, **kwargs):
        for tensor in (query, key, value):
            assert tensor.dim() == 4 and tensor.stride(-1) == 1
        seen.append([tuple(query.shape), tuple(key.shape), tuple(value.shape)])
        return real(query, key, value, *args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", recorder)
    qkv = torch.randn(2, 3 * 4 * 16, 25, generator=torch.Generator().manual_seed(3))
    fused = legacy_qkv_attention(qkv, 4)
    assert seen == [[(2, 4, 25, 16)] * 3]  # (batch, heads, positions, head channels)
    assert (fused - legacy_qkv_attention_reference(qkv, 4)).abs().max() < 1e-5
    # Every attention block of a whole network goes through the same 4-D call.
    seen.clear()
    with torch.no_grad():
        random_adm(TINY, seed=1)(torch.randn(1, 3, 32, 32), torch.tensor([5]))
    assert seen and all(shape[0][1] == 4 and shape[0][2] == 16 * 16 for shape in seen)


def test_whole_network_gives_the_same_output_with_either_attention() -> None:
    model = random_adm(TINY, seed=1)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([20, 700])
    with torch.no_grad():
        fused = model(x, t)
        model.set_attention("legacy")
        assert all(m.attention == "legacy" for m in model.modules() if isinstance(m, AttentionBlock))
        reference = model(x, t)
    assert fused.abs().mean() > 0.05  # random weights everywhere: the output is not ADM's initial zero
    assert (fused - reference).abs().max() < 1e-5
    with pytest.raises(ValueError, match="unknown attention"):
        model.set_attention("einsum")


def test_random_adm_keeps_the_checkpoint_layout_and_is_seeded() -> None:
    model = random_adm(TINY, seed=3)
    assert _shapes(model) == _tiny_expected_shapes()
    assert all(p.abs().sum() > 0 for p in model.parameters() if p.ndim > 1)  # no zero-initialised layer left
    state = torch.get_rng_state()
    again = random_adm(TINY, seed=3)
    assert torch.equal(torch.get_rng_state(), state)  # the global random stream is untouched
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values(), strict=True))
    other = random_adm(TINY, seed=4)
    assert not torch.equal(model.out[2].weight, other.out[2].weight)


def test_tiny_256_reaches_every_attention_resolution_of_the_imagenet_network() -> None:
    real = PRESETS["imagenet256-uncond"]
    assert (TINY_256.image_size, len(TINY_256.channel_mult)) == (real.image_size, len(real.channel_mult))
    assert TINY_256.attention_levels == real.attention_levels and TINY_256.learn_sigma == real.learn_sigma
    with torch.device("meta"):
        model = ADMUNet(TINY_256)
    assert sum(p.numel() for p in model.parameters()) < 3e6


def _gradients(model: ADMUNet, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, ...]:
    x = x.clone().requires_grad_(True)
    weights = torch.linspace(-1, 1, 6 * 32 * 32).reshape(1, 6, 32, 32)
    (model(x, t) * weights).sum().backward()
    grads = (x.grad, *(p.grad for p in model.parameters()))
    model.zero_grad(set_to_none=True)
    return grads


def test_gradient_checkpointing_gives_the_same_gradients_and_recomputes_blocks() -> None:
    model = random_adm(TINY, seed=2)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    t = torch.tensor([100, 900])
    calls = [0]
    model.middle_block.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    plain = _gradients(model, x, t)
    assert calls[0] == 1
    model.gradient_checkpointing = True
    checkpointed = _gradients(model, x, t)
    assert calls[0] == 3  # the middle block ran again in backward: its activations were not kept
    for a, b in zip(plain, checkpointed, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    with torch.no_grad():  # nothing to recompute without a backward pass
        model(x, t)
    assert calls[0] == 4
