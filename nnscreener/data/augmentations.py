"""Per-view colour augmentations with the authors' parameters (docs/method-notes.md 2.2), on [0, 1]-normalized views.

Sample, then apply: :func:`sample_view_augmentation` draws a :class:`ViewAugmentation` from the config and a
numpy generator; :func:`apply_view_augmentation` is deterministic given it (the noise comes from a seed stored
in the parameters). Each view of a pair draws its own parameters.

Order, each with its own probability: in-plane blur or sharpen (sigma in mm), Gaussian noise, multiplicative
brightness, contrast, gamma. Range handling follows the authors' later code: brightness and contrast clip to
the view's own [min, max] before the operation, and gamma acts on the min-max-normalized view.

Reuse: the in-plane Gaussian is batchgeneratorsv2's separable ``blur_dimension`` (sigma in voxels, converted
here from mm with the view's spacing); brightness, contrast (``preserve_range=True``) and gamma are
batchgeneratorsv2's transforms applied through their public ``apply`` with parameters drawn here (their own
samplers, which use the global RNG, are bypassed). Sharpening (``x + a (x - blur(x))``; bgv2's sharpening is a
Laplacian, not this) and the seeded noise are small torch functions.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch
from batchgeneratorsv2.transforms.intensity.brightness import MultiplicativeBrightnessTransform
from batchgeneratorsv2.transforms.intensity.contrast import ContrastTransform
from batchgeneratorsv2.transforms.intensity.gamma import GammaTransform
from batchgeneratorsv2.transforms.noise.gaussian_blur import blur_dimension

from nnscreener.config import AugmentationConfig

IN_PLANE_DIMS = (1, 2)  # spatial dims (y, x) of a (C, Z, Y, X) view, as indexed by bgv2's blur_dimension

# bgv2 transforms used only through .apply(data_dict, **params); their ranges are never sampled.
_BRIGHTNESS = MultiplicativeBrightnessTransform(multiplier_range=(1.0, 1.0), synchronize_channels=True)
_CONTRAST = ContrastTransform(contrast_range=(1.0, 1.0), preserve_range=True, synchronize_channels=True)
_GAMMA = GammaTransform(gamma=(1.0, 1.0), p_invert_image=0.0, synchronize_channels=True, p_per_channel=1.0,
                        p_retain_stats=0.0)


@dataclass(frozen=True)
class ViewAugmentation:
    """The colour augmentation of one view; ``None`` means the operation is not applied.

    Attributes:
        blur_sigma_mm: in-plane Gaussian blur sigma, mm.
        sharpen_sigma_mm: sigma of the blur that sharpening subtracts, mm.
        sharpen_alpha: sharpening strength ``a`` in ``x + a (x - blur(x))``.
        noise_std: standard deviation of additive Gaussian noise (intensity units, [0, 1] scale).
        noise_seed: seed of the noise realisation.
        brightness: multiplicative factor.
        contrast: factor on the deviation from the mean.
        gamma: exponent applied to the min-max-normalized view.
    """

    blur_sigma_mm: Optional[float] = None
    sharpen_sigma_mm: Optional[float] = None
    sharpen_alpha: float = 0.0
    noise_std: Optional[float] = None
    noise_seed: int = 0
    brightness: Optional[float] = None
    contrast: Optional[float] = None
    gamma: Optional[float] = None


def sample_view_augmentation(cfg: AugmentationConfig, rng: np.random.Generator) -> ViewAugmentation:
    """Draws one view's augmentation: each operation fires with its probability, values uniform in their range."""
    blur = sharpen = None
    alpha = 0.0
    if rng.random() < cfg.p_blur_or_sharpen:
        if rng.random() < cfg.sharpen_share:
            sharpen, alpha = float(rng.uniform(*cfg.blur_sigma_mm)), float(rng.uniform(*cfg.sharpen_alpha))
        else:
            blur = float(rng.uniform(*cfg.blur_sigma_mm))
    noise = float(rng.uniform(*cfg.noise_std)) if rng.random() < cfg.p_noise else None
    noise_seed = int(rng.integers(2**62))
    brightness = float(rng.uniform(*cfg.brightness)) if rng.random() < cfg.p_brightness else None
    contrast = float(rng.uniform(*cfg.contrast)) if rng.random() < cfg.p_contrast else None
    gamma = float(rng.uniform(*cfg.gamma)) if rng.random() < cfg.p_gamma else None
    return ViewAugmentation(blur, sharpen, alpha, noise, noise_seed, brightness, contrast, gamma)


