"""Shared machinery of the public-dataset converters.

Every converter reads one public dataset in its ORIGINAL layout (never writing into it) and writes an nnU-Net raw
dataset (docs/design.md C1) under ``$nnUNet_raw/DatasetXXX_Name`` (or ``-o``):

- unlabeled training sets: ``imagesTr/{case}_0000.nii.gz`` only (no ``labelsTr``), ``labels {"background": 0}``;
- labeled test sets: ``imagesTs/{case}_0000.nii.gz`` + ``labelsTs/{case}.nii.gz`` (uint8, 1 = pathology, the
  image's exact geometry), ``labels {"background": 0, "pathology": 1}`` and ``lesion_kinds {"1": ...}``.

Images are int16 Hounsfield units (DICOM RescaleSlope / RescaleIntercept applied by SimpleITK's GDCM reader), with
the source's size, spacing, origin and direction. A case that cannot be converted (a missing file, a non-CT or
broken DICOM series, mismatched label geometry, ...) is skipped with a message naming it; the other cases are
converted, and the skipped ones are listed at the end and in ``conversion.json`` beside ``dataset.json``. The exit
code is 1 only when no case was converted (or on a usage error).

Array axis order follows SimpleITK / nnU-Net: ``(z, y, x)`` = (slice, DICOM row, DICOM column). Polygon vertices in
annotation files speak ``x`` (column) and ``y`` (row) in pixels.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import re
import shutil
import sys
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterator, Literal, Mapping, Optional, Sequence, TypeVar

import numpy as np
import pydicom
import SimpleITK as sitk
from scipy import ndimage
from skimage.draw import line as draw_line
from tqdm import tqdm

from nnscreener.errors import ScreenerError

FILE_ENDING = ".nii.gz"
CT_CHANNELS = {"0": "CT"}
PATHOLOGY_LABELS = {"background": 0, "pathology": 1}
INT16_RANGE = (-32768, 32767)

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

Task = TypeVar("Task")


# ---------------------------------------------------------------------------------------------------------------
# Report of converted and skipped cases
# ---------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CaseResult:
    """Outcome of one case: ``info`` (what was converted) on success, else ``error`` (why it was skipped)."""

    case_id: str
    info: Optional[dict] = None
    error: Optional[str] = None


@dataclass
class ConversionReport:
    """Collects converted cases (with per-case info) and skipped cases (with reasons) and prints them at the end."""

    converted: dict[str, dict] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)

    def add(self, result: CaseResult) -> None:
        if result.error is None:
            self.converted[result.case_id] = result.info or {}
        else:
            self.skipped[result.case_id] = result.error

    def skip(self, case_id: str, reason: str) -> None:
        self.skipped[case_id] = reason

    def summary(self) -> str:
        lines = [f"converted {len(self.converted)} case(s), skipped {len(self.skipped)}"]
        lines += [f"  skipped {case}: {reason}" for case, reason in sorted(self.skipped.items())]
        return "\n".join(lines)

    def exit_code(self) -> int:
        """0 when at least one case was converted, 1 when none was."""
        return 0 if self.converted else 1


# ---------------------------------------------------------------------------------------------------------------
# The output dataset
# ---------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DatasetSpec:
    """What a converter produces and how its source looks (shown by ``--help``)."""

    module: str  # e.g. "convert_kits"
    default_name: str  # folder name part: DatasetXXX_<default_name>
    split: Literal["Tr", "Ts"]  # Tr: unlabeled imagesTr; Ts: imagesTs + labelsTs
    description: str
    reference: str
    lesion_kind: Optional[str] = None  # the pathology of labelsTs value 1 (test sets only)


@dataclass(frozen=True)
class OutputDataset:
    """An nnU-Net raw dataset folder being written; files of a case are staged in ``.partial`` and then moved."""

    root: Path
    split: Literal["Tr", "Ts"]

    def image_path(self, case_id: str) -> Path:
        return self.root / f"images{self.split}" / f"{case_id}_0000{FILE_ENDING}"

    def label_path(self, case_id: str) -> Path:
        assert self.split == "Ts", "only test sets carry labels (labelsTs)"
        return self.root / "labelsTs" / f"{case_id}{FILE_ENDING}"

    @property
    def staging_dir(self) -> Path:
        return self.root / ".partial"


def dataset_folder_name(dataset_id: int, name: str) -> str:
    if not 1 <= dataset_id <= 999:
        raise ScreenerError(f"dataset id {dataset_id} is out of range: nnU-Net ids are 1-999")
    if not re.fullmatch(r"[A-Za-z0-9_-]+", name):
        raise ScreenerError(f"dataset name {name!r} may only contain letters, digits, '_' and '-'")
    return f"Dataset{dataset_id:03d}_{name}"


def _is_within(path: Path, other: Path) -> bool:
    path, other = path.resolve(), other.resolve()
    return path == other or other in path.parents


def prepare_output_dataset(output_root: Path, dataset_id: int, name: str, split: Literal["Tr", "Ts"],
                           source: Path, overwrite: bool) -> OutputDataset:
    """Creates the empty dataset folder ``output_root/DatasetXXX_name`` with its image (and label) folders.

    Raises ScreenerError when the id is taken by another dataset, when the folder exists without ``overwrite``,
    or when the output and the source folders overlap (the source is never written to).
    """
    folder = output_root / dataset_folder_name(dataset_id, name)
    if _is_within(folder, source) or _is_within(source, folder):
        raise ScreenerError(f"output folder {folder} and source folder {source} overlap; the source is never "
                            f"written to: choose another nnUNet_raw / -o")
    others = [p for p in output_root.glob(f"Dataset{dataset_id:03d}_*") if p.is_dir() and p.name != folder.name]
    if others:
        raise ScreenerError(f"dataset id {dataset_id} is already used by {others[0]}; nnU-Net needs unique ids")
    if folder.exists():
        if not overwrite:
            raise ScreenerError(f"{folder} already exists; pass --overwrite to replace it")
        shutil.rmtree(folder)
    (folder / f"images{split}").mkdir(parents=True)
    if split == "Ts":
        (folder / "labelsTs").mkdir()
    return OutputDataset(folder, split)


@contextmanager
def staged(dataset: OutputDataset, final_paths: Sequence[Path]) -> Iterator[list[Path]]:
    """Yields temporary paths for ``final_paths``; moves them into place only when the block succeeds, so a case
    is either complete or absent."""
    temps = [dataset.staging_dir / p.parent.name / p.name for p in final_paths]
    for t in temps:
        t.parent.mkdir(parents=True, exist_ok=True)
    try:
        yield temps
        for t, p in zip(temps, final_paths):
            os.replace(t, p)
    finally:
        for t in temps:
            t.unlink(missing_ok=True)


def write_dataset_files(dataset: OutputDataset, spec: DatasetSpec, report: ConversionReport, source: Path,
                        options: Mapping[str, Any]) -> None:
    """Writes ``dataset.json`` (through nnU-Net's own generator) and ``conversion.json`` (source, options,
    per-case info, skipped cases), and removes the staging folder."""
    from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json

    extra: dict[str, Any] = {}
    if spec.split == "Ts":
        labels = dict(PATHOLOGY_LABELS)
        extra["lesion_kinds"] = {"1": spec.lesion_kind}
        extra["numTest"] = len(report.converted)
    else:
        labels = {"background": 0}
    generate_dataset_json(str(dataset.root), dict(CT_CHANNELS), labels,
                          num_training_cases=len(report.converted) if spec.split == "Tr" else 0,
                          file_ending=FILE_ENDING, dataset_name=dataset.root.name, reference=spec.reference,
                          description=spec.description, license="see the source dataset's license",
                          converted_by=f"nnScreener dataset_conversion.{spec.module}", **extra)
    log = {"converter": f"dataset_conversion.{spec.module}", "source": str(source), "options": dict(options),
           "num_converted": len(report.converted), "num_skipped": len(report.skipped),
           "skipped": dict(sorted(report.skipped.items())), "converted": dict(sorted(report.converted.items()))}
    (dataset.root / "conversion.json").write_text(json.dumps(log, indent=1, default=str))
    shutil.rmtree(dataset.staging_dir, ignore_errors=True)


# ---------------------------------------------------------------------------------------------------------------
# Images: reading NIfTI, HU int16 conversion, writing images and masks
# ---------------------------------------------------------------------------------------------------------------
def _short(error: Exception) -> str:
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
        raise ScreenerError(f"unreadable image {path}: {_short(e)}") from e
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


def _write(image: sitk.Image, path: Path) -> None:
    sitk.WriteImage(image, str(path), useCompression=True)


def write_mask(mask_zyx: np.ndarray, reference: sitk.Image, path: Path) -> None:
    """Writes a binary mask (z, y, x) as uint8 0/1 with ``reference``'s geometry."""
    assert mask_zyx.shape == reference.GetSize()[::-1], (mask_zyx.shape, reference.GetSize())
    out = sitk.GetImageFromArray(mask_zyx.astype(np.uint8))
    out.CopyInformation(reference)
    _write(out, path)


