"""The operator contract: capabilities, the implicit SVD, measurement noise and per-image randomness."""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor


class OperatorError(ValueError):
    """Bad input to an operator: the message names the problem and the fix."""


class Cap(str, enum.Enum):
    """What an operator can do; solvers declare the subset they require."""

    FORWARD = "forward"
    ADJOINT = "adjoint"  # A^T
    PINV = "pinv"  # A^+
    SVD = "svd"  # U, singular values, V^T as implicit operators
    DIFFERENTIABLE = "differentiable"  # autograd through A gives a useful gradient


def seeded_generator(seed: int, image_id: str, stream: str, device: str | torch.device = "cpu") -> torch.Generator:
    """A generator owned by one image and one purpose, so its draws never depend on batching.

    The seed is a hash of (seed, image_id, stream): distinct streams (mask, noise, sampler) are independent.
    """
    digest = hashlib.sha256(f"{int(seed)}/{image_id}/{stream}".encode()).digest()
    generator = torch.Generator(device=device)
    generator.manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))
    return generator


def image_generators(
    seed: int, image_ids: Sequence[str], stream: str, device: str | torch.device = "cpu"
) -> list[torch.Generator]:
    """One `seeded_generator` per image of a batch."""
    return [seeded_generator(seed, str(i), stream, device) for i in image_ids]


def randn_per_image(
    shape: Sequence[int], generators: Sequence[torch.Generator], *, dtype: torch.dtype, device: torch.device
) -> Tensor:
    """A (B, *shape) standard normal tensor whose row b is drawn from generators[b] alone."""
    rows = [torch.randn(tuple(shape), generator=g, device=g.device, dtype=dtype) for g in generators]
    return torch.stack(rows).to(device)


def add_noise(y: Tensor, sigma: float, generators: Sequence[torch.Generator]) -> Tensor:
    """y + n with n ~ N(0, (2 sigma)^2 I): the project's one measurement-noise convention.

    sigma is a standard deviation on the [0, 1] pixel scale (the DDRM / DDNM / RED-diff / DDC convention).
    Images live on [-1, 1], twice as wide, so the noise added there has std 2 sigma. DPS and DAPS add std
    sigma directly on [-1, 1]: their "sigma = 0.05" equals our sigma = 0.025.
    Row b of the noise comes from generators[b] only, so an image's noise does not depend on its batch.
    """
    sigma = float(sigma)
    if not sigma >= 0.0:
        raise OperatorError(f"noise level sigma must be >= 0 (on the [0, 1] pixel scale), got {sigma}")
    if len(generators) != y.shape[0]:
        raise OperatorError(
            f"need one generator per image: got {len(generators)} generators for a batch of {y.shape[0]}"
        )
    if sigma == 0.0:
        return y
    return y + noise_std(sigma) * randn_per_image(y.shape[1:], generators, dtype=y.dtype, device=y.device)


def noise_std(sigma: Any) -> Any:
    """The noise std on the [-1, 1] image scale of noise level σ on the [0, 1] pixel scale: 2σ.

    Takes a float or a tensor of σ values; every 2σ conversion of the project goes through here."""
    return 2.0 * sigma


def check_shape(shape: Sequence[int]) -> tuple[int, int, int]:
    """Validate an image shape (C, H, W) with C in {1, 3}."""
    try:
        c, h, w = (int(s) for s in shape)
    except (TypeError, ValueError):
        raise OperatorError(f"shape must be (C, H, W), got {shape!r}") from None
    if c not in (1, 3) or h < 1 or w < 1:
        raise OperatorError(f"shape must be (C, H, W) with C in {{1, 3}} and H, W >= 1, got {(c, h, w)}")
    return c, h, w


