"""Per-patient variation of the synthetic CT phantom: anatomy parameters and the scan that images them.

World coordinates are DICOM/ITK patient coordinates (LPS) in mm: +x towards the patient's left, +y posterior,
+z superior. The patient lies supine on the couch, which is therefore at large y. The anatomy's z origin is
the top of the right diaphragm dome; every craniocaudal landmark is scaled by the patient's ``height`` factor.
Arrays are indexed (z, y, x) like nnU-Net's; the NIfTI file stores (x, y, z).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Sequence, Tuple

import numpy as np

from nnscreener.synthetic.tissues import PHASES, sample_tissue_hu

FIELDS_OF_VIEW = ("chest", "abdomen", "both")
SIZES = ("cpu", "full")

# craniocaudal extent of each field of view, in mm at height factor 1 (before per-patient jitter)
_FOV_Z_RANGE = {"chest": (-55.0, 255.0), "abdomen": (-250.0, 35.0), "both": (-250.0, 255.0)}


@dataclass(frozen=True)
class VolumeGeometry:
    """Voxel grid of one scan.

    Attributes:
        shape_zyx: number of voxels (z, y, x).
        spacing_zyx: voxel spacing in mm (z, y, x).
        origin_xyz: world position (mm, x, y, z) of the centre of voxel (0, 0, 0); the direction is identity.
    """

    shape_zyx: Tuple[int, int, int]
    spacing_zyx: Tuple[float, float, float]
    origin_xyz: Tuple[float, float, float]

    def axis_mm(self, axis: str, start: int = 0, stop: int | None = None) -> np.ndarray:
        """World coordinates (mm, float32) of voxel centres ``start..stop-1`` along ``axis`` ("z", "y" or "x").

        Indices outside ``[0, shape)`` are allowed: they extend the grid (used for blur halos).
        """
        k = "zyx".index(axis)
        stop = self.shape_zyx[k] if stop is None else stop
        origin = self.origin_xyz[2 - k]
        return (origin + np.arange(start, stop, dtype=np.float64) * self.spacing_zyx[k]).astype(np.float32)


@dataclass(frozen=True, eq=False)
class Patient:
    """Anatomy parameters of one synthetic patient (mm unless stated; z relative to the right diaphragm dome).

    Everything anatomical is derived from these numbers by :mod:`nnscreener.synthetic.anatomy`, so the
    same patient can be rendered at any voxel spacing. Immutable and hashed by identity, so derived organ
    geometry can be cached per patient (``functools.lru_cache``).
    """

    height: float  # craniocaudal scale factor of all z landmarks
    cx: float  # world x of the body axis
    cy: float  # world y of the body axis
    half_width_chest: float
    half_depth_chest: float
    half_width_abdomen: float
    half_depth_abdomen: float
    outline_exponent: float  # superellipse exponent of the body outline (2 = ellipse)
    skin_mm: float
    fat_chest_mm: float
    fat_abdomen_mm: float
    muscle_chest_mm: float
    muscle_abdomen_mm: float
    paraspinal_mm: float  # depth of the back muscles between the interior's back wall and the spinal canal
    spine_scale: float
    kyphosis_mm: float
    vertebra_edges_z: np.ndarray  # (2 n,) sorted: [body_0_bottom, body_0_top, body_1_bottom, ...]; gaps are discs
    thoracic_centres_z: np.ndarray  # (12,) z of the vertebral bodies T1..T12 (rib levels)
    rib_drop_mm: np.ndarray  # (12,) how far each rib descends from its spine end to its front end
    dome_right_z: float
    dome_left_z: float
    mediastinum_shift_mm: float  # x shift of the mediastinum towards the left
    heart_scale: float
    heart_angle: float  # radians, rotation of the heart's long axis in the axial plane
    liver_scale: float
    spleen_scale: float
    stomach_scale: float
    stomach_gas_fraction: float  # 0 = no gas, 1 = all gas (air-fluid level position)
    kidney_scale: float
    kidney_z_right: float
    kidney_z_left: float
    has_gallbladder: bool
    pad_top_y: float  # world y of the top of the mattress under the patient
    pad_mm: float
    table_mm: float
    table_cx: float
    lung_gradient_hu: float  # gravity-dependent density increase from front to back of the lungs
    dependent_density_hu: float  # extra density in the hindmost lung (dependent atelectasis, a normal finding)


@dataclass(frozen=True)
class Acquisition:
    """How the patient was scanned.

    Attributes:
        field_of_view: "chest", "abdomen" or "both".
        geometry: the voxel grid.
        phase: contrast phase, one of :data:`~nnscreener.synthetic.tissues.PHASES`.
        mean_hu, texture_hu: (num_tissues,) float32 per-tissue mean HU and texture amplitude (HU).
        noise_sd_hu: standard deviation of the scanner noise (HU).
        noise_corr_mm: in-plane correlation length (Gaussian sigma, mm) of the noise texture.
        psf_mm: in-plane Gaussian sigma (mm) of the scanner's point spread (partial-volume blur).
        slice_fwhm_mm: full width at half maximum (mm) of the slice sensitivity profile.
    """

    field_of_view: str
    geometry: VolumeGeometry
    phase: str
    mean_hu: np.ndarray
    texture_hu: np.ndarray
    noise_sd_hu: float
    noise_corr_mm: float
    psf_mm: float
    slice_fwhm_mm: float


def _vertebra_edges(height: float, rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
    """Vertebral bodies from L5 (bottom) to C5 (top): returns (edges (2 n,), z centres of T1..T12)."""
    # (count, body height mm, disc height mm) from bottom to top: lumbar, thoracic, cervical
    regions = ((5, 28.0, 10.0), (12, 21.5, 6.0), (4, 15.0, 5.0))
    z = -290.0 * height
    edges, centres = [], []
    for count, body, disc in regions:
        for _ in range(count):
            b = body * height * rng.uniform(0.93, 1.07)
            d = disc * height * rng.uniform(0.85, 1.15)
            edges.extend((z, z + b))
            centres.append(z + b / 2)
            z += b + d
    thoracic = np.array(centres[5:17][::-1], np.float32)  # T1 first
    return np.array(edges, np.float32), thoracic


def sample_patient(rng: np.random.Generator) -> Patient:
    """Draws one patient's anatomy (body size, position, organ sizes and positions, couch)."""
    height = rng.uniform(0.9, 1.1)
    build = rng.uniform(0.86, 1.16)  # overall body size
    obesity = rng.beta(2.0, 3.0)  # 0 lean .. 1 obese: more fat, rounder abdomen
    half_width_chest = 150.0 * build * rng.uniform(0.95, 1.05)
    half_depth_chest = 105.0 * build * rng.uniform(0.93, 1.07)
    half_width_abdomen = 145.0 * build * (1.0 + 0.12 * obesity) * rng.uniform(0.95, 1.05)
    half_depth_abdomen = 105.0 * build * (1.0 + 0.2 * obesity) * rng.uniform(0.93, 1.07)
    fat = 6.0 + 30.0 * obesity
    edges, thoracic = _vertebra_edges(height, rng)
    drop = np.linspace(35.0, 110.0, 12) * height * rng.uniform(0.85, 1.15, 12)
    max_half_depth = max(half_depth_chest, half_depth_abdomen)
    return Patient(
        height=height,
        cx=rng.uniform(-20.0, 20.0),
        cy=0.0,  # placed in the field of view by sample_acquisition
        half_width_chest=half_width_chest,
        half_depth_chest=half_depth_chest,
        half_width_abdomen=half_width_abdomen,
        half_depth_abdomen=half_depth_abdomen,
        outline_exponent=rng.uniform(2.0, 2.6),
        skin_mm=rng.uniform(1.5, 2.5),
        fat_chest_mm=fat * rng.uniform(0.7, 1.0),
        fat_abdomen_mm=fat * rng.uniform(1.0, 1.4),
        muscle_chest_mm=rng.uniform(6.0, 13.0) * build,
        muscle_abdomen_mm=rng.uniform(7.0, 12.0) * build,
        paraspinal_mm=rng.uniform(38.0, 50.0) * build,
        spine_scale=rng.uniform(0.9, 1.1) * math.sqrt(build),
        kyphosis_mm=rng.uniform(0.0, 12.0),
        vertebra_edges_z=edges,
        thoracic_centres_z=thoracic,
        rib_drop_mm=drop.astype(np.float32),
        dome_right_z=rng.uniform(-5.0, 8.0) * height,
        dome_left_z=rng.uniform(-22.0, -8.0) * height,
        mediastinum_shift_mm=rng.uniform(0.0, 10.0),
        heart_scale=rng.uniform(0.88, 1.15) * math.sqrt(build),
        heart_angle=math.radians(rng.uniform(-45.0, -25.0)),
        liver_scale=rng.uniform(0.88, 1.15),
        spleen_scale=rng.uniform(0.8, 1.2),
        stomach_scale=rng.uniform(0.75, 1.15),
        stomach_gas_fraction=rng.uniform(0.0, 0.7),
        kidney_scale=rng.uniform(0.88, 1.12) * math.sqrt(build),
        kidney_z_right=rng.uniform(-135.0, -115.0) * height,
        kidney_z_left=rng.uniform(-120.0, -100.0) * height,
        has_gallbladder=bool(rng.random() < 0.85),
        pad_top_y=max_half_depth + rng.uniform(0.0, 6.0),  # relative to cy until placed
        pad_mm=rng.uniform(20.0, 45.0),
        table_mm=rng.uniform(35.0, 55.0),
        table_cx=rng.uniform(-15.0, 15.0),
        lung_gradient_hu=rng.uniform(30.0, 100.0),
        dependent_density_hu=rng.uniform(0.0, 400.0) * rng.random() ** 0.5,
    )


