"""Image files: the readable file endings, reading a 3D scalar image, and conversion to int16 Hounsfield units.

Array axis order follows SimpleITK / nnU-Net: ``(z, y, x)``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from nnscreener.errors import ScreenerError

NIFTI_ENDING = ".nii.gz"  # the file type nnU-Net raw datasets and nnScreener outputs use
IMAGE_ENDINGS = (NIFTI_ENDING, ".nii", ".nrrd", ".mha")  # readable image files; longest first where one ends another
INT16_RANGE = (-32768, 32767)


def short_message(error: Exception) -> str:
    """The error's text on one line, cut to 300 characters (library messages can span pages)."""
    text = " ".join(str(error).split())
    return text if len(text) <= 300 else text[:300] + "..."


def read_image(path: Path) -> sitk.Image:
    """Reads a 3D scalar image (a trailing singleton 4th axis is dropped). Raises ScreenerError naming the file
    when it is missing, unreadable, not 3D or not scalar."""
    path = Path(path)
    if not path.is_file():
        raise ScreenerError(f"missing file {path}")
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as e:
        raise ScreenerError(f"unreadable image {path}: {short_message(e)}") from e
    if image.GetDimension() == 4 and image.GetSize()[3] == 1:
        image = image[:, :, :, 0]
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise ScreenerError(f"{path} is not a 3D scalar image (size {image.GetSize()}, "
                            f"{image.GetNumberOfComponentsPerPixel()} component(s))")
    return image


def to_int16_hu(image: sitk.Image, what: str, slab: int = 32) -> sitk.Image:
    """Rounds and clips an HU image to int16, keeping its geometry; ``slab`` slices at a time, so the extra memory
    is the int16 result plus one slab. Raises ScreenerError on NaN / infinite voxels."""
    if image.GetPixelID() == sitk.sitkInt16:
        return image
    view = sitk.GetArrayViewFromImage(image)  # (z, y, x), no copy
    floating = np.issubdtype(view.dtype, np.floating)
    out = np.empty(view.shape, dtype=np.int16)
    for z0 in range(0, view.shape[0], slab):
        chunk = view[z0:z0 + slab]
        if floating and not np.isfinite(chunk).all():
            raise ScreenerError(f"{what} contains NaN or infinite values")
        chunk = np.rint(chunk) if floating else chunk.astype(np.int64)
        out[z0:z0 + slab] = np.clip(chunk, *INT16_RANGE)
    result = sitk.GetImageFromArray(out)
    result.CopyInformation(image)
    return result
