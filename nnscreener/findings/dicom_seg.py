"""The findings mask of a DICOM input as a DICOM Segmentation (highdicom), referencing its source CT series.

One binary segment ("nnScreener anomaly finding", SNOMED CT Morphologically Abnormal Structure / Lesion, automatic).
Frame k of the mask is slice k of the series as :func:`nnscreener.io.dicom.read_dicom_series` read it (sorted
along the slice normal), so each frame lies on its source slice: same position, orientation and pixel spacing.
The Patient and Study modules are those the standard requires a SEG to share with its source; nothing else about
the patient is added, and the file is named by the series' non-identifying key
(nnscreener/inference/dicom_inputs.py).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Union

import numpy as np
import pydicom

from nnscreener import __version__ as SOFTWARE_VERSION
from nnscreener.errors import ScreenerError
from nnscreener.io.dicom import DicomSeries

SEG_SUFFIX = "_findings_seg.dcm"
SEGMENT_LABEL = "nnScreener anomaly finding"


def seg_file(out_dir: Union[str, Path], case: str) -> Path:
    """``{out_dir}/{case}_findings_seg.dcm``."""
    return Path(out_dir) / f"{case}{SEG_SUFFIX}"


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

    sources = [pydicom.dcmread(s.path) for s in series.slices]
    mask = np.asarray(mask_zyx) > 0
    if mask.shape != (len(sources), int(sources[0].Rows), int(sources[0].Columns)):
        raise ScreenerError(f"findings mask {mask.shape} does not fit the series ({len(sources)} slices of "
                            f"{sources[0].Rows} x {sources[0].Columns})")
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
    path = Path(path)
    partial = path.with_name(f".partial_{os.getpid()}_{path.name}")
    seg.save_as(partial)
    os.replace(partial, path)
    return path
