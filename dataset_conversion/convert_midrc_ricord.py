"""MIDRC-RICORD-1a (COVID-19 positive chest CT, DICOM from TCIA + MD.ai annotation JSON) -> nnU-Net raw TEST set
with a binary pneumonia-opacity mask.

Source layout:

    SRC/<PatientID>/<study folder>/<series folder>/*.dcm      (NBIA Data Retriever)
    SRC/MIDRC-RICORD-1a_annotations_*.json                    (or give it with -a/--annotations)

Annotation format assumed (MD.ai JSON export, as TCIA distributes it for RICORD):

    {"labelGroups": [{"labels": [{"id": "L_abc", "name": "Infectious opacity", ...}, ...]}, ...],
     "datasets": [{"annotations": [ANNOTATION, ...]}, ...]}        (a bare list of ANNOTATIONs is accepted too)
    ANNOTATION = {"StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "labelId",
                  "data": {"foreground": [[[x, y], ...], ...], "background": [...]}     freeform: rings, holes
                        | {"vertices": [[x, y], ...]}                                   polygon
                        | null}                                                         global (exam) label

Coordinates are pixel indices of the annotated SOP instance (x = column, y = row; rounded to the nearest pixel).
Mask rule: the union over all annotations with geometry of the selected labels (default: every label; restrict
with ``--labels "Infectious opacity,..."``) and over all annotators, each annotation being the pixels enclosed by
or on its foreground rings minus those strictly inside its background rings. One case per series referenced by an
annotation's SeriesInstanceUID (series with only unselected labels get an empty mask), named after the patient
folder (``_1``, ``_2``, ... when a patient has several such series). The series folder is found by reading the
first DICOM header of each folder below SRC (one series per folder, as TCIA downloads are organised).
``conversion.json`` lists the labels found with their annotation counts.

Output: DatasetXXX_MIDRCRICORD1a/{imagesTs/<case>_0000.nii.gz (int16 HU), labelsTs/<case>.nii.gz (uint8,
1 = opacity), dataset.json, conversion.json}.
"""
from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from dataset_conversion.case_ids import numbered_case_ids
from dataset_conversion.rasterize import rasterize_polygon
from dataset_conversion.raw_dataset import DatasetSpec, OutputDataset, write_labeled_case
from dataset_conversion.runner import build_parser, run_converter
from nnscreener.errors import ScreenerError
from nnscreener.io.dicom import (check_ct_series, first_dicom_header, is_candidate_dicom_file, read_dicom_series,
                                 scan_dicom_folder)

SPEC = DatasetSpec(module="convert_midrc_ricord", default_name="MIDRCRICORD1a", split="Ts",
                   lesion_kind="pneumonia_opacity",
                   description="MIDRC-RICORD-1a COVID-19 chest CT; labelsTs: 1 = annotated pneumonia opacity",
                   reference="Tsai et al., MIDRC-RICORD-1a, The Cancer Imaging Archive, 2020")

Ring = tuple[tuple[float, float], ...]  # (x, y) vertices, pixels


@dataclass(frozen=True)
class PolygonAnnotation:
    sop_uid: str
    label: str
    rings: tuple[Ring, ...]  # foreground outlines
    holes: tuple[Ring, ...]  # background outlines


@dataclass(frozen=True)
class RicordCase:
    case_id: str
    series_uid: str
    folder: Path
    annotations: tuple[PolygonAnnotation, ...]


# ---------------------------------------------------------------------------------------------------------------
# Annotation JSON
# ---------------------------------------------------------------------------------------------------------------
def load_annotation_json(path: Path) -> tuple[list[dict], dict[str, str]]:
    """(annotations, label id -> label name) of an MD.ai export. Raises ScreenerError naming the file."""
    try:
        export = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise ScreenerError(f"unreadable annotation file {path}: {e}") from e
    if isinstance(export, list):
        return export, {}
    if not isinstance(export, dict) or "datasets" not in export:
        raise ScreenerError(f"{path} is not an MD.ai export: expected a 'datasets' list (see --help)")
    annotations = [a for d in export["datasets"] for a in d.get("annotations", [])]
    names = {label["id"]: label.get("name", label["id"]) for group in export.get("labelGroups", [])
             for label in group.get("labels", []) if "id" in label}
    return annotations, names


def _rings(value: Any) -> tuple[Ring, ...]:
    return tuple(tuple((float(x), float(y)) for x, y in ring) for ring in (value or []) if ring)


def parse_geometry(annotation: dict) -> Optional[tuple[tuple[Ring, ...], tuple[Ring, ...]]]:
    """(foreground rings, background rings) of a freeform or polygon annotation, None for a global label."""
    data = annotation.get("data")
    if not isinstance(data, dict):
        return None
    if data.get("foreground"):
        return _rings(data["foreground"]), _rings(data.get("background"))
    if data.get("vertices"):
        return _rings([data["vertices"]]), ()
    return None


def _label_name(annotation: dict, names: dict[str, str]) -> str:
    label_id = annotation.get("labelId", "")
    return names.get(label_id) or annotation.get("labelName") or label_id