def blur_in_plane(view: torch.Tensor, sigma_mm: float, spacing_zyx_mm: Sequence[float]) -> torch.Tensor:
    """Gaussian blur in the axial (y, x) plane only.

    Args:
        view: (C, Z, Y, X) float tensor.
        sigma_mm: Gaussian sigma in mm (0: no blur).
        spacing_zyx_mm: the view's voxel spacing (z, y, x) in mm; sigma in voxels is ``sigma_mm / spacing``.

    Returns:
        A new (C, Z, Y, X) tensor.
    """
    out = view.clone()
    if sigma_mm <= 0:
        return out
    for dim in IN_PLANE_DIMS:
        out = blur_dimension(out, sigma_mm / float(spacing_zyx_mm[dim]), dim)
    return out


def sharpen_in_plane(view: torch.Tensor, sigma_mm: float, alpha: float,
                     spacing_zyx_mm: Sequence[float]) -> torch.Tensor:
    """Unsharp masking ``x + alpha (x - blur(x))`` with the in-plane blur of :func:`blur_in_plane`."""
    return view + alpha * (view - blur_in_plane(view, sigma_mm, spacing_zyx_mm))


def add_gaussian_noise(view: torch.Tensor, std: float, seed: int) -> torch.Tensor:
    """Adds N(0, std^2) noise drawn from a generator seeded with ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    return view + std * torch.randn(view.shape, generator=generator, dtype=view.dtype)


def _all_channels(view: torch.Tensor) -> torch.Tensor:
    return torch.arange(view.shape[0])


def scale_brightness(view: torch.Tensor, factor: float) -> torch.Tensor:
    """Multiplies by ``factor``, then clips each channel to its own [min, max] before the multiplication."""
    lo = view.flatten(1).amin(1).view(-1, 1, 1, 1)
    hi = view.flatten(1).amax(1).view(-1, 1, 1, 1)
    params = {"apply_to_channel": _all_channels(view), "multipliers": torch.full((view.shape[0],), factor)}
    out = _BRIGHTNESS.apply({"image": view.clone()}, **params)["image"]
    return torch.minimum(torch.maximum(out, lo), hi)


def scale_contrast(view: torch.Tensor, factor: float) -> torch.Tensor:
    """``(x - mean) * factor + mean`` per channel, clipped to the channel's own [min, max] (bgv2 ContrastTransform)."""
    params = {"apply_to_channel": _all_channels(view),
              "multipliers": torch.full((view.shape[0],), factor, dtype=view.dtype)}
    return _CONTRAST.apply({"image": view.clone()}, **params)["image"]


def apply_gamma(view: torch.Tensor, gamma: float) -> torch.Tensor:
    """``((x - min) / (max - min)) ** gamma * (max - min) + min`` per channel (bgv2 GammaTransform)."""
    c = view.shape[0]
    params = {"apply_to_channel": _all_channels(view), "retain_stats": torch.zeros(c, dtype=torch.bool),
              "invert_image": torch.zeros(c, dtype=torch.bool), "gamma": torch.full((c,), gamma, dtype=view.dtype)}
    return _GAMMA.apply({"image": view.clone()}, **params)["image"]


def apply_view_augmentation(view: torch.Tensor, params: ViewAugmentation,
                            spacing_zyx_mm: Sequence[float]) -> torch.Tensor:
    """Applies one view's augmentation.

    Args:
        view: (C, Z, Y, X) float32 tensor, [0, 1]-normalized intensities; not modified.
        params: from :func:`sample_view_augmentation`.
        spacing_zyx_mm: the view's actual voxel spacing (z, y, x) in mm, i.e. the preprocessed spacing times the
            view's per-axis scale (:meth:`CropBox.voxel_size`).

    Returns:
        A new (C, Z, Y, X) float32 tensor.
    """
    out = view
    if params.blur_sigma_mm is not None:
        out = blur_in_plane(out, params.blur_sigma_mm, spacing_zyx_mm)
    if params.sharpen_sigma_mm is not None:
        out = sharpen_in_plane(out, params.sharpen_sigma_mm, params.sharpen_alpha, spacing_zyx_mm)
    if params.noise_std is not None:
        out = add_gaussian_noise(out, params.noise_std, params.noise_seed)
    if params.brightness is not None:
        out = scale_brightness(out, params.brightness)
    if params.contrast is not None:
        out = scale_contrast(out, params.contrast)
    if params.gamma is not None:
        out = apply_gamma(out, params.gamma)
    return out.clone() if out is view else out


def augment_view(view: torch.Tensor, spacing_zyx_mm: Sequence[float], cfg: AugmentationConfig,
                 rng: np.random.Generator) -> torch.Tensor:
    """Samples and applies one view's augmentation (see :func:`apply_view_augmentation`)."""
    return apply_view_augmentation(view, sample_view_augmentation(cfg, rng), spacing_zyx_mm)
