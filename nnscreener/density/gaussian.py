"""Gaussian density models of descriptor maps (paper App. C, eqs. 3-4; docs/method-notes.md 3.3).

Both models are applied per voxel to dense maps, so one call gives a whole negative-log-density map:

    nll(y, c)[b, 0, z, y, x] = 0.5 * sum_d [ (y_d - mu_d)^2 / sigma_d^2 + log sigma_d^2 + log(2 pi) ]   (nats)

with ``y``, ``c`` read at voxel (b, :, z, y, x). The marginal model learns one mean and one diagonal
log-variance; the conditional model predicts both maps from the condition map with 3x3x3 convolutions
("conditioning on locally aggregated conditions", App. C).

Both start at the data: on the first batch they see (the noised pooled training descriptors), the marginal model's
mean and variance, and the conditional model's output bias, are set to the batch's per-channel mean and variance
(:mod:`nnscreener.density.data_init`), so a short schedule refines a fit instead of travelling from N(0, I).

Numerical safety: inputs are clamped to +-``FEATURE_BOUND`` and the log-variance has a soft floor, so the NLL
stays finite for any finite input (it saturates far outside the training distribution instead of overflowing).
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from nnscreener.density.data_init import DataInitialized, channel_mean_and_variance

LOG_2PI = math.log(2.0 * math.pi)

#: Largest absolute feature value the density models look at. Descriptors and conditions are O(1) (linear heads
#: trained with VICReg / InfoNCE); values beyond this bound only occur for broken inputs, and clamping them keeps
#: the scores finite (inactive for every in-distribution input).
FEATURE_BOUND = 1e6

#: Bound on a standardised residual |y - mu| / sigma, so its square (and the sum over channels) stays finite.
_MAX_STANDARDISED_RESIDUAL = 1e15


def bound_features(x: torch.Tensor) -> torch.Tensor:
    """Clamps a feature map to +-``FEATURE_BOUND`` (NaN stays NaN, +-inf becomes +-bound)."""
    return x.clamp(-FEATURE_BOUND, FEATURE_BOUND)


def floored_log_variance(raw: torch.Tensor, min_log_var: float) -> torch.Tensor:
    """Maps an unconstrained value to a log-variance > ``min_log_var`` (smooth: min + softplus(raw - min)).

    ``raw = 0`` gives a log-variance of about 0 whenever ``min_log_var`` is well below 0.
    """
    return min_log_var + F.softplus(raw - min_log_var)


def raw_log_variance_for(log_var: torch.Tensor, min_log_var: float) -> torch.Tensor:
    """Inverse of :func:`floored_log_variance`: the raw value whose floored log-variance is ``log_var``.

    ``log_var`` is first raised to just above the floor (a variance at or below the floor cannot be represented).
    """
    excess = (log_var - min_log_var).clamp_min(1e-4)
    return min_log_var + excess + torch.log(-torch.expm1(-excess))  # softplus^-1(e) = e + log(1 - exp(-e))


def diagonal_gaussian_nll(y: torch.Tensor, mean: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """Per-voxel negative log-density of a diagonal Gaussian.

    Args:
        y: (B, D, Z, Y, X) values.
        mean: mean, broadcastable to ``y`` (e.g. (B, D, Z, Y, X) or (1, D, 1, 1, 1)).
        log_var: log-variance (natural log of sigma^2), broadcastable to ``y``.

    Returns:
        (B, 1, Z, Y, X) NLL in nats, finite whenever the inputs are finite.
    """
    per_channel = _standardised(y, mean, log_var).square() + log_var + LOG_2PI  # (B, D, Z, Y, X)
    return 0.5 * per_channel.sum(dim=1, keepdim=True)


def diagonal_gaussian_latent_energy(y: torch.Tensor, mean: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """Per-voxel 0.5 ||z||^2 of the standardised values z = (y - mean) / sigma: the NLL of
    :func:`diagonal_gaussian_nll` without its log-volume terms (log sigma^2 and log 2 pi).

    Args and shapes as :func:`diagonal_gaussian_nll`. Returns (B, 1, Z, Y, X) in nats.
    """
    return 0.5 * _standardised(y, mean, log_var).square().sum(dim=1, keepdim=True)


def _standardised(y: torch.Tensor, mean: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """(y - mean) / sigma, bounded so that its square stays finite."""
    return ((y - mean) * torch.exp(-0.5 * log_var)).clamp(-_MAX_STANDARDISED_RESIDUAL, _MAX_STANDARDISED_RESIDUAL)


class MarginalGaussian(DataInitialized):
    """q(y) = N(y; mu, diag(sigma^2)) with learnable mu and log sigma^2 (paper eq. 3).

    mu and sigma^2 start at the first batch's per-channel mean and variance (the maximum-likelihood fit of that
    batch).

    Args:
        dim: D, channels of the descriptor map.
        min_log_var: floor of log sigma^2 (config ``density.gaussian_min_log_var``).
    """

    def __init__(self, dim: int, min_log_var: float = -9.0) -> None:
        super().__init__()
        self.dim = dim
        self.min_log_var = min_log_var
        self.mean = nn.Parameter(torch.zeros(dim))
        self.raw_log_var = nn.Parameter(torch.zeros(dim))

    @torch.no_grad()
    def initialize_from(self, y: torch.Tensor) -> None:
        """Sets mu and sigma^2 to the per-channel mean and variance of a (B, D, Z, Y, X) batch."""
        mean, variance = channel_mean_and_variance(bound_features(y))
        self.mean.copy_(mean)
        self.raw_log_var.copy_(raw_log_variance_for(torch.log(variance), self.min_log_var))

    def log_variance(self) -> torch.Tensor:
        """(D,) log sigma^2 after the floor."""
        return floored_log_variance(self.raw_log_var, self.min_log_var)

    def nll(self, y: torch.Tensor, c: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Negative log-density map.

        Args:
            y: (B, D, Z, Y, X) descriptor map.
            c: ignored (a marginal model); accepted so every density has the same signature.

        Returns:
            (B, 1, Z, Y, X) NLL in nats.
        """
        self.initialize_once_from(y)
        return diagonal_gaussian_nll(bound_features(y), *self._parameter_maps())

    def latent_energy(self, y: torch.Tensor, c: Optional[torch.Tensor] = None) -> torch.Tensor:
        """0.5 ||(y - mu) / sigma||^2 per voxel: :meth:`nll` without the log-volume term. Shapes as :meth:`nll`."""
        return diagonal_gaussian_latent_energy(bound_features(y), *self._parameter_maps())

    def _parameter_maps(self) -> tuple[torch.Tensor, torch.Tensor]:
        """mu and log sigma^2, each (1, D, 1, 1, 1)."""
        shape = (1, self.dim, 1, 1, 1)
        return self.mean.view(shape), self.log_variance().view(shape)


