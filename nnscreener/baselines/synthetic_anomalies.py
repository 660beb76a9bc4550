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
1 - ``p_anomaly`` the patch stays normal (target 0 everywhere).

With ``target="visible"`` (an option beyond MOOD-Top1, in the spirit of NSA's intensity-difference labels) the
target is ``alpha * min(1, |out - x| / visible_change)`` inside R: a voxel the blend did not visibly change (a
deformation of homogeneous tissue, a foreign patch of the same tissue) is not labelled anomalous, so the network is
never taught that unchanged normal tissue may be an anomaly (docs/method-notes.md, baselines).

DRAEM's anomalies (``baseline_draem``, :func:`make_draem_anomaly`) are shaped by thresholded smooth random noise
(in place of Perlin noise: a coarse normal grid of cells of U(``noise_scale_mm_range``) mm, cubic-upsampled,
normalised to std 1, above ``noise_threshold``), keep a share beta of the image inside them
(``out = beta * x + (1 - beta) * s`` there, DRAEM's formula) and have the binary region as target.

Everything is drawn from the numpy generator that is passed in, so a seeded generator gives the same anomaly.
Arrays are (Z, Y, X), intensities the preprocessed [0, 1].
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import numpy as np
from scipy.ndimage import map_coordinates, zoom

from nnscreener.config import DraemConfig, SyntheticAnomalyConfig

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


def visible_target(image: np.ndarray, out: np.ndarray, region: np.ndarray, alpha: float,
                   visible_change: float) -> np.ndarray:
    """``alpha * min(1, |out - image| / visible_change)`` inside ``region``, 0 outside ((Z, Y, X) float32).

    Args:
        image, out: the patch before and after the blend, [0, 1] intensities.
        region: (Z, Y, X) bool, the anomaly's region.
        alpha: the blending factor.
        visible_change: the change (in [0, 1] intensity units) from which a voxel counts as fully changed.
    """
    seen = np.minimum(np.abs(out - image) / float(visible_change), 1.0)
    return np.where(region, alpha * seen, 0.0).astype(np.float32)


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


def intensity_source(image: np.ndarray, cfg, rng: np.random.Generator) -> np.ndarray:
    """The patch with its contrast scaled around its mean by U(``cfg.intensity_gain_range``) and its intensities
    shifted up or down by U(``cfg.intensity_shift_range``), in [0, 1] (``cfg``: either anomaly config)."""
    gain = rng.uniform(*cfg.intensity_gain_range)
    shift = rng.uniform(*cfg.intensity_shift_range) * rng.choice([-1.0, 1.0])
    mean = float(image.mean())
    return np.clip(mean + gain * (image - mean) + shift, 0.0, 1.0).astype(np.float32)


@functools.lru_cache(maxsize=64)
def _cubic_zoom_matrix(n_in: int, zoom_factor: float) -> np.ndarray:
    """(n_out, n_in) float64: scipy's order-3 spline zoom of a length-``n_in`` signal as a matrix (zoom is
    linear, so its columns are the zooms of the unit vectors)."""
    return np.stack([zoom(unit, zoom_factor, order=3) for unit in np.eye(n_in)], axis=1)


def cubic_upsample(coarse: np.ndarray, zoom_factors: Sequence[float]) -> np.ndarray:
    """``scipy.ndimage.zoom(coarse, zoom_factors, order=3)``, computed axis by axis: the spline zoom is separable
    (prefilter, weights and boundary extension are per axis), so three small matrix products give the same array
    (to ~1e-14) as the 3D zoom at ~1/100 of its cost for a 4^3 grid upsampled to a training patch."""
    out = np.asarray(coarse, dtype=np.float64)
    for axis, factor in enumerate(zoom_factors):
        matrix = _cubic_zoom_matrix(out.shape[axis], float(factor))
        out = np.moveaxis(np.tensordot(matrix, out, axes=([1], [axis])), 0, axis)
    return out


def deformation_source(image: np.ndarray, spacing_zyx_mm: Sequence[float], cfg: SyntheticAnomalyConfig,
                       rng: np.random.Generator) -> np.ndarray:
    """The patch warped by a smooth random displacement: per axis a coarse normal grid, cubic-upsampled, scaled to a
    peak of U(``deformation_mm_range``) mm along that axis; linear interpolation, edges replicated."""
    shape = image.shape
    peak_mm = rng.uniform(*cfg.deformation_mm_range)
    coords = list(np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij"))
    for axis, spacing in enumerate(spacing_zyx_mm):
        coarse = rng.standard_normal((_CONTROL_POINTS,) * 3)
        field = cubic_upsample(coarse, [s / _CONTROL_POINTS for s in shape])[tuple(slice(0, s) for s in shape)]
        field = field / max(float(np.abs(field).max()), 1e-6) * peak_mm / float(spacing)
        coords[axis] = coords[axis] + field.astype(np.float32)
    return map_coordinates(image, coords, order=1, mode="nearest").astype(np.float32)


def _patch_beside(image: np.ndarray, foreign: np.ndarray) -> np.ndarray:
    """``image`` as float32 after checking that the foreign patch has its shape (ValueError otherwise)."""
    image = np.asarray(image, dtype=np.float32)
    if image.shape != np.shape(foreign):
        raise ValueError(f"the foreign patch {np.shape(foreign)} must have the patch's shape {image.shape}")
    return image


def _draw_kind(p_anomaly: float, weights: Sequence[float], rng: np.random.Generator) -> Optional[str]:
    """None with probability 1 - ``p_anomaly``; else one of the first ``len(weights)`` :data:`KINDS`, drawn with
    those relative chances."""
    if rng.random() >= p_anomaly:
        return None
    w = np.asarray(weights, dtype=np.float64)
    return KINDS[int(rng.choice(len(w), p=w / w.sum()))]


def _unchanged(image: np.ndarray) -> SyntheticAnomaly:
    """The sample of a patch that gets no anomaly: the image itself, target 0, an empty region."""
    return SyntheticAnomaly(image, np.zeros_like(image), "none", 0.0, np.zeros(image.shape, dtype=bool))


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
        The (possibly unchanged) image, its target (``cfg.target``: the blending factor where blended, or where the
        blend visibly changed the voxel; 0 elsewhere) and the draw.
    """
    image = _patch_beside(image, foreign)
    kind = _draw_kind(cfg.p_anomaly, cfg.kind_weights, rng)
    if kind is None:
        return _unchanged(image)
    region = random_region(image.shape, spacing_zyx_mm, cfg.radius_mm_range, rng)
    alpha = float(rng.uniform(*cfg.alpha_range))
    if kind == "foreign":
        source = np.asarray(foreign, dtype=np.float32)
    elif kind == "intensity":
        source = intensity_source(image, cfg, rng)
    else:
        source = deformation_source(image, spacing_zyx_mm, cfg, rng)
    out, target = blend(image, source, region, alpha)
    if cfg.target == "visible":
        target = visible_target(image, out, region, alpha, cfg.visible_change)
    return SyntheticAnomaly(out, target, kind, alpha, region)


def smooth_noise(shape_zyx: Sequence[int], cell_voxels_zyx: Sequence[float], rng: np.random.Generator) -> np.ndarray:
    """(Z, Y, X) float32 smooth random noise with mean 0 and std 1: a normal grid with one node per cell (cell edge
    ``cell_voxels_zyx``), cubic-upsampled to the shape."""
    nodes = [max(2, int(np.ceil(s / max(c, 1.0))) + 1) for s, c in zip(shape_zyx, cell_voxels_zyx)]
    field = cubic_upsample(rng.standard_normal(nodes), [s / n for s, n in zip(shape_zyx, nodes)])
    field = field[tuple(slice(0, s) for s in shape_zyx)]
    return ((field - field.mean()) / max(float(field.std()), 1e-6)).astype(np.float32)


def noise_region(shape_zyx: Sequence[int], spacing_zyx_mm: Sequence[float], cfg: DraemConfig,
                 rng: np.random.Generator) -> np.ndarray:
    """DRAEM's anomaly shape: where smooth noise of cell U(``noise_scale_mm_range``) mm exceeds ``noise_threshold``;
    at least one voxel (the noise's maximum). Returns (Z, Y, X) bool."""
    cell_mm = rng.uniform(*cfg.noise_scale_mm_range)
    noise = smooth_noise(shape_zyx, [cell_mm / float(s) for s in spacing_zyx_mm], rng)
    region = noise > cfg.noise_threshold
    region[np.unravel_index(int(np.argmax(noise)), noise.shape)] = True
    return region


def make_draem_anomaly(image: np.ndarray, foreign: np.ndarray, spacing_zyx_mm: Sequence[float], cfg: DraemConfig,
                       rng: np.random.Generator) -> SyntheticAnomaly:
    """A DRAEM training sample: with probability ``p_anomaly``, a noise-shaped region whose content becomes
    ``beta * x + (1 - beta) * s`` (s: the foreign patch or an intensity change of the patch, chances
    ``source_weights``); target 1 inside the region, 0 elsewhere. ``alpha`` in the result is 1 - beta.

    Args and returns as :func:`make_synthetic_anomaly` (``cfg``: the ``baseline_draem`` settings).
    """
    image = _patch_beside(image, foreign)
    kind = _draw_kind(cfg.p_anomaly, cfg.source_weights, rng)  # foreign or intensity
    if kind is None:
        return _unchanged(image)
    region = noise_region(image.shape, spacing_zyx_mm, cfg, rng)
    alpha = 1.0 - float(rng.uniform(*cfg.beta_range))
    if kind == "foreign":
        source = np.asarray(foreign, dtype=np.float32)
    else:
        source = intensity_source(image, cfg, rng)
    out, _ = blend(image, source, region, alpha)
    return SyntheticAnomaly(out, region.astype(np.float32), kind, alpha, region)
