"""An analytic Gaussian prior whose denoiser and inverse-problem posteriors are known exactly.

x0 ~ N(μ, Σ) on small images, with Σ diagonal in an orthonormal basis: an opponent-colour transform across
channels followed by the orthonormal 2-D DCT-II of each colour component. Its eigenvalues follow a
natural-image-like power spectrum, λ ∝ 1 / (1 + u² + v²) in DCT frequency indices (power ∝ 1/f², the
classic natural-image statistic). Because the basis diagonalises Σ, the exact MMSE denoiser is cheap:

    E[ε | x_t] = sqrt(1 - ᾱ) (ᾱ Σ + (1 - ᾱ) I)^-1 (x_t - sqrt(ᾱ) μ),

one division per basis coefficient. For a linear operator A (dense at these sizes) the posterior of
x0 given y = A x0 + n is also Gaussian and exact: `GaussianPrior.posterior`. Solvers are tested against it.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from operators.base import noise_std

from .base import Prior
from .schedule import DDPM_BETA_END, DDPM_BETA_START, DDPM_NUM_TIMESTEPS, PriorError, linear_betas

__all__ = ["GaussianPosterior", "GaussianPrior", "dct_matrix", "opponent_colour_matrix"]

# torchvision's ImageNet normalisation constants (mean (0.485, 0.456, 0.406), std ≈ 0.226 on [0, 1]), moved
# to the [-1, 1] scale: per-channel means and a per-pixel variance typical of photographs.
_RGB_MEAN_01 = (0.485, 0.456, 0.406)
_PIXEL_VARIANCE = (2 * 0.226) ** 2
# Share of the colour variance carried by luminance and the two opponent chroma components; photos are
# strongly correlated across channels, so luminance dominates.
_COMPONENT_SHARES = (0.90, 0.06, 0.04)

# The "lowvar" variant: a prior that is far from the default in every respect the tests rely on. Its mean varies
# across the image (a diagonal ramp and a bump, different per channel), its spectrum falls faster,
# λ ∝ (1 + u² + v²)^-1.5, and its pixel std is about 0.1, so that its samples stay inside [-1, 1], where solvers
# that clamp their output (unconditional sampling) can be compared with the exact law they should sample.
_LOWVAR_PIXEL_VARIANCE = 0.1**2
_LOWVAR_SPECTRUM_POWER = 1.5
VARIANTS = ("photo", "lowvar")

# Dense posteriors build a D x D matrix; beyond this many pixels that stops being cheap.
_MAX_DENSE_PIXELS = 4096


def dct_matrix(n: int, dtype: torch.dtype = torch.float64) -> Tensor:
    """The orthonormal DCT-II matrix (n, n): row k is α_k cos(π (2j + 1) k / (2n)), so `dct_matrix(n) @ x` is
    scipy.fft.dct(x, norm='ortho')."""
    j = torch.arange(n, dtype=torch.float64)
    k = j[:, None]
    matrix = torch.cos(math.pi * (2 * j[None] + 1) * k / (2 * n)) * math.sqrt(2.0 / n)
    matrix[0] /= math.sqrt(2.0)
    return matrix.to(dtype)


def opponent_colour_matrix(channels: int) -> Tensor:
    """Orthonormal (C, C) colour transform: rows luminance (1,1,1)/√3, red-blue (1,0,-1)/√2, green-magenta
    (1,-2,1)/√6 for C = 3; the identity for grey images."""
    if channels == 1:
        return torch.ones(1, 1, dtype=torch.float64)
    if channels != 3:
        raise PriorError(f"the Gaussian prior supports 1 or 3 channels, got {channels}")
    rows = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, -1.0], [1.0, -2.0, 1.0]], dtype=torch.float64)
    return rows / rows.norm(dim=1, keepdim=True)


def _solve_psd(gram: Tensor, rhs: Tensor) -> Tensor:
    """K⁺ rhs for a symmetric positive semi-definite K: Cholesky when K is definite, else an eigen-pseudo-inverse."""
    factor, info = torch.linalg.cholesky_ex(gram)
    if int(info) == 0:
        return torch.cholesky_solve(rhs, factor)
    values, vectors = torch.linalg.eigh(gram)
    keep = values > values.max() * gram.shape[0] * torch.finfo(gram.dtype).eps
    inverse = torch.where(keep, 1.0 / torch.where(keep, values, 1.0), 0.0)
    return vectors @ (inverse[:, None] * (vectors.T @ rhs))


def _to_basis(x: Tensor, colour: Tensor, dct_h: Tensor, dct_w: Tensor) -> Tensor:
    like = {"dtype": x.dtype, "device": x.device}
    return torch.einsum("kc,uh,bchw,vw->bkuv", colour.to(**like), dct_h.to(**like), x, dct_w.to(**like))


def _from_basis(z: Tensor, colour: Tensor, dct_h: Tensor, dct_w: Tensor) -> Tensor:
    like = {"dtype": z.dtype, "device": z.device}
    return torch.einsum("kc,uh,bkuv,vw->bchw", colour.to(**like), dct_h.to(**like), z, dct_w.to(**like))


class GaussianDenoiser(nn.Module):
    """The exact ε-predictor of the Gaussian prior: forward(x_t (B, C, H, W), t (B,) int) -> ε (B, C, H, W)."""

    def __init__(self, mean: Tensor, eigenvalues: Tensor, colour: Tensor, alphas_cumprod: Tensor) -> None:
        super().__init__()
        _, height, width = mean.shape
        self.register_buffer("mean", mean.float())
        self.register_buffer("eigenvalues", eigenvalues.float())
        self.register_buffer("colour", colour.float())
        self.register_buffer("dct_h", dct_matrix(height, torch.float32))
        self.register_buffer("dct_w", dct_matrix(width, torch.float32))
        # Kept out of the buffers so that casting the module to half precision leaves the schedule exact.
        self.alphas_cumprod = alphas_cumprod.double().cpu()

    def forward(self, x_t: Tensor, t: Tensor) -> Tensor:
        ab = self.alphas_cumprod[t.cpu()].reshape(-1, 1, 1, 1)
        sqrt_ab = ab.sqrt().to(device=x_t.device, dtype=x_t.dtype)
        sqrt_1mab = (1.0 - ab).sqrt().to(device=x_t.device, dtype=x_t.dtype)
        ab = ab.to(device=x_t.device, dtype=x_t.dtype)
        z = _to_basis(x_t - sqrt_ab * self.mean, self.colour, self.dct_h, self.dct_w)
        eps_z = sqrt_1mab * z / (ab * self.eigenvalues + (1.0 - ab))
        return _from_basis(eps_z, self.colour, self.dct_h, self.dct_w)


class GaussianPosterior:
    """The exact posterior N(mean, covariance) of x0 given y = A x0 + n under the Gaussian prior.

    mean: (B, C, H, W), one posterior mean per measurement, in the measurement's dtype.
    covariance: (D, D) float64, D = C*H*W pixels in (C, H, W) order; the same for every y (linear-Gaussian).
    """

    def __init__(self, mean: Tensor, covariance: Tensor) -> None:
        self.mean = mean
        self.covariance = covariance
        self._factor: Tensor | None = None

    def std(self) -> Tensor:
        """Marginal posterior standard deviation of each pixel, (C, H, W) float64."""
        return self.covariance.diagonal().clamp_min(0.0).sqrt().reshape(self.mean.shape[1:])

    def sample(self, generator: torch.Generator | None = None) -> Tensor:
        """One exact posterior draw per measurement, (B, C, H, W) in the mean's dtype and device."""
        if self._factor is None:
            # eigh rather than Cholesky: noise-free posteriors are singular.
            values, vectors = torch.linalg.eigh(self.covariance)
            self._factor = vectors * values.clamp_min(0.0).sqrt()
        z = torch.randn(self.mean.shape[0], self.covariance.shape[0], generator=generator, dtype=torch.float64)
        draw = z @ self._factor.T
        return self.mean + draw.reshape(self.mean.shape).to(dtype=self.mean.dtype, device=self.mean.device)


