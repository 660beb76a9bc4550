"""Abdominal organs below the diaphragm: liver, gallbladder, stomach, spleen, kidneys and psoas muscles.

Bowel loops and the abdominal vessels are tubes (:mod:`nnscreener.synthetic.tubes`). Coordinates are world
mm as in :mod:`nnscreener.synthetic.body`.
"""
from __future__ import annotations

import math
from functools import lru_cache
from typing import Tuple

import numpy as np

from nnscreener.synthetic.body import Profile, paint, profile, smoothstep
from nnscreener.synthetic.patient import Patient
from nnscreener.synthetic.thorax import Ellipsoid
from nnscreener.synthetic.tissues import Tissue


@lru_cache(maxsize=16)
def _cavity_at_dome(p: Patient) -> Tuple[float, float]:
    prof = profile(p, np.float32(-40.0 * p.height))
    return float(prof.cavity_half_width), float(prof.cavity_half_depth_front)


@lru_cache(maxsize=16)
def liver_lobes(p: Patient) -> Tuple[Ellipsoid, ...]:
    """Right and left liver lobes (their union, clipped by the cavity and the diaphragm, is the liver)."""
    a, b = _cavity_at_dome(p)
    h, s = p.height, p.liver_scale
    right = Ellipsoid((p.cx - 0.42 * a, p.cy + 0.02 * b, -60.0 * h), (0.6 * a * s, 0.85 * b * s, 100.0 * h * s))
    left = Ellipsoid((p.cx + 0.02 * a, p.cy - 0.45 * b, -35.0 * h), (0.36 * a * s, 0.36 * b * s, 48.0 * h * s))
    return (right, left)


@lru_cache(maxsize=16)
def gallbladder(p: Patient) -> Ellipsoid:
    a, b = _cavity_at_dome(p)
    h = p.height
    return Ellipsoid((p.cx - 0.22 * a, p.cy - 0.32 * b, -105.0 * h), (14.0, 16.0, 34.0 * h), math.radians(20.0))


@lru_cache(maxsize=16)
def spleen(p: Patient) -> Ellipsoid:
    a, b = _cavity_at_dome(p)
    s = p.spleen_scale
    return Ellipsoid(
        (p.cx + 0.64 * a, p.cy + 0.35 * b, -55.0 * p.height),
        (26.0 * s, 52.0 * s, 50.0 * s * p.height),
        math.radians(-40.0),
    )


@lru_cache(maxsize=16)
def stomach(p: Patient) -> Ellipsoid:
    a, b = _cavity_at_dome(p)
    s = p.stomach_scale
    return Ellipsoid((p.cx + 0.3 * a, p.cy - 0.2 * b, -60.0 * p.height), (50.0 * s, 42.0 * s, 55.0 * s * p.height))


@lru_cache(maxsize=16)
def kidneys(p: Patient) -> Tuple[Ellipsoid, ...]:
    """Right then left kidney: beside the spine, hilum turned forward and inward."""
    s = p.kidney_scale
    out = []
    for side, z in ((-1.0, p.kidney_z_right), (1.0, p.kidney_z_left)):
        prof = profile(p, np.float32(z))
        centre = (p.cx + side * 64.0 * s, float(prof.vertebra_y) + 6.0, z)
        out.append(Ellipsoid(centre, (24.0 * s, 20.0 * s, 52.0 * s * p.height), side * math.radians(35.0)))
    return tuple(out)


def kidney_sinus(k: Ellipsoid, side: float) -> Ellipsoid:
    """Renal sinus fat: the medial, central part of the kidney, opening at the hilum."""
    angle = k.angle
    # the kidney's local -x axis (towards the midline for the right kidney) rotated into world coordinates
    shift = 0.55 * k.radii[0]
    dx, dy = -side * shift * math.cos(angle), -side * shift * math.sin(angle)
    centre = (k.centre[0] + dx, k.centre[1] + dy, k.centre[2])
    return Ellipsoid(centre, (0.5 * k.radii[0], 0.45 * k.radii[1], 0.55 * k.radii[2]), angle)


