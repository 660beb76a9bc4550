"""Findings of an anomaly map at a threshold: the 26-connected components of ``map > threshold`` with their size,
scores, position in world coordinates and, optionally, the organ they lie in.

World coordinates are those SimpleITK gives (``TransformContinuousIndexToPhysicalPoint``): patient coordinates in
mm in the LPS convention of DICOM and ITK (x to the patient's left, y to the posterior, z to the head), computed as
``origin + direction @ (spacing * index_xyz)``. Voxel indices are ITK's (x, y, z); arrays are (z, y, x).
A bounding box in world coordinates is the axis-aligned box around the centres of the 8 corner voxels of the
component's index box (the same box as the index box when the direction is a signed permutation).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from nnscreener.errors import ScreenerError

CONNECTIVITY = np.ones((3, 3, 3), dtype=bool)  # 26-connectivity, as the evaluation's regions


@dataclass(frozen=True)
class Geometry:
    """An image grid: spacing (x, y, z) mm, origin (x, y, z) mm, direction (row-major 3 x 3), size (x, y, z)."""

    spacing: Tuple[float, float, float]
    origin: Tuple[float, float, float]
    direction: Tuple[float, ...]
    size: Tuple[int, int, int]

    @classmethod
    def of(cls, image: sitk.Image) -> "Geometry":
        """The geometry of a 3D SimpleITK image."""
        return cls(tuple(image.GetSpacing()), tuple(image.GetOrigin()), tuple(image.GetDirection()),
                   tuple(image.GetSize()))

    @property
    def voxel_ml(self) -> float:
        """Volume of one voxel in mL."""
        return float(np.prod(self.spacing)) / 1000.0

    def to_world(self, index_xyz: np.ndarray) -> np.ndarray:
        """(n, 3) continuous voxel indices (x, y, z) -> (n, 3) LPS points in mm."""
        matrix = np.asarray(self.direction, dtype=np.float64).reshape(3, 3) * np.asarray(self.spacing)
        return np.asarray(self.origin) + np.asarray(index_xyz, dtype=np.float64) @ matrix.T

    def apply_to(self, image: sitk.Image) -> sitk.Image:
        """Sets this spacing, origin and direction on ``image`` (whose size must match) and returns it."""
        if tuple(image.GetSize()) != tuple(self.size):
            raise ValueError(f"image size {image.GetSize()} differs from the geometry's {self.size}")
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(self.direction)
        return image


@dataclass
class Findings:
    """The findings of one map at one threshold.

    Attributes:
        rows: one dict per finding, sorted by max score (descending); keys in :func:`finding_row`.
        mask: (z, y, x) uint8, 1 on the voxels of the kept findings.
        n_components: components above the threshold before the volume filter.
    """

    rows: List[Dict[str, Any]]
    mask: np.ndarray
    n_components: int


def _corners(lo_xyz: np.ndarray, hi_xyz: np.ndarray) -> np.ndarray:
    """(8, 3) the corner indices of the index box [lo, hi] (inclusive)."""
    return np.array([[(lo_xyz, hi_xyz)[bx][0], (lo_xyz, hi_xyz)[by][1], (lo_xyz, hi_xyz)[bz][2]]
                     for bx in (0, 1) for by in (0, 1) for bz in (0, 1)], dtype=np.float64)


def _component_stats(score_map: np.ndarray, labels: np.ndarray, n: int) -> Dict[str, np.ndarray]:
    """Per component 1..n: voxel count, score sum and max, centroid and peak (z, y, x), index box (slices)."""
    flat = np.flatnonzero(labels)
    ids = labels.ravel()[flat]
    scores = score_map.ravel()[flat].astype(np.float64)
    zyx = np.stack(np.unravel_index(flat, labels.shape), axis=1).astype(np.float64)  # (m, 3)
    counts = np.bincount(ids, minlength=n + 1)[1:]
    index = np.arange(1, n + 1)
    return {
        "counts": counts,
        "sums": np.bincount(ids, weights=scores, minlength=n + 1)[1:],
        "maxima": np.asarray(ndimage.maximum(score_map, labels, index), dtype=np.float64).reshape(n),
        "peaks_zyx": np.asarray(ndimage.maximum_position(score_map, labels, index), dtype=np.float64).reshape(n, 3),
        "centroids_zyx": np.stack([np.bincount(ids, weights=zyx[:, a], minlength=n + 1)[1:] / counts
                                   for a in range(3)], axis=1),
        "boxes": ndimage.find_objects(labels, max_label=n),
    }


def _organ_majority(labels: np.ndarray, organs: np.ndarray, n: int) -> Tuple[np.ndarray, np.ndarray]:
    """Per component 1..n: the organ label holding most of its voxels among organ labels > 0 (0 if none) and the
    fraction of the component's voxels in it."""
    flat = np.flatnonzero(labels)
    ids = labels.ravel()[flat].astype(np.int64)
    organ = organs.ravel()[flat].astype(np.int64)
    width = int(organ.max(initial=0)) + 1
    table = np.bincount(ids * width + organ, minlength=(n + 1) * width).reshape(n + 1, width)[1:]  # (n, width)
    inside = table[:, 1:]
    best = np.where(inside.max(axis=1, initial=0) > 0, inside.argmax(axis=1) + 1, 0) if width > 1 else np.zeros(n, int)
    share = table[np.arange(n), best] / np.maximum(table.sum(axis=1), 1)
    return best, np.where(best > 0, share, 0.0)


