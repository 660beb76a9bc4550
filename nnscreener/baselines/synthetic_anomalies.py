"""Synthetic anomalies for the ``baseline_synthetic`` stage (MOOD-Top1 style; docs/method-notes.md, baselines).

An anomaly replaces the content of a random region R (an ellipsoid or a box, half-axes drawn in mm) by a blend:

    out = x + alpha * m * (s - x),    target = alpha * m

with m the region's indicator, alpha ~ U(``alpha_range``) and the source s one of three kinds (chances
``kind_weights``):

- ``foreign``: the same-size patch of another training scan (foreign-patch interpolation);
- ``intensity``: the patch itself with its contrast scaled and its intensity shifted, clipped to [0, 1];
- ``deformation``: the patch itself warped by a smooth random displacement (peak ``deformation_mm_range`` mm
  per axis).

So the target is exactly alpha inside R and 0 outside, and the image is unchanged outside R. With probability
1 - ``p_anomaly`` the patch stays normal (target 0 everywhere). Everything is drawn from the numpy generator that is
passed in, so a seeded generator gives the same anomaly. Arrays are (Z, Y, X), intensities the preprocessed [0, 1].
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, Tuple

import numpy as np
from scipy.ndimage import map_coordinates, zoom

from nnscreener.config import SyntheticAnomalyConfig

KINDS = ("foreign", "intensity", "deformation")
_CONTROL_POINTS = 4  # per axis, of the coarse random displacement grid (smooth after cubic upsampling)


@dataclass(frozen=True)
class SyntheticAnomaly:
    """A training sample: ``image`` and ``target`` (Z, Y, X) float32; the anomaly's kind ("none" if normal),
    blending factor and region (Z, Y, X) bool."""

    image: np.ndarray
    target: np.ndarray
    kind: str
    alpha: float
    region: np.ndarray


def blend(image: np.ndarray, source: np.ndarray, region: np.ndarray, alpha: float) -> Tuple[np.ndarray, np.ndarray]:
    """``image + alpha * m * (source - image)`` and the target ``alpha * m`` (both float32, (Z, Y, X))."""
    weight = (alpha * region).astype(np.float32)
    out = np.where(region, image + weight * (source - image), image).astype(np.float32)
    return out, weight


def random_region(shape_zyx: Sequence[int], spacing_zyx_mm: Sequence[float], radius_mm_range: Sequence[float],
                  rng: np.random.Generator) -> np.ndarray:
    """An ellipsoid or a box (equal chances) with half-axes ~ U(radius_mm_range) mm and its centre uniform in the
    patch, clipped to the patch; at least one voxel (the centre). Returns (Z, Y, X) bool."""
    centre = [rng.uniform(0, s) for s in shape_zyx]
    radii = [rng.uniform(*radius_mm_range) / float(sp) for sp in spacing_zyx_mm]  # voxels
    grid = np.meshgrid(*[np.arange(s) + 0.5 for s in shape_zyx], indexing="ij")
    offsets = [(g - c) / max(r, 0.5) for g, c, r in zip(grid, centre, radii)]
    if rng.random() < 0.5:
        region = sum(o ** 2 for o in offsets) <= 1.0
    else:
        region = np.logical_and.reduce([np.abs(o) <= 1.0 for o in offsets])
    region[tuple(min(int(c), s - 1) for c, s in zip(centre, shape_zyx))] = True
    return region


def intensity_source(image: np.ndarray, cfg: SyntheticAnomalyConfig, rng: np.random.Generator) -> np.ndarray:
    """The patch with its contrast scaled around its mean and its intensities shifted up or down, in [0, 1]."""
    gain = rng.uniform(*cfg.intensity_gain_range)
    shift = rng.uniform(*cfg.intensity_shift_range) * rng.choice([-1.0, 1.0])
    mean = float(image.mean())
    return np.clip(mean + gain * (image - mean) + shift, 0.0, 1.0).astype(np.float32)


def deformation_source(image: np.ndarray, spacing_zyx_mm: Sequence[float], cfg: SyntheticAnomalyConfig,
                       rng: np.random.Generator) -> np.ndarray:
    """The patch warped by a smooth random displacement: per axis a coarse normal grid, cubic-upsampled, scaled to a
    peak of U(``deformation_mm_range``) mm along that axis; linear interpolation, edges replicated."""
    shape = image.shape
    peak_mm = rng.uniform(*cfg.deformation_mm_range)
    coords = list(np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij"))
    for axis, spacing in enumerate(spacing_zyx_mm):
        coarse = rng.standard_normal((_CONTROL_POINTS,) * 3)
        field = zoom(coarse, [s / _CONTROL_POINTS for s in shape], order=3)[tuple(slice(0, s) for s in shape)]
        field = field / max(float(np.abs(field).max()), 1e-6) * peak_mm / float(spacing)
        coords[axis] = coords[axis] + field.astype(np.float32)
    return map_coordinates(image, coords, order=1, mode="nearest").astype(np.float32)


def make_synthetic_anomaly(image: np.ndarray, foreign: np.ndarray, spacing_zyx_mm: Sequence[float],
                           cfg: SyntheticAnomalyConfig, rng: np.random.Generator) -> SyntheticAnomaly:
    """A training sample from a patch and a same-size patch of another scan.

    Args:
        image: (Z, Y, X) float preprocessed patch in [0, 1].
        foreign: (Z, Y, X) patch of another training scan (the ``foreign`` kind's source).
        spacing_zyx_mm: voxel spacing (z, y, x) in mm.
        cfg: the ``baseline_synthetic`` settings.
        rng: the generator every draw comes from.

    Returns:
        The (possibly unchanged) image, its target (the blending factor where blended, 0 elsewhere) and the draw.
    """
    image = np.asarray(image, dtype=np.float32)
    if image.shape != np.shape(foreign):
        raise ValueError(f"the foreign patch {np.shape(foreign)} must have the patch's shape {image.shape}")
    if rng.random() >= cfg.p_anomaly:
        return SyntheticAnomaly(image, np.zeros_like(image), "none", 0.0, np.zeros(image.shape, dtype=bool))
    weights = np.asarray(cfg.kind_weights, dtype=np.float64)
    kind = KINDS[int(rng.choice(len(KINDS), p=weights / weights.sum()))]
    region = random_region(image.shape, spacing_zyx_mm, cfg.radius_mm_range, rng)
    alpha = float(rng.uniform(*cfg.alpha_range))
    if kind == "foreign":
        source = np.asarray(foreign, dtype=np.float32)
    elif kind == "intensity":
        source = intensity_source(image, cfg, rng)
    else:
        source = deformation_source(image, spacing_zyx_mm, cfg, rng)
    out, target = blend(image, source, region, alpha)
    return SyntheticAnomaly(out, target, kind, alpha, region)
