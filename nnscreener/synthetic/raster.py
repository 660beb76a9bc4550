"""Rasterising onto a voxel grid: tube segments with partial volume, and smooth random texture fields.

Both work on one z-range (a chunk) of a :class:`~nnscreener.synthetic.patient.VolumeGeometry` at a time
and give the same values for a voxel whichever chunk it is rendered in, so large volumes can be generated slab
by slab. Arrays are (z, y, x); world coordinates are mm.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np

from nnscreener.synthetic.patient import VolumeGeometry

TRUNCATE = 4.0  # lattice steps: support of the texture interpolation weights


@dataclass(frozen=True)
class Tubes:
    """Straight tube segments (capsules).

    Attributes:
        start, end: (n, 3) float32 world coordinates (x, y, z) in mm of the segment ends.
        radius: (n,) float32 radius in mm.
    """

    start: np.ndarray
    end: np.ndarray
    radius: np.ndarray

    @staticmethod
    def empty() -> "Tubes":
        return Tubes(np.zeros((0, 3), np.float32), np.zeros((0, 3), np.float32), np.zeros(0, np.float32))

    @staticmethod
    def from_path(points_xyz: np.ndarray, radii: np.ndarray) -> "Tubes":
        """Segments joining consecutive points of a polyline (m, 3); ``radii`` (m,) at the points (each segment
        takes the mean of its ends)."""
        points = np.asarray(points_xyz, np.float32)
        r = np.asarray(radii, np.float32)
        return Tubes(points[:-1], points[1:], 0.5 * (r[:-1] + r[1:]))

    @staticmethod
    def concat(*parts: "Tubes") -> "Tubes":
        return Tubes(*(np.concatenate([getattr(t, f) for t in parts]) for f in ("start", "end", "radius")))

    def __len__(self) -> int:
        return len(self.radius)


def _chunk_axes(geometry: VolumeGeometry, k0: int, k1: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    return geometry.axis_mm("z", k0, k1), geometry.axis_mm("y"), geometry.axis_mm("x")


Slices = Tuple[slice, slice, slice]


def box_slices(geometry: VolumeGeometry, k0: int, k1: int, lo: np.ndarray, hi: np.ndarray) -> Optional[Slices]:
    """(z, y, x) index slices, relative to slice k0, of the voxels inside the world box [lo, hi] (x, y, z, mm);
    None when the box misses slices k0..k1-1."""
    out = []
    for axis, a0, a1 in (("z", k0, k1), ("y", 0, None), ("x", 0, None)):
        coords = geometry.axis_mm(axis, a0, a1)
        k = "xyz".index(axis)
        i0, i1 = int(np.searchsorted(coords, lo[k])), int(np.searchsorted(coords, hi[k], side="right"))
        if i1 <= i0:
            return None
        out.append(slice(i0, i1))
    return tuple(out)


def tube_fraction(tubes: Tubes, geometry: VolumeGeometry, k0: int, k1: int) -> Optional[Tuple[np.ndarray, Slices]]:
    """Fraction (0..1) of each voxel of slices ``k0..k1-1`` covered by ``tubes``, within the tubes' bounding box.

    Tubes at least half as thick as the largest voxel edge are drawn by their distance field with a one-voxel
    soft edge. Thinner tubes are point-sampled along their axis and their volume is splatted trilinearly, so a
    sub-voxel vessel adds its true volume fraction (partial volume) instead of vanishing or filling a voxel.

    Returns:
        ``(fraction, (sz, sy, sx))``: float32 fractions of the voxels ``[sz, sy, sx]`` of the slab (index slices
        relative to slice k0); None when the tubes do not reach the slab.
    """
    if not len(tubes):
        return None
    spacing_xyz = np.array(geometry.spacing_zyx[::-1], np.float32)
    reach = tubes.radius[:, None] + 2.0 * spacing_xyz
    lo = (np.minimum(tubes.start, tubes.end) - reach).min(axis=0)
    hi = (np.maximum(tubes.start, tubes.end) + reach).max(axis=0)
    slices = box_slices(geometry, k0, k1, lo, hi)
    if slices is None:
        return None
    sz, sy, sx = slices
    first_z = geometry.axis_mm("z", k0 + sz.start, k0 + sz.start + 1)[0]
    origin = (float(geometry.axis_mm("x")[sx.start]), float(geometry.axis_mm("y")[sy.start]), float(first_z))
    sub = VolumeGeometry((sz.stop - sz.start, sy.stop - sy.start, sx.stop - sx.start), geometry.spacing_zyx, origin)
    out = np.zeros(sub.shape_zyx, np.float32)
    thin = tubes.radius < 0.5 * float(spacing_xyz.max())
    if thin.any():
        _splat(Tubes(tubes.start[thin], tubes.end[thin], tubes.radius[thin]), sub, 0, sub.shape_zyx[0], out)
    np.minimum(out, 1.0, out=out)
    thick = ~thin
    if thick.any():
        _draw_thick(Tubes(tubes.start[thick], tubes.end[thick], tubes.radius[thick]), sub, 0, sub.shape_zyx[0], out)
    return out, (sz, sy, sx)


def _splat(tubes: Tubes, geometry: VolumeGeometry, k0: int, k1: int, out: np.ndarray) -> None:
    spacing_xyz = np.array(geometry.spacing_zyx[::-1], np.float64)
    origin = np.array(geometry.origin_xyz, np.float64)
    step = 0.5 * spacing_xyz.min()
    length = np.linalg.norm(tubes.end - tubes.start, axis=1).astype(np.float64)
    n = np.maximum(1, np.ceil(length / step)).astype(np.int64)
    seg = np.repeat(np.arange(len(n)), n)
    frac = (np.arange(n.sum()) - np.repeat(np.cumsum(n) - n, n) + 0.5) / np.repeat(n, n)
    points = tubes.start[seg] + frac[:, None] * (tubes.end[seg] - tubes.start[seg])  # (m, 3) xyz
    volume = (math.pi * tubes.radius.astype(np.float64) ** 2 * length / n)[seg] / float(np.prod(spacing_xyz))
    index = (points - origin) / spacing_xyz  # continuous voxel index (x, y, z)
    index[:, 2] -= k0
    base = np.floor(index).astype(np.int64)
    w = index - base
    nz, ny, nx = out.shape
    flat = out.reshape(-1)
    for corner in range(8):
        o = np.array([(corner >> 0) & 1, (corner >> 1) & 1, (corner >> 2) & 1])
        ix, iy, iz = (base + o).T
        weight = np.prod(np.where(o, w, 1.0 - w), axis=1) * volume
        ok = (ix >= 0) & (ix < nx) & (iy >= 0) & (iy < ny) & (iz >= 0) & (iz < nz)
        np.add.at(flat, (iz[ok] * ny + iy[ok]) * nx + ix[ok], weight[ok].astype(np.float32))


def _draw_thick(tubes: Tubes, geometry: VolumeGeometry, k0: int, k1: int, out: np.ndarray) -> None:
    z_ax, y_ax, x_ax = _chunk_axes(geometry, k0, k1)
    spacing = np.array(geometry.spacing_zyx[::-1], np.float32)  # x, y, z
    edge = float(spacing[:2].mean())  # width of the soft edge
    lo = np.minimum(tubes.start, tubes.end) - tubes.radius[:, None] - spacing
    hi = np.maximum(tubes.start, tubes.end) + tubes.radius[:, None] + spacing
    axes = (x_ax, y_ax, z_ax)
    for i in range(len(tubes)):
        sl = []
        for a in range(3):
            i0 = int(np.searchsorted(axes[a], lo[i, a]))
            i1 = int(np.searchsorted(axes[a], hi[i, a], side="right"))
            if i1 <= i0:
                break
            sl.append(slice(i0, i1))
        if len(sl) < 3:
            continue
        sx, sy, sz = sl
        a, b, r = tubes.start[i], tubes.end[i], float(tubes.radius[i])
        px = x_ax[sx][None, None, :] - a[0]
        py = y_ax[sy][None, :, None] - a[1]
        pz = z_ax[sz][:, None, None] - a[2]
        ab = b - a
        denom = float(ab @ ab)
        t = (px * ab[0] + py * ab[1] + pz * ab[2]) / denom if denom > 0 else np.zeros((1, 1, 1), np.float32)
        np.clip(t, 0.0, 1.0, out=t)
        d = np.sqrt((px - t * ab[0]) ** 2 + (py - t * ab[1]) ** 2 + (pz - t * ab[2]) ** 2)
        f = np.clip(0.5 + (r - d) / edge, 0.0, 1.0)
        region = out[sz, sy, sx]
        np.maximum(region, f, out=region)


class SmoothField:
    """A smooth, unit-variance Gaussian random field fixed in world coordinates.

    White noise on a lattice of spacing ``sigma_mm`` is interpolated with Gaussian weights (sigma = one lattice
    step, truncated at ``TRUNCATE`` steps), separably along x, y and z; each voxel's weights are normalised to
    unit L2 norm, so the field has unit variance everywhere. Values depend only on the position, never on the
    chunking.
    """

    def __init__(self, lo_xyz: np.ndarray, hi_xyz: np.ndarray, sigma_mm: float, rng: np.random.Generator):
        self.sigma = float(sigma_mm)
        margin = (TRUNCATE + 1.0) * self.sigma
        self.origin = np.asarray(lo_xyz, np.float64) - margin
        counts = np.ceil((np.asarray(hi_xyz, np.float64) + margin - self.origin) / self.sigma).astype(int) + 1
        self.values = rng.standard_normal((counts[2], counts[1], counts[0])).astype(np.float32)  # (z, y, x)

    def _weights(self, coords: np.ndarray, axis: int) -> Tuple[np.ndarray, int, int]:
        """Interpolation weights (len(coords), l1 - l0) restricted to the lattice rows l0..l1 that matter."""
        grid = self.origin[axis] + self.sigma * np.arange(self.values.shape[2 - axis])
        l0 = max(0, int(np.floor((coords.min() - self.origin[axis]) / self.sigma - TRUNCATE)))
        l1 = min(len(grid), int(np.ceil((coords.max() - self.origin[axis]) / self.sigma + TRUNCATE)) + 1)
        offset = (coords[:, None] - grid[None, l0:l1]) / self.sigma
        w = np.where(np.abs(offset) <= TRUNCATE, np.exp(-0.5 * offset**2), 0.0)  # fixed support: chunk-independent
        w /= np.sqrt((w**2).sum(axis=1, keepdims=True))
        return w.astype(np.float32), l0, l1

    def sample(self, z_mm: np.ndarray, y_mm: np.ndarray, x_mm: np.ndarray) -> np.ndarray:
        """Field values on the grid spanned by the 1-D axes; returns (len(z), len(y), len(x)) float32."""
        wz, z0, z1 = self._weights(np.asarray(z_mm, np.float64), 2)
        wy, y0, y1 = self._weights(np.asarray(y_mm, np.float64), 1)
        wx, x0, x1 = self._weights(np.asarray(x_mm, np.float64), 0)
        v = self.values[z0:z1, y0:y1, x0:x1]
        v = v @ wx.T  # (lz, ly, nx)
        v = wy @ v  # (lz, ny, nx)
        return np.tensordot(wz, v, axes=1)  # (nz, ny, nx)
