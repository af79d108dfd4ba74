"""Random motion-blur kernels from camera-shake trajectories (Boracchi & Foi 2012), as DPS draws them.

DPS (and DAPS) take their 61×61, intensity-0.5 kernels from the `motionblur` package (LeviBorodenko/motionblur,
`Kernel(size, intensity).kernelMatrix`). This module follows that package's random process, written from its
description; every draw comes from one torch generator, so a kernel is a function of the generator's seed.

With K the kernel size, I the intensity in [0, 1], ε = 0.1 and D = 2·K·√2 the diagonal of a canvas supersampled
2× (2K × 2K):

1. Path length  L = 0.75·D·(U(0, 1) + U(0, I²)).
2. Step lengths  s = Beta(1, 30)·(1 − I + ε)·D, drawn (each kept only if s < L) until their sum reaches L.
3. Angles: a maximal angle A ~ U(0, I·π) and a sign-flip probability j ~ Beta(2, 20); the first angle is
   U(−A, A); each next one has magnitude Triangular(0, I·A, A + ε) and, with probability j, the opposite sign
   of the previous angle, else its sign.
4. The path is the cumulative sum of the steps s·e^{i·angle}; it is centred on its centre of mass, rotated by
   U(0, π) and moved to the canvas centre.
5. The polyline through the path points is drawn with width w = max(1, ⌊D/150⌋) (pixels whose centre lies
   within w/2 of it), blurred by a Gaussian of std ⌊0.01·D⌋ (none if 0), averaged over 2×2 blocks back to
   K × K and normalised to sum 1.

Differences from the package, all in the rendering (5): it draws with PIL's line, resizes with Lanczos and
quantises to 8 bits; here the line is a distance test, the downsampling a 2×2 mean and the kernel stays float64
(non-negative, sums to 1 to round-off). Beta draws use exact constructions from uniforms (inverse CDF for
Beta(1, 30), a ratio of Gamma(2) and Gamma(20) sums of exponentials for Beta(2, 20)).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .base import OperatorError

EPS = 0.1  # the package's `eps`, added to the step scale and the triangular upper bound
DPS_KERNEL_SIZE = 61  # DPS configs/motion_deblur_config.yaml: kernel_size 61 at 256×256
DPS_INTENSITY = 0.5  # DPS configs/motion_deblur_config.yaml: intensity 0.5
DPS_IMAGE_SIZE = 256  # the image size DPS's kernel size belongs to


def kernel_size_for(height: int, width: int) -> int:
    """The kernel size scaled with the image: the odd integer nearest to 61·min(H, W)/256, at least 3.

    61 at 256², 31 at 128², 15 at 64², 7 at 32², 3 at 16² and below."""
    scaled = DPS_KERNEL_SIZE * min(height, width) / DPS_IMAGE_SIZE
    return max(3, 2 * math.floor((scaled - 1) / 2 + 0.5) + 1)


def _uniform(generator: torch.Generator, low: float = 0.0, high: float = 1.0) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator, dtype=torch.float64))


def _beta_1_b(generator: torch.Generator, b: int) -> float:
    """Beta(1, b) by its inverse CDF: 1 − (1 − u)^(1/b)."""
    return 1.0 - (1.0 - _uniform(generator)) ** (1.0 / b)


def _gamma_integer(generator: torch.Generator, k: int) -> float:
    """Gamma(k, 1) for integer k: a sum of k unit exponentials, −Σ log(1 − u)."""
    u = torch.rand(k, generator=generator, dtype=torch.float64)
    return float(-torch.log1p(-u).sum())


def _beta_integer(generator: torch.Generator, a: int, b: int) -> float:
    """Beta(a, b) for integer a, b: X / (X + Y) with X ~ Gamma(a), Y ~ Gamma(b)."""
    x = _gamma_integer(generator, a)
    return x / (x + _gamma_integer(generator, b))


def _triangular(generator: torch.Generator, low: float, mode: float, high: float) -> float:
    """Triangular(low, mode, high) by its inverse CDF."""
    u = _uniform(generator)
    cut = (mode - low) / (high - low)
    if u < cut:
        return low + math.sqrt(u * (high - low) * (mode - low))
    return high - math.sqrt((1.0 - u) * (high - low) * (high - mode))


def trajectory(size: int, intensity: float, generator: torch.Generator) -> Tensor:
    """Steps 1-4 of the module docstring: the path's points (P, 2) as (x = column, y = row) on the 2K canvas."""
    diagonal = 2 * size * math.sqrt(2.0)
    max_length = 0.75 * diagonal * (_uniform(generator) + _uniform(generator, 0.0, intensity**2))
    steps: list[float] = []
    while sum(steps) < max_length:
        step = _beta_1_b(generator, 30) * (1.0 - intensity + EPS) * diagonal
        if step < max_length:
            steps.append(step)
    max_angle = _uniform(generator, 0.0, intensity * math.pi)
    jitter = _beta_integer(generator, 2, 20)
    angles = [_uniform(generator, -max_angle, max_angle)]
    while len(angles) < len(steps):
        magnitude = _triangular(generator, 0.0, intensity * max_angle, max_angle + EPS)
        previous_sign = math.copysign(1.0, angles[-1]) if angles[-1] != 0 else 0.0
        flip = _uniform(generator) < jitter
        angles.append(magnitude * (-previous_sign if flip else previous_sign))
    increments = torch.polar(torch.tensor(steps, dtype=torch.float64), torch.tensor(angles, dtype=torch.float64))
    path = torch.cumsum(increments, 0)
    path = (path - path.mean()) * complex(math.cos(r := _uniform(generator, 0.0, math.pi)), math.sin(r))
    path = path + complex(size, size)  # the centre of the 2K × 2K canvas
    return torch.stack([path.real, path.imag], dim=1)


