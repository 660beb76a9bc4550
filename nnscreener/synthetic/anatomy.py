"""The phantom's anatomy as implicit shapes: a tissue id for any world position.

:func:`organ_map` paints, in order, the couch, the body wall, the pleural and abdominal cavities with their
organs, and the skeleton. Tubular structures (vessel trees, airways, bowel) are rasterised separately
(:mod:`nnscreener.synthetic.tubes`, :mod:`nnscreener.synthetic.raster`), because they need a
voxel size for partial-volume accuracy. Being a function of position, the anatomy is rendered identically at
every voxel spacing and can be queried at scattered points (to grow vessel trees or place lesions).
"""
from __future__ import annotations

import numpy as np

from nnscreener.synthetic.abdomen import paint_abdomen
from nnscreener.synthetic.body import (
    back_muscles,
    cavity_radius2,
    depth_below_skin,
    diaphragm_z,
    paint,
    paint_couch,
    paint_wall,
    profile,
)
from nnscreener.synthetic.patient import Patient
from nnscreener.synthetic.skeleton import paint_ribs, paint_spine, paint_sternum
from nnscreener.synthetic.thorax import paint_thorax
from nnscreener.synthetic.tissues import Tissue

DIAPHRAGM_MM = 5.0


def organ_map(p: Patient, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Tissue ids of the implicit anatomy.

    Args:
        p: the patient.
        x, y, z: world coordinates in mm, float32, broadcastable against each other: grid axes shaped
            (1, 1, nx), (1, ny, 1), (nz, 1, 1) give a (nz, ny, nx) map; equal-length 1-D arrays give one id per point.

    Returns:
        uint8 array of :class:`~nnscreener.synthetic.tissues.Tissue` ids, shape = broadcast shape.
    """
    shape = np.broadcast_shapes(x.shape, y.shape, z.shape)
    tissue = np.zeros(shape, np.uint8)
    prof = profile(p, z)
    paint_couch(tissue, p, x, y)
    interior = paint_wall(tissue, p, prof, x, y, depth_below_skin(p, prof, x, y))
    r2 = cavity_radius2(p, prof, x, y)
    cavity = interior & (r2 < 1.0) & ~back_muscles(p, prof, x, y)
    paint(tissue, interior & ~cavity, Tissue.MUSCLE)  # intercostal, back and flank muscles
    dome = diaphragm_z(p, x, y)
    above = z > dome
    thorax = cavity & above
    below = interior & ~above
    abdomen = cavity & (z <= dome - DIAPHRAGM_MM)
    if thorax.any():
        paint_thorax(tissue, p, prof, x, y, z, thorax, r2)
    paint(tissue, cavity & ~above & ~abdomen, Tissue.MUSCLE)  # diaphragm
    if abdomen.any():
        paint_abdomen(tissue, p, prof, x, y, z, abdomen, below & (z <= dome - DIAPHRAGM_MM))
    paint_spine(tissue, p, prof, x, y, z, interior)
    paint_ribs(tissue, p, prof, x, y, z)
    paint_sternum(tissue, p, prof, x, y, z)
    return tissue


def in_abdominal_cavity(p: Patient, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
    """True inside the abdominal cavity (below the diaphragm, inside the wall), where bowel may lie."""
    prof = profile(p, z)
    inside = depth_below_skin(p, prof, x, y) >= prof.skin + prof.fat + prof.muscle
    inside &= (cavity_radius2(p, prof, x, y) < 1.0) & ~back_muscles(p, prof, x, y)
    return inside & (z <= diaphragm_z(p, x, y) - DIAPHRAGM_MM)


def pleural_radius2(p: Patient, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Squared normalised radius in the pleural cavity ellipse (1 at the inner chest wall)."""
    return cavity_radius2(p, profile(p, z), x, y)
