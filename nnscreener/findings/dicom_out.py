"""DICOM outputs for DICOM inputs (highdicom), both on the source CT series' slices and referencing it: the findings
mask as a DICOM Segmentation and, optionally, the anomaly map as a Parametric Map.

Segmentation: one binary segment ("nnScreener anomaly finding", SNOMED CT Morphologically Abnormal Structure /
Lesion, automatic).
Frame k of the mask is slice k of the series as :func:`nnscreener.io.dicom.read_dicom_series` read it (sorted
along the slice normal), so each frame lies on its source slice: same position, orientation and pixel spacing.
The Patient and Study modules are those the standard requires a SEG to share with its source; nothing else about
the patient is added, and the file is named by the series' non-identifying key
(nnscreener/inference/dicom_inputs.py).

Parametric map: the float32 map (NLL in nats; real-world value mapping identity, unit "nat"), one frame per source
slice, windowed from the map's 1st to 99.5th percentile.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, Mapping, Sequence, Union

import numpy as np
import pydicom

from nnscreener import __version__ as SOFTWARE_VERSION
from nnscreener.errors import ScreenerError
from nnscreener.io.dicom import DicomSeries

SEG_SUFFIX = "_findings_seg.dcm"
PM_SUFFIX = "_map_pm.dcm"
SEGMENT_LABEL = "nnScreener anomaly finding"


def seg_file(out_dir: Union[str, Path], case: str) -> Path:
    """``{out_dir}/{case}_findings_seg.dcm``."""
    return Path(out_dir) / f"{case}{SEG_SUFFIX}"


def pm_file(out_dir: Union[str, Path], case: str) -> Path:
    """``{out_dir}/{case}_map_pm.dcm``."""
    return Path(out_dir) / f"{case}{PM_SUFFIX}"


def _sources(series: DicomSeries, shape_zyx: tuple) -> list:
    """The series' datasets in slice order; ScreenerError when ``shape_zyx`` does not fit them."""
    sources = [pydicom.dcmread(s.path) for s in series.slices]
    if tuple(shape_zyx) != (len(sources), int(sources[0].Rows), int(sources[0].Columns)):
        raise ScreenerError(f"array {tuple(shape_zyx)} does not fit the series ({len(sources)} slices of "
                            f"{sources[0].Rows} x {sources[0].Columns})")
    return sources


def _save(dataset, path: Union[str, Path]) -> Path:
    """Saves a DICOM dataset under a hidden name, then renames it to ``path``."""
    path = Path(path)
    partial = path.with_name(f".partial_{os.getpid()}_{path.name}")
    dataset.save_as(partial)
    os.replace(partial, path)
    return path


def write_dicom_parametric_map(map_zyx: np.ndarray, series: DicomSeries, path: Union[str, Path]) -> Path:
    """Writes the anomaly map (``(n_slices, rows, columns)`` float, slice k = ``series.slices[k]``) as a DICOM
    Parametric Map on the series."""
    import highdicom as hd

    values = np.ascontiguousarray(map_zyx, dtype=np.float32)
    sources = _sources(series, values.shape)
    low, high = (float(v) for v in np.percentile(values, [1.0, 99.5]))
    mapping = hd.pm.RealWorldValueMapping(
        lut_label="NLL", lut_explanation="anomaly score -log q(y|c), nats",
        unit=hd.sr.CodedConcept("{nat}", "UCUM", "nat"), value_range=(float(values.min()), float(values.max())),
        slope=1.0, intercept=0.0)
    pm = hd.pm.ParametricMap(
        source_images=sources, pixel_array=values, series_instance_uid=hd.UID(), series_number=9902,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer="nnScreener", manufacturer_model_name="nnScreener",
        software_versions=SOFTWARE_VERSION, device_serial_number="0", contains_recognizable_visual_features=False,
        real_world_value_mappings=[mapping], series_description="nnScreener anomaly map",
        voi_lut_transformations=[hd.VOILUTTransformation(window_center=(low + high) / 2,
                                                         window_width=max(high - low, 1e-3))])
    return _save(pm, path)


def write_dicom_seg(mask_zyx: np.ndarray, series: DicomSeries, path: Union[str, Path], operating_point: str) -> Path:
    """Writes a binary DICOM-SEG of ``mask_zyx`` on ``series``.

    Args:
        mask_zyx: (n_slices, rows, columns) mask, nonzero = finding, slice k = ``series.slices[k]``.
        series: the checked source series.
        path: output file (written under a hidden name, then renamed).
        operating_point: recorded in the content description, e.g. ``"fpr=0.001"``.
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    mask = np.asarray(mask_zyx) > 0
    sources = _sources(series, mask.shape)
    algorithm = hd.AlgorithmIdentificationSequence(name="nnScreener", family=codes.cid7162.ArtificialIntelligence,
                                                   version=SOFTWARE_VERSION)
    segment = hd.seg.SegmentDescription(
        segment_number=1, segment_label=SEGMENT_LABEL,
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Lesion, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm)
    seg = hd.seg.Segmentation(
        source_images=sources, pixel_array=mask.astype(np.uint8),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY, segment_descriptions=[segment],
        series_instance_uid=hd.UID(), series_number=9901, sop_instance_uid=hd.UID(), instance_number=1,
        manufacturer="nnScreener", manufacturer_model_name="nnScreener", software_versions=SOFTWARE_VERSION,
        device_serial_number="0", content_description=f"anomaly findings at {operating_point}"[:64],
        series_description="nnScreener findings", omit_empty_frames=bool(mask.any()))
    return _save(seg, path)


def write_dicom_maps(out_dir: Path, predicted: Sequence[str], skipped: Sequence[str],
                     series: Mapping[str, DicomSeries], overwrite: bool = False) -> Dict[str, str]:
    """Parametric maps of the DICOM cases of a run (``series``: case -> source series): every predicted map, and
    skipped ones that have none yet (or with ``overwrite``). Returns case -> error message of those that failed."""
    import SimpleITK as sitk

    from nnscreener.inference.input_files import output_file
    from nnscreener.io.images import read_image

    failed: Dict[str, str] = {}
    for case in sorted(set(series) & set(predicted) | {c for c in set(series) & set(skipped)
                                                         if overwrite or not pm_file(out_dir, c).is_file()}):
        try:
            score = sitk.GetArrayFromImage(read_image(output_file(out_dir, case)))
            write_dicom_parametric_map(score, series[case], pm_file(out_dir, case))
        except (ScreenerError, ValueError) as e:
            failed[case] = f"DICOM parametric map: {e}"
    return failed
