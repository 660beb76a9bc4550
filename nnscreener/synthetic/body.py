"""The body's outline and wall (skin, fat, muscle), the chest and abdominal cavities, and the couch.

All functions take world coordinates ``x, y, z`` (mm, float32 arrays broadcastable against each other: either
grid axes shaped (z, 1, 1), (1, y, 1), (1, 1, x) or flat point lists) and return arrays of their broadcast shape.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from nnscreener.synthetic.patient import Patient
from nnscreener.synthetic.tissues import Tissue

RIB_BAND_MM = 10.0  # thickness of the rib cage layer between the wall muscles and the pleural cavity


def smoothstep(edge0: float, edge1: float, v: np.ndarray) -> np.ndarray:
    """0 below ``edge0``, 1 above ``edge1`` (or the reverse when ``edge0 > edge1``), smooth in between."""
    s = np.clip((v - edge0) / (edge1 - edge0), 0.0, 1.0)
    return s * s * (3.0 - 2.0 * s)


def paint(tissue: np.ndarray, mask: np.ndarray, value: Tissue) -> None:
    """Sets ``tissue`` to ``value`` where ``mask`` (broadcastable to ``tissue``) is true, in place."""
    tissue[np.broadcast_to(mask, tissue.shape)] = value


@dataclass(frozen=True)
class Profile:
    """Craniocaudal profile of the trunk: per-z sizes and positions (mm), arrays shaped like ``z``."""

    chest: np.ndarray  # 1 in the chest, 0 in the abdomen (smooth transition around the diaphragm)
    half_width: np.ndarray  # body outline half axes
    half_depth: np.ndarray
    skin: float
    fat: np.ndarray  # subcutaneous fat thickness
    muscle: np.ndarray  # wall muscle thickness
    interior_half_width: np.ndarray  # inside the wall muscles
    interior_half_depth: np.ndarray
    cavity_half_width: np.ndarray  # pleural / abdominal cavity (inside the rib band)
    cavity_half_depth_front: np.ndarray
    cavity_half_depth_back: np.ndarray  # the back muscles are cut out of it (:func:`back_muscles`)
    canal_y: np.ndarray  # world y of the spinal canal centre
    canal_radius: np.ndarray
    vertebra_y: np.ndarray  # world y of the vertebral body centre
    vertebra_half_width: np.ndarray
    vertebra_half_depth: np.ndarray


def profile(p: Patient, z: np.ndarray) -> Profile:
    """The trunk's profile at heights ``z`` (mm)."""
    h = p.height
    chest = smoothstep(-60.0 * h, 20.0 * h, z)
    neck = smoothstep(200.0 * h, 300.0 * h, z)
    half_width = (p.half_width_abdomen + (p.half_width_chest - p.half_width_abdomen) * chest) * (1.0 - 0.2 * neck)
    half_depth = (p.half_depth_abdomen + (p.half_depth_chest - p.half_depth_abdomen) * chest) * (1.0 - 0.12 * neck)
    fat = (p.fat_abdomen_mm + (p.fat_chest_mm - p.fat_abdomen_mm) * chest) * (1.0 - 0.5 * neck)
    muscle = p.muscle_abdomen_mm + (p.muscle_chest_mm - p.muscle_abdomen_mm) * chest
    wall = p.skin_mm + fat + muscle
    interior_half_width = half_width - wall
    interior_half_depth = half_depth - wall
    band = RIB_BAND_MM * smoothstep(-150.0 * h, -70.0 * h, z)
    spine = p.spine_scale * (1.0 - 0.25 * neck)
    kyphosis = np.exp(-(((z - 100.0 * h) / (150.0 * h)) ** 2))  # thoracic spine bows backwards,
    lordosis = 0.6 * np.exp(-(((z + 180.0 * h) / (90.0 * h)) ** 2))  # lumbar spine forwards
    curve = p.kyphosis_mm * (kyphosis - lordosis)
    canal_y = p.cy + interior_half_depth - p.paraspinal_mm * (1.0 - 0.3 * neck) + curve
    canal_radius = (8.0 + 3.0 * (1.0 - chest)) * spine
    vertebra_half_depth = (16.0 - 3.0 * chest) * spine
    vertebra_y = canal_y - canal_radius - 4.0 - vertebra_half_depth
    return Profile(
        chest=chest,
        half_width=half_width,
        half_depth=half_depth,
        skin=p.skin_mm,
        fat=fat,
        muscle=muscle,
        interior_half_width=interior_half_width,
        interior_half_depth=interior_half_depth,
        cavity_half_width=interior_half_width - band,
        cavity_half_depth_front=interior_half_depth - band,
        cavity_half_depth_back=interior_half_depth - band,
        canal_y=canal_y,
        canal_radius=canal_radius,
        vertebra_y=vertebra_y,
        vertebra_half_width=(23.0 - 6.5 * chest) * spine,
        vertebra_half_depth=vertebra_half_depth,
    )