def _overlaps(z: np.ndarray, z_range: Tuple[float, float]) -> bool:
    return float(np.max(z)) >= z_range[0] and float(np.min(z)) <= z_range[1]


def paint_abdomen(
    tissue: np.ndarray,
    p: Patient,
    prof: Profile,
    x: np.ndarray,
    y: np.ndarray,
    z: np.ndarray,
    abdomen: np.ndarray,
    interior_below_diaphragm: np.ndarray,
) -> None:
    """Paints the abdominal organs.

    Args:
        tissue: tissue map to paint, in place.
        abdomen: bool mask of the abdominal cavity (below the diaphragm, inside the rib band).
        interior_below_diaphragm: bool mask inside the wall muscles below the diaphragm (retroperitoneum included;
            kidneys and psoas are placed here).
    """
    h = p.height
    st = stomach(p)
    if _overlaps(z, st.z_range()):
        outer = abdomen & (st.radius2(x, y, z) < 1.0)
        inner = st.radius2(x, y, z, scale=1.0 - 4.0 / min(st.radii)) < 1.0
        level = st.centre[1] - st.radii[1] + 2.0 * st.radii[1] * (1.0 - p.stomach_gas_fraction)
        paint(tissue, outer, Tissue.BOWEL_WALL)
        paint(tissue, outer & inner & (y >= level), Tissue.BOWEL_FLUID)
        paint(tissue, outer & inner & (y < level), Tissue.BOWEL_GAS)
    lobes = liver_lobes(p)
    if _overlaps(z, (min(l.z_range()[0] for l in lobes), 30.0 * h)):
        liver = np.zeros(np.broadcast_shapes(x.shape, y.shape, z.shape), bool)
        for lobe in lobes:
            liver |= lobe.radius2(x, y, z) < 1.0
        paint(tissue, abdomen & liver, Tissue.LIVER)
        if p.has_gallbladder:
            gb = gallbladder(p)
            paint(tissue, abdomen & (gb.radius2(x, y, z) < 1.0), Tissue.GALLBLADDER)
    sp = spleen(p)
    if _overlaps(z, sp.z_range()):
        paint(tissue, abdomen & (sp.radius2(x, y, z) < 1.0), Tissue.SPLEEN)
    for k in kidneys(p):  # perirenal fat, pushing the back muscles aside
        if _overlaps(z, k.z_range(1.3)):
            near = interior_below_diaphragm & (k.radius2(x, y, z, 1.3) < 1.0)
            paint(tissue, near & ((tissue == Tissue.MUSCLE) | (tissue == Tissue.VISCERAL_FAT)), Tissue.VISCERAL_FAT)
    if float(np.min(z)) < -85.0 * h:
        radius = 6.0 + 22.0 * smoothstep(-85.0 * h, -230.0 * h, z)
        offset = prof.vertebra_half_width + 0.8 * radius + 2.0
        for side in (-1.0, 1.0):
            r2 = ((x - p.cx - side * offset) / radius) ** 2 + ((y - prof.vertebra_y - 2.0) / (0.85 * radius)) ** 2
            paint(tissue, interior_below_diaphragm & (r2 < 1.0) & (z < -85.0 * h), Tissue.MUSCLE)
    for side, k in zip((-1.0, 1.0), kidneys(p)):
        if not _overlaps(z, k.z_range()):
            continue
        r2 = k.radius2(x, y, z)
        inside = interior_below_diaphragm & (r2 < 1.0)
        paint(tissue, inside, Tissue.KIDNEY_CORTEX)
        # medulla: the inner part, lobulated into pyramids around the long axis
        dx, dy = x - k.centre[0], y - k.centre[1]
        lobulation = 0.1 * np.cos(6.0 * np.arctan2(dy, dx) + 3.0 * (z - k.centre[2]) / k.radii[2])
        paint(tissue, inside & (r2 < (0.7 + lobulation) ** 2), Tissue.KIDNEY_MEDULLA)
        paint(tissue, inside & (kidney_sinus(k, side).radius2(x, y, z) < 1.0), Tissue.VISCERAL_FAT)
