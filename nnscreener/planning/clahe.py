"""3D contrast-limited adaptive histogram equalization (CLAHE) with scikit-image's semantics, vectorized.

Screener applies ``skimage.exposure.equalize_adapthist(volume, clip_limit=0.05)`` to each whole resampled
volume (docs/method-notes.md, section 1). This module computes the same transform (same grey-level
quantization, tiles, clipping with skimage's redistribution rule, and multilinear interpolation of the tile
mappings) without skimage's full-volume int64/float64 intermediates: tile histograms are counted slab by slab
and the mappings are interpolated separably (z, then y, then x), so the extra memory is a few bytes per voxel
and the run time a fraction of skimage's. ``tests/planning/test_clahe.py`` checks it against skimage.

Axis order: volumes are (z, y, x) like nnU-Net arrays; the algorithm treats every axis alike.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import numpy as np

GREY_LEVELS = 2 ** 14  # skimage quantizes the input to this many levels before binning
_SLAB_BYTES = 32 * 2 ** 20  # target size of per-slab temporaries


def clahe_3d(
    volume: np.ndarray,
    clip_limit: float = 0.01,
    nbins: int = 256,
    kernel_size: Optional[Sequence[int]] = None,
) -> np.ndarray:
    """CLAHE of a 3D volume, equivalent to ``skimage.exposure.equalize_adapthist``.

    Args:
        volume: (z, y, x) float array with values in [0, 1] (e.g. HU clipped to a window and rescaled).
        clip_limit: histogram clip limit as a fraction of the voxels of a tile (skimage's ``clip_limit``);
            0 disables clipping (plain adaptive equalization).
        nbins: number of histogram bins (skimage's ``nbins``).
        kernel_size: tile edge per axis in voxels, (z, y, x); default ``max(shape // 8, 1)`` per axis.

    Returns:
        (z, y, x) float32 volume in [0, 1].

    Raises:
        ValueError: the volume is not 3D, holds NaN or values outside [0, 1], or the arguments are invalid.
    """
    volume = np.asarray(volume)
    if volume.ndim != 3:
        raise ValueError(f"clahe_3d expects a (z, y, x) volume, got shape {volume.shape}")
    if nbins < 2:
        raise ValueError(f"nbins must be >= 2, got {nbins}")
    if clip_limit < 0:
        raise ValueError(f"clip_limit must be >= 0, got {clip_limit}")
    kernel = _kernel_size(volume.shape, kernel_size)

    bins = _grey_bins(volume, nbins)
    n_per_tile = int(np.prod(kernel))
    clip_count = max(int(clip_limit * n_per_tile), 1) if clip_limit > 0 else n_per_tile
    hist = _tile_histograms(bins, kernel, nbins)  # (tz, ty, tx, nbins)
    tiles_shape = hist.shape[:3]
    hist = _clip_and_redistribute(hist.reshape(-1, nbins), clip_count)
    maps = _cumulative_maps(hist, n_per_tile).reshape(*tiles_shape, nbins)
    levels = _interpolate_maps(bins, maps, kernel)
    return _rescale_to_unit(levels)


def _kernel_size(shape: Tuple[int, ...], kernel_size: Optional[Sequence[int]]) -> Tuple[int, int, int]:
    if kernel_size is None:
        return tuple(max(s // 8, 1) for s in shape)
    if np.isscalar(kernel_size):
        kernel_size = (int(kernel_size),) * 3
    if len(kernel_size) != 3 or any(int(k) < 1 for k in kernel_size):
        raise ValueError(f"kernel_size must be three positive ints (z, y, x), got {kernel_size}")
    return tuple(int(k) for k in kernel_size)


def _slab_planes(plane_bytes: int) -> int:
    return max(1, _SLAB_BYTES // max(plane_bytes, 1))


def _grey_bins(volume: np.ndarray, nbins: int) -> np.ndarray:
    """Quantizes [0, 1] intensities like skimage: 16-bit integers, min-max stretched to GREY_LEVELS levels (a
    constant volume keeps its 16-bit level, capped), then integer-divided into bins of ``1 + GREY_LEVELS // nbins``
    levels.

    Returns:
        (z, y, x) bin index per voxel, uint8 (uint16 when nbins > 256).
    """
    lo, hi = float(np.min(volume)), float(np.max(volume))
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise ValueError("clahe_3d: the volume holds NaN or infinite values")
    if lo < 0.0 or hi > 1.0:
        raise ValueError(f"clahe_3d expects values in [0, 1], got [{lo}, {hi}]")
    u16 = np.iinfo(np.uint16).max
    # 16-bit quantization as skimage's img_as_uint: rint(x * 65535), in the input's float precision
    compute = np.float32 if volume.dtype.itemsize <= 4 else np.float64
    umin = float(np.rint(np.asarray(lo, dtype=compute) * u16))
    umax = float(np.rint(np.asarray(hi, dtype=compute) * u16))
    bin_size = 1 + GREY_LEVELS // nbins
    bins = np.empty(volume.shape, dtype=np.uint8 if nbins <= 256 else np.uint16)
    step = _slab_planes(volume[0].size * 8)
    for z0 in range(0, volume.shape[0], step):
        u = np.rint(np.multiply(volume[z0:z0 + step], u16, dtype=compute)).astype(np.float64)
        if umax > umin:
            levels = np.round((u - umin) / (umax - umin) * (GREY_LEVELS - 1))
        else:
            levels = np.minimum(u, GREY_LEVELS - 1)
        bins[z0:z0 + step] = levels.astype(np.int64) // bin_size
    return bins


def _tile_histograms(bins: np.ndarray, kernel: Tuple[int, int, int], nbins: int) -> np.ndarray:
    """Histograms of the contextual regions: tile j of an axis covers voxels [j*k, (j+1)*k), the volume being
    reflect-padded at its far end up to a whole number of tiles (skimage's layout).

    Returns:
        (tz, ty, tx, nbins) int64 counts, tz = ceil(z / kz) etc.
    """
    n_tiles = tuple(-(-s // k) for s, k in zip(bins.shape, kernel))
    pad = [(0, n * k - s) for n, k, s in zip(n_tiles, kernel, bins.shape)]
    padded = np.pad(bins, pad, mode="reflect") if any(p[1] for p in pad) else bins
    kz, ky, kx = kernel
    tile_yx = ((np.arange(padded.shape[1]) // ky)[:, None] * n_tiles[2]
               + (np.arange(padded.shape[2]) // kx)[None, :]).astype(np.int64) * nbins
    hist = np.empty((n_tiles[0], n_tiles[1] * n_tiles[2] * nbins), dtype=np.int64)
    for tz in range(n_tiles[0]):
        slab = padded[tz * kz:(tz + 1) * kz]
        hist[tz] = np.bincount((slab + tile_yx[None]).ravel(), minlength=hist.shape[1])
    return hist.reshape(*n_tiles, nbins)


def _clip_and_redistribute(hist: np.ndarray, clip_count: int) -> np.ndarray:
    """Clips every tile histogram at ``clip_count`` and spreads the excess over the bins, following skimage's
    rule (a uniform increment, then single counts at a stride over the bins still under the limit).

    Args:
        hist: (tiles, nbins) int64 counts; modified in place.

    Returns:
        The clipped (tiles, nbins) histograms.
    """
    n_bins = hist.shape[1]
    over = hist > clip_count
    n_excess = np.where(over, hist - clip_count, 0).sum(axis=1)
    hist[over] = clip_count

    increment = n_excess // n_bins
    upper = clip_count - increment
    low = hist < upper[:, None]
    n_excess -= low.sum(axis=1) * increment
    hist += low * increment[:, None]
    mid = (hist >= upper[:, None]) & (hist < clip_count)
    n_excess += np.where(mid, hist - clip_count, 0).sum(axis=1)
    hist[mid] = clip_count

    bin_index = np.arange(n_bins)
    active = n_excess > 0
    while active.any():
        before = n_excess.copy()
        for start in range(n_bins):
            rows = np.flatnonzero(active & (n_excess > 0))
            if rows.size == 0:
                break
            under = hist[rows] < clip_count
            stride = np.maximum(1, under.sum(axis=1) // n_excess[rows])
            picked = under & (bin_index >= start) & ((bin_index - start) % stride[:, None] == 0)
            hist[rows] += picked
            n_excess[rows] -= picked.sum(axis=1)
        active = (n_excess > 0) & (n_excess != before)
    return hist


def _cumulative_maps(hist: np.ndarray, n_per_tile: int) -> np.ndarray:
    """Grey-level mapping of each tile: the scaled cumulative histogram, truncated to integer levels.

    Returns:
        (tiles, nbins) float32 levels in [0, GREY_LEVELS - 1].
    """
    maps = np.cumsum(hist, axis=1).astype(np.float64)
    maps *= (GREY_LEVELS - 1) / n_per_tile
    np.minimum(maps, GREY_LEVELS - 1, out=maps)
    return maps.astype(np.int64).astype(np.float32)


def _axis_neighbours(size: int, k: int, n_tiles: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each voxel index of one axis: the two tiles whose mappings are blended and the weight of the second.

    Voxel i sits at offset ``(i + k // 2) % k`` inside interpolation block ``(i + k // 2) // k``, which lies
    between the centres of tiles ``block - 1`` and ``block`` (clamped at the borders).
    """
    position = np.arange(size) + k // 2
    block = position // k
    lower = np.clip(block - 1, 0, n_tiles - 1)
    upper = np.clip(block, 0, n_tiles - 1)
    weight = ((position % k) / k).astype(np.float32)
    return lower, upper, weight


def _interpolate_maps(bins: np.ndarray, maps: np.ndarray, kernel: Tuple[int, int, int]) -> np.ndarray:
    """Multilinear blend of the tile mappings at each voxel's bin, truncated to integer levels.

    Args:
        bins: (z, y, x) bin index per voxel.
        maps: (tz, ty, tx, nbins) float32 tile mappings.

    Returns:
        (z, y, x) float32 integer-valued levels.
    """
    Z, Y, X = bins.shape
    tz, ty, tx, nb = maps.shape
    z0, z1, wz = _axis_neighbours(Z, kernel[0], tz)
    y0, y1, wy = _axis_neighbours(Y, kernel[1], ty)
    x0, x1, wx = _axis_neighbours(X, kernel[2], tx)
    # flat offsets into a (Y, tx, nb) table of row mappings, per (y, x), for the two x-neighbour tiles
    row = np.arange(Y, dtype=np.int64)[:, None] * tx
    base0 = (row + x0[None, :]) * nb
    base1 = (row + x1[None, :]) * nb
    wy = wy[:, None, None]
    out = np.empty(bins.shape, dtype=np.float32)
    step = _slab_planes(Y * tx * nb * 4 * 3)
    for start in range(0, Z, step):
        sl = slice(start, min(start + step, Z))
        w = wz[sl][:, None, None, None]
        plane_maps = (1 - w) * maps[z0[sl]] + w * maps[z1[sl]]  # (s, ty, tx, nb)
        row_maps = (1 - wy) * plane_maps[:, y0] + wy * plane_maps[:, y1]  # (s, Y, tx, nb)
        for i, z in enumerate(range(sl.start, sl.stop)):
            flat = row_maps[i].ravel()
            b = bins[z].astype(np.int64)
            out[z] = (1 - wx) * flat[base0 + b] + wx * flat[base1 + b]
    np.floor(out, out=out)
    return out


def _rescale_to_unit(levels: np.ndarray) -> np.ndarray:
    """Min-max rescale to [0, 1] in place (skimage's final ``rescale_intensity``; a constant result is clipped
    into [0, 1] as skimage does)."""
    lo, hi = float(levels.min()), float(levels.max())
    if hi == lo:
        return np.full(levels.shape, min(max(lo, 0.0), 1.0), dtype=np.float32)
    levels -= lo
    levels /= hi - lo  # division (not a reciprocal product) keeps the maximum at exactly 1
    return levels
