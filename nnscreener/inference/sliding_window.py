"""Sliding-window tiling of a preprocessed volume and blending of per-patch maps into one volume map.

The loop itself lives in :mod:`nnscreener.inference.predictor`; this module only says where the windows go
(:func:`iter_windows`, with nnU-Net's own step rule), pads volumes smaller than a patch (:func:`pad_to_patch`,
with acvl_utils' ``pad_nd_image``) and blends (:class:`Stitcher`, a float32 accumulator with nnU-Net's cached
Gaussian, as the authors' code, or uniform weights, as the paper's text).

Axis order: volumes are (c, z, y, x) arrays / tensors and (z, y, x) shapes; batches are (B, 1, Z, Y, X).
"""
from __future__ import annotations

from dataclasses import dataclass
from itertools import product
from typing import Iterator, List, Sequence, Tuple, Union

import numpy as np
import torch
from acvl_utils.cropping_and_padding.padding import pad_nd_image
from nnunetv2.inference.sliding_window_prediction import compute_gaussian, compute_steps_for_sliding_window

from nnscreener.config import BLENDINGS
from nnscreener.errors import ScreenerError

Window = Tuple[slice, slice, slice]  # (z, y, x) slices of one patch in the (padded) volume
ShapeZYX = Tuple[int, int, int]

# nnU-Net's Gaussian width: sigma = patch edge / 8 per axis
GAUSSIAN_SIGMA_SCALE = 1.0 / 8


def iter_windows(shape_zyx: Sequence[int], patch_zyx: Sequence[int], step: float) -> Iterator[Window]:
    """Yields the patch windows that tile a volume, z outermost, x innermost.

    Window starts follow nnU-Net's ``compute_steps_for_sliding_window``: per axis, the fewest starts with a stride
    of at most ``step * patch`` voxels, spread evenly from 0 to ``shape - patch``, so the windows cover every
    voxel and the last one ends at the border.

    Args:
        shape_zyx: volume shape (z, y, x) in voxels; every axis at least the patch's (pad first, see
            :func:`pad_to_patch`).
        patch_zyx: patch shape (z, y, x) in voxels.
        step: stride as a fraction of the patch, in (0, 1]; 0.5 means half-overlapping windows.

    Yields:
        (z, y, x) tuples of slices, each exactly ``patch_zyx`` long.
    """
    if not 0 < step <= 1:
        raise ScreenerError(f"step size must lie in (0, 1], got {step}")
    if len(shape_zyx) != 3 or len(patch_zyx) != 3:
        raise ValueError(f"expected 3D (z, y, x) shapes, got volume {tuple(shape_zyx)} and patch {tuple(patch_zyx)}")
    if any(s < p for s, p in zip(shape_zyx, patch_zyx)):
        raise ValueError(f"volume {tuple(shape_zyx)} is smaller than the patch {tuple(patch_zyx)} (z, y, x); "
                         f"pad it with pad_to_patch first")
    starts = compute_steps_for_sliding_window(tuple(shape_zyx), tuple(patch_zyx), step)
    for start_zyx in product(*starts):
        yield tuple(slice(s, s + p) for s, p in zip(start_zyx, patch_zyx))


@dataclass(frozen=True)
class PaddedVolume:
    """A volume padded to at least one patch.

    Attributes:
        data: (c, Z, Y, X) padded volume, same type and device as the input.
        offset_zyx: voxels added before the content on each axis; a window starting at ``s`` in the padded volume
            starts at ``s - offset`` in the unpadded one (negative inside the padding).
        crop: slices that remove the padding from a (Z, Y, X) map of the padded volume.
    """

    data: Union[torch.Tensor, np.ndarray]
    offset_zyx: ShapeZYX
    crop: Window


def pad_to_patch(data: Union[torch.Tensor, np.ndarray], patch_zyx: Sequence[int], value: float = 0.0) -> PaddedVolume:
    """Pads a (c, z, y, x) volume with a constant to at least ``patch_zyx``, keeping the content centred.

    Axes already as large as the patch are left alone. The default value 0 is air in the [0, 1] intensity
    scale (-1000 HU), as nnU-Net's predictor pads with 0.
    """
    kwargs = {"value": value} if isinstance(data, torch.Tensor) else {"constant_values": value}
    padded, slicer = pad_nd_image(data, tuple(patch_zyx), "constant", kwargs, True, None)
    crop = tuple(slicer[1:])
    return PaddedVolume(padded, tuple(int(s.start) for s in crop), crop)


