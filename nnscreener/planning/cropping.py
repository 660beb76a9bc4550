"""Crop a CT volume to its "dense foreground" (paper App. D; docs/method-notes.md section 1, step 1).

A voxel is dense when its HU value is at least a threshold (-500 HU). The volume is cut into blocks of about
5 mm per axis; a block counts only when *all* its voxels are dense (min-pooling), which drops the table,
clothing and other thin objects. The crop is the bounding box of the dense blocks, in voxels.

The box uses nnU-Net's convention (``[[z0, z1], [y0, y1], [x0, x1]]``, half-open, in the array's (z, y, x)
order), so it can be stored as ``bbox_used_for_cropping`` and undone by nnU-Net's ``insert_crop_into_image``.
"""
from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple

import numpy as np
from acvl_utils.cropping_and_padding.bounding_boxes import bounding_box_to_slice

_SLAB_BYTES = 64 * 2 ** 20  # bound on the temporaries of one slab of blocks


def block_size_voxels(spacing_zyx: Sequence[float], block_mm: float) -> Tuple[int, int, int]:
    """Voxels per block edge along (z, y, x): ``ceil(block_mm / spacing)``, at least 1."""
    if block_mm <= 0:
        raise ValueError(f"block_mm must be > 0, got {block_mm}")
    return tuple(max(1, math.ceil(block_mm / float(s) - 1e-6)) for s in spacing_zyx)


def dense_block_mask(image_hu: np.ndarray, block: Sequence[int], threshold_hu: float = -500.0) -> np.ndarray:
    """Min-pooled dense mask: True for blocks whose voxels are all >= ``threshold_hu``.

    Blocks start at voxel 0 of each axis. A partial block at the far end of an axis is judged on the voxels it
    has, so a body that reaches the edge of the scan is not cut.

    Args:
        image_hu: (z, y, x) array in HU.
        block: block edge in voxels, (z, y, x).
        threshold_hu: HU value a voxel needs to count as dense.

    Returns:
        (ceil(z / bz), ceil(y / by), ceil(x / bx)) bool array.
    """
    if image_hu.ndim != 3:
        raise ValueError(f"expected a (z, y, x) volume, got shape {image_hu.shape}")
    bz, by, bx = (int(b) for b in block)
    Z, Y, X = image_hu.shape
    nz, ny, nx = -(-Z // bz), -(-Y // by), -(-X // bx)
    pooled = np.empty((nz, ny, nx), dtype=bool)
    blocks_per_slab = max(1, _SLAB_BYTES // max(1, bz * Y * X * 2))
    for start in range(0, nz, blocks_per_slab):
        stop = min(start + blocks_per_slab, nz)
        dense = image_hu[start * bz:stop * bz] >= threshold_hu
        pad = ((0, (stop - start) * bz - dense.shape[0]), (0, ny * by - Y), (0, nx * bx - X))
        if any(p[1] for p in pad):
            dense = np.pad(dense, pad, constant_values=True)
        pooled[start:stop] = dense.reshape(stop - start, bz, ny, by, nx, bx).all(axis=(1, 3, 5))
    return pooled


def dense_foreground_bbox(
    image_hu: np.ndarray,
    spacing_zyx: Sequence[float],
    threshold_hu: float = -500.0,
    block_mm: float = 5.0,
) -> Optional[List[List[int]]]:
    """Bounding box of the dense blocks of a CT volume.

    Args:
        image_hu: (z, y, x) array in HU.
        spacing_zyx: voxel spacing in mm, (z, y, x).
        threshold_hu: HU value a voxel needs to count as dense.
        block_mm: block edge in mm (converted to voxels per axis with ``ceil``).

    Returns:
        ``[[z0, z1], [y0, y1], [x0, x1]]`` in voxels (half-open, clipped to the volume), or None when no block
        is dense (e.g. an all-air volume, or an image not in HU).
    """
    block = block_size_voxels(spacing_zyx, block_mm)
    pooled = dense_block_mask(image_hu, block, threshold_hu)
    if not pooled.any():
        return None
    bbox = []
    for axis, (b, size) in enumerate(zip(block, image_hu.shape)):
        other = tuple(a for a in range(3) if a != axis)
        hit = np.flatnonzero(pooled.any(axis=other))
        bbox.append([int(hit[0]) * b, min(int(hit[-1] + 1) * b, size)])
    return bbox


def crop_to_bbox(data: np.ndarray, bbox: Sequence[Sequence[int]]) -> np.ndarray:
    """Crops the last three axes of ``data`` ((c, z, y, x) or (z, y, x)) to ``bbox``; returns a view."""
    return data[(Ellipsis,) + tuple(bounding_box_to_slice([list(b) for b in bbox]))]
