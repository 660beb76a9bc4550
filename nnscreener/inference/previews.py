"""Overlay previews of an anomaly map: the scan in grey with the map as a semi-transparent heat map.

One axial and one coronal slice per case, both through the map's highest-scoring voxel, drawn with matplotlib's
Agg canvas (no display, no pyplot state, safe in worker processes).

Axis order: image and map are SimpleITK arrays (z, y, x) of the same shape; spacing is SimpleITK's (x, y, z) in mm.
Orientation: callers pass arrays in the display orientation (:func:`to_display_orientation`), so a scan stored with
any direction (e.g. z running feet-first, x flipped) is drawn the way a radiologist expects.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple, Union

import numpy as np
import SimpleITK as sitk
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from nnscreener.io.images import read_image

OVERLAY_ALPHA = 0.5
OVERLAY_CMAP = "inferno"
OVERLAY_TOP_PERCENTILE = 99.5  # the colour scale saturates here so one extreme voxel does not wash out the rest


# index axes x, y, z run towards the patient's left, posterior and superior (DICOM LPS, identity direction)
DISPLAY_ORIENTATION = "LPS"


def to_display_orientation(image: sitk.Image, *arrays_zyx: np.ndarray) -> Tuple[sitk.Image, List[np.ndarray]]:
    """The scan, and arrays on its voxel grid, with their axes permuted and flipped (no interpolation) to
    :data:`DISPLAY_ORIENTATION` (the nearest one for an oblique scan).

    Drawn with the origins used here, axial slices then show anterior up and the patient's right on the viewer's
    left (the radiological convention), coronal and sagittal slices superior up, whatever direction the file had.

    Args:
        image: the scan as read (any direction).
        arrays_zyx: (z, y, x) arrays of the scan's shape (an anomaly map, a findings mask).

    Returns:
        The reoriented scan (spacing and physical-to-index mapping of the display grid) and the reoriented arrays.
    """
    shape = sitk.GetArrayViewFromImage(image).shape
    reoriented = []
    for array in arrays_zyx:
        if array.shape != shape:
            raise ValueError(f"array {array.shape} is not on the scan's grid {shape}")
        on_grid = sitk.GetImageFromArray(array)
        on_grid.CopyInformation(image)
        reoriented.append(sitk.GetArrayFromImage(sitk.DICOMOrient(on_grid, DISPLAY_ORIENTATION)))
    return sitk.DICOMOrient(image, DISPLAY_ORIENTATION), reoriented


def focus_voxel(map_zyx: np.ndarray) -> Tuple[int, int, int]:
    """(z, y, x) index of the map's maximum (the first one if tied)."""
    return tuple(int(i) for i in np.unravel_index(int(np.argmax(map_zyx)), map_zyx.shape))


def map_display_range(map_zyx: np.ndarray) -> Tuple[float, float]:
    """The overlay's colour range: the map's minimum (transparent) to its :data:`OVERLAY_TOP_PERCENTILE`."""
    low = float(map_zyx.min())
    high = float(np.percentile(map_zyx, OVERLAY_TOP_PERCENTILE))
    return low, (high if high > low else low + 1.0)


def draw_overlay(ax, image_2d: np.ndarray, map_2d: np.ndarray, aspect: float, origin: str,
                 window_hu: Tuple[float, float], map_range: Tuple[float, float]):
    """Draws a slice in grey (HU window) with the map over it on a matplotlib axes; returns the map's image (for a
    colour bar). Voxels at the map's floor (outside the body, the least anomalous) stay transparent."""
    ax.imshow(image_2d, cmap="gray", vmin=window_hu[0], vmax=window_hu[1], aspect=aspect, origin=origin,
              interpolation="nearest")
    overlay = np.ma.masked_less_equal(map_2d, map_range[0])
    return ax.imshow(overlay, cmap=OVERLAY_CMAP, vmin=map_range[0], vmax=map_range[1], alpha=OVERLAY_ALPHA,
                     aspect=aspect, origin=origin, interpolation="nearest")