def write_unlabeled_case(dataset: OutputDataset, case_id: str, image: sitk.Image, what: str) -> None:
    """Writes ``images{split}/{case}_0000.nii.gz`` as int16 HU."""
    final = dataset.image_path(case_id)
    with staged(dataset, [final]) as (tmp,):
        _write(to_int16_hu(image, what), tmp)


def write_labeled_case(dataset: OutputDataset, case_id: str, image: sitk.Image, mask_zyx: np.ndarray,
                       what: str) -> None:
    """Writes ``imagesTs/{case}_0000.nii.gz`` (int16 HU) and ``labelsTs/{case}.nii.gz`` (uint8, the image's
    geometry) together: both or neither."""
    finals = [dataset.image_path(case_id), dataset.label_path(case_id)]
    with staged(dataset, finals) as (tmp_image, tmp_label):
        _write(to_int16_hu(image, what), tmp_image)
        write_mask(mask_zyx, image, tmp_label)


def copy_or_convert_nifti(dataset: OutputDataset, case_id: str, source: Path) -> dict:
    """Writes a NIfTI CT as the case's image: a byte copy when it already is a 3D int16 ``.nii.gz`` (fast at the
    scale of thousands of scans), otherwise read, rounded to int16 and rewritten. Geometry is kept either way."""
    source = Path(source)
    if not source.is_file():
        raise ScreenerError(f"missing file {source}")
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(source))
    try:
        reader.ReadImageInformation()
    except RuntimeError as e:
        raise ScreenerError(f"unreadable image {source}: {_short(e)}") from e
    copyable = (source.name.endswith(FILE_ENDING) and reader.GetPixelID() == sitk.sitkInt16
                and reader.GetDimension() == 3 and reader.GetNumberOfComponents() == 1)
    if copyable:
        with staged(dataset, [dataset.image_path(case_id)]) as (tmp,):
            shutil.copyfile(source, tmp)
    else:
        write_unlabeled_case(dataset, case_id, read_image(source), str(source))
    return {"image": str(source), "size_xyz": list(reader.GetSize())[:3], "copied": copyable}


