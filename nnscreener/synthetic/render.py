"""Renders a phantom (patient, scan, tubes, lesions) into an int16 CT volume and its lesion label, slab by slab.

Per slab of slices (plus a halo for the blur): implicit anatomy -> per-tissue HU with smooth texture -> tubes
blended by their partial-volume fraction -> lesions -> partial-volume blur -> correlated noise -> int16 HU.
Every step depends on world position (or on the slab's own noise seed), so memory stays bounded by the slab
size whatever the volume size. Arrays are (z, y, x).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Tuple

import numpy as np

from nnscreener.synthetic.anatomy import organ_map
from nnscreener.synthetic.body import profile
from nnscreener.synthetic.lesions import Lesion
from nnscreener.synthetic.noise import blur_halo, correlated_noise, partial_volume_blur
from nnscreener.synthetic.patient import Acquisition, Patient, VolumeGeometry
from nnscreener.synthetic.raster import Slices, SmoothField, box_slices, tube_fraction
from nnscreener.synthetic.tissues import Tissue
from nnscreener.synthetic.tubes import TubeFamily

HU_RANGE = (-1024, 3071)  # int16 range stored, as by clinical scanners
SLAB_VOXELS = 8_000_000  # voxels per slab (excluding halo); bounds memory to a few hundred MB


@dataclass(frozen=True)
class Phantom:
    """Everything needed to render one case."""

    patient: Patient
    acquisition: Acquisition
    tubes: List[TubeFamily]
    lesions: List[Lesion]
    fine_texture: SmoothField  # ~4 mm grain (parenchyma)
    coarse_texture: SmoothField  # ~20 mm undulation
    noise_seed: np.random.SeedSequence  # slab i uses spawn_key + (i,)


def make_textures(geometry: VolumeGeometry, halo: int, rng: np.random.Generator) -> Tuple[SmoothField, SmoothField]:
    """The two smooth texture fields covering the grid and its halo."""
    nz, ny, nx = geometry.shape_zyx
    sz, sy, sx = geometry.spacing_zyx
    ox, oy, oz = geometry.origin_xyz
    lo = np.array([ox, oy, oz - halo * sz])
    hi = np.array([ox + (nx - 1) * sx, oy + (ny - 1) * sy, oz + (nz - 1 + halo) * sz])
    return SmoothField(lo, hi, 4.0, rng), SmoothField(lo, hi, 20.0, rng)


def grid_axes(geometry: VolumeGeometry, k0: int, k1: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """World axes of slices k0..k1-1 shaped for broadcasting: z (n, 1, 1), y (1, ny, 1), x (1, 1, nx)."""
    return (geometry.axis_mm("z", k0, k1)[:, None, None], geometry.axis_mm("y")[None, :, None],
            geometry.axis_mm("x")[None, None, :])


def lesion_region(lesion: Lesion, geometry: VolumeGeometry, k0: int, k1: int) -> Optional[Slices]:
    """Index slices (relative to k0) of the part of slices k0..k1-1 that may hold ``lesion``; None if none."""
    box = lesion.bbox_xyz()
    if box is None:
        z_lo, z_hi = lesion.z_range()
        big = 1e9
        box = (np.array([-big, -big, z_lo]), np.array([big, big, z_hi]))
    return box_slices(geometry, k0, k1, *box)


def lesion_voxels_in_anatomy(lesion: Lesion, patient: Patient, geometry: VolumeGeometry) -> int:
    """Voxels the lesion would occupy in the implicit anatomy (before tubes): a cheap visibility check."""
    region = lesion_region(lesion, geometry, 0, geometry.shape_zyx[0])
    if region is None:
        return 0
    z, y, x = grid_axes(geometry, 0, geometry.shape_zyx[0])
    sz, sy, sx = region
    z, y, x = z[sz], y[:, sy], x[:, :, sx]
    return int(lesion.mask(patient, x, y, z, organ_map(patient, x, y, z)).sum())


def _blend_tubes(family: TubeFamily, acq: Acquisition, geometry: VolumeGeometry, e0: int, e1: int,
                 y_axis: np.ndarray, tissue: np.ndarray, hu: np.ndarray, texture: np.ndarray) -> None:
    """Mixes the family's HU into ``hu`` by its partial-volume fraction on host voxels; relabels voxels it covers
    at least half. ``tissue``, ``hu``, ``texture``: (e1 - e0, ny, nx) arrays of the slab, changed in place."""
    rendered = tube_fraction(family.tubes, geometry, e0, e1)
    if rendered is None:
        return
    f, (sz, sy, sx) = rendered
    sub_tissue, sub_hu = tissue[sz, sy, sx], hu[sz, sy, sx]
    idx = np.nonzero(f)
    host = np.isin(sub_tissue[idx], list(family.host))
    idx = tuple(i[host] for i in idx)
    ids = np.full(len(idx[0]), int(family.tissue), np.uint8)
    if family.gas_level_y is not None:
        ids[y_axis[sy][idx[1]] < family.gas_level_y] = Tissue.BOWEL_GAS
    target = acq.mean_hu[ids] + acq.texture_hu[ids] * texture[sz, sy, sx][idx]
    frac = f[idx]
    sub_hu[idx] += frac * (target - sub_hu[idx])
    covered = frac >= 0.5
    sub_tissue[tuple(i[covered] for i in idx)] = ids[covered]


def render_slab(ph: Phantom, k0: int, k1: int, slab_index: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Renders slices k0..k1-1.

    Returns:
        (hu int16 (n, ny, nx), lesion label uint8 (n, ny, nx), tissue ids uint8 (n, ny, nx)), n = k1 - k0.
    """
    p, acq = ph.patient, ph.acquisition
    g = acq.geometry
    halo = blur_halo(acq)
    e0, e1 = k0 - halo, k1 + halo
    z, y, x = grid_axes(g, e0, e1)
    tissue = organ_map(p, x, y, z)
    texture = 0.6 * ph.fine_texture.sample(z.ravel(), y.ravel(), x.ravel())
    texture += 0.8 * ph.coarse_texture.sample(z.ravel(), y.ravel(), x.ravel())
    hu = acq.mean_hu[tissue] + acq.texture_hu[tissue] * texture
    prof = profile(p, z)
    front = p.cy - prof.cavity_half_depth_front
    dependent = np.clip((y - front) / (prof.cavity_half_depth_front + prof.cavity_half_depth_back), 0.0, 1.0)
    # gravity: lungs are denser towards the back, steeply so in the hindmost centimetres (dependent atelectasis)
    lung = tissue == Tissue.LUNG
    gravity = p.lung_gradient_hu * dependent + p.dependent_density_hu * dependent**10
    hu[lung] += np.broadcast_to(gravity, hu.shape)[lung]
    z_lo, z_hi = float(z.min()), float(z.max())
    for family in ph.tubes:
        t = family.tubes
        if not len(t):
            continue
        reach = float(t.radius.max()) + 2.0 * g.spacing_zyx[0]
        tube_z = np.concatenate([t.start[:, 2], t.end[:, 2]])
        if tube_z.min() - reach > z_hi or tube_z.max() + reach < z_lo:
            continue
        _blend_tubes(family, acq, g, e0, e1, y.ravel(), tissue, hu, texture)
    label = np.zeros(tissue.shape, np.uint8)
    for lesion in ph.lesions:
        region = lesion_region(lesion, g, e0, e1)
        if region is None:
            continue
        sz, sy, sx = region
        sub_tissue = tissue[sz, sy, sx]
        mask = lesion.mask(p, x[:, :, sx], y[:, sy], z[sz], sub_tissue)
        sub_hu = hu[sz, sy, sx]
        lesion.apply(sub_hu, mask, texture[sz, sy, sx])
        label[sz, sy, sx][mask] = lesion.kind
    hu = partial_volume_blur(hu, acq)[halo:-halo]
    seed = ph.noise_seed
    rng = np.random.default_rng(np.random.SeedSequence(seed.entropy, spawn_key=tuple(seed.spawn_key) + (slab_index,)))
    hu += correlated_noise(hu.shape, acq, rng)
    np.clip(np.rint(hu), HU_RANGE[0], HU_RANGE[1], out=hu)
    return hu.astype(np.int16), label[halo:-halo], tissue[halo:-halo]


def render(ph: Phantom, with_tissue: bool = False) -> Tuple[np.ndarray, np.ndarray, Optional[np.ndarray]]:
    """Renders the whole volume slab by slab.

    Returns:
        (image int16 HU (z, y, x), lesion label uint8 (z, y, x), tissue ids uint8 (z, y, x) or None).
    """
    nz, ny, nx = ph.acquisition.geometry.shape_zyx
    image = np.empty((nz, ny, nx), np.int16)
    label = np.empty((nz, ny, nx), np.uint8)
    tissue = np.empty((nz, ny, nx), np.uint8) if with_tissue else None
    per_slab = max(1, SLAB_VOXELS // (ny * nx))
    for i, k0 in enumerate(range(0, nz, per_slab)):
        k1 = min(nz, k0 + per_slab)
        image[k0:k1], label[k0:k1], t = render_slab(ph, k0, k1, i)
        if tissue is not None:
            tissue[k0:k1] = t
    return image, label, tissue
