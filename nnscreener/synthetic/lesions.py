"""Lesions with exact masks, of kinds that intensity alone does not give away.

=====  ======================  ======================================================================
label  kind                    appearance
=====  ======================  ======================================================================
1      solid_lung_nodule       lobulated soft-tissue blob (15-55 HU, +0-30 with contrast) in the lung,
                               the attenuation of the vessels around it
2      ground_glass_opacity    hazy irregular raise of lung attenuation to -700..-450 HU, vessels kept
3      liver_hypodense_lesion  20-40 HU below the patient's liver
4      kidney_mass             solid (below the enhancing cortex) or cystic (0-20 HU), may bulge out
5      lytic_bone_lesion       soft tissue (20-70 HU) replacing cancellous bone of the spine/sternum
6      air_collection          pneumothorax (air rim in front of a lung, no vessels) or free abdominal air
=====  ======================  ======================================================================

A lesion's label is exactly the set of voxels whose anatomy it changed (its shape clipped to its host tissues),
before blur and noise. Coordinates are world mm (x, y, z); arrays are (z, y, x).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, FrozenSet, List, Optional, Sequence, Tuple

import numpy as np

from nnscreener.synthetic.abdomen import kidneys, liver_lobes
from nnscreener.synthetic.anatomy import organ_map, pleural_radius2
from nnscreener.synthetic.body import profile
from nnscreener.synthetic.patient import Acquisition, Patient
from nnscreener.synthetic.thorax import lung_side
from nnscreener.synthetic.tissues import Tissue

T = Tissue
LESION_KINDS: Dict[int, str] = {
    1: "solid_lung_nodule",
    2: "ground_glass_opacity",
    3: "liver_hypodense_lesion",
    4: "kidney_mass",
    5: "lytic_bone_lesion",
    6: "air_collection",
}
LUNG_KINDS = frozenset({1, 2})
ABDOMEN_KINDS = frozenset({3, 4})
LUNG_TISSUES = frozenset({T.LUNG, T.PULMONARY_VESSEL, T.AIRWAY_WALL, T.AIRWAY_LUMEN})
# 26 unit directions (to the faces, edges and corners of a cube) for probing a lesion's surroundings
_DIRECTIONS = np.array([d for d in np.ndindex(3, 3, 3) if d != (1, 1, 1)], np.float32) - 1.0
_DIRECTIONS /= np.linalg.norm(_DIRECTIONS, axis=1, keepdims=True)


@dataclass(frozen=True)
class Lesion:
    """One lesion.

    Attributes:
        kind: label value, a key of :data:`LESION_KINDS`.
        centre: (x, y, z) mm.
        radii: (x, y, z) half axes in mm (for rims: thickness, half width, half height).
        host: tissues the lesion may occupy.
        hu: lesion attenuation (HU).
        texture_hu: amplitude of its smooth texture (HU).
        raise_only: True for ground glass: the lesion raises darker voxels to ``hu`` and keeps brighter ones
            (vessels inside it).
        lobes: (k, 4) lobulation terms (unit direction x, y, z, amplitude) of a blob; empty for rims.
        rim: "" for a blob, "pleural" or "peritoneal" for an air rim along the cavity wall.
        side: lung side of a pleural rim (1 right, 2 left).
    """

    kind: int
    centre: Tuple[float, float, float]
    radii: Tuple[float, float, float]
    host: FrozenSet[int]
    hu: float
    texture_hu: float
    raise_only: bool = False
    lobes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    rim: str = ""
    side: int = 0

    def describe(self) -> dict:
        return {
            "label": self.kind,
            "kind": LESION_KINDS[self.kind],
            "centre_xyz_mm": [round(float(v), 1) for v in self.centre],
            "radii_mm": [round(float(v), 1) for v in self.radii],
            "hu": round(float(self.hu), 1),
        }

    def mask(self, p: Patient, x: np.ndarray, y: np.ndarray, z: np.ndarray, tissue: np.ndarray) -> np.ndarray:
        """Where the lesion is, on a grid: (nz, ny, nx) bool for axes z (nz, 1, 1), y (1, ny, 1), x (1, 1, nx)
        and the grid's tissue map (before the lesion)."""
        shape_ok = self._rim_shape(p, x, y, z) if self.rim else self._blob_shape(x, y, z)
        return np.broadcast_to(shape_ok, tissue.shape) & np.isin(tissue, list(self.host))

    def _blob_shape(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        dx, dy, dz = x - self.centre[0], y - self.centre[1], z - self.centre[2]
        r = np.sqrt((dx / self.radii[0]) ** 2 + (dy / self.radii[1]) ** 2 + (dz / self.radii[2]) ** 2)
        if not len(self.lobes):
            return r < 1.0
        norm = np.maximum(np.sqrt(dx**2 + dy**2 + dz**2), 1e-6)
        bound = np.ones_like(r)
        for ux, uy, uz, amp in self.lobes:
            bound = bound + amp * np.cos(3.0 * (dx * ux + dy * uy + dz * uz) / norm + 7.0 * amp)
        return r < bound

    def _rim_shape(self, p: Patient, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        thickness, half_width, half_height = self.radii
        along = np.clip(1.0 - ((z - self.centre[2]) / half_height) ** 2, 0.0, 1.0)  # crescent: thickest mid-way
        prof = profile(p, z)
        front = np.clip((0.3 - (y - p.cy) / prof.cavity_half_depth_front) / 1.3, 0.0, 1.0)  # air rises to the front
        r2 = pleural_radius2(p, x, y, z)
        radius = np.hypot(x - p.cx, y - p.cy)
        depth = (1.0 - np.sqrt(r2)) * radius / np.maximum(np.sqrt(r2), 1e-6)  # mm inside the cavity wall
        inside = (depth >= 0.0) & (depth < thickness * np.sqrt(along) * front)
        if self.rim == "pleural":
            return inside & (lung_side(p, x) == self.side)
        lateral = np.clip(1.0 - ((x - self.centre[0]) / half_width) ** 2, 0.0, 1.0)
        return inside & (depth < thickness * np.sqrt(along * lateral) * front)

    def bbox_xyz(self) -> Optional[Tuple[np.ndarray, np.ndarray]]:
        """World bounding box (lo, hi) of a blob (None for rims, which are bounded in z only)."""
        if self.rim:
            return None
        reach = 1.0 + float(np.abs(self.lobes[:, 3]).sum()) if len(self.lobes) else 1.0
        r = np.asarray(self.radii) * reach
        return np.asarray(self.centre) - r, np.asarray(self.centre) + r

    def z_range(self) -> Tuple[float, float]:
        r = self.radii[2] * (1.0 + (float(np.abs(self.lobes[:, 3]).sum()) if len(self.lobes) else 0.0))
        return self.centre[2] - r, self.centre[2] + r

    def apply(self, hu: np.ndarray, mask: np.ndarray, texture: np.ndarray) -> None:
        """Writes the lesion's attenuation into ``hu`` (HU, float32) where ``mask``, in place.

        ``texture``: unit-variance smooth field on the same grid."""
        value = self.hu + self.texture_hu * texture[mask]
        hu[mask] = np.maximum(hu[mask], value) if self.raise_only else value


def _lobes(rng: np.random.Generator, n: int, amplitude: float) -> np.ndarray:
    d = rng.standard_normal((n, 3))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    return np.column_stack([d, rng.uniform(0.3, 1.0, n) * amplitude]).astype(np.float32)


def _fov_z(acq: Acquisition) -> Tuple[float, float]:
    g = acq.geometry
    z0 = g.origin_xyz[2]
    return z0, z0 + (g.shape_zyx[0] - 1) * g.spacing_zyx[0]


def _place_blob(p: Patient, acq: Acquisition, box: Tuple[np.ndarray, np.ndarray], centre_tissues: Sequence[int],
                probe_tissues: Sequence[int], radius: float, min_inside: float, rng: np.random.Generator,
                margin_z: float) -> Optional[np.ndarray]:
    """A centre (x, y, z) in ``centre_tissues`` whose sphere of ``radius`` lies mostly (``min_inside``) in
    ``probe_tissues``, inside the field of view; None if none of the tried candidates fits."""
    z_lo, z_hi = _fov_z(acq)
    lo, hi = np.array(box[0], np.float64), np.array(box[1], np.float64)
    lo[2], hi[2] = max(lo[2], z_lo + margin_z), min(hi[2], z_hi - margin_z)
    if np.any(hi <= lo):
        return None
    for _ in range(3):
        pts = rng.uniform(lo, hi, size=(3000, 3)).astype(np.float32)
        pts = pts[np.isin(organ_map(p, pts[:, 0], pts[:, 1], pts[:, 2]), list(centre_tissues))][:40]
        if not len(pts):
            continue
        probes = (pts[:, None, :] + radius * _DIRECTIONS[None]).reshape(-1, 3)
        inside = np.isin(organ_map(p, probes[:, 0], probes[:, 1], probes[:, 2]), list(probe_tissues))
        share = inside.reshape(len(pts), -1).mean(axis=1)
        good = np.nonzero(share >= min_inside)[0]
        if len(good):
            return pts[good[0]].astype(np.float64)
    return None


def _trunk_box(p: Patient, z_lo: float, z_hi: float) -> Tuple[np.ndarray, np.ndarray]:
    w = max(p.half_width_chest, p.half_width_abdomen)
    d = max(p.half_depth_chest, p.half_depth_abdomen)
    return np.array([p.cx - w, p.cy - d, z_lo]), np.array([p.cx + w, p.cy + d, z_hi])


def _radii(r: float, rng: np.random.Generator) -> Tuple[float, float, float]:
    return tuple(float(v) for v in r * rng.uniform(0.8, 1.2, 3))


def place_lesion(kind: int, p: Patient, acq: Acquisition, rng: np.random.Generator) -> Optional[Lesion]:
    """Draws a lesion of ``kind`` at a valid place in the patient's field of view; None if the organ it needs is
    not (enough) in view."""
    h = p.height
    mean = acq.mean_hu
    contrast = acq.phase != "unenhanced"
    if kind in (1, 2):
        r = rng.uniform(4.0, 14.0) if kind == 1 else rng.uniform(6.0, 20.0)
        centre = _place_blob(p, acq, _trunk_box(p, -100.0 * h, 240.0 * h), [T.LUNG], [T.LUNG], r,
                             0.85 if kind == 1 else 0.7, rng, r)
        if centre is None:
            return None
        if kind == 1:
            hu = rng.uniform(15.0, 55.0) + (rng.uniform(0.0, 30.0) if contrast else 0.0)
            return Lesion(1, tuple(centre), _radii(r, rng), LUNG_TISSUES, hu, 6.0, lobes=_lobes(rng, 4, 0.12))
        return Lesion(2, tuple(centre), _radii(r, rng), LUNG_TISSUES, rng.uniform(-700.0, -450.0), 25.0,
                      raise_only=True, lobes=_lobes(rng, 5, 0.2))
    if kind == 3:
        lobes = liver_lobes(p)
        box = (np.min([np.subtract(l.centre, l.radii) for l in lobes], axis=0),
               np.max([np.add(l.centre, l.radii) for l in lobes], axis=0))
        r = rng.uniform(5.0, 28.0)
        centre = _place_blob(p, acq, box, [T.LIVER], [T.LIVER], r, 0.85, rng, 0.5 * r)
        if centre is None:
            return None
        hu = float(mean[T.LIVER]) - rng.uniform(20.0, 40.0)
        return Lesion(3, tuple(centre), _radii(r, rng), frozenset({T.LIVER, T.VENOUS_BLOOD}), hu, 5.0,
                      lobes=_lobes(rng, 3, 0.08))
    if kind == 4:
        ks = kidneys(p)
        box = (np.min([np.subtract(k.centre, k.radii) for k in ks], axis=0),
               np.max([np.add(k.centre, k.radii) for k in ks], axis=0))
        r = rng.uniform(8.0, 24.0)
        kidney = [T.KIDNEY_CORTEX, T.KIDNEY_MEDULLA]
        centre = _place_blob(p, acq, box, kidney, kidney + [T.VISCERAL_FAT], r, 0.9, rng, 0.5 * r)
        if centre is None:
            return None
        if rng.random() < 0.35:  # cyst
            hu, texture = rng.uniform(0.0, 20.0), 3.0
        elif contrast:
            hu, texture = max(40.0, float(mean[T.KIDNEY_CORTEX]) - rng.uniform(40.0, 90.0)), 10.0
        else:
            hu, texture = rng.uniform(25.0, 45.0), 6.0
        host = frozenset({T.KIDNEY_CORTEX, T.KIDNEY_MEDULLA, T.VISCERAL_FAT})
        return Lesion(4, tuple(centre), _radii(r, rng), host, hu, texture, lobes=_lobes(rng, 3, 0.1))
    if kind == 5:
        z_lo, z_hi = _fov_z(acq)
        lo, hi = _trunk_box(p, z_lo, z_hi)
        lo[0], hi[0] = p.cx - 30.0, p.cx + 30.0
        r = rng.uniform(5.0, 14.0)
        bone = [T.CANCELLOUS_BONE, T.CORTICAL_BONE]
        centre = _place_blob(p, acq, (lo, hi), [T.CANCELLOUS_BONE], bone, r, 0.5, rng, 0.5 * r)
        if centre is None:
            return None
        return Lesion(5, tuple(centre), _radii(r, rng), frozenset(bone), rng.uniform(20.0, 70.0), 8.0,
                      lobes=_lobes(rng, 3, 0.12))
    if kind == 6:
        return _place_air(p, acq, rng)
    raise ValueError(f"unknown lesion kind {kind}; choose one of {sorted(LESION_KINDS)}")


def _place_air(p: Patient, acq: Acquisition, rng: np.random.Generator) -> Optional[Lesion]:
    """A pneumothorax when lungs are in view (or a coin says so), else free air under the abdominal wall."""
    h = p.height
    z_lo, z_hi = _fov_z(acq)
    lung_lo, lung_hi = max(z_lo, 0.0), min(z_hi, 200.0 * h)
    abd_lo, abd_hi = max(z_lo, -200.0 * h), min(z_hi, -30.0 * h)
    options = []
    if lung_hi - lung_lo > 60.0:
        options.append("pleural")
    if abd_hi - abd_lo > 50.0:
        options.append("peritoneal")
    if not options:
        return None
    rim = str(rng.choice(options))
    air = -1000.0 + rng.uniform(0.0, 10.0)
    if rim == "pleural":
        half_height = min(rng.uniform(30.0, 80.0), 0.5 * (lung_hi - lung_lo))
        zc = rng.uniform(lung_lo + half_height, lung_hi - half_height)
        side = int(rng.integers(1, 3))
        xc = p.cx + (-1.0 if side == 1 else 1.0) * 0.5 * p.half_width_chest
        return Lesion(6, (xc, p.cy, zc), (rng.uniform(6.0, 20.0), 0.0, half_height), LUNG_TISSUES, air, 3.0,
                      rim="pleural", side=side)
    half_height = min(rng.uniform(25.0, 60.0), 0.5 * (abd_hi - abd_lo))
    zc = rng.uniform(abd_lo + half_height, abd_hi - half_height)
    host = frozenset({T.VISCERAL_FAT, T.BOWEL_WALL, T.BOWEL_FLUID, T.BOWEL_GAS, T.FECES, T.LIVER})
    xc = p.cx + rng.uniform(-40.0, 40.0)
    return Lesion(6, (xc, p.cy, zc), (rng.uniform(5.0, 15.0), rng.uniform(30.0, 70.0), half_height), host, air, 3.0,
                  rim="peritoneal")


def kinds_in_view(field_of_view: str) -> List[int]:
    """Lesion kinds that can appear in a field of view ("chest", "abdomen" or "both")."""
    if field_of_view == "chest":
        return sorted(set(LESION_KINDS) - ABDOMEN_KINDS)
    if field_of_view == "abdomen":
        return sorted(set(LESION_KINDS) - LUNG_KINDS)
    return sorted(LESION_KINDS)


def sample_lesions(p: Patient, acq: Acquisition, required: Sequence[int], rng: np.random.Generator) -> List[Lesion]:
    """The lesions of one case: every ``required`` kind (first, in that order) plus random others, 1-3 in all.

    Raises:
        RuntimeError: when a required kind cannot be placed (internal: the field of view is chosen to hold it).
    """
    n_total = max(len(required), int(rng.integers(1, 4)))
    lesions = []
    for kind in required:
        lesion = place_lesion(kind, p, acq, rng)
        if lesion is None:
            raise RuntimeError(f"could not place a required {LESION_KINDS[kind]} in a {acq.field_of_view} scan")
        lesions.append(lesion)
    candidates = kinds_in_view(acq.field_of_view)
    attempts = 0
    while len(lesions) < n_total and attempts < 10:
        attempts += 1
        lesion = place_lesion(int(rng.choice(candidates)), p, acq, rng)
        if lesion is not None:
            lesions.append(lesion)
    return lesions
