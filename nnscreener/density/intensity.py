"""Intensity channels appended to the descriptor before the density (options beyond the paper).

The descriptor is trained to be invariant to the colour augmentations of dense SSL (brightness, contrast, gamma,
blur, noise), so an SSL descriptor alone may be blind to a lesion that differs from its surroundings mainly in
density (a hypodense liver lesion, a lytic bone lesion, ground glass). Appending intensity channels to y lets
q(y | c) model "this intensity in this anatomical context" (docs/method-notes.md 3.5). Two kinds, both average-pooled
like the descriptor, with x the preprocessed [0, 1] image:

- smoothed intensities ``scale * G_sigma * x`` for each sigma: after pooling, the cell's mean intensity;
- a soft histogram: per voxel, memberships of K bins centred at ``k / (K - 1)`` (Gaussian of std half a bin
  spacing, normalised to sum 1); after pooling, the share of the cell's voxels in each intensity range. A cell's
  mean intensity cannot tell a hazy raise of lung attenuation from lung parenchyma with its vessels (the same mean,
  another mixture); its histogram can.

``scale`` makes the density's training noise (``density.noise_std``) small against the intensity differences of
interest: with scale 100, noise 0.1 is 0.001 of the [0, 1] range (~1.3 HU of the [-1000, 300] HU window before
CLAHE), or 0.1% of a cell's voxels.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def soft_histogram(x: torch.Tensor, bins: int) -> torch.Tensor:
    """Per-voxel soft memberships of ``bins`` intensity bins centred at ``k / (bins - 1)``, k = 0 .. bins - 1.

    Membership of bin k ~ exp(-0.5 ((x - k / (bins - 1)) / h)^2) with h = 0.5 / (bins - 1) (half a bin spacing),
    normalised over the bins.

    Args:
        x: (B, 1, Z, Y, X) intensities in [0, 1].
        bins: K >= 2.

    Returns:
        (B, K, Z, Y, X) float32, summing to 1 over the channels at every voxel.
    """
    centres = torch.linspace(0.0, 1.0, bins, device=x.device, dtype=torch.float32).view(1, bins, 1, 1, 1)
    width = 0.5 / (bins - 1)
    return torch.softmax(-0.5 * ((x.float() - centres) / width) ** 2, dim=1)


def gaussian_kernel_1d(sigma_voxels: float) -> torch.Tensor:
    """A normalised 1D Gaussian of std ``sigma_voxels`` truncated at 3 sigma; [1.0] for sigma 0."""
    if sigma_voxels <= 0:
        return torch.ones(1)
    radius = max(1, int(3.0 * sigma_voxels + 0.5))  # as scipy.ndimage.gaussian_filter(truncate=3)
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (offsets / sigma_voxels) ** 2)
    return (kernel / kernel.sum()).float()


def gaussian_smooth(x: torch.Tensor, sigma_voxels_zyx: Sequence[float]) -> torch.Tensor:
    """Separable Gaussian smoothing of (B, 1, Z, Y, X) with replicate padding (same shape out)."""
    out = x
    for axis, sigma in enumerate(sigma_voxels_zyx):
        kernel = gaussian_kernel_1d(float(sigma)).to(device=x.device, dtype=x.dtype)
        if kernel.numel() == 1:
            continue
        shape = [1, 1, 1, 1, 1]
        shape[2 + axis] = kernel.numel()
        pad = [0, 0, 0, 0, 0, 0]  # F.pad order: x_lo, x_hi, y_lo, y_hi, z_lo, z_hi
        pad[2 * (2 - axis)] = pad[2 * (2 - axis) + 1] = kernel.numel() // 2
        out = F.conv3d(F.pad(out, pad, mode="replicate"), kernel.view(shape))
    return out


class IntensityFeatures(nn.Module):
    """(B, 1, Z, Y, X) image in [0, 1] -> (B, S + K, Z, Y, X): ``scale`` x the image smoothed at S scales, then
    ``scale`` x its soft histogram in K bins (no weights).

    Args:
        sigmas_mm: Gaussian std per scale in mm (0 = the image itself); may be empty.
        spacing_zyx_mm: voxel spacing of the preprocessed image (z, y, x), mm.
        scale: multiplies every channel.
        histogram_bins: K, 0 (no histogram) or >= 2 (:func:`soft_histogram`).
    """

    def __init__(self, sigmas_mm: Sequence[float], spacing_zyx_mm: Sequence[float], scale: float,
                 histogram_bins: int = 0) -> None:
        super().__init__()
        if histogram_bins == 1 or histogram_bins < 0 or not (sigmas_mm or histogram_bins):
            raise ValueError(f"intensity features need a scale or >= 2 histogram bins, got sigmas {sigmas_mm} and "
                             f"{histogram_bins} bins")
        self.sigmas_voxels_zyx = [tuple(float(s) / float(sp) for sp in spacing_zyx_mm) for s in sigmas_mm]
        self.scale = float(scale)
        self.histogram_bins = int(histogram_bins)

    @property
    def out_channels(self) -> int:
        return len(self.sigmas_voxels_zyx) + self.histogram_bins

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        image = image.float()
        channels = [gaussian_smooth(image, sigmas) for sigmas in self.sigmas_voxels_zyx]
        if self.histogram_bins:
            channels.append(soft_histogram(image, self.histogram_bins))
        return self.scale * torch.cat(channels, dim=1)
