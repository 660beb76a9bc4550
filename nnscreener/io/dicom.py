"""DICOM CT series: reading file headers, grouping files into series, checking that a series is a 3D CT volume,
and reading it as a Hounsfield-unit image.

Images are read by SimpleITK's GDCM reader, which applies DICOM RescaleSlope / RescaleIntercept. Array axis order
follows SimpleITK / nnU-Net: ``(z, y, x)`` = (slice, DICOM row, DICOM column).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import pydicom
import SimpleITK as sitk

from nnscreener.errors import ScreenerError
from nnscreener.io.images import short_message

# DICOM series checks
MIN_SLICES = 3  # fewer slices is not a 3D CT volume (localizers, single key images)
SLICE_GAP_RTOL = 0.05  # a gap between neighbouring slices may differ from the median gap by 5%
ORIENTATION_ATOL = 1e-3  # direction cosines of all slices must agree
STACK_OFFSET_PIXELS = 0.1  # a slice may sit at most 0.1 pixel off the line along the slice normal (gantry tilt)

# Files that sit beside DICOM files in public downloads and are not images (LIDC's reader XML, licenses, ...).
NON_DICOM_SUFFIXES = frozenset({".xml", ".json", ".txt", ".csv", ".md", ".pdf", ".html", ".htm", ".zip", ".gz",
                                ".nii", ".png", ".jpg", ".jpeg", ".log", ".py", ".xlsx", ".tsv"})
NON_DICOM_NAMES = frozenset({"dicomdir", "license", "readme", "thumbs.db", "version"})

_HEADER_TAGS = ["SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID", "PatientID", "Modality", "ImageType",
                "ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "Rows", "Columns",
                "NumberOfFrames", "SeriesDescription", "SeriesNumber"]


@dataclass(frozen=True)
class DicomSlice:
    """The header fields of one DICOM file that series grouping, checking and reading need."""

    path: Path
    series_uid: str
    sop_uid: str
    study_uid: str
    patient_id: str
    modality: str
    image_type: tuple[str, ...]
    position: Optional[tuple[float, float, float]]  # ImagePositionPatient, mm
    orientation: Optional[tuple[float, ...]]  # 6 direction cosines: row (x) direction, then column (y) direction
    pixel_spacing: Optional[tuple[float, float]]  # DICOM order: between rows (y), between columns (x), mm
    rows: int
    columns: int
    frames: int
    series_description: str
    series_number: int


@dataclass(frozen=True)
class DicomScan:
    """The DICOM files found in a folder: readable slices and unreadable files (with the reason)."""

    slices: tuple[DicomSlice, ...]
    unreadable: tuple[tuple[Path, str], ...]

    def series(self) -> dict[str, list[DicomSlice]]:
        """Slices grouped by SeriesInstanceUID (in file order)."""
        groups: dict[str, list[DicomSlice]] = {}
        for s in self.slices:
            groups.setdefault(s.series_uid, []).append(s)
        return groups


@dataclass(frozen=True)
class DicomSeries:
    """A checked CT series: slices sorted by position along the slice normal (ascending, as ITK orders them)."""

    uid: str
    slices: tuple[DicomSlice, ...]
    slice_spacing: float  # mm between neighbouring slices

    @property
    def description(self) -> str:
        return self.slices[0].series_description

    @property
    def folder(self) -> Path:
        return self.slices[0].path.parent

    def sop_index(self) -> dict[str, int]:
        """SOPInstanceUID -> slice index k (the z index of the image array)."""
        return {s.sop_uid: k for k, s in enumerate(self.slices)}

    def z_positions(self) -> np.ndarray:
        """Patient z coordinate (ImagePositionPatient[2], mm) of every slice, shape (n_slices,)."""
        return np.array([s.position[2] for s in self.slices])


def is_candidate_dicom_file(path: Path) -> bool:
    """False for files that accompany DICOM downloads but are not images (XML, JSON, README, hidden files)."""
    name = path.name.lower()
    return not (name.startswith(".") or name in NON_DICOM_NAMES or path.suffix.lower() in NON_DICOM_SUFFIXES)


def _text(ds: pydicom.Dataset, keyword: str) -> str:
    value = ds.get(keyword, "")
    return str(value).strip() if value is not None else ""


def _floats(ds: pydicom.Dataset, keyword: str, count: int) -> Optional[tuple[float, ...]]:
    value = ds.get(keyword)
    if value is None or len(value) != count:
        return None
    return tuple(float(v) for v in value)


def _int(ds: pydicom.Dataset, keyword: str, default: int) -> int:
    try:
        return int(ds.get(keyword) or default)
    except (TypeError, ValueError):  # a malformed optional field does not make the file unreadable
        return default


def read_dicom_header(path: Path) -> DicomSlice:
    """Reads the header (not the pixels) of one DICOM file. Raises ScreenerError naming the file if unreadable."""
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=_HEADER_TAGS)
        image_type = ds.get("ImageType") or ()
        return DicomSlice(
            path=Path(path), series_uid=_text(ds, "SeriesInstanceUID"), sop_uid=_text(ds, "SOPInstanceUID"),
            study_uid=_text(ds, "StudyInstanceUID"), patient_id=_text(ds, "PatientID"),
            modality=_text(ds, "Modality").upper(),
            image_type=tuple(str(t).upper() for t in (image_type if not isinstance(image_type, str) else [image_type])),
            position=_floats(ds, "ImagePositionPatient", 3), orientation=_floats(ds, "ImageOrientationPatient", 6),
            pixel_spacing=_floats(ds, "PixelSpacing", 2), rows=_int(ds, "Rows", 0), columns=_int(ds, "Columns", 0),
            frames=_int(ds, "NumberOfFrames", 1), series_description=_text(ds, "SeriesDescription"),
            series_number=_int(ds, "SeriesNumber", 0))
    except Exception as e:  # pydicom raises many types on corrupt input (InvalidDicomError, EOFError, ValueError...)
        raise ScreenerError(f"unreadable DICOM file {path}: {short_message(e)}") from e


def scan_dicom_folder(folder: Path, recursive: bool = True) -> DicomScan:
    """Reads the headers of all candidate DICOM files in ``folder`` (and below when ``recursive``)."""
    files = folder.rglob("*") if recursive else folder.iterdir()
    slices, unreadable = [], []
    for path in sorted(p for p in files if p.is_file() and is_candidate_dicom_file(p)):
        try:
            slices.append(read_dicom_header(path))
        except ScreenerError as e:
            unreadable.append((path, str(e)))
    return DicomScan(tuple(slices), tuple(unreadable))


def first_dicom_header(folder: Path) -> Optional[DicomSlice]:
    """The header of the first readable DICOM file directly in ``folder`` (cheap series lookup), or None."""
    for path in sorted(p for p in folder.iterdir() if p.is_file() and is_candidate_dicom_file(p)):
        try:
            return read_dicom_header(path)
        except ScreenerError:
            continue
    return None


def _describe(series_uid: str, slices: Sequence[DicomSlice]) -> str:
    desc = slices[0].series_description if slices else ""
    return f"series {series_uid}" + (f" ({desc!r})" if desc else "")


def _require_uniform(slices: Sequence[DicomSlice], name: str, values: list, atol: float, what: str) -> None:
    ref = np.asarray(values[0], dtype=float)
    for s, v in zip(slices, values):
        if not np.allclose(np.asarray(v, dtype=float), ref, atol=atol, rtol=0):
            raise ScreenerError(f"{what}: {name} {v} of {s.path.name} differs from {tuple(ref)} of "
                                f"{slices[0].path.name}")


def check_ct_series(slices: Sequence[DicomSlice], unreadable: Sequence[tuple[Path, str]] = ()) -> DicomSeries:
    """Checks that ``slices`` (one SeriesInstanceUID) form a readable 3D CT volume and sorts them.

    Checks: Modality CT; not a localizer; single-frame files; at least MIN_SLICES slices; position, orientation and
    pixel spacing present and equal across slices; equal rows / columns; no unreadable file in the series folder;
    distinct slice positions with gaps within SLICE_GAP_RTOL of the median (a missing slice doubles a gap); slices
    stacked along the slice normal (no gantry tilt). Raises ScreenerError naming the series and the problem.
    """
    uid = slices[0].series_uid
    what = _describe(uid, slices)
    modalities = sorted({s.modality for s in slices})
    if modalities != ["CT"]:
        raise ScreenerError(f"{what} is not CT (Modality {'/'.join(modalities) or 'missing'})")
    if any("LOCALIZER" in s.image_type for s in slices):
        raise ScreenerError(f"{what} is a localizer (scout), not a 3D CT series")
    if any(s.frames > 1 for s in slices):
        raise ScreenerError(f"{what} uses multi-frame DICOM files, which are not supported")
    folders = {s.path.parent for s in slices}
    broken = [(p, reason) for p, reason in unreadable if p.parent in folders]
    if broken:
        raise ScreenerError(f"{what} has an unreadable file: {broken[0][1]}")
    if len(slices) < MIN_SLICES:
        raise ScreenerError(f"{what} has {len(slices)} slice(s); a 3D CT series needs at least {MIN_SLICES}")
    for s in slices:
        for name in ("position", "orientation", "pixel_spacing"):
            if getattr(s, name) is None:
                raise ScreenerError(f"{what}: {s.path} lacks {name} (ImagePositionPatient / "
                                    f"ImageOrientationPatient / PixelSpacing)")
    _require_uniform(slices, "Rows x Columns", [(s.rows, s.columns) for s in slices], 0, what)
    _require_uniform(slices, "ImageOrientationPatient", [s.orientation for s in slices], ORIENTATION_ATOL, what)
    _require_uniform(slices, "PixelSpacing", [s.pixel_spacing for s in slices], 1e-4, what)
    return _sort_and_check_stack(uid, slices, what)


def _sort_and_check_stack(uid: str, slices: Sequence[DicomSlice], what: str) -> DicomSeries:
    orientation = np.asarray(slices[0].orientation)
    normal = np.cross(orientation[:3], orientation[3:])
    positions = np.array([s.position for s in slices])  # (n, 3) mm
    along = positions @ normal
    order = np.argsort(along, kind="stable")
    positions, along = positions[order], along[order]
    gaps = np.diff(along)
    if gaps.min() < 1e-3:
        k = int(np.argmin(gaps))
        raise ScreenerError(f"{what}: two slices at the same position {tuple(np.round(positions[k], 3))} "
                            f"(duplicate or overlapping slices)")
    median = float(np.median(gaps))
    bad = np.flatnonzero(np.abs(gaps - median) > SLICE_GAP_RTOL * median)
    if bad.size:
        k = int(bad[0])
        raise ScreenerError(f"{what}: inconsistent slice spacing, a gap of {gaps[k]:.3f} mm after the slice at "
                            f"{tuple(np.round(positions[k], 3))} where the median gap is {median:.3f} mm "
                            f"(missing slices?)")
    offsets = positions - positions[0] - np.outer(along - along[0], normal)  # off the line along the normal
    worst = float(np.linalg.norm(offsets, axis=1).max())
    if worst > STACK_OFFSET_PIXELS * min(slices[0].pixel_spacing):
        raise ScreenerError(f"{what}: slices are not stacked along the slice normal (up to {worst:.2f} mm off; "
                            f"gantry tilt?), which the NIfTI geometry cannot represent")
    return DicomSeries(uid, tuple(slices[i] for i in order), median)


def read_dicom_series(series: DicomSeries) -> sitk.Image:
    """Reads a checked series as a float32 HU image (RescaleSlope / RescaleIntercept applied by GDCM) whose slice k is
    ``series.slices[k]``. Raises ScreenerError when a file cannot be decoded."""
    reader = sitk.ImageSeriesReader()
    reader.SetImageIO("GDCMImageIO")
    reader.SetOutputPixelType(sitk.sitkFloat32)
    reader.SetFileNames([str(s.path) for s in series.slices])
    what = _describe(series.uid, series.slices)
    try:
        image = reader.Execute()
    except RuntimeError as e:
        raise ScreenerError(f"{what} in {series.folder} cannot be read: {short_message(e)}") from e
    last = image.TransformIndexToPhysicalPoint((0, 0, len(series.slices) - 1))
    if (image.GetSize()[2] != len(series.slices)
            or not np.allclose(image.GetOrigin(), series.slices[0].position, atol=1e-2)
            or not np.allclose(last, series.slices[-1].position, atol=0.5 * series.slice_spacing)):
        raise ScreenerError(f"{what}: the image read from {series.folder} does not match the slice positions")
    return image