def check_same_grid(image: sitk.Image, label: sitk.Image, image_path: Path, label_path: Path) -> None:
    """Raises ScreenerError unless the label has the image's size, spacing, origin and direction (up to
    rounding: 1e-3 relative spacing, 0.1 voxel origin, 1e-3 direction)."""
    if image.GetSize() != label.GetSize():
        raise ScreenerError(f"label {label_path} has size {label.GetSize()} but image {image_path} has "
                            f"{image.GetSize()} (x, y, z)")
    spacing = np.array(image.GetSpacing())
    same = (np.allclose(label.GetSpacing(), spacing, rtol=1e-3)
            and np.allclose(label.GetOrigin(), image.GetOrigin(), atol=0.1 * spacing.min())
            and np.allclose(label.GetDirection(), image.GetDirection(), atol=1e-3))
    if not same:
        raise ScreenerError(f"label {label_path} and image {image_path} differ in geometry (spacing "
                            f"{label.GetSpacing()} vs {image.GetSpacing()}, origin {label.GetOrigin()} vs "
                            f"{image.GetOrigin()})")


# ---------------------------------------------------------------------------------------------------------------
# DICOM series: headers, grouping, checks, reading
# ---------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DicomSlice:
    """The header fields of one DICOM file that conversion needs."""

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
        raise ScreenerError(f"unreadable DICOM file {path}: {_short(e)}") from e


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
        raise ScreenerError(f"{what} in {series.folder} cannot be read: {_short(e)}") from e
    last = image.TransformIndexToPhysicalPoint((0, 0, len(series.slices) - 1))
    if (image.GetSize()[2] != len(series.slices)
            or not np.allclose(image.GetOrigin(), series.slices[0].position, atol=1e-2)
            or not np.allclose(last, series.slices[-1].position, atol=0.5 * series.slice_spacing)):
        raise ScreenerError(f"{what}: the image read from {series.folder} does not match the slice positions")
    return image


