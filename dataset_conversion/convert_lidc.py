"""LIDC-IDRI (DICOM + reader XML from TCIA) -> nnU-Net raw TEST set with a reader-consensus lung nodule mask.

Source layout (as the NBIA Data Retriever writes it):

    SRC/LIDC-IDRI-0001/<study folder>/<series folder>/*.dcm + 069.xml

Each CT series comes with one XML file (root ``LidcReadMessage``, namespace http://www.nih.gov) holding up to four
``readingSession`` elements, one per radiologist. Chest radiograph XMLs (other roots) are ignored. One case per CT
series that has an XML, named after the patient folder (``LIDC-IDRI-0001``, or ``LIDC-IDRI-0001_1``, ``_2`` when a
patient has several annotated CT series).

Reader-consensus rule (documented choice; ``--min_readers``, ``--include_outline``):

1. Only nodules >= 3 mm count: ``unblindedReadNodule`` elements with an outline, i.e. with at least one ``roi``
   whose ``edgeMap`` has >= 3 distinct points. Nodules < 3 mm (a single centroid point) and ``nonNodule`` marks are
   ignored.
2. Each ``roi`` lies on the slice whose SOPInstanceUID equals ``imageSOP_UID``; if no slice has that UID, on the
   slice whose ImagePositionPatient z is within half a slice gap of ``imageZposition``; otherwise the case is
   skipped. ``edgeMap`` points are 0-based pixel indices (``xCoord`` = column, ``yCoord`` = row).
3. A reader's nodule region on a slice = pixels enclosed by its ``inclusion=TRUE`` outlines minus pixels enclosed
   by (or on) its ``inclusion=FALSE`` outlines. LIDC readers drew outlines on the first pixels OUTSIDE the nodule,
   so outline pixels are excluded unless ``--include_outline``. A reader's mask is the union of its nodules.
4. Consensus: a voxel is a nodule voxel when at least ``--min_readers`` (default 2) readers' masks contain it.
   With fewer readers than ``--min_readers`` the mask is empty.

Output: DatasetXXX_LIDC/{imagesTs/LIDC-IDRI-0001_0000.nii.gz (int16 HU), labelsTs/LIDC-IDRI-0001.nii.gz (uint8,
1 = nodule), dataset.json, conversion.json}.
"""
from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Iterable, Optional, Sequence

import numpy as np

from dataset_conversion.case_ids import numbered_case_ids, sanitize_case_id
from dataset_conversion.rasterize import rasterize_polygon
from dataset_conversion.raw_dataset import DatasetSpec, OutputDataset, write_labeled_case
from dataset_conversion.runner import build_parser, run_converter
from nnscreener.errors import ScreenerError
from nnscreener.io.dicom import DicomSeries, check_ct_series, read_dicom_series, scan_dicom_folder

SPEC = DatasetSpec(module="convert_lidc", default_name="LIDC", split="Ts", lesion_kind="lung_nodule",
                   description="LIDC-IDRI chest CT; labelsTs: 1 = lung nodule >= 3 mm by reader consensus",
                   reference="Armato III et al., The LIDC/IDRI database, Medical Physics 38(2):915-931, 2011")
CT_XML_ROOT = "LidcReadMessage"
MIN_OUTLINE_POINTS = 3


# ---------------------------------------------------------------------------------------------------------------
# Reader XML
# ---------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Roi:
    """One reader's outline of one nodule on one slice."""

    z_position: float  # imageZposition, mm
    sop_uid: str  # imageSOP_UID
    inclusion: bool  # False: the outline bounds a region to cut out of the nodule
    xs: tuple[int, ...]  # edgeMap xCoord (columns), pixels
    ys: tuple[int, ...]  # edgeMap yCoord (rows), pixels

    @property
    def num_distinct_points(self) -> int:
        return len(set(zip(self.xs, self.ys)))


@dataclass(frozen=True)
class ReaderNodule:
    nodule_id: str
    rois: tuple[Roi, ...]

    @property
    def is_outlined(self) -> bool:
        """True for nodules >= 3 mm, which readers outlined (rule 1)."""
        return any(roi.num_distinct_points >= MIN_OUTLINE_POINTS for roi in self.rois)


