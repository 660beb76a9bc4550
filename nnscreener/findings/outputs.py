"""The findings files beside each anomaly map (docs/design.md C14; this module owns their names and format) and the
pass over a folder of maps that writes them.

Per case, beside ``{case}.nii.gz`` (the map, C11): ``{case}_findings.nii.gz`` (uint8, 1 = voxel of a finding, the
map's exact geometry), ``{case}_findings.json`` (the operating point, its threshold, the conventions and one entry
per finding) and ``{case}_findings.csv`` (the same rows, list fields split into ``_x``, ``_y``, ``_z`` columns).
Existing findings files are kept unless ``overwrite``.
"""
from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import SimpleITK as sitk

from nnscreener.errors import ScreenerError
from nnscreener.findings.calibration import Calibration, OperatingPoint, rate_columns
from nnscreener.findings.components import Findings, Geometry, find_findings
from nnscreener.io.images import read_image

FINDINGS_SUFFIX = "_findings"
COORDINATES = ("world coordinates in mm, LPS (DICOM/ITK patient coordinates: x to the patient's left, y posterior, "
               "z to the head), as SimpleITK's TransformContinuousIndexToPhysicalPoint; voxel indices (x, y, z) "
               "from 0; boxes are inclusive")
COLUMNS = ("id", "voxels", "volume_ml", "max_score", "mean_score", "max_score_percentile_normal", "centroid_lps_mm",
           "peak_lps_mm", "bbox_lps_min_mm", "bbox_lps_max_mm", "centroid_voxel_xyz", "peak_voxel_xyz",
           "bbox_voxel_xyz_min", "bbox_voxel_xyz_max", "organ_label", "organ", "organ_fraction")


def findings_files(out_dir: Union[str, Path], case: str) -> Dict[str, Path]:
    """``{"mask": .nii.gz, "json": .json, "csv": .csv}`` paths of a case's findings in ``out_dir``."""
    stem = Path(out_dir) / f"{case}{FINDINGS_SUFFIX}"
    return {"mask": stem.with_name(stem.name + ".nii.gz"), "json": stem.with_name(stem.name + ".json"),
            "csv": stem.with_name(stem.name + ".csv")}


@dataclass(frozen=True)
class FindingsSettings:
    """How findings are derived from maps.

    Attributes:
        point: the operating point (``--threshold``).
        threshold: its score threshold in nats.
        calibration: the calibration it came from (None for ``value=``), also used for percentiles.
        min_volume_ml: smaller findings are dropped.
        organ_dir: folder of organ label maps ``{case}.nii.gz`` (optional).
    """

    point: OperatingPoint
    threshold: float
    calibration: Optional[Calibration] = None
    min_volume_ml: float = 0.0
    organ_dir: Optional[Path] = None

    def header(self) -> Dict[str, Any]:
        """The JSON header: operating point, threshold, its rates on the normal scans and the conventions."""
        fpr, fp_ml = rate_columns(self.calibration, self.threshold)
        return {"operating_point": self.point.name, "threshold": self.threshold,
                "calibration": str(self.calibration.path) if self.calibration else None,
                "normal_fpr_at_threshold": fpr, "normal_fp_ml_per_scan_at_threshold": fp_ml,
                "min_volume_ml": self.min_volume_ml, "connectivity": 26, "coordinates": COORDINATES,
                "scores": "NLL in nats; a voxel is in a finding when its score > threshold"}


def csv_text(rows: Sequence[Mapping[str, Any]]) -> str:
    """The rows as CSV text; list fields become ``name_x``, ``name_y``, ``name_z`` columns, missing fields empty."""
    present = [c for c in COLUMNS if any(c in r for r in rows)] or list(COLUMNS[:6])
    header: List[str] = []
    for column in present:
        sample = next((r[column] for r in rows if column in r), None)
        header += [f"{column}_{a}" for a in "xyz"] if isinstance(sample, list) else [column]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        cells: List[Any] = []
        for column in present:
            value = row.get(column, "")
            cells += list(value) if isinstance(value, list) else [value]
        writer.writerow(cells)
    return buffer.getvalue()


