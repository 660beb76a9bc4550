"""Conditions of the density model, and the registries of condition and density variants.

A condition encoder turns an image patch into a condition map on the pooled grid of the descriptor map
(paper 2.1, 3.2, App. B):

- ``masking``: the frozen masking-invariant condition model (a DenseFeatureNet fed concat(image, ones-mask)),
  average-pooled like the descriptor;
- ``sincos``: sin-cos encodings of each pooled voxel's ABSOLUTE position in the scan, in mm from the first voxel
  of the preprocessed volume (not from the patch corner), so the same voxel gets the same code in every patch;
- ``none``: no condition, i.e. a marginal density.

Variants resolve from the explicit dicts :data:`CONDITIONS` and :data:`DENSITIES` (keys equal
``nnscreener.config.CONDITIONS`` / ``DENSITIES``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from nnscreener.config import DensityConfig, ScreenerConfig
from nnscreener.data.masking import complementary_block_masks
from nnscreener.density.flow import FlowDensity
from nnscreener.density.gaussian import ConditionalGaussian, MarginalGaussian
from nnscreener.errors import ScreenerError

IntZYX = Tuple[int, int, int]

#: Longest sin-cos wavelength, mm: about the longest body extent in one CT scan, so the slowest channels are
#: monotone over a whole scan.
MAX_WAVELENGTH_MM = 1000.0


def average_pool(features: torch.Tensor, stride_zyx: Sequence[int]) -> torch.Tensor:
    """Average-pools a (B, C, Z, Y, X) map with kernel = stride = ``stride_zyx`` (voxels, z, y, x).

    Returns:
        (B, C, Z // sz, Y // sy, X // sx); trailing voxels that do not fill a kernel are dropped.
    """
    stride = tuple(int(s) for s in stride_zyx)
    return F.avg_pool3d(features, kernel_size=stride, stride=stride)


def pooled_voxel_centres_mm(origin_zyx: torch.Tensor, pooled_shape_zyx: Sequence[int], stride_zyx: Sequence[int],
                            spacing_zyx: Sequence[float]) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Absolute positions of the pooled voxels' centres along each axis.

    Pooled voxel j of a patch starting at voxel ``o`` covers voxels o + j*s ... o + j*s + s - 1, so its centre is
    at (o + j*s + (s - 1) / 2) * spacing mm from the first voxel of the preprocessed volume.

    Args:
        origin_zyx: (B, 3) int voxel index (z, y, x) of each patch's first voxel in the preprocessed volume (may be
            negative when the patch was padded).
        pooled_shape_zyx: (z', y', x') of the pooled map.
        stride_zyx: pooling stride (z, y, x) in voxels.
        spacing_zyx: voxel spacing (z, y, x) in mm.

    Returns:
        Three float tensors of shape (B, z'), (B, y'), (B, x') in mm.
    """
    origin = origin_zyx.to(torch.float64)
    centres = []
    for axis in range(3):
        steps = torch.arange(pooled_shape_zyx[axis], dtype=torch.float64, device=origin.device)
        voxel = origin[:, axis:axis + 1] + steps[None] * stride_zyx[axis] + (stride_zyx[axis] - 1) / 2.0
        centres.append(voxel * float(spacing_zyx[axis]))
    return centres[0], centres[1], centres[2]


def pairs_per_axis(channels: int) -> IntZYX:
    """Splits ``channels`` (even, >= 6) into sin/cos pairs per axis (z, y, x); z gets the remainder first."""
    if channels < 6 or channels % 2:
        raise ScreenerError(f"density.sincos_dim must be even and >= 6 (a sin and cos per axis), got {channels}")
    pairs = channels // 2
    base, extra = divmod(pairs, 3)
    return tuple(base + (1 if axis < extra else 0) for axis in range(3))  # type: ignore[return-value]


def sincos_wavelengths_mm(n_pairs: int, min_wavelength_mm: float, max_wavelength_mm: float) -> torch.Tensor:
    """(n_pairs,) wavelengths in mm, geometric from ``min_wavelength_mm`` to ``max_wavelength_mm``."""
    if n_pairs == 1:
        return torch.tensor([max_wavelength_mm], dtype=torch.float64)
    return torch.logspace(math.log10(min_wavelength_mm), math.log10(max_wavelength_mm), n_pairs, dtype=torch.float64)


def sincos_encoding(positions_mm: Sequence[torch.Tensor], channels: int, min_wavelength_mm: float,
                    max_wavelength_mm: float = MAX_WAVELENGTH_MM) -> torch.Tensor:
    """3D sin-cos positional encoding of a grid given by per-axis positions.

    Channel layout: for each axis in (z, y, x) order, ``sin(2 pi p / lambda_k)`` for every wavelength, then
    ``cos(2 pi p / lambda_k)``, with the axis's wavelengths from :func:`sincos_wavelengths_mm`.

    Args:
        positions_mm: three tensors (B, z'), (B, y'), (B, x') of absolute positions in mm.
        channels: C, even and >= 6.
        min_wavelength_mm: shortest wavelength in mm.
        max_wavelength_mm: longest wavelength in mm.

    Returns:
        (B, C, z', y', x') float32 codes in [-1, 1].
    """
    b = positions_mm[0].shape[0]
    sizes = [p.shape[1] for p in positions_mm]
    parts = []
    for axis, n_pairs in enumerate(pairs_per_axis(channels)):
        wavelengths = sincos_wavelengths_mm(n_pairs, min_wavelength_mm, max_wavelength_mm).to(positions_mm[axis].device)
        phase = 2.0 * math.pi * positions_mm[axis][:, None, :] / wavelengths[None, :, None]  # (B, n_pairs, n_axis)
        code = torch.cat([torch.sin(phase), torch.cos(phase)], dim=1)  # (B, 2 n_pairs, n_axis)
        view = [b, 2 * n_pairs, 1, 1, 1]
        view[2 + axis] = sizes[axis]
        parts.append(code.view(view).expand(b, 2 * n_pairs, *sizes))
    return torch.cat(parts, dim=1).float()


class ConditionEncoder(nn.Module):
    """Base of the condition encoders: ``forward(image, origin_zyx) -> condition map on the pooled grid``.

    Attributes:
        out_channels: Dc, channels of the condition map (0 when there is none).
    """

    out_channels: int = 0

    def forward(self, image: torch.Tensor, origin_zyx: torch.Tensor) -> Optional[torch.Tensor]:
        """Computes the condition map of a batch of patches.

        Args:
            image: (B, 1, Z, Y, X) patches, intensities in [0, 1].
            origin_zyx: (B, 3) int64 voxel index of each patch's first voxel in the preprocessed volume.

        Returns:
            (B, Dc, Z // sz, Y // sy, X // sx) condition map, or None (no condition).
        """
        raise NotImplementedError(f"{type(self).__name__} must implement forward")


class LearnedCondition(ConditionEncoder):
    """The frozen masking-invariant condition model, average-pooled to the descriptor's pooled grid.

    By default (the paper) no voxel is masked, so the network sees concat(image, ones) (2 channels, as in its
    training where it saw concat(image * mask, mask)). With ``mask_passes = K >= 2`` (an nnScreener option,
    ``density.condition_mask_passes``) the network runs K times on complementary block masks
    (:func:`~nnscreener.data.masking.complementary_block_masks`) and every voxel takes its features from the pass in
    which its own block is masked: the condition then cannot see the voxel's content, however invariant training
    made the network. Used the same way in density training and at inference. It stays in eval mode and gets no
    gradients.

    Args:
        network: trained DenseFeatureNet with 2 input channels and ``channels`` output channels.
        channels: Dc, its output channels.
        pool_stride_zyx: pooling stride (z, y, x) in voxels.
        mask_passes: K; 0 or 1 = unmasked.
        block_fraction: block edge as a fraction of each patch side (the training masks'), for K >= 2.
    """

    def __init__(self, network: nn.Module, channels: int, pool_stride_zyx: Sequence[int], mask_passes: int = 0,
                 block_fraction: float = 0.25) -> None:
        super().__init__()
        self.network = network.eval().requires_grad_(False)
        self.out_channels = channels
        self.pool_stride_zyx = tuple(int(s) for s in pool_stride_zyx)
        self.mask_passes = int(mask_passes)
        self.block_fraction = float(block_fraction)

    def train(self, mode: bool = True) -> "LearnedCondition":
        super().train(mode)
        self.network.eval()  # frozen: never switches to training behaviour
        return self

    def forward(self, image: torch.Tensor, origin_zyx: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            if self.mask_passes >= 2:
                features = self._features_of_masked_voxels(image)
            else:
                features = self.network(torch.cat([image, torch.ones_like(image)], dim=1))  # (B, Dc, Z, Y, X)
            return average_pool(features, self.pool_stride_zyx)

    def _features_of_masked_voxels(self, image: torch.Tensor) -> torch.Tensor:
        """(B, 1, Z, Y, X) -> (B, Dc, Z, Y, X): each voxel's features from the pass that masks its block."""
        b, k = image.shape[0], self.mask_passes
        masks = complementary_block_masks(image.shape[2:], self.block_fraction, k).to(image)  # (K, Z, Y, X)
        masks = masks[:, None].repeat_interleave(b, dim=0)  # (K*B, 1, Z, Y, X), pass-major
        views = image.repeat(k, 1, 1, 1, 1)  # (K*B, 1, Z, Y, X)
        features = self.network(torch.cat([views * masks, masks], dim=1))  # (K*B, Dc, Z, Y, X)
        masked_here = (1.0 - masks).to(features.dtype)
        return (features * masked_here).view(k, b, *features.shape[1:]).sum(dim=0)


class SinCosCondition(ConditionEncoder):
    """Sin-cos encodings of the pooled voxels' absolute positions in the scan (mm).

    The shortest wavelength is twice the largest pooled-voxel edge (the Nyquist limit of the pooled grid), the
    longest :data:`MAX_WAVELENGTH_MM`.

    Args:
        channels: C (config ``density.sincos_dim``), even and >= 6.
        spacing_zyx: voxel spacing (z, y, x) of the preprocessed volume in mm.
        pool_stride_zyx: pooling stride (z, y, x) in voxels.
    """

    def __init__(self, channels: int, spacing_zyx: Sequence[float], pool_stride_zyx: Sequence[int]) -> None:
        super().__init__()
        pairs_per_axis(channels)  # validates
        self.out_channels = channels
        self.spacing_zyx = tuple(float(s) for s in spacing_zyx)
        self.pool_stride_zyx = tuple(int(s) for s in pool_stride_zyx)
        self.min_wavelength_mm = 2.0 * max(s * p for s, p in zip(self.spacing_zyx, self.pool_stride_zyx))

    def forward(self, image: torch.Tensor, origin_zyx: torch.Tensor) -> torch.Tensor:
        pooled_shape = [size // stride for size, stride in zip(image.shape[2:], self.pool_stride_zyx)]
        centres = pooled_voxel_centres_mm(origin_zyx.to(image.device), pooled_shape, self.pool_stride_zyx,
                                          self.spacing_zyx)
        return sincos_encoding(centres, self.out_channels, self.min_wavelength_mm).to(image.dtype)


class NoCondition(ConditionEncoder):
    """No condition: the density model is marginal."""

    def forward(self, image: torch.Tensor, origin_zyx: torch.Tensor) -> None:
        return None


@dataclass(frozen=True)
class ConditionOption:
    """One condition variant.

    Attributes:
        description: one line for ``--help`` and error messages.
        needs_trained_network: whether the variant loads the trained condition stage.
        build: (config, condition network or None) -> encoder.
    """

    description: str
    needs_trained_network: bool
    build: Callable[[ScreenerConfig, Optional[nn.Module]], ConditionEncoder]


@dataclass(frozen=True)
class DensityOption:
    """One density variant.

    Attributes:
        description: one line for ``--help`` and error messages.
        build: (density config, D, Dc) -> a module with ``nll(y, c) -> (B, 1, Z, Y, X)`` nats; Dc = 0 means
            marginal.
    """

    description: str
    build: Callable[[DensityConfig, int, int], nn.Module]


def network_embedding_dim(network: nn.Module, config: ScreenerConfig) -> int:
    """Output channels of a descriptor / condition network: its ``embedding_dim`` (a DenseFeatureNet has one),
    else ``config.network.embedding_dim``."""
    return int(getattr(network, "embedding_dim", config.network.embedding_dim))


def _build_learned_condition(config: ScreenerConfig, network: Optional[nn.Module]) -> ConditionEncoder:
    if network is None:
        raise ScreenerError("the 'masking' condition needs the trained condition model "
                            "(run: nnScreener_train DATASET condition)")
    return LearnedCondition(network, network_embedding_dim(network, config), config.density.pool_stride_zyx,
                            config.density.condition_mask_passes, config.ssl.masking.block_fraction)


def _build_sincos_condition(config: ScreenerConfig, network: Optional[nn.Module]) -> ConditionEncoder:
    return SinCosCondition(config.density.sincos_dim, config.preprocessing.spacing_zyx, config.density.pool_stride_zyx)


def _build_no_condition(config: ScreenerConfig, network: Optional[nn.Module]) -> ConditionEncoder:
    return NoCondition()


def _build_gaussian(config: DensityConfig, dim: int, cond_dim: int) -> nn.Module:
    if cond_dim == 0:
        return MarginalGaussian(dim, config.gaussian_min_log_var)
    return ConditionalGaussian(dim, cond_dim, config.gaussian_hidden, config.gaussian_min_log_var)


def _build_flow(config: DensityConfig, dim: int, cond_dim: int) -> nn.Module:
    return FlowDensity(dim, config.flow_blocks, config.flow_hidden, cond_dim)


CONDITIONS: Dict[str, ConditionOption] = {
    "masking": ConditionOption("the masking-invariant condition model (trained by the 'condition' stage)", True,
                               _build_learned_condition),
    "sincos": ConditionOption("sin-cos encodings of each voxel's absolute position in the scan (mm)", False,
                              _build_sincos_condition),
    "none": ConditionOption("no condition (a marginal density)", False, _build_no_condition),
}

DENSITIES: Dict[str, DensityOption] = {
    "gaussian": DensityOption("diagonal Gaussian; mean and log-variance from the condition by 3x3x3 convs",
                              _build_gaussian),
    "flow": DensityOption("Glow normalizing flow (ActNorm, invertible 1x1, affine coupling), per voxel",
                          _build_flow),
}


def condition_option(name: str) -> ConditionOption:
    """Looks a condition variant up; raises ScreenerError listing the valid ones."""
    if name not in CONDITIONS:
        raise ScreenerError(f"unknown condition {name!r}; choose one of "
                            + ", ".join(f"{k} ({v.description})" for k, v in CONDITIONS.items()))
    return CONDITIONS[name]


def density_option(name: str) -> DensityOption:
    """Looks a density variant up; raises ScreenerError listing the valid ones."""
    if name not in DENSITIES:
        raise ScreenerError(f"unknown density {name!r}; choose one of "
                            + ", ".join(f"{k} ({v.description})" for k, v in DENSITIES.items()))
    return DENSITIES[name]
