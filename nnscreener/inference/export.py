"""From pooled NLL maps to a float32 image in the input scan's own geometry.

Per patch, the density's pooled map is upsampled trilinearly to the patch (:func:`upsample_to_patch`, before
blending, as the paper does). The blended map lives in the preprocessed space (cropped to the body box, resampled
to the config spacing); :func:`map_to_original_geometry` inverts that with nnU-Net's own functions and the case's
properties (as nnU-Net's export does): ``resampling_fn_probabilities`` to
``shape_after_cropping_and_before_resampling``, ``insert_crop_into_image`` at ``bbox_used_for_cropping``, then
``transpose_backward``. :func:`write_map` writes it with SimpleITK and ``properties['sitk_stuff']``, so size,
spacing, origin and direction equal the input's.

Voxels outside the body (the preprocessing's body mask, resampled back) and outside the crop get the map's
minimum inside the body, so they never rank above a body voxel. Outside-body values are replaced *before*
resampling too, so air scores do not bleed into the body's edge.

Axis order: maps are (z, y, x) in nnU-Net's (transposed) order in the preprocessed space and in SimpleITK's
array order (z, y, x) after :func:`map_to_original_geometry`; values are NLL in nats.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence, Tuple, Union

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn.functional as F
from acvl_utils.cropping_and_padding.bounding_boxes import insert_crop_into_image

from nnscreener.errors import ScreenerError

# resampled body-mask values at or above this count as body (linear interpolation of a 0/1 mask)
BODY_THRESHOLD = 0.5


def upsample_to_patch(pooled: torch.Tensor, patch_zyx: Sequence[int]) -> torch.Tensor:
    """Trilinear upsampling of pooled patch maps to the patch size.

    Args:
        pooled: (B, 1, z', y', x') pooled NLL maps in nats (any float dtype).
        patch_zyx: patch shape (Z, Y, X) in voxels.

    Returns:
        (B, 1, Z, Y, X) float32 maps (``align_corners=False``: pooled values sit at their block centres).
    """
    if pooled.ndim != 5:
        raise ValueError(f"expected pooled maps of shape (B, 1, z, y, x), got {tuple(pooled.shape)}")
    pooled = pooled.float()
    if tuple(pooled.shape[2:]) == tuple(patch_zyx):
        return pooled
    return F.interpolate(pooled, size=tuple(int(p) for p in patch_zyx), mode="trilinear", align_corners=False)


def fill_outside_body(map_zyx: np.ndarray, body_zyx: np.ndarray) -> Tuple[np.ndarray, float]:
    """Sets the map outside the body to its minimum inside the body.

    Args:
        map_zyx: (z, y, x) float map.
        body_zyx: (z, y, x) bool body mask of the same shape.

    Returns:
        The filled float32 map (a new array) and the fill value; with an empty body the fill value is the
        minimum of the whole map.
    """
    if map_zyx.shape != body_zyx.shape:
        raise ValueError(f"map {map_zyx.shape} and body mask {body_zyx.shape} differ in shape")
    inside = map_zyx[body_zyx]
    fill = float(inside.min()) if inside.size else float(map_zyx.min())
    return np.where(body_zyx, map_zyx, np.float32(fill)).astype(np.float32, copy=False), fill


def map_to_original_geometry(map_zyx: np.ndarray, body_zyx: np.ndarray, properties: Mapping[str, Any],
                             plans_manager, configuration_manager) -> np.ndarray:
    """Takes a preprocessed-space map back to the input image's voxel grid.

    Args:
        map_zyx: (z, y, x) float map on the preprocessed grid (the shape of the preprocessed data).
        body_zyx: (z, y, x) bool body mask on the same grid.
        properties: the case's nnU-Net properties (``spacing``, ``shape_before_cropping``,
            ``bbox_used_for_cropping``, ``shape_after_cropping_and_before_resampling``).
        plans_manager: nnU-Net ``PlansManager`` of the plans the case was preprocessed with.
        configuration_manager: its ``ConfigurationManager`` (spacing, ``resampling_fn_probabilities``).

    Returns:
        float32 array of ``shape_before_cropping`` transposed back, i.e. the input's array as SimpleITK reads it
        ((z, y, x) for a 3D image); outside the body and outside the crop it holds the body's minimum.
    """
    map_zyx, fill = fill_outside_body(np.asarray(map_zyx, dtype=np.float32), np.asarray(body_zyx, dtype=bool))
    original_spacing = [properties["spacing"][i] for i in plans_manager.transpose_forward]
    both = np.stack([map_zyx, body_zyx.astype(np.float32)])  # (2, z, y, x): map, body
    del map_zyx
    both = configuration_manager.resampling_fn_probabilities(
        both, properties["shape_after_cropping_and_before_resampling"], configuration_manager.spacing,
        original_spacing)
    if isinstance(both, torch.Tensor):
        both = both.cpu().numpy()
    cropped = np.where(both[1] >= BODY_THRESHOLD, both[0], np.float32(fill)).astype(np.float32, copy=False)
    del both
    full = np.full(properties["shape_before_cropping"], fill, dtype=np.float32)
    full = insert_crop_into_image(full, cropped, properties["bbox_used_for_cropping"])
    return np.ascontiguousarray(full.transpose(plans_manager.transpose_backward))


def write_map(map_array: np.ndarray, properties: Mapping[str, Any], output_file: Union[str, Path]) -> None:
    """Writes a map in the input's array order as float32 with the input's spacing, origin and direction.

    The format follows ``output_file``'s ending (``.nii.gz``, ``.nrrd``, ``.mha``, ...; SimpleITK decides). The
    file is written under a hidden temporary name and renamed, so an interrupted run never leaves a partial
    output that a rerun would take for a finished one.

    Raises:
        ScreenerError: the properties carry no ``sitk_stuff`` (the plans' reader is not SimpleITKIO) or its
            dimension does not match the map.
    """
    sitk_stuff = properties.get("sitk_stuff")
    if sitk_stuff is None:
        raise ScreenerError("the case properties have no 'sitk_stuff' (spacing/origin/direction): the plans must "
                            "read images with SimpleITKIO to export anomaly maps")
    if len(sitk_stuff["spacing"]) != map_array.ndim:
        raise ScreenerError(f"cannot write a {map_array.ndim}D map with the {len(sitk_stuff['spacing'])}D "
                            f"geometry of its input ({output_file})")
    image = sitk.GetImageFromArray(np.asarray(map_array, dtype=np.float32))
    image.SetSpacing(tuple(float(s) for s in sitk_stuff["spacing"]))
    image.SetOrigin(tuple(float(o) for o in sitk_stuff["origin"]))
    image.SetDirection(tuple(float(d) for d in sitk_stuff["direction"]))
    output_file = Path(output_file)
    output_file.parent.mkdir(parents=True, exist_ok=True)
    partial = output_file.with_name(f".partial_{output_file.name}")
    sitk.WriteImage(image, str(partial), True)
    os.replace(partial, output_file)

