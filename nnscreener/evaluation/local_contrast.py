"""Local contrast: does a map mark a lesion against the normal tissue around it? (docs/method-notes.md 4.5)

The pooled AUROC compares lesion voxels with normal voxels anywhere in the body. A map whose level differs between
regions (higher in bone than in lung, say) then scores above chance on a lesion kind that sits in a high region
even if it does not respond to the lesion at all, and below chance on a kind in a low region. The local AUROC of a
lesion compares its voxels with the normal body voxels of a ring around it, between ``RING_MM[0]`` and
``RING_MM[1]`` mm from the lesion: near enough to be the same tissue, far enough to lie outside the map's own
smoothing (9 mm pooled voxels at the cpu preset, blended patches). 0.5 = the map does not tell the lesion from its
surroundings; 1 = every lesion voxel scores above every ring voxel.

All distances are in mm in the label file's geometry; one lesion = one 26-connected region of the lesion mask.
"""
from __future__ import annotations

from typing import Tuple

import numpy as np
from scipy import ndimage

from nnscreener.evaluation.metrics import voxel_auroc

#: Inner and outer distance (mm) of a lesion's surrounding ring from the lesion's voxels.
RING_MM: Tuple[float, float] = (15.0, 30.0)


def ring_box(lesion_slices: Tuple[slice, ...], shape_zyx: Tuple[int, ...], spacing_zyx: Tuple[float, float, float],
             outer_mm: float = RING_MM[1]) -> Tuple[slice, ...]:
    """The box around a lesion's bounding box (``ndimage.find_objects`` slices) that holds its whole ring."""
    margin = [int(np.ceil(outer_mm / s)) + 1 for s in spacing_zyx]
    return tuple(slice(max(0, sl.start - m), min(size, sl.stop + m))
                 for sl, m, size in zip(lesion_slices, margin, shape_zyx))


def surrounding_ring(region: np.ndarray, other_tissue: np.ndarray, spacing_zyx: Tuple[float, float, float],
                     ring_mm: Tuple[float, float] = RING_MM) -> np.ndarray:
    """The ring of voxels around one lesion.

    Args:
        region: (z, y, x) bool, the lesion's voxels (not empty), in a box that holds the whole ring
            (:func:`ring_box`).
        other_tissue: (z, y, x) bool in the same box, the voxels a ring may contain (normal body).
        spacing_zyx: voxel size in mm (z, y, x).
        ring_mm: (inner, outer) distance in mm; a ring voxel's distance d to the nearest lesion voxel satisfies
            inner < d <= outer.

    Returns:
        (z, y, x) bool ring mask of the box.
    """
    inner, outer = ring_mm
    distance_mm = ndimage.distance_transform_edt(~region, sampling=spacing_zyx)  # mm to the nearest lesion voxel
    return (distance_mm > inner) & (distance_mm <= outer) & other_tissue


def lesion_local_aurocs(score_map: np.ndarray, regions: np.ndarray, n_regions: int, lesion_labels: np.ndarray,
                        body_mask: np.ndarray, spacing_zyx: Tuple[float, float, float],
                        ring_mm: Tuple[float, float] = RING_MM) -> Tuple[np.ndarray, np.ndarray]:
    """Local AUROC and kind of every lesion of a scan.

    Args:
        score_map: (z, y, x) anomaly scores, higher = more anomalous.
        regions: (z, y, x) int, the lesions' 26-connected region ids 1..n_regions (0 elsewhere).
        n_regions: number of lesions.
        lesion_labels: (z, y, x) label values (lesion kinds, 0 = none).
        body_mask: (z, y, x) bool body.
        spacing_zyx: voxel size in mm.
        ring_mm: the ring (see :func:`surrounding_ring`).

    Returns:
        local_aurocs: (n_regions,) float64, lesion voxels vs ring voxels; NaN where the ring holds no voxel.
        kinds: (n_regions,) int64, the most frequent label value of each lesion's voxels.
    """
    aurocs, kinds = np.full(n_regions, np.nan), np.zeros(n_regions, np.int64)
    for index, lesion_slices in enumerate(ndimage.find_objects(regions, max_label=n_regions)):
        if lesion_slices is None:
            continue
        box = ring_box(lesion_slices, regions.shape, spacing_zyx, ring_mm[1])
        region, labels = regions[box] == index + 1, lesion_labels[box]
        kinds[index] = int(np.bincount(labels[region].astype(np.int64)).argmax())
        ring = surrounding_ring(region, body_mask[box] & (labels == 0), spacing_zyx, ring_mm)
        if ring.any():
            scores = score_map[box]
            inside, around = scores[region], scores[ring]
            is_lesion = np.concatenate([np.ones(inside.size, bool), np.zeros(around.size, bool)])
            aurocs[index] = voxel_auroc(np.concatenate([inside, around]).astype(np.float64), is_lesion)
    return aurocs, kinds