class GaussianPrior(Prior):
    """N(μ, Σ) on (C, size, size) images, Σ diagonal in the opponent-colour x 2-D DCT basis.

    μ is constant per channel (ImageNet's channel means on [-1, 1]); the eigenvalues of colour component k
    at DCT frequency (u, v) are proportional to 1 / (1 + u² + v²), scaled so that component k has a mean
    per-pixel variance of share_k * C * 0.204 (each RGB pixel then has variance ≈ 0.2, std ≈ 0.45, as in
    photos). The network is the exact denoiser (no weights); the schedule is DDPM's linear one by default.
    Samples are Gaussian and so are not confined to [-1, 1].

    `variant="lowvar"` is a second, deliberately different prior (see `_LOWVAR_PIXEL_VARIANCE`): a mean that
    varies over the image, a steeper power law and pixel std ≈ 0.1.
    """

    def __init__(
        self,
        size: int = 16,
        channels: int = 3,
        *,
        num_timesteps: int = DDPM_NUM_TIMESTEPS,
        beta_start: float = DDPM_BETA_START,
        beta_end: float = DDPM_BETA_END,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | str = torch.float32,
        variant: str = "photo",
    ) -> None:
        size, channels = int(size), int(channels)
        if size < 2:
            raise PriorError(f"Gaussian prior image size must be at least 2, got {size}")
        if variant not in VARIANTS:
            raise PriorError(f"unknown Gaussian prior variant {variant!r} (available: {', '.join(VARIANTS)})")
        colour = opponent_colour_matrix(channels)
        if channels == 3:
            mean_values = [2.0 * m - 1.0 for m in _RGB_MEAN_01]
            variances = [share * channels * _PIXEL_VARIANCE for share in _COMPONENT_SHARES]
        else:
            mean_values = [2.0 * sum(_RGB_MEAN_01) / 3 - 1.0]
            variances = [_PIXEL_VARIANCE]
        freq = torch.arange(size, dtype=torch.float64)
        power = _LOWVAR_SPECTRUM_POWER if variant == "lowvar" else 1.0
        spectrum = (1.0 + freq[:, None] ** 2 + freq[None, :] ** 2) ** -power
        spectrum = spectrum / spectrum.mean()  # mean 1, so component k's mean pixel variance is variances[k]
        self._mean64 = (
            torch.tensor(mean_values, dtype=torch.float64)[:, None, None].expand(channels, size, size).clone()
        )
        if variant == "lowvar":
            variances = [share * channels * _LOWVAR_PIXEL_VARIANCE for share in _COMPONENT_SHARES[:channels]]
            if channels == 1:
                variances = [_LOWVAR_PIXEL_VARIANCE]
            position = (torch.arange(size, dtype=torch.float64) + 0.5) / size  # pixel centres in (0, 1)
            ramp = position[:, None] - position[None, :]  # -1 .. 1 along the anti-diagonal
            bump = torch.cos(math.pi * position[:, None]) * torch.cos(math.pi * position[None, :])
            per_channel = [(0.4, 0.2), (-0.3, 0.25), (0.1, -0.3)][:channels]
            self._mean64 = self._mean64 * 0.5 + torch.stack([a * ramp + b * bump for a, b in per_channel])
        self._eigenvalues64 = torch.tensor(variances, dtype=torch.float64)[:, None, None] * spectrum
        self._colour64 = colour
        self._dct64 = dct_matrix(size)
        betas = linear_betas(num_timesteps, beta_start, beta_end)
        config: dict[str, Any] = {
            "image_shape": [channels, size, size],
            "mean": [round(v, 6) for v in mean_values],
            "component_variances": [round(v, 6) for v in variances],
            "spectrum": f"1/(1+u^2+v^2){'' if power == 1.0 else f'^{power}'}, opponent colour x orthonormal DCT-II",
            "schedule": {
                "beta_schedule": "linear",
                "beta_start": beta_start,
                "beta_end": beta_end,
                "num_train_timesteps": num_timesteps,
            },
        }
        if variant != "photo":  # the default's spec (and so its result keys) stays as it was
            config["variant"] = variant
            config["mean"] = "per-channel ramp and bump: 0.5·channel mean + a·(h − w) + b·cos(πh)cos(πw)"
        network = GaussianDenoiser(self._mean64, self._eigenvalues64, colour, torch.cumprod(1.0 - betas, 0))
        super().__init__(
            network, betas, (channels, size, size), kind="gaussian", config=config, device=device, dtype=dtype
        )

    # ----- the distribution -----------------------------------------------------------------------
    @property
    def mean(self) -> Tensor:
        """μ, (C, H, W) float64."""
        return self._mean64

    @property
    def eigenvalues(self) -> Tensor:
        """Σ's eigenvalues, (C, H, W) float64, indexed like `to_basis` coefficients."""
        return self._eigenvalues64

    def to_basis(self, x: Tensor) -> Tensor:
        """Coefficients in Σ's eigenbasis: (B, C, H, W) -> (B, C, H, W), same dtype/device; orthonormal."""
        return _to_basis(x, self._colour64, self._dct64, self._dct64)

    def from_basis(self, z: Tensor) -> Tensor:
        """Inverse of `to_basis` (its transpose)."""
        return _from_basis(z, self._colour64, self._dct64, self._dct64)

    def covariance(self) -> Tensor:
        """Σ as a dense (D, D) float64 matrix, D = C*H*W in (C, H, W) order."""
        basis = self._basis_matrix()
        return (basis.T * self._eigenvalues64.reshape(-1)) @ basis

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """n exact draws from N(μ, Σ), (n, C, H, W) float32 on the prior's device."""
        z = torch.randn(int(n), *self.image_shape, generator=generator, dtype=torch.float64)
        x = self._mean64 + self.from_basis(self._eigenvalues64.sqrt() * z)
        return x.to(device=self.device, dtype=torch.float32)

    # ----- exact inverse-problem posteriors -------------------------------------------------------
    def operator_matrix(self, op: Any) -> Tensor:
        """The dense (M, D) float64 matrix of a linear operator: column j is op.forward(e_j).

        `op` needs `forward((B, C, H, W)) -> (B, *measurement_shape)`. Operators with per-image randomness
        (inpainting masks) must be bound to one image first with `op.for_images([image_id], seed)`; such an
        operator refuses a batch of basis images, which then go through one at a time.
        """
        if getattr(op, "linear", True) is False:
            raise PriorError(f"operator {op!r} is not linear; the exact Gaussian posterior needs a linear operator")
        shape = getattr(op, "input_shape", self.image_shape)
        if tuple(shape) != self.image_shape:
            raise PriorError(
                f"operator input shape {tuple(shape)} differs from the prior's image shape {self.image_shape}"
            )
        pixels = math.prod(self.image_shape)
        if pixels > _MAX_DENSE_PIXELS:
            raise PriorError(
                f"dense posteriors are limited to {_MAX_DENSE_PIXELS} pixels, the prior has {pixels}; "
                "use a smaller Gaussian prior, e.g. 'gaussian:16'"
            )
        with torch.no_grad():
            basis_images = torch.eye(pixels, dtype=torch.float64).reshape(pixels, *self.image_shape)
            try:
                columns = [op.forward(chunk).double().flatten(1) for chunk in basis_images.split(256)]
            except Exception:  # noqa: BLE001 - a batch-bound operator; its own error surfaces below if any
                columns = [op.forward(e[None]).double().flatten(1) for e in basis_images]
            matrix = torch.cat(columns).T.contiguous()
            # An affine or non-linear forward would give a wrong matrix without this check.
            probe = torch.randn(1, *self.image_shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
            direct = op.forward(probe).double().reshape(-1)
        scale = max(1.0, float(direct.abs().max()))
        if not torch.allclose(direct, matrix @ probe.reshape(-1), rtol=1e-6, atol=1e-8 * scale):
            raise PriorError(
                f"operator {op!r} is not a fixed linear map (A(x) differs from the matrix built from basis images); "
                "the exact posterior needs a linear operator without offset"
            )
        return matrix

    def posterior(self, op: Any, y: Tensor, sigma_y: float) -> GaussianPosterior:
        """Exact p(x0 | y) for y = A x0 + n, n ~ N(0, (2 sigma_y)² I).

        op: a linear operator (see `operator_matrix`); y: (B, *measurement_shape); sigma_y: noise std on the
        [0, 1] pixel scale (the project's convention), hence 2 sigma_y on the [-1, 1] image scale.
        mean = μ + Σ Aᵀ K⁺ (y - A μ), covariance = Σ - Σ Aᵀ K⁺ A Σ, with K = A Σ Aᵀ + (2 sigma_y)² I
        (a pseudo-inverse where K is singular: noise-free measurements of linearly dependent entries).
        """
        sigma_y = float(sigma_y)
        if not sigma_y >= 0.0:
            raise PriorError(f"sigma_y must be >= 0 (noise std on the [0, 1] pixel scale), got {sigma_y}")
        matrix = self.operator_matrix(op)
        measurement_shape = tuple(getattr(op, "measurement_shape", ()))
        if not isinstance(y, Tensor) or y.ndim < 1 or (measurement_shape and tuple(y.shape[1:]) != measurement_shape):
            raise PriorError(
                f"y must have shape (B, {', '.join(map(str, measurement_shape))}), got {tuple(getattr(y, 'shape', ()))}"
            )
        y64 = y.detach().double().cpu().reshape(y.shape[0], -1)
        if y64.shape[1] != matrix.shape[0]:
            raise PriorError(f"y has {y64.shape[1]} entries per image, the operator gives {matrix.shape[0]}")
        # Rows of zeros (unobserved entries, e.g. inpainting's masked pixels) carry no information about x0;
        # dropping them keeps K definite for noise-free measurements.
        observed = matrix.abs().amax(dim=1) > 0
        matrix, y64 = matrix[observed], y64[:, observed]
        sigma = self.covariance()
        mean = self._mean64.reshape(-1)
        cross = sigma @ matrix.T  # Σ Aᵀ, (D, M)
        gram = matrix @ cross + noise_std(sigma_y) ** 2 * torch.eye(matrix.shape[0], dtype=torch.float64)
        gain = _solve_psd(gram, cross.T).T  # Σ Aᵀ K⁺, (D, M)
        post_mean = mean + (y64 - matrix @ mean) @ gain.T
        post_cov = sigma - gain @ cross.T
        post_cov = 0.5 * (post_cov + post_cov.T)
        dtype = y.dtype if y.is_floating_point() else torch.float32
        return GaussianPosterior(post_mean.reshape(-1, *self.image_shape).to(dtype=dtype, device=y.device), post_cov)

    def _basis_matrix(self) -> Tensor:
        """The orthonormal (D, D) matrix whose rows are the eigenvectors: z = B x for flattened images."""
        pixels = math.prod(self.image_shape)
        identity = torch.eye(pixels, dtype=torch.float64).reshape(pixels, *self.image_shape)
        return self.to_basis(identity).reshape(pixels, pixels).T
