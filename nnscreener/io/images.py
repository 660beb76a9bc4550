"""Image files: the readable file endings, reading a 3D scalar image, completeness of NIfTI files, and
conversion to int16 Hounsfield units.

Array axis order follows SimpleITK / nnU-Net: ``(z, y, x)``.

Completeness: SimpleITK zero-fills the missing end of a truncated ``.nii`` / ``.nii.gz`` without a word (NRRD and
MetaImage readers raise on short data), so :func:`check_complete` decompresses gzip files fully and compares the
NIfTI header's ``vox_offset + prod(dim) * bitpix / 8`` with the bytes present. Every reader in the package calls it.
"""
from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path
from typing import List, Optional, Tuple, Union

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


def reader_reason(error: Exception) -> str:
    """The reason an image reader gave, on one line: SimpleITK puts it on the last line of a long message."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return short_message(Exception(lines[-1])) if lines else type(error).__name__


_CHUNK = 1 << 20  # bytes per read when decompressing
_NIFTI_HEADER_BYTES = {348: 348, 540: 540}  # sizeof_hdr of NIfTI-1 and NIfTI-2


def _nifti1_layout(header: bytes, order: str) -> Tuple[int, Tuple[int, ...], int]:
    dims = struct.unpack(order + "8h", header[40:56])
    bitpix = struct.unpack(order + "h", header[72:74])[0]
    vox_offset = struct.unpack(order + "f", header[108:112])[0]
    return int(vox_offset) if np.isfinite(vox_offset) else -1, dims, bitpix


def _nifti2_layout(header: bytes, order: str) -> Tuple[int, Tuple[int, ...], int]:
    bitpix = struct.unpack(order + "h", header[14:16])[0]
    dims = struct.unpack(order + "8q", header[16:80])
    vox_offset = struct.unpack(order + "q", header[168:176])[0]
    return vox_offset, dims, bitpix


def nifti_expected_bytes(header: bytes) -> Optional[int]:
    """The size a NIfTI-1 / NIfTI-2 file with this header must have (``vox_offset + prod(dim) * bitpix / 8``),
    or None when ``header`` is not a NIfTI header whose data size can be computed (then the reader decides)."""
    for order in "<>":
        if len(header) < 4:
            return None
        size = struct.unpack(order + "i", header[:4])[0]
        if size in _NIFTI_HEADER_BYTES and len(header) >= size:
            layout = _nifti1_layout if size == 348 else _nifti2_layout
            vox_offset, dims, bitpix = layout(header[:size], order)
            rank = dims[0]
            if not 1 <= rank <= 7 or bitpix <= 0 or vox_offset < 0 or any(d < 1 for d in dims[1:rank + 1]):
                return None
            return vox_offset + int(np.prod([int(d) for d in dims[1:rank + 1]], dtype=object)) * bitpix // 8
    return None


def _gzip_size_and_head(path: Path, head_bytes: int = 540) -> Tuple[int, bytes]:
    """Decompresses a gzip file fully (``_CHUNK`` bytes at a time) and returns its size and first bytes."""
    total, head = 0, b""
    with gzip.open(path, "rb") as stream:
        while chunk := stream.read(_CHUNK):
            if len(head) < head_bytes:
                head += chunk[:head_bytes - len(head)]
            total += len(chunk)
    return total, head


def check_complete(path: Union[str, Path]) -> None:
    """Raises ScreenerError naming the file when a ``.nii.gz`` / ``.gz`` file is not a complete gzip stream, or a
    NIfTI file holds fewer bytes than its header announces. Other formats pass (their readers check sizes)."""
    path = Path(path)
    name = path.name.lower()
    if name.endswith(".gz"):
        try:
            size, head = _gzip_size_and_head(path)
        except (EOFError, gzip.BadGzipFile, zlib.error, OSError) as e:
            raise ScreenerError(f"cannot read image {path}: truncated or corrupt, its gzip stream cannot be "
                                f"decompressed completely ({short_message(e) or type(e).__name__})") from None
    elif name.endswith(".nii"):
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(540)
    else:
        return
    if not name.endswith((".nii", ".nii.gz")):
        return
    expected = nifti_expected_bytes(head)
    if expected is not None and size < expected:
        raise ScreenerError(f"cannot read image {path}: truncated, its NIfTI header announces {expected} bytes "
                            f"but the file holds {size}")


def read_image(path: Path) -> sitk.Image:
    """Reads a 3D scalar image (a trailing singleton 4th axis is dropped). Raises ScreenerError naming the file
    when it is missing, truncated, unreadable, not 3D or not scalar."""
    path = Path(path)
    if not path.is_file():
        raise ScreenerError(f"missing file {path}")
    check_complete(path)
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as e:
        raise ScreenerError(f"cannot read image {path}: {reader_reason(e)}") from None
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


# ---------------------------------------------------------------- is it a CT in Hounsfield units?
CT_AIR_HU = -500.0  # voxels at or below this are air (lung, gas, outside the body)
CT_SOFT_TISSUE_HU = (-200.0, 300.0)  # fat, water, muscle, organs, contrast-enhanced vessels
CT_HU_LIMITS = (-4000.0, 35000.0)  # padding (-3024 / -2048) and extended-scale metal stay inside
CT_MIN_FRACTION = 1e-3  # the least share of voxels that must be air and soft tissue
CT_MIN_SPAN_HU = 500.0  # the least spread between the 0.1th and 99.9th intensity percentiles
CT_SAMPLE_VOXELS = 2_000_000  # voxels examined (an even stride through the volume)
_EIGHT_BIT = {sitk.sitkUInt8: "8-bit unsigned (0..255)", sitk.sitkInt8: "8-bit signed (-128..127)"}
ALLOW_NON_CT_HINT = "pass --allow_non_ct if it really is a CT in Hounsfield units"


def stored_pixel_type(path: Union[str, Path]) -> Optional[int]:
    """SimpleITK's pixel id of an image file from its header alone, or None when the header cannot be read."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return None
    return reader.GetPixelID()


