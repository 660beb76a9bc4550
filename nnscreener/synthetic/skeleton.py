"""Bones: spine (vertebral bodies, discs, canal, arches, processes), ribs with costal cartilage, sternum.

Coordinates are world mm as in :mod:`nnscreener.synthetic.body`. Bones are painted last, over soft tissue.
"""
from __future__ import annotations

import math

import numpy as np

from nnscreener.synthetic.body import Profile, paint
from nnscreener.synthetic.patient import Patient
from nnscreener.synthetic.tissues import Tissue

CORTEX_MM = 2.0
RIB_START = 0.1 * math.pi  # rib angle at the spine (0 = straight back, pi = straight front)
# (end of bone, end of cartilage) angles of ribs 1..12; floating ribs 11-12 have no cartilage
RIB_ENDS = [(0.8, 0.96)] * 7 + [(0.72, 0.86)] * 3 + [(0.5, 0.5), (0.42, 0.42)]


def vertebra_phase(p: Patient, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(in a vertebral body (not a disc), distance (mm) to the nearest endplate) at heights ``z``."""
    edges = p.vertebra_edges_z
    idx = np.searchsorted(edges, z, side="right")
    in_body = (idx % 2) == 1
    lo = edges[np.clip(idx - 1, 0, len(edges) - 1)]
    hi = edges[np.clip(idx, 0, len(edges) - 1)]
    return in_body, np.minimum(np.abs(z - lo), np.abs(hi - z))


def paint_spine(tissue: np.ndarray, p: Patient, prof: Profile, x: np.ndarray, y: np.ndarray, z: np.ndarray,
                interior: np.ndarray) -> None:
    """Vertebral bodies (cortical shell, cancellous core), discs, canal, arch, spinous and transverse processes."""
    in_body, endplate = vertebra_phase(p, z)
    dx = x - p.cx
    body_r2 = (dx / prof.vertebra_half_width) ** 2 + ((y - prof.vertebra_y) / prof.vertebra_half_depth) ** 2
    column = interior & (body_r2 < 1.0)
    paint(tissue, column & ~in_body, Tissue.DISC)
    shell = (1.0 - CORTEX_MM / prof.vertebra_half_depth) ** 2
    paint(tissue, column & in_body, Tissue.CORTICAL_BONE)
    paint(tissue, column & in_body & (body_r2 < shell) & (endplate > 1.5), Tissue.CANCELLOUS_BONE)
    dy = y - prof.canal_y
    r = prof.canal_radius
    canal_d2 = dx**2 + dy**2
    arch = (canal_d2 < (r + 5.0) ** 2) | (
        (np.abs(dx) > r - 2.0) & (np.abs(dx) < r + 5.0) & (y > prof.vertebra_y) & (y < prof.canal_y)
    )
    spinous = (np.abs(dx) < 4.0) & (dy > 0.0) & (dy < r + 0.7 * p.paraspinal_mm)
    # transverse processes: pointing back and out from the arch
    lateral = np.abs(dx) - r
    transverse = (lateral > 0.0) & (lateral < 22.0 * p.spine_scale) & (np.abs(dy - 0.45 * lateral) < 4.0)
    paint(tissue, interior & in_body & (arch | spinous | transverse), Tissue.CORTICAL_BONE)
    paint(tissue, interior & (canal_d2 < r**2), Tissue.SPINAL_CANAL)


def rib_path_z(p: Patient, rib: int, angle: np.ndarray) -> np.ndarray:
    """Height (mm) of rib ``rib`` (0 = first rib) at ``angle`` around the chest (0 back, pi front)."""
    t = np.clip((angle - RIB_START) / (math.pi - RIB_START), 0.0, 1.0)
    return p.thoracic_centres_z[rib] + 5.0 * p.height * np.sin(2.0 * angle) - p.rib_drop_mm[rib] * t**1.4


def paint_ribs(tissue: np.ndarray, p: Patient, prof: Profile, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> None:
    """Twelve rib pairs along the rib band with costal cartilage to the sternum.

    A rib is a tube of elliptical cross-section (4 mm radially, 4.5 mm craniocaudally) following the band's
    ellipse at the height :func:`rib_path_z`; its core is cancellous bone.
    """
    z_top = float(p.thoracic_centres_z[0]) + 12.0
    z_bottom = float(p.thoracic_centres_z[-1] - p.rib_drop_mm[-1]) - 12.0
    if float(np.max(z)) < z_bottom or float(np.min(z)) > z_top:
        return
    shape = tissue.shape
    dx, dy = x - p.cx, y - p.cy
    half_width = prof.interior_half_width - 7.0
    half_depth = np.where(dy < 0, prof.interior_half_depth - 7.0, prof.canal_y - p.cy + 8.0)
    u, v = dx / half_width, dy / half_depth
    rho = np.sqrt(u**2 + v**2)
    radial_mm = (rho - 1.0) * np.hypot(dx, dy) / np.maximum(rho, 1e-6)
    band = np.broadcast_to((np.abs(radial_mm) < 9.0) & (z > z_bottom) & (z < z_top), shape)
    if not band.any():
        return
    angle = np.broadcast_to(np.arctan2(np.abs(u), v), shape)[band]
    zz = np.broadcast_to(z, shape)[band]
    radial = np.broadcast_to(radial_mm, shape)[band]
    values = tissue[band]
    for rib, (bone_end, cartilage_end) in enumerate(RIB_ENDS):
        height = 4.0 if rib == 0 else 4.5
        r2 = ((zz - rib_path_z(p, rib, angle)) / height) ** 2 + (radial / 4.0) ** 2
        bone = (r2 < 1.0) & (angle > RIB_START) & (angle < bone_end * math.pi)
        values[bone] = Tissue.CORTICAL_BONE
        values[bone & (r2 < 0.6**2)] = Tissue.CANCELLOUS_BONE  # marrow inside a ~1.8 mm cortex
        cartilage = (r2 < 0.8) & (angle >= bone_end * math.pi) & (angle < cartilage_end * math.pi)
        values[cartilage] = Tissue.CARTILAGE
    tissue[band] = values


def paint_sternum(tissue: np.ndarray, p: Patient, prof: Profile, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> None:
    """The sternum: a flat bone in the front midline of the chest wall, from the xiphoid to the manubrium."""
    h = p.height
    height = (z > 25.0 * h) & (z < 215.0 * h)
    centre_y = p.cy - prof.interior_half_depth + 8.0
    dx, dy = x - p.cx, y - centre_y
    paint(tissue, height & ((dx / 15.0) ** 2 + (dy / 7.0) ** 2 < 1.0), Tissue.CORTICAL_BONE)
    paint(tissue, height & ((dx / 12.0) ** 2 + (dy / 4.0) ** 2 < 1.0), Tissue.CANCELLOUS_BONE)