def finding_row(stats: Mapping[str, Any], k: int, geometry: Geometry) -> Dict[str, Any]:
    """The table row of component ``k`` (0-based): size, scores, centroid, peak and box in LPS mm and in voxels."""
    box = stats["boxes"][k]
    lo_xyz = np.array([box[2].start, box[1].start, box[0].start], dtype=np.float64)
    hi_xyz = np.array([box[2].stop - 1, box[1].stop - 1, box[0].stop - 1], dtype=np.float64)
    corners = geometry.to_world(_corners(lo_xyz, hi_xyz))
    centroid_xyz = stats["centroids_zyx"][k][::-1]
    peak_xyz = stats["peaks_zyx"][k][::-1]
    count = int(stats["counts"][k])
    return {
        "voxels": count, "volume_ml": count * geometry.voxel_ml,
        "max_score": float(stats["maxima"][k]), "mean_score": float(stats["sums"][k] / count),
        "centroid_lps_mm": geometry.to_world(centroid_xyz[None])[0].tolist(),
        "peak_lps_mm": geometry.to_world(peak_xyz[None])[0].tolist(),
        "bbox_lps_min_mm": corners.min(axis=0).tolist(), "bbox_lps_max_mm": corners.max(axis=0).tolist(),
        "centroid_voxel_xyz": centroid_xyz.tolist(), "peak_voxel_xyz": [int(v) for v in peak_xyz],
        "bbox_voxel_xyz_min": [int(v) for v in lo_xyz], "bbox_voxel_xyz_max": [int(v) for v in hi_xyz],
    }


def find_findings(score_map: np.ndarray, threshold: float, geometry: Geometry, min_volume_ml: float = 0.0,
                  percentile: Optional[Callable[[np.ndarray], np.ndarray]] = None,
                  organs: Optional[np.ndarray] = None, organ_names: Optional[Mapping[int, str]] = None) -> Findings:
    """The 26-connected components of ``score_map > threshold`` as a findings table and mask.

    Args:
        score_map: (z, y, x) anomaly map (NLL in nats), the array of an image with ``geometry``.
        threshold: a voxel belongs to a finding when its score is strictly above it.
        geometry: the map's grid (for volumes and world coordinates).
        min_volume_ml: findings smaller than this (mL) are dropped.
        percentile: maps scores to their percentile among normal body voxels (a calibration's); None leaves the
            column empty.
        organs: optional (z, y, x) integer label map on the same grid (0 = none); each finding gets the label
            holding most of its voxels, the fraction of its voxels there and the label's name from ``organ_names``.

    Returns:
        The findings, rows sorted by max score (descending), ``id`` = rank from 1.
    """
    if score_map.ndim != 3 or tuple(score_map.shape[::-1]) != tuple(geometry.size):
        raise ScreenerError(f"map of shape {score_map.shape} (z, y, x) does not fit the size {geometry.size} (x, y, z)")
    if organs is not None and organs.shape != score_map.shape:
        raise ScreenerError(f"organ labels {organs.shape} and map {score_map.shape} differ in shape")
    labels, n = ndimage.label(np.asarray(score_map) > threshold, structure=CONNECTIVITY)
    if n == 0:
        return Findings([], np.zeros(score_map.shape, np.uint8), 0)
    stats = _component_stats(np.asarray(score_map), labels, n)
    kept = [k for k in range(n) if stats["counts"][k] * geometry.voxel_ml >= min_volume_ml]
    kept.sort(key=lambda k: (-stats["maxima"][k], -stats["counts"][k], k))
    rows = [{"id": rank + 1, **finding_row(stats, k, geometry)} for rank, k in enumerate(kept)]
    if percentile is not None and rows:
        for row, value in zip(rows, percentile(np.array([r["max_score"] for r in rows]))):
            row["max_score_percentile_normal"] = float(value)
    if organs is not None:
        best, share = _organ_majority(labels, organs, n)
        for row, k in zip(rows, kept):
            row.update(organ_label=int(best[k]), organ_fraction=float(share[k]),
                       organ=(organ_names or {}).get(int(best[k]), "") if best[k] else "")
    keep = np.zeros(n + 1, np.uint8)
    keep[np.asarray(kept, dtype=np.int64) + 1] = 1
    return Findings(rows, keep[labels], n)