def _replace_atomically(path: Path, write) -> None:
    partial = path.with_name(f".partial_{os.getpid()}_{path.name}")
    write(partial)
    os.replace(partial, path)


def write_findings(findings: Findings, geometry: Geometry, out_dir: Union[str, Path], case: str,
                   header: Mapping[str, Any]) -> Dict[str, Path]:
    """Writes a case's findings mask (uint8, ``geometry``), JSON and CSV; returns their paths."""
    files = findings_files(out_dir, case)
    mask = geometry.apply_to(sitk.GetImageFromArray(findings.mask.astype(np.uint8)))
    _replace_atomically(files["mask"], lambda p: sitk.WriteImage(mask, str(p), True))
    document = {"case": case, **header, "n_findings": len(findings.rows),
                "n_components_before_volume_filter": findings.n_components, "findings": findings.rows}
    _replace_atomically(files["json"], lambda p: p.write_text(json.dumps(document, indent=1)))
    _replace_atomically(files["csv"], lambda p: p.write_text(csv_text(findings.rows)))
    return files


def organ_names(organ_dir: Path) -> Dict[int, str]:
    """Label value -> name from ``organ_dir/dataset.json`` (nnU-Net ``"labels": {name: value}``) or
    ``organ_dir/labels.json`` (``{"value": name}``); empty when neither exists."""
    for name in ("labels.json", "dataset.json"):
        path = organ_dir / name
        if not path.is_file():
            continue
        try:
            data = json.loads(path.read_text())
        except ValueError as e:
            raise ScreenerError(f"{path} is not valid JSON: {e}") from None
        labels = data.get("labels", data) if isinstance(data, dict) else {}
        if all(str(k).lstrip("-").isdigit() for k in labels):
            return {int(k): str(v) for k, v in labels.items()}
        return {int(v): str(k) for k, v in labels.items() if isinstance(v, (int, float))}
    return {}


def read_organs(organ_dir: Path, case: str, map_image: sitk.Image, map_file: Path) -> np.ndarray:
    """The (z, y, x) organ label map of a case, checked to share the map's geometry."""
    from nnscreener.evaluation.sampling import check_same_geometry, volume_files_by_case

    files = volume_files_by_case(organ_dir)
    if case not in files:
        raise ScreenerError(f"no organ label map {case}.nii.gz in {organ_dir}")
    organs = read_image(files[case])
    check_same_geometry(map_image, organs, case, "anomaly map", map_file, "organ label map", files[case])
    array = sitk.GetArrayFromImage(organs)
    if not np.issubdtype(array.dtype, np.integer):
        array = np.rint(array).astype(np.int64)
    return np.maximum(array, 0)


def findings_for_map(map_file: Path, case: str, settings: FindingsSettings) -> Tuple[Findings, Geometry]:
    """Reads a map and returns its findings at the settings' threshold and its geometry."""
    image = read_image(map_file)
    organs = read_organs(settings.organ_dir, case, image, map_file) if settings.organ_dir is not None else None
    geometry = Geometry.of(image)
    findings = find_findings(sitk.GetArrayViewFromImage(image), settings.threshold, geometry,
                             settings.min_volume_ml, settings.calibration.percentile if settings.calibration else None,
                             organs, organ_names(settings.organ_dir) if settings.organ_dir is not None else None)
    return findings, geometry


def write_case_findings(map_file: Path, case: str, settings: FindingsSettings,
                        overwrite: bool = False) -> Optional[Findings]:
    """Writes the findings files of one map; returns the findings, or None when they exist and not ``overwrite``."""
    files = findings_files(map_file.parent, case)
    if not overwrite and all(p.is_file() for p in files.values()):
        return None
    findings, geometry = findings_for_map(map_file, case, settings)
    write_findings(findings, geometry, map_file.parent, case, settings.header())
    return findings
