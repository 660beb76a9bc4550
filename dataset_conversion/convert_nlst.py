"""NLST (National Lung Screening Trial, CT arm, DICOM from TCIA) -> nnU-Net raw UNLABELED training set.

Source layout (as the NBIA Data Retriever writes it; file names do not matter):

    SRC/<PatientID>/<study folder>/<series folder>/*.dcm
    e.g. SRC/100002/01-02-1999-NA-NLST-LSS-55322/2.000000-0OPAGELSPLUSD3602.512080.00.11.5-59183/1-001.dcm

One case per study folder (a screening round of a patient), named ``<PatientID>_<study folder>``. A study holds
several reconstructions of the same scan; the converter reads every DICOM header below the study folder, groups
files by SeriesInstanceUID and keeps the series that pass the CT checks (Modality CT, not a localizer, >= 3
slices, equal orientation / spacing / size, no missing or duplicate slices, no gantry tilt, no unreadable file; see
``nnscreener.io.dicom.check_ct_series``). Of those it converts ONE, chosen by:

    thinnest slice spacing, then most slices, then lowest SeriesNumber, then SeriesInstanceUID.

A study without a usable CT series is skipped with every series' reason; ``conversion.json`` records the chosen
series of each case.

Output: DatasetXXX_NLST/{imagesTr/<case>_0000.nii.gz (int16 HU), dataset.json, conversion.json}.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from dataset_conversion.case_ids import sanitize_case_id
from dataset_conversion.raw_dataset import DatasetSpec, OutputDataset, write_unlabeled_case
from dataset_conversion.runner import build_parser, run_converter
from nnscreener.errors import ScreenerError
from nnscreener.io.dicom import DicomSeries, check_ct_series, read_dicom_series, scan_dicom_folder

SPEC = DatasetSpec(module="convert_nlst", default_name="NLST", split="Tr",
                   description="NLST low-dose chest CT, one series per study, unlabeled",
                   reference="National Lung Screening Trial Research Team, Radiology 258(1), 2011; TCIA NLST")


@dataclass(frozen=True)
class NlstStudy:
    case_id: str
    folder: Path


def find_cases(source: Path) -> tuple[list[NlstStudy], dict[str, str]]:
    """Every ``<patient>/<study>`` folder of ``source``."""
    studies = []
    for patient in sorted(p for p in source.iterdir() if p.is_dir()):
        for study in sorted(p for p in patient.iterdir() if p.is_dir()):
            studies.append(NlstStudy(sanitize_case_id(f"{patient.name}_{study.name}"), study))
    return studies, {}


def series_preference(series: DicomSeries) -> tuple:
    """Sort key: the preferred series comes first (thinnest slices, most slices, lowest number, uid)."""
    return (round(series.slice_spacing, 3), -len(series.slices), series.slices[0].series_number, series.uid)


def choose_series(candidates: dict[str, list], unreadable: Sequence) -> DicomSeries:
    """The preferred series among those that pass the CT checks; ScreenerError listing every rejection if none."""
    usable, rejected = [], []
    for slices in candidates.values():
        try:
            usable.append(check_ct_series(slices, unreadable))
        except ScreenerError as e:
            rejected.append(str(e))
    if not usable:
        reasons = "; ".join(rejected) or "no DICOM series found"
        orphan = f"; unreadable: {unreadable[0][1]}" if unreadable and not candidates else ""
        raise ScreenerError(f"no usable CT series: {reasons}{orphan}")
    return min(usable, key=series_preference)


def convert_case(study: NlstStudy, dataset: OutputDataset) -> dict:
    scan = scan_dicom_folder(study.folder, recursive=True)
    chosen = choose_series(scan.series(), scan.unreadable)
    write_unlabeled_case(dataset, study.case_id, read_dicom_series(chosen), f"series {chosen.uid}")
    return {"folder": str(chosen.folder), "series_uid": chosen.uid, "series_description": chosen.description,
            "num_slices": len(chosen.slices), "slice_spacing_mm": chosen.slice_spacing,
            "num_series_in_study": len(scan.series())}


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser(SPEC, __doc__).parse_args(argv)
    return run_converter(SPEC, args, find_cases, convert_case,
                         options={"series_choice": "thinnest slices, then most slices, then lowest SeriesNumber"})


if __name__ == "__main__":
    raise SystemExit(main())