def _intensity_sample(values: np.ndarray) -> np.ndarray:
    flat = np.asarray(values).reshape(-1)
    return flat[::max(1, flat.size // CT_SAMPLE_VOXELS)].astype(np.float64)


def non_ct_reasons(values: np.ndarray, pixel_type: Optional[int] = None) -> List[str]:
    """Why an intensity array is clearly not a CT in Hounsfield units (an empty list when it is plausible).

    Args:
        values: the image's voxels in any shape, as read (no rescaling).
        pixel_type: SimpleITK's pixel id of the file (8-bit types cannot hold HU), or None if unknown.
    """
    reasons = []
    if pixel_type in _EIGHT_BIT:
        reasons.append(f"it stores {_EIGHT_BIT[pixel_type]} pixels, which cannot hold HU (air is -1000)")
    sample = _intensity_sample(values)
    sample = sample[np.isfinite(sample)]
    if sample.size == 0:
        return reasons + ["it holds no finite value"]
    low, high = np.percentile(sample, [0.1, 99.9])
    integer_like = float(np.mean(sample == np.round(sample)))
    described = f"intensities {low:.4g}..{high:.4g} (0.1th..99.9th percentile), {integer_like:.0%} integer-valued"
    if high - low < CT_MIN_SPAN_HU:
        reasons.append(f"its {described} span less than {CT_MIN_SPAN_HU:g} HU (normalized or non-CT data?)")
    if low < CT_HU_LIMITS[0] or high > CT_HU_LIMITS[1]:
        reasons.append(f"its {described} leave CT's range {CT_HU_LIMITS[0]:g}..{CT_HU_LIMITS[1]:g} HU")
    if np.mean(sample <= CT_AIR_HU) < CT_MIN_FRACTION:
        reasons.append(f"it has no air (under {CT_MIN_FRACTION:.1%} of voxels <= {CT_AIR_HU:g} HU; {described})")
    tissue = (sample >= CT_SOFT_TISSUE_HU[0]) & (sample <= CT_SOFT_TISSUE_HU[1])
    if np.mean(tissue) < CT_MIN_FRACTION:
        reasons.append(f"it has no soft tissue (under {CT_MIN_FRACTION:.1%} of voxels in "
                       f"{CT_SOFT_TISSUE_HU[0]:g}..{CT_SOFT_TISSUE_HU[1]:g} HU)")
    return reasons


def check_ct_intensities(values: np.ndarray, path: Union[str, Path], pixel_type: Optional[int] = None) -> None:
    """Raises ScreenerError naming the file when its intensities are clearly not CT in Hounsfield units (see
    :func:`non_ct_reasons`: 8-bit pixels, a narrow or out-of-range span, no air, no soft tissue)."""
    reasons = non_ct_reasons(values, pixel_type)
    if reasons:
        raise ScreenerError(f"{path} does not look like a CT in Hounsfield units: {'; '.join(reasons)}. "
                            f"{ALLOW_NON_CT_HINT}")