class ConditionalGaussian(DataInitialized):
    """q(y | c) = N(y; mu(c), diag(sigma^2(c))) with mu and log sigma^2 predicted from the condition (paper eq. 4).

    The predictor is conv3^3(Dc -> H), GELU, conv3^3(H -> 2D) with replicate padding (so patch borders do not
    look different from the interior); its last layer's weights start at zero and its bias at the first batch's
per-channel mean and log-variance, i.e. the model starts as the marginal fit and learns what the condition adds.

    Args:
        dim: D, channels of the descriptor map.
        cond_dim: Dc, channels of the condition map.
        hidden: H (config ``density.gaussian_hidden``).
        min_log_var: floor of log sigma^2 (config ``density.gaussian_min_log_var``).
    """

    def __init__(self, dim: int, cond_dim: int, hidden: int = 128, min_log_var: float = -9.0) -> None:
        super().__init__()
        self.dim = dim
        self.cond_dim = cond_dim
        self.min_log_var = min_log_var
        self.predictor = nn.Sequential(
            nn.Conv3d(cond_dim, hidden, kernel_size=3, padding=1, padding_mode="replicate"),
            nn.GELU(),
            nn.Conv3d(hidden, 2 * dim, kernel_size=3, padding=1, padding_mode="replicate"),
        )
        nn.init.zeros_(self.predictor[-1].weight)
        nn.init.zeros_(self.predictor[-1].bias)

    @torch.no_grad()
    def initialize_from(self, y: torch.Tensor) -> None:
        """Sets the output bias to the per-channel mean and raw log-variance of a (B, D, Z, Y, X) batch."""
        mean, variance = channel_mean_and_variance(bound_features(y))
        raw_log_var = raw_log_variance_for(torch.log(variance), self.min_log_var)
        self.predictor[-1].bias.copy_(torch.cat([mean, raw_log_var]))

    def mean_and_log_variance(self, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Predicts the per-voxel mean and floored log-variance.

        Args:
            c: (B, Dc, Z, Y, X) condition map.

        Returns:
            mean, log_var: each (B, D, Z, Y, X).
        """
        mean, raw_log_var = self.predictor(bound_features(c)).chunk(2, dim=1)
        return mean, floored_log_variance(raw_log_var, self.min_log_var)

    def nll(self, y: torch.Tensor, c: Optional[torch.Tensor]) -> torch.Tensor:
        """Negative log-density map.

        Args:
            y: (B, D, Z, Y, X) descriptor map.
            c: (B, Dc, Z, Y, X) condition map on the same grid.

        Returns:
            (B, 1, Z, Y, X) NLL in nats.
        """
        if c is None:
            raise ValueError("ConditionalGaussian.nll needs a condition map; use MarginalGaussian without one")
        self.initialize_once_from(y)
        return diagonal_gaussian_nll(bound_features(y), *self.mean_and_log_variance(c))

    def latent_energy(self, y: torch.Tensor, c: Optional[torch.Tensor]) -> torch.Tensor:
        """0.5 ||(y - mu(c)) / sigma(c)||^2 per voxel: :meth:`nll` without the log-volume term. Shapes as
        :meth:`nll`."""
        if c is None:
            raise ValueError("ConditionalGaussian.latent_energy needs a condition map")
        return diagonal_gaussian_latent_energy(bound_features(y), *self.mean_and_log_variance(c))