def group_annotations(annotations: list[dict], names: dict[str, str],
                      labels: Optional[set[str]]) -> tuple[dict[str, list[PolygonAnnotation]], Counter]:
    """series uid -> selected polygon annotations (every series referenced, possibly with none selected), and the
    count of geometric annotations per label name. ``labels``: lower-case names to keep, None = all."""
    by_series: dict[str, list[PolygonAnnotation]] = {}
    counts: Counter = Counter()
    for annotation in annotations:
        series_uid = annotation.get("SeriesInstanceUID")
        if not series_uid:
            continue
        selected = by_series.setdefault(series_uid, [])
        geometry = parse_geometry(annotation)
        if geometry is None:
            continue
        label = _label_name(annotation, names)
        counts[label] += 1
        if labels is None or label.lower() in labels:
            selected.append(PolygonAnnotation(annotation.get("SOPInstanceUID") or "", label, *geometry))
    return by_series, counts


# ---------------------------------------------------------------------------------------------------------------
# Cases
# ---------------------------------------------------------------------------------------------------------------
def series_folders(source: Path) -> dict[str, Path]:
    """SeriesInstanceUID -> folder, from the first DICOM header of every folder below ``source``."""
    found: dict[str, Path] = {}
    for folder, _, files in sorted(os.walk(source)):
        if any(is_candidate_dicom_file(Path(folder) / f) for f in files):
            header = first_dicom_header(Path(folder))
            if header is not None:
                found.setdefault(header.series_uid, Path(folder))
    return found


def find_annotation_file(source: Path, given: Optional[Path]) -> Path:
    if given is not None:
        return Path(given)
    candidates = sorted(source.glob("*.json"))
    if len(candidates) != 1:
        raise ScreenerError(f"found {len(candidates)} JSON files in {source}; give the annotation export with "
                            f"-a/--annotations")
    return candidates[0]


def find_cases(source: Path, annotation_file: Optional[Path], labels: Optional[set[str]],
               label_counts: Counter) -> tuple[list[RicordCase], dict[str, str]]:
    """One case per annotated series; series missing under ``source`` are reported as skipped. Fills
    ``label_counts`` with the annotations found per label name."""
    annotations, names = load_annotation_json(find_annotation_file(source, annotation_file))
    by_series, counts = group_annotations(annotations, names, labels)
    label_counts.update(counts)
    folders = series_folders(source)
    skipped = {f"series-{uid}": f"annotated series {uid} not found below {source}"
               for uid in by_series if uid not in folders}
    present = [uid for uid in by_series if uid in folders]
    groups: dict[str, list[str]] = {}
    for uid in present:
        relative = folders[uid].relative_to(source)
        groups.setdefault(relative.parts[0] if relative.parts else source.name, []).append(uid)
    ids = {uid: case_id for (_, uid), case_id in numbered_case_ids(groups).items()}
    cases = [RicordCase(ids[uid], uid, folders[uid], tuple(by_series[uid])) for uid in present]
    return sorted(cases, key=lambda c: c.case_id), skipped


def opacity_mask(annotations: Sequence[PolygonAnnotation], sop_index: dict[str, int],
                 shape_zyx: tuple[int, int, int]) -> np.ndarray:
    """bool (z, y, x): union of the annotations' regions on their slices."""
    mask = np.zeros(shape_zyx, dtype=bool)
    for annotation in annotations:
        if annotation.sop_uid not in sop_index:
            raise ScreenerError(f"an annotation ({annotation.label!r}) is on SOPInstanceUID "
                                f"{annotation.sop_uid or '(missing)'}, which is not in the series")
        k = sop_index[annotation.sop_uid]
        region = np.zeros(shape_zyx[1:], dtype=bool)
        for ring in annotation.rings:
            region |= rasterize_polygon([p[0] for p in ring], [p[1] for p in ring], shape_zyx[1:], True)
        for hole in annotation.holes:
            region &= ~rasterize_polygon([p[0] for p in hole], [p[1] for p in hole], shape_zyx[1:], False)
        mask[k] |= region
    return mask


def convert_case(case: RicordCase, dataset: OutputDataset) -> dict:
    scan = scan_dicom_folder(case.folder, recursive=False)
    slices = scan.series().get(case.series_uid)
    if not slices:
        raise ScreenerError(f"no DICOM file of series {case.series_uid} in {case.folder}")
    series = check_ct_series(slices, scan.unreadable)
    image = read_dicom_series(series)
    mask = opacity_mask(case.annotations, series.sop_index(), image.GetSize()[::-1])
    write_labeled_case(dataset, case.case_id, image, mask, f"series {series.uid}")
    return {"folder": str(case.folder), "series_uid": series.uid, "num_annotations": len(case.annotations),
            "opacity_voxels": int(mask.sum())}


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser(SPEC, __doc__)
    parser.add_argument("-a", "--annotations", type=Path, default=None,
                        help="the MD.ai annotation JSON (default: the only *.json directly in the input folder)")
    parser.add_argument("--labels", default=None,
                        help="comma-separated label names to include in the mask, case-insensitive "
                             "(default: every label with an outline)")
    args = parser.parse_args(argv)
    labels = {n.strip().lower() for n in args.labels.split(",") if n.strip()} if args.labels else None
    label_counts: Counter = Counter()  # filled during discovery, recorded in conversion.json afterwards
    discover = partial(find_cases, annotation_file=args.annotations, labels=labels, label_counts=label_counts)
    return run_converter(SPEC, args, discover, convert_case,
                         options={"labels": sorted(labels) if labels else "all", "label_counts": label_counts})


if __name__ == "__main__":
    raise SystemExit(main())