def _sample_spacing(size: str, fov_xy_mm: float, z_extent_mm: float, rng: np.random.Generator) -> Tuple[float, float]:
    """In-plane and slice spacing (mm). ``full``: 512 matrix (0.6-1.0 mm), 1-5 mm slices; ``cpu``: ~100-150
    voxels in plane (2.4-4 mm) and 40-100 slices (2.5-6 mm)."""
    if size == "full":
        return fov_xy_mm / 512.0, float(rng.choice([1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 5.0]))
    if size == "cpu":
        in_plane = float(np.clip(fov_xy_mm / rng.uniform(110.0, 150.0), 2.4, 4.0))
        slice_mm = float(np.clip(z_extent_mm / rng.uniform(45.0, 90.0), 2.5, 6.0))
        return in_plane, slice_mm
    raise ValueError(f"unknown size {size!r}; choose one of {list(SIZES)}")


def sample_acquisition(
    patient: Patient, size: str, fields_of_view: Sequence[str], rng: np.random.Generator
) -> Tuple[Patient, Acquisition]:
    """Draws the scan of ``patient``: field of view, grid, contrast phase, noise and blur.

    The in-plane field of view is sized to hold the whole body with a margin (0.6-1.0 mm voxels at ``full`` size
    on a 512 matrix); the patient is placed in it, which fixes ``cy`` and the couch height.

    Args:
        patient: the patient, with ``cy`` not yet placed.
        size: "cpu" (coarse grid for demos and tests) or "full" (clinical grid).
        fields_of_view: the fields of view to choose from (subset of :data:`FIELDS_OF_VIEW`).
        rng: the case's random generator.

    Returns:
        (the placed patient, its acquisition).
    """
    fov = str(rng.choice(list(fields_of_view)))
    h = patient.height
    z_lo, z_hi = _FOV_Z_RANGE[fov]
    z_lo = z_lo * h + rng.uniform(-15.0, 15.0)
    z_hi = z_hi * h + rng.uniform(-15.0, 15.0)
    half_width = max(patient.half_width_chest, patient.half_width_abdomen)
    half_depth = max(patient.half_depth_chest, patient.half_depth_abdomen)
    fov_xy = float(np.clip(2.0 * (half_width + abs(patient.cx)) * rng.uniform(1.06, 1.22), 310.0, 500.0))
    in_plane, slice_mm = _sample_spacing(size, fov_xy, z_hi - z_lo, rng)
    n_xy = int(math.ceil(fov_xy / in_plane))
    n_z = int(math.ceil((z_hi - z_lo) / slice_mm))
    half = n_xy * in_plane / 2.0
    # body fully inside the field of view (front at least 8 mm from the edge), the couch behind it
    cy_lo = -half + half_depth + 8.0
    cy_hi = max(cy_lo, half - half_depth - 30.0)
    cy = rng.uniform(cy_lo, cy_hi)
    placed = replace(patient, cy=cy, pad_top_y=cy + patient.pad_top_y)
    origin = (-half + in_plane / 2.0, -half + in_plane / 2.0, z_lo)
    geometry = VolumeGeometry((n_z, n_xy, n_xy), (slice_mm, in_plane, in_plane), origin)
    phase = str(rng.choice(PHASES, p=[0.3, 0.2, 0.5]))
    mean_hu, texture_hu = sample_tissue_hu(phase, rng)
    body_factor = half_width / 150.0  # larger patients are noisier
    acquisition = Acquisition(
        field_of_view=fov,
        geometry=geometry,
        phase=phase,
        mean_hu=mean_hu,
        texture_hu=texture_hu,
        noise_sd_hu=float(rng.uniform(6.0, 22.0) * body_factor),
        noise_corr_mm=float(rng.uniform(0.5, 1.3)),
        psf_mm=float(rng.uniform(0.35, 0.8)),
        slice_fwhm_mm=float(slice_mm * rng.uniform(1.0, 1.5)),
    )
    return placed, acquisition