# ---------------------------------------------------------------------------------------------------------------
# Polygon annotations -> pixel masks
# ---------------------------------------------------------------------------------------------------------------
def rasterize_polygon(xs: Sequence[float], ys: Sequence[float], shape_yx: tuple[int, int],
                      include_outline: bool) -> np.ndarray:
    """Pixel mask of a closed polygon given by vertices (x = column, y = row, pixels; rounded to the nearest pixel).

    The outline is the 8-connected pixel path through consecutive vertices (closed). The region is every pixel
    enclosed by the outline (4-connected fill), with the outline pixels themselves when ``include_outline``.
    Vertices outside the slice are allowed; the mask is clipped to ``shape_yx``.

    Returns:
        bool array of shape ``shape_yx`` = (rows, columns).
    """
    cols = np.rint(np.asarray(xs, dtype=float)).astype(np.int64)
    rows = np.rint(np.asarray(ys, dtype=float)).astype(np.int64)
    mask = np.zeros(shape_yx, dtype=bool)
    if rows.size == 0:
        return mask
    r0, c0 = rows.min() - 1, cols.min() - 1  # local canvas with a one-pixel margin, so the outside is connected
    canvas = np.zeros((rows.max() - r0 + 2, cols.max() - c0 + 2), dtype=bool)
    for i in range(rows.size):
        j = (i + 1) % rows.size
        rr, cc = draw_line(rows[i] - r0, cols[i] - c0, rows[j] - r0, cols[j] - c0)
        canvas[rr, cc] = True
    region = ndimage.binary_fill_holes(canvas)
    if not include_outline:
        region &= ~canvas
    # paste the canvas into the slice, clipped to it
    top, left = max(r0, 0), max(c0, 0)
    bottom, right = min(r0 + canvas.shape[0], shape_yx[0]), min(c0 + canvas.shape[1], shape_yx[1])
    if bottom > top and right > left:
        mask[top:bottom, left:right] = region[top - r0:bottom - r0, left - c0:right - c0]
    return mask


# ---------------------------------------------------------------------------------------------------------------
# Case ids
# ---------------------------------------------------------------------------------------------------------------
def sanitize_case_id(text: str) -> str:
    """A file-name-safe case id: runs of characters other than letters, digits, '.', '_' and '-' become '-'."""
    case_id = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.")
    if not case_id:
        raise ScreenerError(f"cannot make a case id from {text!r}")
    return case_id


def numbered_case_ids(groups: Mapping[str, Sequence[str]]) -> dict[tuple[str, str], str]:
    """Case ids for members of groups (e.g. series of a patient): the group's id when it has one member, else
    ``{group}_{k}`` with k = 1, 2, ... in sorted member order."""
    ids = {}
    for group, members in groups.items():
        members = sorted(set(members))
        for k, member in enumerate(members, start=1):
            ids[(group, member)] = sanitize_case_id(group if len(members) == 1 else f"{group}_{k}")
    return ids


def require_unique_case_ids(tasks: Sequence[Any]) -> None:
    seen: dict[str, Any] = {}
    for task in tasks:
        if task.case_id in seen:
            raise ScreenerError(f"case id {task.case_id!r} occurs twice ({seen[task.case_id]} and {task}); "
                                f"point -i at a single copy of the dataset")
        seen[task.case_id] = task


# ---------------------------------------------------------------------------------------------------------------
# Running cases in a process pool
# ---------------------------------------------------------------------------------------------------------------
def _convert_guarded(convert_one: Callable[[Any], dict], task: Any) -> CaseResult:
    try:
        return CaseResult(task.case_id, info=convert_one(task))
    except ScreenerError as e:
        return CaseResult(task.case_id, error=str(e))
    except Exception as e:  # one broken scan among thousands must not stop the run; the message says it is a bug
        return CaseResult(task.case_id, error=f"unexpected {type(e).__name__}: {_short(e)} (please report)")


