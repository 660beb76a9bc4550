"""The scanner: partial-volume blur and spatially correlated noise.

Blur: a Gaussian point spread in plane (``psf_mm``) and along z (slice sensitivity profile of FWHM
``slice_fwhm_mm``), each combined with the box average over one voxel, so edges become partial-volume mixtures.
Noise: white noise filtered in plane (CT noise is correlated within a reconstructed slice by the reconstruction
kernel) and rescaled to the requested standard deviation. Arrays are (z, y, x) float32 in HU.
"""
from __future__ import annotations

import math
from typing import Tuple

import numpy as np
from scipy import ndimage

from nnscreener.synthetic.patient import Acquisition


def blur_sigma_voxels(acq: Acquisition) -> Tuple[float, float, float]:
    """Gaussian sigma (voxels, z, y, x) of the partial-volume blur: scanner blur plus the voxel's box average
    (variance 1/12 voxel^2)."""
    sz, sy, sx = acq.geometry.spacing_zyx
    slice_sigma = acq.slice_fwhm_mm / (2.0 * math.sqrt(2.0 * math.log(2.0)))
    return (
        math.sqrt((slice_sigma / sz) ** 2 + 1.0 / 12.0),
        math.sqrt((acq.psf_mm / sy) ** 2 + 1.0 / 12.0),
        math.sqrt((acq.psf_mm / sx) ** 2 + 1.0 / 12.0),
    )


def blur_halo(acq: Acquisition) -> int:
    """Slices needed on each side of a chunk so that blurring it matches blurring the whole volume."""
    return int(math.ceil(4.0 * blur_sigma_voxels(acq)[0])) + 1


def partial_volume_blur(hu: np.ndarray, acq: Acquisition) -> np.ndarray:
    """Blurred copy of ``hu`` (z, y, x) HU. Truncated at 4 sigma, matching :func:`blur_halo`."""
    return ndimage.gaussian_filter(hu, blur_sigma_voxels(acq), mode="nearest", truncate=4.0)


def correlated_noise(shape_zyx: Tuple[int, int, int], acq: Acquisition, rng: np.random.Generator) -> np.ndarray:
    """(z, y, x) float32 noise in HU with standard deviation ``acq.noise_sd_hu`` and in-plane Gaussian
    correlation of ``acq.noise_corr_mm``."""
    sigma = acq.noise_corr_mm / acq.geometry.spacing_zyx[1]
    white = rng.standard_normal(shape_zyx, dtype=np.float32)
    if sigma < 0.05:
        return white * np.float32(acq.noise_sd_hu)
    smooth = ndimage.gaussian_filter(white, (0.0, sigma, sigma), mode="wrap", truncate=4.0)
    return smooth * np.float32(acq.noise_sd_hu / _filtered_std(sigma))


def _filtered_std(sigma: float) -> float:
    """Standard deviation of unit white noise after the 2-D Gaussian filter: the L2 norm of its kernel."""
    radius = int(math.ceil(4.0 * sigma))
    delta = np.zeros((2 * radius + 1, 2 * radius + 1))
    delta[radius, radius] = 1.0
    kernel = ndimage.gaussian_filter(delta, sigma, mode="constant", truncate=4.0)
    return float(np.sqrt((kernel**2).sum()))