def blending_weights(patch_zyx: Sequence[int], blending: str, device: Union[str, torch.device]) -> torch.Tensor:
    """Per-voxel weights of one patch's values in the blend, shape (Z, Y, X) float32.

    ``"uniform"`` is plain averaging (the paper); ``"gaussian"`` is nnU-Net's importance map
    (``compute_gaussian``, sigma = patch / 8, peak 1, no zeros), cached per patch, dtype and device.
    """
    if blending not in BLENDINGS:
        raise ScreenerError(f"blending={blending!r} is not one of {list(BLENDINGS)}")
    device = torch.device(device)
    if blending == "uniform":
        return torch.ones(tuple(patch_zyx), dtype=torch.float32, device=device)
    return compute_gaussian(tuple(int(p) for p in patch_zyx), sigma_scale=GAUSSIAN_SIGMA_SCALE,
                            value_scaling_factor=1.0, dtype=torch.float32, device=device)


class Stitcher:
    """Blends per-patch maps into one (Z, Y, X) map: the weighted mean of all patch values at each voxel.

    Accumulates ``sum_w w * value`` and ``sum_w w`` in float32 on ``device`` (never fp16: NLLs in nats reach
    thousands and fp16 sums saturate).

    Example:
        >>> s = Stitcher((4, 2, 2), (3, 2, 2), "uniform", "cpu")
        >>> s.add(torch.ones(1, 1, 3, 2, 2), [(slice(0, 3), slice(0, 2), slice(0, 2))])
        >>> s.add(torch.full((1, 1, 3, 2, 2), 3.0), [(slice(1, 4), slice(0, 2), slice(0, 2))])
        >>> s.result()[:, 0, 0].tolist()
        [1.0, 2.0, 2.0, 3.0]
    """

    def __init__(self, shape_zyx: Sequence[int], patch_zyx: Sequence[int], blending: str,
                 device: Union[str, torch.device]) -> None:
        self.shape_zyx = tuple(int(s) for s in shape_zyx)
        self.patch_zyx = tuple(int(p) for p in patch_zyx)
        self.device = torch.device(device)
        self.weights = blending_weights(self.patch_zyx, blending, self.device)  # (Z, Y, X)
        self.weighted_sum = torch.zeros(self.shape_zyx, dtype=torch.float32, device=self.device)
        self.weight_sum = torch.zeros(self.shape_zyx, dtype=torch.float32, device=self.device)

    def add(self, values: torch.Tensor, windows: Sequence[Window]) -> None:
        """Adds a batch of patch maps.

        Args:
            values: (B, 1, Z, Y, X) maps at patch resolution (any float dtype, any device; cast to float32 on
                the stitcher's device).
            windows: B windows (z, y, x slices of the volume), one per map, in batch order.
        """
        if values.ndim != 5 or values.shape[1] != 1 or values.shape[2:] != self.patch_zyx:
            raise ValueError(f"expected values of shape (B, 1, {', '.join(map(str, self.patch_zyx))}), "
                             f"got {tuple(values.shape)}")
        if values.shape[0] != len(windows):
            raise ValueError(f"{values.shape[0]} patch maps but {len(windows)} windows")
        values = values.to(device=self.device, dtype=torch.float32)
        for value, window in zip(values[:, 0], windows):
            self.weighted_sum[window] += value * self.weights
            self.weight_sum[window] += self.weights

    def result(self) -> torch.Tensor:
        """The blended (Z, Y, X) float32 map on the stitcher's device.

        Divides in place (no second volume in memory), so call it once, after the last :meth:`add`.

        Raises:
            RuntimeError: some voxel was covered by no window (an internal error of the tiling).
        """
        if not bool((self.weight_sum > 0).all()):
            raise RuntimeError("the windows did not cover the whole volume")
        return self.weighted_sum.div_(self.weight_sum)


def batched(windows: Iterator[Window], batch_size: int) -> Iterator[List[Window]]:
    """Groups windows into lists of at most ``batch_size`` (the last one may be shorter)."""
    if batch_size < 1:
        raise ScreenerError(f"inference batch size must be at least 1, got {batch_size}")
    batch: List[Window] = []
    for window in windows:
        batch.append(window)
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch
