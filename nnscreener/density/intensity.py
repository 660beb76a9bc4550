"""Smoothed intensities appended to the descriptor before the density (an nnScreener option beyond the paper).

The descriptor is trained to be invariant to the colour augmentations of dense SSL (brightness, contrast, gamma,
blur, noise), so an SSL descriptor alone may be blind to a lesion that differs from its surroundings mainly in
density (a hypodense liver lesion, a lytic bone lesion). Appending the preprocessed intensity at a few Gaussian
scales to y lets q(y | c) model "this intensity in this anatomical context" (docs/method-notes.md 3.5).

The appended channels are ``scale * G_sigma * x`` for each sigma, average-pooled like the descriptor, with x the
preprocessed [0, 1] image. ``scale`` makes the density's training noise (``density.noise_std``) small against the
intensity differences of interest: with scale 100, noise 0.1 is 0.001 of the [0, 1] range (~1.3 HU of the
[-1000, 300] HU window before CLAHE).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn


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
    """(B, 1, Z, Y, X) image in [0, 1] -> (B, S, Z, Y, X): ``scale`` x the image smoothed at S scales (no weights).

    Args:
        sigmas_mm: Gaussian std per scale in mm (0 = the image itself).
        spacing_zyx_mm: voxel spacing of the preprocessed image (z, y, x), mm.
        scale: multiplies the smoothed intensities.
    """

    def __init__(self, sigmas_mm: Sequence[float], spacing_zyx_mm: Sequence[float], scale: float) -> None:
        super().__init__()
        self.sigmas_voxels_zyx = [tuple(float(s) / float(sp) for sp in spacing_zyx_mm) for s in sigmas_mm]
        self.scale = float(scale)

    @property
    def out_channels(self) -> int:
        return len(self.sigmas_voxels_zyx)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.scale * gaussian_smooth(image.float(), sigmas)
                          for sigmas in self.sigmas_voxels_zyx], dim=1)
