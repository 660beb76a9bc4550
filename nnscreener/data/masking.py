"""Random block masking of a view, for the condition model only (paper 3.2; docs/method-notes.md 2.3).

The patch is split into ``round(1 / block_fraction)`` blocks per axis (4 x 4 x 4 = 64 blocks by default, a
quarter of each side; block edges at ``floor(k * side / n)`` so the blocks tile any patch exactly). With
probability ``probability`` a view is masked: ``int(ratio * n_blocks)`` distinct blocks are set to 0. Each view
draws its own mask; at inference the mask is all ones.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from nnscreener.errors import ScreenerError


def blocks_per_axis(side: int, block_fraction: float) -> int:
    """Number of blocks along one patch axis: ``round(1 / block_fraction)``, at most one per voxel."""
    return int(min(side, max(1, round(1.0 / block_fraction))))


def block_edges(side: int, block_fraction: float) -> np.ndarray:
    """Block boundaries along one axis: ``n + 1`` voxel indices from 0 to ``side`` (half-open blocks)."""
    n = blocks_per_axis(side, block_fraction)
    return (np.arange(n + 1) * side) // n


def _check(patch_zyx: Sequence[int], block_fraction: float, ratio: float, probability: float) -> None:
    if len(patch_zyx) != 3 or min(patch_zyx) < 1:
        raise ScreenerError(f"patch size must be 3 positive sizes (z, y, x), got {tuple(patch_zyx)}")
    if not 0 < block_fraction <= 1:
        raise ScreenerError(f"masking.block_fraction must lie in (0, 1], got {block_fraction}")
    if not 0 <= ratio <= 1:
        raise ScreenerError(f"masking.ratio must lie in [0, 1], got {ratio}")
    if not 0 <= probability <= 1:
        raise ScreenerError(f"masking.probability must lie in [0, 1], got {probability}")


def random_block_mask(patch_zyx: Sequence[int], block_fraction: float, ratio: float, probability: float,
                      rng: np.random.Generator) -> torch.Tensor:
    """Draws one view's block mask.

    Args:
        patch_zyx: view shape (Z, Y, X) in voxels.
        block_fraction: block edge as a fraction of each patch side (config.ssl.masking.block_fraction).
        ratio: share of blocks zeroed (config.ssl.masking.ratio).
        probability: chance that the view is masked at all (config.ssl.masking.probability).
        rng: the random generator.

    Returns:
        (Z, Y, X) float32 tensor, 1 visible / 0 masked; all ones when the view is not masked.

    Raises:
        ScreenerError: a fraction, ratio or probability outside its range.
    """
    _check(patch_zyx, block_fraction, ratio, probability)
    if rng.random() >= probability:
        return torch.ones(tuple(int(p) for p in patch_zyx), dtype=torch.float32)
    edges = [block_edges(int(p), block_fraction) for p in patch_zyx]
    blocks = np.ones(tuple(len(e) - 1 for e in edges), dtype=np.float32)  # (bz, by, bx) block grid
    blocks.flat[rng.choice(blocks.size, size=int(ratio * blocks.size), replace=False)] = 0.0
    for axis, e in enumerate(edges):
        blocks = np.repeat(blocks, np.diff(e), axis=axis)
    return torch.from_numpy(blocks)


def complementary_block_masks(patch_zyx: Sequence[int], block_fraction: float, passes: int) -> torch.Tensor:
    """``passes`` block masks of a patch in which every voxel is masked in exactly one (inference-time masking).

    The training block grid is split into ``passes`` groups by ``(iz + iy + ix) mod passes`` of each block's grid
    index (a 3D checkerboard for 2 passes), so the visible neighbours of a masked block surround it on every side
    and each pass masks about ``1 / passes`` of the patch (2 passes: 50%, close to training's 60%).

    Args:
        patch_zyx: patch shape (Z, Y, X) in voxels.
        block_fraction: block edge as a fraction of each patch side (config.ssl.masking.block_fraction).
        passes: K >= 2.

    Returns:
        (K, Z, Y, X) float32, 1 visible / 0 masked; the masks sum to K - 1 at every voxel.
    """
    if passes < 2:
        raise ScreenerError(f"complementary masking needs at least 2 passes, got {passes}")
    _check(patch_zyx, block_fraction, 0.0, 1.0)
    edges = [block_edges(int(p), block_fraction) for p in patch_zyx]
    grid = np.indices(tuple(len(e) - 1 for e in edges)).sum(axis=0) % passes  # (bz, by, bx) group of each block
    for axis, e in enumerate(edges):
        grid = np.repeat(grid, np.diff(e), axis=axis)
    return torch.from_numpy(np.stack([(grid != k) for k in range(passes)]).astype(np.float32))