@dataclass(frozen=True)
class ReadingSession:
    reader_id: str
    nodules: tuple[ReaderNodule, ...]


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _children(element: ET.Element, name: str) -> list[ET.Element]:
    return [c for c in element if _local(c.tag) == name]


def _child_text(element: ET.Element, name: str, default: str = "") -> str:
    found = _children(element, name)
    return (found[0].text or "").strip() if found else default


def _parse_xml(path: Path) -> ET.Element:
    try:
        return ET.parse(path).getroot()
    except (ET.ParseError, OSError) as e:
        raise ScreenerError(f"unreadable reader XML {path}: {e}") from e


def xml_series_uid(root: ET.Element) -> Optional[str]:
    """The SeriesInstanceUID a CT reader XML annotates, None for other XMLs (chest radiographs, ...)."""
    if _local(root.tag) != CT_XML_ROOT:
        return None
    headers = _children(root, "ResponseHeader")
    uid = _child_text(headers[0], "SeriesInstanceUid") if headers else ""
    return uid or None


def _parse_roi(element: ET.Element, path: Path) -> Roi:
    try:
        points = [(int(round(float(_child_text(e, "xCoord")))), int(round(float(_child_text(e, "yCoord")))))
                  for e in _children(element, "edgeMap")]
        z = float(_child_text(element, "imageZposition", "nan"))
    except ValueError as e:
        raise ScreenerError(f"{path}: malformed roi coordinates ({e})") from e
    return Roi(z_position=z, sop_uid=_child_text(element, "imageSOP_UID"),
               inclusion=_child_text(element, "inclusion", "TRUE").upper() == "TRUE",
               xs=tuple(p[0] for p in points), ys=tuple(p[1] for p in points))


def parse_reading_sessions(path: Path) -> list[ReadingSession]:
    """All ``readingSession`` elements of a CT reader XML, one per reader, with their nodules' outlines."""
    root = _parse_xml(path)
    sessions = []
    for k, session in enumerate(_children(root, "readingSession")):
        nodules = tuple(ReaderNodule(_child_text(n, "noduleID"),
                                     tuple(_parse_roi(r, path) for r in _children(n, "roi")))
                        for n in _children(session, "unblindedReadNodule"))
        sessions.append(ReadingSession(_child_text(session, "servicingRadiologistID") or f"reader{k + 1}", nodules))
    return sessions


# ---------------------------------------------------------------------------------------------------------------
# Masks
# ---------------------------------------------------------------------------------------------------------------
class SliceLocator:
    """Finds the slice index k (z axis of the image array) of a ROI: by SOPInstanceUID, else by z position (rule 2)."""

    def __init__(self, series: DicomSeries):
        self.series_uid = series.uid
        self.sop_index = series.sop_index()
        self.z = series.z_positions()
        self.tolerance = 0.5 * series.slice_spacing

    def __call__(self, roi: Roi) -> int:
        if roi.sop_uid in self.sop_index:
            return self.sop_index[roi.sop_uid]
        distance = np.abs(self.z - roi.z_position)
        k = int(np.argmin(distance))
        if not np.isfinite(roi.z_position) or distance[k] > self.tolerance:
            raise ScreenerError(f"a reader outline at z = {roi.z_position} mm (SOP {roi.sop_uid or 'missing'}) "
                                f"matches no slice of series {self.series_uid}")
        return k


def reader_mask(session: ReadingSession, locate: SliceLocator, shape_yx: tuple[int, int],
                include_outline: bool) -> dict[int, np.ndarray]:
    """One reader's nodule mask as {slice index k: bool (y, x)} over the slices it touches (rules 1-3)."""
    mask: dict[int, np.ndarray] = {}
    for nodule in session.nodules:
        if not nodule.is_outlined:
            continue
        inside: dict[int, np.ndarray] = {}
        cut: dict[int, np.ndarray] = {}
        for roi in nodule.rois:
            k = locate(roi)
            target = inside if roi.inclusion else cut
            region = rasterize_polygon(roi.xs, roi.ys, shape_yx, include_outline or not roi.inclusion)
            target[k] = target[k] | region if k in target else region
        for k, region in inside.items():
            region = region & ~cut[k] if k in cut else region
            mask[k] = mask[k] | region if k in mask else region
    return mask


