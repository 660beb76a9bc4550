"""DICOM CT series as prediction inputs, beside image files: finding the series in an input folder, skipping what is
not a 3D CT volume with a message, and giving each series a non-identifying case key.

A folder given to ``nnScreener_predict -i`` may hold image files (``{case}_0000.nii.gz``, ``.nrrd``, ...) and DICOM
files, directly or in subfolders. Every series (SeriesInstanceUID) is checked with
:func:`nnscreener.io.dicom.check_ct_series`: non-CT series, localizers, multi-frame files, irregular slice gaps
(missing slices) and gantry tilt are skipped with the reason (nothing is resampled). A kept series is read in slice
order as Hounsfield units, written as an int16 NIfTI into a staging folder for the predictor, and named
``dicom_<12 hex digits of SHA-256(SeriesInstanceUID)>``: never a patient name, ID or folder name. Messages name
series by that key. ``dicom_series.json`` (:func:`write_series_index`) maps the keys back to the UIDs.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Tuple, Union

import SimpleITK as sitk

from nnscreener.errors import ScreenerError
from nnscreener.inference.input_files import InputCase, discover_cases, image_ending, select_part
from nnscreener.io.dicom import DicomSeries, check_ct_series, read_dicom_series, scan_dicom_folder
from nnscreener.io.images import to_int16_hu

DICOM_KEY_PREFIX = "dicom_"
SERIES_INDEX_FILE = "dicom_series.json"


def series_key(series_uid: str) -> str:
    """The non-identifying case key of a DICOM series.

    >>> series_key("1.2.3")
    'dicom_c47f5b18b8a4'
    """
    return DICOM_KEY_PREFIX + hashlib.sha256(series_uid.encode("utf-8")).hexdigest()[:12]


@dataclass
class CollectedInputs:
    """The cases of an input path.

    Attributes:
        cases: the part's image-file cases and DICOM series (as staged NIfTI files), sorted by case id.
        series: case key -> the checked DICOM series it came from, for every part.
        skipped: one message per DICOM series that is not predicted.
    """

    cases: List[InputCase]
    series: Dict[str, DicomSeries]
    skipped: List[str]


def _has_dicom_candidates(folder: Path) -> bool:
    return any(p.is_dir() or (p.is_file() and not p.name.startswith(".") and image_ending(p.name) is None
                              and p.suffix.lower() not in (".json", ".txt", ".md", ".csv"))
               for p in folder.iterdir())


def _dicom_series(folder: Path) -> Tuple[List[DicomSeries], List[str]]:
    scan = scan_dicom_folder(folder, recursive=True)
    unreadable = [(p, why) for p, why in scan.unreadable if image_ending(p.name) is None]
    kept, skipped = [], []
    for uid, slices in sorted(scan.series().items()):
        try:
            kept.append(check_ct_series(slices, unreadable))
        except ScreenerError as e:
            skipped.append(f"skipped DICOM series {series_key(uid)}: {str(e).replace(uid, series_key(uid))}")
    return kept, skipped


def stage_series(series: DicomSeries, staging: Path) -> InputCase:
    """Reads a checked series as int16 HU and writes it as ``{staging}/{key}_0000.nii.gz``; returns its case."""
    key = series_key(series.uid)
    staging.mkdir(parents=True, exist_ok=True)
    path = staging / f"{key}_0000.nii.gz"
    sitk.WriteImage(to_int16_hu(read_dicom_series(series), f"DICOM series {key}"), str(path), True)
    return InputCase(key, (str(path),))


def collect_inputs(input_path: Union[str, Path], staging: Path, num_parts: int = 1,
                   part_id: int = 0) -> CollectedInputs:
    """The cases of an input file or folder: image files as :func:`discover_cases` finds them, plus the CT series
    of the DICOM files in the folder and below; of these the part ``part_id`` of ``num_parts``
    (:func:`select_part` over all case ids, nnU-Net's ``-num_parts`` / ``-part_id``), whose DICOM series alone are
    read and staged as NIfTI in ``staging`` (the other parts' processes stage theirs).

    Raises:
        ScreenerError: the path does not exist, holds neither images nor a usable CT series, two cases share an
            id, or the part is out of range.
    """
    input_path = Path(input_path)
    if not input_path.exists():
        raise ScreenerError(f"input folder {input_path} does not exist")
    if input_path.is_file() or not _has_dicom_candidates(input_path):
        return CollectedInputs(select_part(discover_cases(input_path), num_parts, part_id), {}, [])
    try:
        cases = discover_cases(input_path)
    except ScreenerError:
        cases = []  # no image files directly in the folder: DICOM only
    series, skipped = _dicom_series(input_path)
    keyed = {series_key(s.uid): s for s in series}
    ids = sorted([c.case_id for c in cases] + list(keyed))
    if len(set(ids)) != len(ids):
        raise ScreenerError(f"two inputs in {input_path} have the same case id; rename the image files")
    if not ids:
        raise ScreenerError(f"input folder {input_path} holds no images and no usable DICOM CT series"
                            + (f" ({'; '.join(skipped[:3])})" if skipped else ""))
    part = set(select_part(ids, num_parts, part_id))
    cases = [c for c in cases if c.case_id in part] + [stage_series(s, staging) for k, s in keyed.items() if k in part]
    return CollectedInputs(sorted(cases), keyed, skipped)


def write_series_index(out_dir: Path, series: Dict[str, DicomSeries]) -> Path:
    """Writes (or extends) ``{out_dir}/dicom_series.json``: case key -> SeriesInstanceUID, StudyInstanceUID,
    number of slices, slice spacing (mm). No patient names, IDs or paths."""
    path = out_dir / SERIES_INDEX_FILE
    index = json.loads(path.read_text()) if path.is_file() else {}
    for key, s in series.items():
        index[key] = {"series_instance_uid": s.uid, "study_instance_uid": s.slices[0].study_uid,
                      "n_slices": len(s.slices), "slice_spacing_mm": s.slice_spacing}
    path.write_text(json.dumps(index, indent=1, sort_keys=True))
    return path