def _distance_to_polyline(points: Tensor, canvas: int) -> Tensor:
    """(canvas, canvas): the distance from each pixel centre (integer coordinates) to the polyline `points` (P, 2)."""
    coords = torch.arange(canvas, dtype=torch.float64)
    pixels = torch.stack(torch.meshgrid(coords, coords, indexing="xy"), dim=-1).reshape(-1, 1, 2)  # (x, y)
    start = points[:-1] if len(points) > 1 else points
    end = points[1:] if len(points) > 1 else points
    direction = end - start
    length2 = (direction**2).sum(-1).clamp_min(1e-300)
    along = (((pixels - start) * direction).sum(-1) / length2).clamp(0.0, 1.0)
    nearest = start + along[..., None] * direction
    return (pixels - nearest).norm(dim=-1).min(dim=1).values.reshape(canvas, canvas)


def _gaussian_blur(image: Tensor, std: int) -> Tensor:
    """Separable Gaussian blur of a (N, N) image, truncated at 4 std, zero outside the canvas."""
    radius = 4 * std
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    taps = torch.exp(-0.5 * (offsets / std) ** 2)
    taps = (taps / taps.sum()).view(1, 1, -1)
    rows = torch.nn.functional.conv1d(image[:, None, :], taps, padding=radius)[:, 0, :]
    return torch.nn.functional.conv1d(rows.T[:, None, :], taps, padding=radius)[:, 0, :].T


def motion_kernel(size: int, intensity: float, generator: torch.Generator) -> Tensor:
    """One random motion-blur kernel (size, size), float64, non-negative, summing to 1 (see the module docstring).

    size: odd, >= 3; intensity in [0, 1] (DPS: 0.5; 0 is a straight line, 1 a strongly curved path)."""
    if size < 3 or size % 2 == 0:
        raise OperatorError(f"motion-blur kernel size must be an odd integer >= 3, got {size}")
    if not 0.0 <= intensity <= 1.0:
        raise OperatorError(f"motion-blur intensity must lie in [0, 1] (DPS: 0.5), got {intensity}")
    canvas = 2 * size
    diagonal = canvas * math.sqrt(2.0)
    width = max(1, int(diagonal / 150))
    points = trajectory(size, intensity, generator)
    drawn = (_distance_to_polyline(points, canvas) <= width / 2).to(torch.float64)
    blur = int(diagonal * 0.01)
    if blur > 0:
        drawn = _gaussian_blur(drawn, blur)
    kernel = drawn.reshape(size, 2, size, 2).mean(dim=(1, 3))
    total = kernel.sum()
    if not total > 0:  # the path is centred on the canvas, so this does not happen; say so if it ever does
        raise OperatorError(f"the motion trajectory missed the {size}x{size} kernel canvas; report this seed")
    return kernel / total