def convert_cases(tasks: Sequence[Task], convert_one: Callable[[Task], dict], num_processes: int,
                  desc: str) -> list[CaseResult]:
    """Runs ``convert_one`` on every task (in ``num_processes`` worker processes when > 1) with a progress bar.

    ``convert_one`` must be picklable (a module-level function or a ``functools.partial`` of one) and raise
    ScreenerError for a case that cannot be converted; the result lists such cases with their message.
    """
    guarded = partial(_convert_guarded, convert_one)
    bar = tqdm(total=len(tasks), desc=desc, unit="case", file=sys.stderr)
    results = []
    try:
        if num_processes <= 1 or len(tasks) <= 1:
            for task in tasks:
                results.append(guarded(task))
                bar.update()
        else:
            with multiprocessing.get_context().Pool(min(num_processes, len(tasks))) as pool:
                for result in pool.imap_unordered(guarded, tasks):
                    results.append(result)
                    bar.update()
    finally:
        bar.close()
    return results


# ---------------------------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------------------------
def default_num_processes() -> int:
    return max(1, min(8, os.cpu_count() or 1))


def build_parser(spec: DatasetSpec, module_doc: str) -> argparse.ArgumentParser:
    """The arguments every converter shares: -i SRC -d ID [-n NAME] [-o ROOT] [--overwrite] [-np N]."""
    parser = argparse.ArgumentParser(
        prog=f"python -m dataset_conversion.{spec.module}", description=module_doc,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"example: python -m dataset_conversion.{spec.module} -i /data/{spec.default_name} -d 5XX -np 8")
    parser.add_argument("-i", "--input", type=Path, required=True,
                        help="the dataset's folder in its original layout (only read, never modified)")
    parser.add_argument("-d", "--dataset_id", type=int, required=True,
                        help="nnU-Net dataset id (1-999) of the output DatasetXXX_NAME")
    parser.add_argument("-n", "--name", default=spec.default_name,
                        help=f"dataset name in the output folder name (default: {spec.default_name})")
    parser.add_argument("-o", "--output_root", type=Path, default=None,
                        help="where to create DatasetXXX_NAME (default: $nnUNet_raw)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing DatasetXXX_NAME folder")
    parser.add_argument("-np", "--num_processes", type=int, default=default_num_processes(),
                        help="worker processes, one case each (default: %(default)s)")
    return parser


def _output_root(args: argparse.Namespace) -> Path:
    if args.output_root is not None:
        return Path(args.output_root)
    from nnscreener.paths import raw_root

    return raw_root()


def run_converter(spec: DatasetSpec, args: argparse.Namespace,
                  find_cases: Callable[[Path], tuple[list[Any], dict[str, str]]],
                  convert_one: Callable[..., dict], options: Optional[Mapping[str, Any]] = None) -> int:
    """The shared driver of a converter's ``main``.

    Args:
        spec: what the converter writes.
        args: parsed arguments of ``build_parser`` (plus the converter's own).
        find_cases: source folder -> (tasks, cases already skipped during discovery: id -> reason). Each task has a
            unique ``case_id``.
        convert_one: ``convert_one(task, dataset=OutputDataset) -> info dict``, picklable, raising ScreenerError
            to skip a case.
        options: converter options recorded in ``conversion.json``.

    Returns:
        The exit code: 0 when at least one case was converted, 1 otherwise (the message says why).
    """
    try:
        if args.num_processes < 1:
            raise ScreenerError(f"-np must be at least 1, got {args.num_processes}")
        source = Path(args.input)
        if not source.is_dir():
            raise ScreenerError(f"source folder {source} does not exist")
        tasks, early_skips = find_cases(source)
        require_unique_case_ids(tasks)
        if not tasks:
            raise ScreenerError(f"no {spec.default_name} cases found in {source}; see --help for the expected "
                                f"layout" + (f" ({len(early_skips)} skipped: {early_skips})" if early_skips else ""))
        dataset = prepare_output_dataset(_output_root(args), args.dataset_id, args.name, spec.split, source,
                                         args.overwrite)
    except ScreenerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    report = ConversionReport()
    for case_id, reason in early_skips.items():
        report.skip(case_id, reason)
    for result in convert_cases(tasks, partial(convert_one, dataset=dataset), args.num_processes,
                                desc=f"{spec.default_name} -> {dataset.root.name}"):
        report.add(result)
    print(report.summary())
    if not report.converted:
        shutil.rmtree(dataset.root, ignore_errors=True)
        print(f"error: no case of {source} could be converted; nothing written", file=sys.stderr)
        return report.exit_code()
    write_dataset_files(dataset, spec, report, source, {**(options or {}), "dataset_id": args.dataset_id})
    print(f"wrote {dataset.root}")
    return report.exit_code()