def consensus_mask(reader_masks: Iterable[dict[int, np.ndarray]], shape_zyx: tuple[int, int, int],
                   min_readers: int) -> np.ndarray:
    """bool (z, y, x): voxels contained in at least ``min_readers`` of the readers' masks (rule 4)."""
    votes = np.zeros(shape_zyx, dtype=np.uint8)
    for mask in reader_masks:
        for k, region in mask.items():
            votes[k] += region
    return votes >= min_readers


# ---------------------------------------------------------------------------------------------------------------
# Cases
# ---------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LidcCase:
    case_id: str
    series_uid: str
    xml_files: tuple[Path, ...]

    @property
    def folder(self) -> Path:
        return self.xml_files[0].parent


def find_cases(source: Path) -> tuple[list[LidcCase], dict[str, str]]:
    """One case per CT series with reader XML(s) below ``source``; unreadable XMLs are reported as skipped."""
    xmls_by_series: dict[str, list[Path]] = {}
    patient_of_series: dict[str, str] = {}
    skipped = {}
    for path in sorted(source.rglob("*.xml")):
        relative = path.relative_to(source)
        patient = relative.parts[0] if len(relative.parts) > 1 else source.name
        try:
            uid = xml_series_uid(_parse_xml(path))
        except ScreenerError as e:
            skipped[sanitize_case_id(str(relative))] = str(e)
            continue
        if uid is not None:
            xmls_by_series.setdefault(uid, []).append(path)
            patient_of_series.setdefault(uid, patient)
    groups: dict[str, list[str]] = {}
    for uid, patient in patient_of_series.items():
        groups.setdefault(patient, []).append(uid)
    ids = numbered_case_ids(groups)
    cases = [LidcCase(ids[(patient_of_series[uid], uid)], uid, tuple(files)) for uid, files in xmls_by_series.items()]
    return sorted(cases, key=lambda c: c.case_id), skipped


def load_series(case: LidcCase) -> DicomSeries:
    scan = scan_dicom_folder(case.folder, recursive=False)
    slices = scan.series().get(case.series_uid)
    if not slices:
        raise ScreenerError(f"no DICOM file of series {case.series_uid} beside {case.xml_files[0]}")
    return check_ct_series(slices, scan.unreadable)


def convert_case(case: LidcCase, dataset: OutputDataset, min_readers: int, include_outline: bool) -> dict:
    series = load_series(case)
    image = read_dicom_series(series)
    sessions = [s for path in case.xml_files for s in parse_reading_sessions(path)]
    locate = SliceLocator(series)
    shape_zyx = image.GetSize()[::-1]
    masks = [reader_mask(s, locate, shape_zyx[1:], include_outline) for s in sessions]
    mask = consensus_mask(masks, shape_zyx, min_readers)
    write_labeled_case(dataset, case.case_id, image, mask, f"series {series.uid}")
    return {"folder": str(series.folder), "series_uid": series.uid, "num_readers": len(sessions),
            "num_outlined_nodules": sum(n.is_outlined for s in sessions for n in s.nodules),
            "nodule_voxels": int(mask.sum())}


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser(SPEC, __doc__)
    parser.add_argument("--min_readers", type=int, default=2,
                        help="a voxel is a nodule when at least this many readers outlined it (default: 2)")
    parser.add_argument("--include_outline", action="store_true",
                        help="count the readers' outline pixels as nodule (default: only the pixels they enclose)")
    args = parser.parse_args(argv)
    if args.min_readers < 1:
        parser.error(f"--min_readers must be at least 1, got {args.min_readers}")
    convert = partial(convert_case, min_readers=args.min_readers, include_outline=args.include_outline)
    return run_converter(SPEC, args, find_cases, convert,
                         options={"min_readers": args.min_readers, "include_outline": args.include_outline})


if __name__ == "__main__":
    raise SystemExit(main())