def depth_below_skin(p: Patient, prof: Profile, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Distance (mm) from the body outline along the ray from the body axis: > 0 inside the body, < 0 outside.

    The outline is the superellipse ``|dx / a|^e + |dy / b|^e = 1`` with the profile's half axes.
    """
    dx, dy = x - p.cx, y - p.cy
    e = p.outline_exponent
    r = (np.abs(dx / prof.half_width) ** e + np.abs(dy / prof.half_depth) ** e) ** (1.0 / e)
    radius = np.hypot(dx, dy)
    with np.errstate(divide="ignore", invalid="ignore"):
        depth = np.where(r > 0, radius * (1.0 / np.maximum(r, 1e-6) - 1.0), np.inf)
    return depth.astype(np.float32, copy=False)


def cavity_radius2(p: Patient, prof: Profile, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Squared normalised radius (< 1 inside) of the pleural / abdominal cavity, a superellipse like the body's
    outline, deeper in front than behind (the spine bulges into it from the back)."""
    dy = y - p.cy
    half_depth = np.where(dy < 0, prof.cavity_half_depth_front, prof.cavity_half_depth_back)
    e = p.outline_exponent
    return (np.abs((x - p.cx) / prof.cavity_half_width) ** e + np.abs(dy / half_depth) ** e) ** (2.0 / e)


@lru_cache(maxsize=16)
def _cavity_at_dome_level(p: Patient) -> tuple[float, float]:
    at_dome = profile(p, np.float32(0.0))
    return float(at_dome.cavity_half_width), float(at_dome.cavity_half_depth_front)


def diaphragm_z(p: Patient, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Height (mm) of the diaphragm surface above (x, y): two domes (right higher), sloping down to the
    costophrenic recesses at the sides and at the back."""
    h = p.height
    half_width, half_depth = _cavity_at_dome_level(p)
    rel_x = (x - p.cx) / half_width
    peak = p.dome_right_z + (p.dome_left_z - p.dome_right_z) * smoothstep(-0.2, 0.2, rel_x)
    lateral = 45.0 * h * ((np.abs(rel_x) - 0.45) / 0.55) ** 2
    rel_y = (y - (p.cy - 0.05 * half_depth)) / half_depth
    back = 55.0 * h * np.maximum(rel_y, 0.0) ** 2
    front = 15.0 * h * np.maximum(-rel_y, 0.0) ** 2
    return (peak - lateral - back - front).astype(np.float32, copy=False)


def paint_couch(tissue: np.ndarray, p: Patient, x: np.ndarray, y: np.ndarray) -> None:
    """Mattress and carbon-fibre couch under the patient (painted before the body, which covers them)."""
    dx = x - p.table_cx
    top = p.pad_top_y - 0.0004 * dx**2
    width = np.abs(dx) < 235.0
    pad = width & (y >= top) & (y < top + p.pad_mm)
    table_top = top + p.pad_mm
    table = width & (y >= table_top) & (y < table_top + p.table_mm)
    core = table & (y >= table_top + 4.0) & (y < table_top + p.table_mm - 4.0) & (np.abs(dx) < 225.0)
    paint(tissue, pad, Tissue.PAD)
    paint(tissue, table, Tissue.TABLE_SHELL)
    paint(tissue, core, Tissue.TABLE_CORE)


def paint_wall(tissue: np.ndarray, p: Patient, prof: Profile, x: np.ndarray, y: np.ndarray,
               depth: np.ndarray) -> np.ndarray:
    """Skin, subcutaneous fat and wall muscle from the depth below the skin; returns the interior mask
    (inside the wall muscles), which is painted as visceral fat for the organs to be placed in.

    The wall muscles (pectoral and back muscles, abdominal wall) are thickest in front and behind and thin out
    to 40% at the flanks, so the interior reaches further sideways than the uniform wall thickness of
    :class:`Profile` (which bounds the cavities)."""
    paint(tissue, depth >= 0.0, Tissue.SKIN)
    paint(tissue, depth >= prof.skin, Tissue.FAT)
    paint(tissue, depth >= prof.skin + prof.fat, Tissue.MUSCLE)
    front_back = np.abs(y - p.cy) / np.maximum(np.hypot(x - p.cx, y - p.cy), 1e-6)
    interior = depth >= prof.skin + prof.fat + prof.muscle * (0.4 + 0.6 * front_back)
    paint(tissue, interior, Tissue.VISCERAL_FAT)
    return interior


def back_muscles(p: Patient, prof: Profile, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The paraspinal (erector spinae) muscle block: a half-ellipse from the spinal canal back to the interior's
    back wall, either side of the spinous processes. Bool mask."""
    back = p.cy + prof.interior_half_depth
    front = prof.canal_y - prof.canal_radius - 2.0
    half_width = 28.0 + 0.8 * p.paraspinal_mm
    return (y > front) & (((x - p.cx) / half_width) ** 2 + ((y - back) / (back - front)) ** 2 < 1.0)