def _draw(image_2d: np.ndarray, map_2d: np.ndarray, aspect: float, origin: str, window_hu: Tuple[float, float],
          map_range: Tuple[float, float], title: str, path: Path) -> None:
    fig = Figure(figsize=(6, 6 * min(max(aspect * image_2d.shape[0] / image_2d.shape[1], 0.3), 3.0)))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    shown = draw_overlay(ax, image_2d, map_2d, aspect, origin, window_hu, map_range)
    fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.04, label="anomaly score (NLL, nats)")
    ax.set_title(title)
    ax.set_axis_off()
    fig.savefig(path, dpi=100, bbox_inches="tight")


def save_previews(image_zyx: np.ndarray, map_zyx: np.ndarray, spacing_xyz: Sequence[float],
                  output_stem: Union[str, Path], window_hu: Tuple[float, float] = (-1000.0, 300.0),
                  point_of: Optional[Callable[[Sequence[int]], Sequence[float]]] = None) -> List[Path]:
    """Writes ``{output_stem}_axial.png`` and ``{output_stem}_coronal.png`` (arrays in the display orientation,
    :func:`to_display_orientation`).

    Args:
        image_zyx: (z, y, x) scan in HU, as SimpleITK reads it.
        map_zyx: (z, y, x) anomaly map on the same grid, NLL in nats.
        spacing_xyz: voxel spacing (x, y, z) in mm, for the aspect ratio.
        output_stem: path without the ``_axial.png`` / ``_coronal.png`` suffix; its folder is created.
        window_hu: grey-level window of the scan in HU.
        point_of: maps an (x, y, z) index to its LPS point in mm; titles then give the slice's position in mm (the
            same whatever direction the file had), else its array index.

    Returns:
        The two PNG paths.
    """
    if image_zyx.shape != map_zyx.shape or image_zyx.ndim != 3:
        raise ValueError(f"image {image_zyx.shape} and map {map_zyx.shape} must be the same 3D (z, y, x) shape")
    output_stem = Path(output_stem)
    output_stem.parent.mkdir(parents=True, exist_ok=True)
    sx, sy, sz = (float(s) for s in spacing_xyz)
    z, y, x = focus_voxel(map_zyx)
    where = (f"z={z}", f"y={y}")
    if point_of is not None:
        point = point_of((x, y, z))
        where = (f"z = {point[2]:.1f} mm (LPS)", f"y = {point[1]:.1f} mm (LPS)")
    map_range = map_display_range(map_zyx)
    name = output_stem.name
    axial = output_stem.with_name(f"{name}_axial.png")
    coronal = output_stem.with_name(f"{name}_coronal.png")
    # axial: rows y (anterior first) from the top, columns x; coronal: rows z with higher z (the head) up
    _draw(image_zyx[z], map_zyx[z], sy / sx, "upper", window_hu, map_range, f"{name}: axial slice {where[0]}", axial)
    _draw(image_zyx[:, y, :], map_zyx[:, y, :], sz / sx, "lower", window_hu, map_range,
          f"{name}: coronal slice {where[1]}", coronal)
    return [axial, coronal]


def write_previews(scan_file: Union[str, Path], map_zyx: np.ndarray, output_stem: Union[str, Path],
                   window_hu: Tuple[float, float] = (-1000.0, 300.0)) -> List[Path]:
    """:func:`save_previews` of a map on the grid of the scan in ``scan_file`` (as read, any direction), both
    reoriented to the display orientation first. Returns the two PNG paths."""
    scan, (shown_map,) = to_display_orientation(read_image(Path(scan_file)), map_zyx)
    return save_previews(sitk.GetArrayFromImage(scan).astype(np.float32), shown_map, scan.GetSpacing(), output_stem,
                         window_hu, lambda index_xyz: scan.TransformIndexToPhysicalPoint([int(i) for i in index_xyz]))
