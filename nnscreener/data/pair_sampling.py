"""Two overlapping views of one case and the exact voxel pairs they share (paper 3.1; docs/method-notes.md 2.1).

Sample, then apply: :func:`sample_pair_params` draws everything random about a pair (orientation, two crop
boxes with their own per-axis scale); :func:`extract_view` and :func:`sample_positions` are deterministic given
those parameters (``sample_positions`` draws only which positions to use).

Coordinate frames (all (z, y, x), voxels):

* **Volume**: the preprocessed array ``volume[c, z, y, x]``; voxel ``q`` has its centre at coordinate ``q``.
* **Oriented frame**: the volume after the pair's shared orientation, i.e. ``np.rot90(np.flip(volume,
  flipped axes), k, axes=(y, x))`` (flips first, then ``k`` quarter turns in the axial plane). Both crop boxes
  and all positions live in this frame, exactly as if the whole volume had been flipped and rotated first (as
  the authors' later code does), but only the crop regions are ever read.
* **View**: a crop box ``[s, s + n)`` (integer start ``s``, may be negative: padded with 0) resized to ``P``
  voxels with linear interpolation (``align_corners=False``). View voxel ``j`` has its centre at oriented-frame
  coordinate ``c = s + (j + 0.5) * n / P - 0.5`` (:func:`view_to_frame`), so ``n / P`` is the view voxel size
  in volume voxels (its spacing divided by the preprocessed spacing).

Paired positions: on each axis the coarser view (larger ``n / P``) picks a voxel whose centre lies in the
overlap of the two boxes (and inside the volume); the finer view takes its nearest voxel. The two centres thus
differ by at most half a voxel of the finer view per axis, and are exact when the scales agree.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from acvl_utils.cropping_and_padding.bounding_boxes import crop_and_pad_nd

from nnscreener.errors import ScreenerError

IntZYX = Tuple[int, int, int]
OVERLAP_FRACTION_RANGE = (0.25, 1.0)  # overlap per axis as a share of the smaller crop (authors' later code)

# np.rot90(m, k, axes=(y, x)) as a signed axis permutation of (z, y, x): output axis a shows input axis
# _ROT_PERM[k][a], reversed where _ROT_REV[k][a].
_ROT_PERM = {0: (0, 1, 2), 1: (0, 2, 1), 2: (0, 1, 2), 3: (0, 2, 1)}
_ROT_REV = {0: (False, False, False), 1: (False, True, False), 2: (False, True, True), 3: (False, False, True)}


@dataclass(frozen=True)
class Orientation:
    """The pair's shared flips and axial rotation.

    Attributes:
        flip_zyx: which volume axes (z, y, x) are flipped; flips are applied first.
        rot90_k: number of ``np.rot90`` quarter turns in the (y, x) plane, applied after the flips (0..3).
    """

    flip_zyx: Tuple[bool, bool, bool] = (False, False, False)
    rot90_k: int = 0

    @property
    def axis_map(self) -> Tuple[IntZYX, Tuple[bool, bool, bool]]:
        """``(perm, rev)``: oriented axis ``a`` shows volume axis ``perm[a]``, reversed where ``rev[a]``."""
        perm = _ROT_PERM[self.rot90_k % 4]
        rev = tuple(r != self.flip_zyx[p] for p, r in zip(perm, _ROT_REV[self.rot90_k % 4]))
        return perm, rev

    def frame_shape(self, volume_shape_zyx: Sequence[int]) -> IntZYX:
        """Spatial shape (z, y, x) of the oriented volume."""
        perm, _ = self.axis_map
        return tuple(int(volume_shape_zyx[p]) for p in perm)

    def box_in_volume(self, start_zyx: Sequence[int], stop_zyx: Sequence[int],
                      volume_shape_zyx: Sequence[int]) -> list:
        """The volume box ``[[z0, z1], [y0, y1], [x0, x1]]`` (half open) holding an oriented-frame box."""
        perm, rev = self.axis_map
        box = [[0, 0], [0, 0], [0, 0]]
        for a in range(3):
            n = int(volume_shape_zyx[perm[a]])
            lo, hi = int(start_zyx[a]), int(stop_zyx[a])
            box[perm[a]] = [n - hi, n - lo] if rev[a] else [lo, hi]
        return box

    def apply(self, region: np.ndarray) -> np.ndarray:
        """Orients a (..., z, y, x) array cut out by :meth:`box_in_volume` (leading axes untouched)."""
        perm, rev = self.axis_map
        lead = region.ndim - 3
        out = np.transpose(region, tuple(range(lead)) + tuple(lead + p for p in perm))
        flips = tuple(lead + a for a in range(3) if rev[a])
        return np.flip(out, flips) if flips else out


@dataclass(frozen=True)
class CropBox:
    """A crop box in the oriented frame, in volume voxels.

    Attributes:
        start_zyx: first voxel (may be negative or beyond the volume: padded with 0).
        size_zyx: extent in voxels before resizing to the patch (>= 1 per axis).
    """

    start_zyx: IntZYX
    size_zyx: IntZYX

    @property
    def stop_zyx(self) -> IntZYX:
        return tuple(s + n for s, n in zip(self.start_zyx, self.size_zyx))

    def voxel_size(self, patch_zyx: Sequence[int]) -> Tuple[float, float, float]:
        """Size of one view voxel in volume voxels per axis, ``size / patch`` (the view's spacing factor)."""
        return tuple(n / p for n, p in zip(self.size_zyx, patch_zyx))


@dataclass(frozen=True)
class PairParams:
    """Everything random about one pair of views (see the module docstring for the frames).

    Attributes:
        volume_shape_zyx: spatial shape of the preprocessed volume.
        patch_zyx: view shape in voxels.
        orientation: shared flips and axial rot90.
        box1, box2: the two crop boxes in the oriented frame; they overlap on every axis.
    """

    volume_shape_zyx: IntZYX
    patch_zyx: IntZYX
    orientation: Orientation
    box1: CropBox
    box2: CropBox

    @property
    def frame_shape_zyx(self) -> IntZYX:
        return self.orientation.frame_shape(self.volume_shape_zyx)

    @property
    def overlap(self) -> CropBox:
        start = tuple(max(a, b) for a, b in zip(self.box1.start_zyx, self.box2.start_zyx))
        stop = tuple(min(a, b) for a, b in zip(self.box1.stop_zyx, self.box2.stop_zyx))
        return CropBox(start, tuple(e - s for s, e in zip(start, stop)))


def view_to_frame(j: np.ndarray, start: float, size: float, patch: int) -> np.ndarray:
    """Oriented-frame coordinate of the centre of view voxel(s) ``j`` on one axis (align_corners=False)."""
    return start + (np.asarray(j, dtype=np.float64) + 0.5) * size / patch - 0.5


def frame_to_view(c: np.ndarray, start: float, size: float, patch: int) -> np.ndarray:
    """Inverse of :func:`view_to_frame`: the (fractional) view voxel whose centre is at frame coordinate ``c``."""
    return (np.asarray(c, dtype=np.float64) + 0.5 - start) * patch / size - 0.5


def _check_inputs(volume_shape_zyx: Sequence[int], patch_zyx: Sequence[int],
                  spacing_factor_range: Sequence[float]) -> None:
    if len(volume_shape_zyx) != 3 or min(volume_shape_zyx) < 1:
        raise ScreenerError(f"volume shape must be 3 positive sizes (z, y, x), got {tuple(volume_shape_zyx)}")
    if len(patch_zyx) != 3 or min(patch_zyx) < 1:
        raise ScreenerError(f"patch size must be 3 positive sizes (z, y, x), got {tuple(patch_zyx)}")
    lo, hi = spacing_factor_range
    if not 0 < lo <= hi:
        raise ScreenerError(f"crop spacing factor range must satisfy 0 < low <= high, "
                            f"got {tuple(spacing_factor_range)}")


def _sample_axis(frame_size: int, patch: int, factor_range: Sequence[float],
                 rng: np.random.Generator) -> Tuple[int, int, int, int]:
    """Draws (start1, size1, start2, size2) of two overlapping crops on one oriented axis."""
    lo, hi = factor_range
    hi = max(lo, min(hi, frame_size / patch))  # no upsampling of crops bigger than the volume (authors' dev code)
    n1, n2 = (max(1, round(patch * rng.uniform(lo, hi))) for _ in range(2))
    smaller = min(n1, n2)
    # room for one coarse-view voxel centre with half a fine voxel of margin on both sides
    min_overlap = min(smaller, math.ceil((n1 + n2) / patch) + 1)
    overlap = int(np.clip(round(rng.uniform(*OVERLAP_FRACTION_RANGE) * smaller), min_overlap, smaller))
    if max(n1, n2) <= frame_size:  # both crops fit: grow the overlap until their union fits too (no padding)
        overlap = max(overlap, n1 + n2 - frame_size)
    view1_low = rng.random() < 0.5  # which view sits at the low end
    low_size = n1 if view1_low else n2
    union = n1 + n2 - overlap
    if union <= frame_size:
        u = int(rng.integers(0, frame_size - union + 1))
    else:  # a crop is larger than the volume: place the overlap on the volume, pad the rest
        u = int(rng.integers(min(0, frame_size - overlap), max(0, frame_size - overlap) + 1)) - (low_size - overlap)
    if view1_low:
        return u, n1, u + n1 - overlap, n2
    return u + n2 - overlap, n1, u, n2


def sample_pair_params(volume_shape_zyx: Sequence[int], patch_zyx: Sequence[int],
                       spacing_factor_range: Sequence[float], rng: np.random.Generator) -> PairParams:
    """Draws a pair of overlapping views of one volume.

    Per view and per axis, the view voxel size (view spacing / preprocessed spacing) is drawn from
    ``U(spacing_factor_range)`` (capped so that a crop is not larger than the volume, but never below the low
    end), and the crop extent is ``round(patch * factor)`` voxels. The overlap per axis is ``U(0.25, 1)`` times
    the smaller crop, grown when needed so that the union of both crops fits in the volume; the union is placed
    uniformly inside the volume and a coin decides which crop sits at the low end. When a crop is larger than
    the volume, the overlap is placed on the volume and the rest is zero-padded. Flips on the 3 axes and a
    quarter-turn count in the axial plane are drawn once and shared by both views.

    Args:
        volume_shape_zyx: spatial shape (z, y, x) of the preprocessed volume, in voxels.
        patch_zyx: view shape (z, y, x) in voxels (config.network.patch_size_zyx).
        spacing_factor_range: (low, high), e.g. config.ssl.crop_spacing_factor (or masked_crop_spacing_factor).
        rng: the random generator.

    Returns:
        The pair's parameters.

    Raises:
        ScreenerError: a non-positive shape or patch, or an invalid factor range.
    """
    _check_inputs(volume_shape_zyx, patch_zyx, spacing_factor_range)
    orientation = Orientation(tuple(bool(f) for f in rng.random(3) < 0.5), int(rng.integers(4)))
    frame = orientation.frame_shape(volume_shape_zyx)
    axes = [_sample_axis(frame[a], int(patch_zyx[a]), spacing_factor_range, rng) for a in range(3)]
    box1 = CropBox(tuple(ax[0] for ax in axes), tuple(ax[1] for ax in axes))
    box2 = CropBox(tuple(ax[2] for ax in axes), tuple(ax[3] for ax in axes))
    return PairParams(tuple(int(s) for s in volume_shape_zyx), tuple(int(p) for p in patch_zyx), orientation,
                      box1, box2)


def _read_oriented_box(array: Any, orientation: Orientation, start_zyx: Sequence[int],
                       stop_zyx: Sequence[int], channels: Optional[int] = None) -> np.ndarray:
    """Reads only the oriented-frame box ``[start, stop)`` of a (C, z, y, x) array (numpy or memory-mapped
    blosc2), zero-padded outside the volume, and returns it oriented; only the first ``channels`` channels if
    given."""
    box = orientation.box_in_volume(start_zyx, stop_zyx, array.shape[-3:])
    if channels is not None:
        box = [[0, int(channels)], *box]
    return orientation.apply(np.asarray(crop_and_pad_nd(array, box, pad_value=0)))


def extract_view(volume: Any, box: CropBox, patch_zyx: Sequence[int], orientation: Orientation,
                 channels: Optional[int] = None) -> torch.Tensor:
    """Cuts one view out of a volume: crop (zero-padded outside), orient, resize to the patch.

    Args:
        volume: (C, z, y, x) array, numpy or a memory-mapped blosc2 array; only the box region is read.
        box: crop box in the oriented frame.
        patch_zyx: output spatial shape (Z, Y, X).
        orientation: the pair's shared flips / rot90.
        channels: read only the first ``channels`` channels (None: all).

    Returns:
        (C, Z, Y, X) float32 tensor (linear interpolation, ``align_corners=False``), C = ``channels`` if given.
    """
    region = _read_oriented_box(volume, orientation, box.start_zyx, box.stop_zyx, channels)
    view = torch.from_numpy(np.ascontiguousarray(region, dtype=np.float32))
    if tuple(view.shape[1:]) != tuple(patch_zyx):
        view = F.interpolate(view[None], size=tuple(int(p) for p in patch_zyx), mode="trilinear",
                             align_corners=False)[0]
    return view


def extract_views(volume: Any, params: PairParams) -> Tuple[torch.Tensor, torch.Tensor]:
    """Both views of a pair, each (C, Z, Y, X) float32 (see :func:`extract_view`)."""
    return (extract_view(volume, params.box1, params.patch_zyx, params.orientation),
            extract_view(volume, params.box2, params.patch_zyx, params.orientation))


def _anchor_indices(lo: int, hi: int, start: int, size: int, patch: int, margin: float) -> np.ndarray:
    """View voxels whose centres lie in frame coordinates [lo + margin, hi - 1 - margin] (at least one)."""
    for m in (margin, 0.0):
        first = math.ceil(frame_to_view(lo + m, start, size, patch) - 1e-9)
        last = math.floor(frame_to_view(hi - 1 - m, start, size, patch) + 1e-9)
        first, last = max(first, 0), min(last, patch - 1)
        if first <= last:
            return np.arange(first, last + 1)
    middle = frame_to_view((lo + hi - 1) / 2, start, size, patch)
    return np.array([int(np.clip(np.floor(middle + 0.5), 0, patch - 1))])


def _body_candidates(body_mask: Any, orientation: Orientation, centres: Sequence[np.ndarray]) -> Optional[np.ndarray]:
    """Flat indices into the candidate grid of the candidates inside the body, or None when there are none.

    Args:
        body_mask: (z, y, x) or (1, z, y, x) array in volume coordinates, > 0 inside the body.
        orientation: the pair's shared flips / rot90 (the grid lives in the oriented frame).
        centres: per axis (z, y, x), the candidates' centres in frame coordinates (voxels), shape (g_axis,).
    """
    nearest = [np.floor(c + 0.5 + 1e-6).astype(np.int64) for c in centres]  # centres' volume voxels
    start = [int(q.min()) for q in nearest]
    stop = [int(q.max()) + 1 for q in nearest]
    region = _read_oriented_box(body_mask, orientation, start, stop)
    region = region.reshape(region.shape[-3:]) > 0
    inside = region[np.ix_(*[q - s for q, s in zip(nearest, start)])]  # (gz, gy, gx) bool
    return np.flatnonzero(inside) if inside.any() else None


def sample_positions(params: PairParams, body_mask: Optional[Any], n: int,
                     rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
    """Draws ``n`` positions in the overlap of the two views and returns their voxel indices in each view.

    On each axis the coarser view's voxels whose centres lie inside the overlap (intersected with the volume,
    with half a finer voxel of margin) form the candidate grid; positions are drawn uniformly with replacement
    from the candidates that fall inside the body (nearest volume voxel), or from all candidates when there is
    no body mask or no body voxel in the overlap. The finer view takes the voxel nearest to the same point.

    Args:
        params: the pair.
        body_mask: None, or a (z, y, x) or (1, z, y, x) array in volume coordinates (numpy or blosc2, > 0 inside
            the body, e.g. the preprocessed ``_seg.b2nd``); only the overlap region is read.
        n: number of positions.
        rng: the random generator.

    Returns:
        ``idx1``, ``idx2``: (n, 3) int64 voxel indices (z, y, x) into view 1 / view 2, which show the same
        point of the scan up to half a voxel of the finer view per axis.
    """
    if n < 1:
        raise ScreenerError(f"number of positions must be >= 1, got {n}")
    patch, frame, ov = params.patch_zyx, params.frame_shape_zyx, params.overlap
    # per axis: (coarse box, fine box, coarse is view 1)
    roles = [(params.box1, params.box2, True) if params.box1.size_zyx[a] >= params.box2.size_zyx[a]
             else (params.box2, params.box1, False) for a in range(3)]
    anchors, centres = [], []
    for a, (coarse, fine, _) in enumerate(roles):
        lo, hi = ov.start_zyx[a], ov.stop_zyx[a]
        if min(hi, frame[a]) > max(lo, 0):  # keep positions inside the volume when the overlap reaches it
            lo, hi = max(lo, 0), min(hi, frame[a])
        margin = 0.5 * fine.size_zyx[a] / patch[a]
        j = _anchor_indices(lo, hi, coarse.start_zyx[a], coarse.size_zyx[a], patch[a], margin)
        anchors.append(j)
        centres.append(view_to_frame(j, coarse.start_zyx[a], coarse.size_zyx[a], patch[a]))
    grid_shape = tuple(len(j) for j in anchors)

    candidates = None if body_mask is None else _body_candidates(body_mask, params.orientation, centres)
    if candidates is None:
        flat = rng.integers(0, int(np.prod(grid_shape)), size=n)
    else:
        flat = candidates[rng.integers(0, candidates.size, size=n)]
    grid_idx = np.unravel_index(flat, grid_shape)

    idx1 = np.empty((n, 3), dtype=np.int64)
    idx2 = np.empty((n, 3), dtype=np.int64)
    for a, (coarse, fine, coarse_is_1) in enumerate(roles):
        j_coarse = anchors[a][grid_idx[a]]
        j_fine = np.floor(frame_to_view(centres[a][grid_idx[a]], fine.start_zyx[a], fine.size_zyx[a], patch[a]) + 0.5)
        j_fine = np.clip(j_fine, 0, patch[a] - 1).astype(np.int64)
        (idx1 if coarse_is_1 else idx2)[:, a] = j_coarse
        (idx2 if coarse_is_1 else idx1)[:, a] = j_fine
    return idx1, idx2
