"""Chest contents above the diaphragm: lungs, mediastinum and heart.

Tubular structures (airways, pulmonary vessels, aorta, caval veins, oesophagus) are added later by
:mod:`nnscreener.synthetic.tubes`; this module paints the organs that are described by implicit shapes.
Coordinates are world mm as in :mod:`nnscreener.synthetic.body`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Tuple

import numpy as np

from nnscreener.synthetic.body import Profile, paint, profile, smoothstep
from nnscreener.synthetic.patient import Patient
from nnscreener.synthetic.tissues import Tissue

LUNG_APEX_Z = 235.0  # mm at height factor 1
LUNG_TAPER_Z = 60.0  # mm at height factor 1: above this the lungs narrow towards the apex
MEDIASTINUM_HALF_WIDTH = 24.0  # mm


@dataclass(frozen=True)
class Ellipsoid:
    """An ellipsoid rotated by ``angle`` (radians) about the z axis. Coordinates in world mm."""

    centre: Tuple[float, float, float]  # (x, y, z)
    radii: Tuple[float, float, float]  # (x, y, z) half axes before rotation
    angle: float = 0.0

    def radius2(self, x: np.ndarray, y: np.ndarray, z: np.ndarray, scale: float = 1.0) -> np.ndarray:
        """Squared normalised radius (< 1 inside) of the ellipsoid scaled by ``scale`` about its centre."""
        dx, dy, dz = x - self.centre[0], y - self.centre[1], z - self.centre[2]
        if self.angle:
            c, s = math.cos(self.angle), math.sin(self.angle)
            dx, dy = c * dx + s * dy, -s * dx + c * dy
        rx, ry, rz = (r * scale for r in self.radii)
        return (dx / rx) ** 2 + (dy / ry) ** 2 + (dz / rz) ** 2

    def z_range(self, scale: float = 1.0) -> Tuple[float, float]:
        return self.centre[2] - self.radii[2] * scale, self.centre[2] + self.radii[2] * scale


@lru_cache(maxsize=16)
def heart(p: Patient) -> Ellipsoid:
    """The heart: left of the midline, anterior, resting on the diaphragm, long axis pointing left-forward."""
    z = 58.0 * p.height
    prof = profile(p, np.float32(z))
    s = p.heart_scale
    centre = (p.cx + 22.0 * s + p.mediastinum_shift_mm, p.cy - 0.22 * float(prof.cavity_half_depth_front), z)
    return Ellipsoid(centre, (55.0 * s, 42.0 * s, 50.0 * s * p.height), p.heart_angle)


def lung_side(p: Patient, x: np.ndarray) -> np.ndarray:
    """1 on the patient's right (x below the mediastinum's midline), 2 on the left."""
    return np.where(x < p.cx + p.mediastinum_shift_mm, 1, 2).astype(np.uint8)


def paint_thorax(
    tissue: np.ndarray,
    p: Patient,
    prof: Profile,
    x: np.ndarray,
    y: np.ndarray,
    z: np.ndarray,
    thorax: np.ndarray,
    cavity_r2: np.ndarray,
) -> None:
    """Paints lungs, mediastinal fat and the heart inside ``thorax`` (the pleural cavity above the diaphragm).

    Args:
        tissue: tissue map to paint, in place; shape = broadcast of x, y, z.
        thorax: bool mask of the chest cavity above the diaphragm.
        cavity_r2: squared normalised cavity radius (:func:`~nnscreener.synthetic.body.cavity_radius2`).
    """
    h = p.height
    # the lungs narrow towards the apex: squared normalised radius allowed at this height
    rel = np.clip((z - LUNG_TAPER_Z * h) / ((LUNG_APEX_Z - LUNG_TAPER_Z) * h), 0.0, 1.0)
    apex_taper2 = 1.0 - rel**3
    # mediastinum: narrow behind the sternum (where the lungs nearly meet), widest in the middle, and wider at the
    # level of the aortic arch
    front = p.cy - prof.cavity_half_depth_front
    depth = np.clip((y - front) / (prof.vertebra_y - front), 0.0, 1.0)
    half_width = MEDIASTINUM_HALF_WIDTH * (0.35 + 0.65 * np.sin(np.pi * np.minimum(depth, 0.9) / 1.8) ** 0.7)
    half_width = half_width * (1.0 + 0.25 * smoothstep(120.0 * h, 150.0 * h, z))
    mediastinum = np.abs(x - p.cx - p.mediastinum_shift_mm) < half_width
    paravertebral = (np.abs(x - p.cx) < prof.vertebra_half_width + 10.0) & (
        y > prof.vertebra_y - prof.vertebra_half_depth - 6.0
    )
    in_taper = cavity_r2 < apex_taper2
    lung = thorax & in_taper & ~mediastinum & ~paravertebral
    paint(tissue, thorax, Tissue.VISCERAL_FAT)
    paint(tissue, thorax & ~in_taper, Tissue.MUSCLE)  # around the narrowing upper thorax: shoulder-girdle muscles
    paint(tissue, lung, Tissue.LUNG)
    hrt = heart(p)
    z_lo, z_hi = hrt.z_range(1.12)
    if float(np.max(z)) < z_lo or float(np.min(z)) > z_hi:
        return
    r2 = hrt.radius2(x, y, z)
    paint(tissue, thorax & (hrt.radius2(x, y, z, 1.12) < 1.0), Tissue.VISCERAL_FAT)  # pericardial fat
    paint(tissue, thorax & (r2 < 1.0), Tissue.MYOCARDIUM)
    paint(tissue, thorax & (r2 < 0.72**2), Tissue.ARTERIAL_BLOOD)  # chambers