class SVD:
    """An implicit singular value decomposition A = U diag(s) V^T, never a dense matrix.

    With N = C*H*W input entries and M measurement coefficients (M <= N):
      vt(x): (B, C, H, W) -> (B, N)   coefficients in the V basis; the first M pair with `singulars`
      v(z):  (B, N) -> (B, C, H, W)   inverse of vt (V is orthogonal)
      ut(y): measurement -> (B, M)
      u(z):  (B, M) -> measurement    ut(u(z)) = z; u(ut(y)) = y for y in the range of U
      singulars: (M,) or (B, M), >= 0 (exact zeros where the operator discards information)
    so that A x = u(singulars * vt(x)[:, :M]).
    """

    singulars: Tensor

    def vt(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def v(self, z: Tensor) -> Tensor:
        raise NotImplementedError

    def ut(self, y: Tensor) -> Tensor:
        raise NotImplementedError

    def u(self, z: Tensor) -> Tensor:
        raise NotImplementedError

    def singulars_like(self, z: Tensor) -> Tensor:
        """The singular values in z's dtype and device, broadcastable against (B, M)."""
        return self.singulars.to(dtype=z.dtype, device=z.device)

    def discarded(self, cutoff: float) -> Tensor:
        """True where a singular value counts as zero under an absolute `cutoff`, shaped like `singulars`.

        Plain rule: s < cutoff. A separable operator overrides it to apply the cutoff to its 1-D factors, which is
        what the official DDRM and DDNM operators do (their `ZERO = 3e-2`)."""
        return self.singulars < cutoff


class Operator:
    """A forward operator on images (B, C, H, W) in [-1, 1].

    Subclasses set `task` and `capabilities`, implement `_forward` and whichever of `_adjoint`, `_pinv`,
    `_svd` their capabilities promise, and `measurement_shape`.
    """

    task: ClassVar[str]
    capabilities: ClassVar[frozenset[Cap]]
    linear: ClassVar[bool] = True
    #: The side, in pixels, of the blocks the measurement is made of (an SR factor's pixel blocks, JPEG's 8x8
    #: DCT blocks), aligned with the image's top-left corner; None where it has none. The blockiness metric
    #: reads it. Not a parameter: it follows from the others, so it is in neither `params()` nor `spec()`
    #: (unit keys hash those, and stored results keep their keys).
    block_size: int | None = None

    def __init__(self, shape: Sequence[int]):
        self.input_shape: tuple[int, int, int] = check_shape(shape)

    # ----- what subclasses provide -------------------------------------------------------------
    @property
    def measurement_shape(self) -> tuple[int, ...]:
        raise NotImplementedError

    def params(self) -> dict[str, Any]:
        """The parameters that, with the task and shape, define this operator."""
        return {}

    def _forward(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def _adjoint(self, y: Tensor) -> Tensor:
        raise NotImplementedError

    def _pinv(self, y: Tensor) -> Tensor:
        raise NotImplementedError

    def _svd(self) -> SVD:
        raise NotImplementedError

    # ----- the public interface ------------------------------------------------------------------
    def forward(self, x: Tensor) -> Tensor:
        """A(x): x (B, C, H, W) in [-1, 1] -> (B, *measurement_shape)."""
        self._check(x, self.input_shape, "input image")
        return self._forward(x)

    __call__ = forward

    def adjoint(self, y: Tensor) -> Tensor:
        """A^T y: (B, *measurement_shape) -> (B, C, H, W)."""
        self._require(Cap.ADJOINT)
        self._check(y, self.measurement_shape, "measurement")
        return self._adjoint(y)

    def pinv(self, y: Tensor) -> Tensor:
        """A^+ y: (B, *measurement_shape) -> (B, C, H, W); for jpeg10 the decoded image itself."""
        self._require(Cap.PINV)
        self._check(y, self.measurement_shape, "measurement")
        return self._pinv(y)

    @property
    def svd(self) -> SVD:
        self._require(Cap.SVD)
        return self._svd()

    def measure(self, x: Tensor, sigma: float, generators: Sequence[torch.Generator], noise: Any = None) -> Tensor:
        """y = the noisy A(x), kept inside the measurement space: x (B, C, H, W) in [-1, 1] -> (B, *measurement_shape).

        `noise`: a `operators.noise.NoiseModel` or its name; None is Gaussian, n ~ N(0, (2 sigma)^2 I) (see
        `add_noise`), bit for bit as before noise models existed. sigma is the level on the [0, 1] pixel scale."""
        from .noise import noise_model

        with torch.no_grad():
            return self.restrict(noise_model(noise).sample(self.forward(x), sigma, generators))

    def restrict(self, y: Tensor) -> Tensor:
        """A noisy A(x) brought into the measurement space, as `measure` does (inpainting zeroes the pixels it
        does not observe). Anything that builds its own measurements (DDC's training) goes through this, so its
        y looks exactly like the runner's."""
        self._check(y, self.measurement_shape, "measurement")
        return self._restrict(y)

    def _restrict(self, y: Tensor) -> Tensor:
        """Project onto the measurement space (inpainting zeroes the unobserved pixels)."""
        return y

    def for_images(self, image_ids: Sequence[str], seed: int) -> Operator:
        """The operator for a batch of images: operators with per-image randomness (inpainting masks) bind it here."""
        return self

    def supports(self, *caps: Cap) -> bool:
        return all(c in self.capabilities for c in caps)

    def spec(self) -> dict[str, Any]:
        """A JSON-able description of everything that defines this operator (used in result keys)."""
        return {"task": self.task, "shape": list(self.input_shape), **self.params()}

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.params().items())
        return f"{type(self).__name__}(task={self.task!r}, shape={self.input_shape}{', ' if params else ''}{params})"

    # ----- checks --------------------------------------------------------------------------------
    def _require(self, cap: Cap) -> None:
        if cap not in self.capabilities:
            have = ", ".join(sorted(c.value for c in self.capabilities))
            raise OperatorError(f"operator '{self.task}' has no {cap.value} (it declares: {have})")

    def _check(self, t: Tensor, shape: tuple[int, ...], what: str) -> None:
        if not isinstance(t, Tensor):
            raise OperatorError(f"{what} for '{self.task}' must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != len(shape) + 1 or tuple(t.shape[1:]) != tuple(shape):
            raise OperatorError(
                f"{what} for '{self.task}' must have shape (B, {', '.join(map(str, shape))}), got {tuple(t.shape)}"
            )
        if not t.is_floating_point():
            raise OperatorError(f"{what} for '{self.task}' must be a floating-point tensor, got {t.dtype}")
