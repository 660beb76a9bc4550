"""Findings at prediction time: the operating point of ``nnScreener_predict --threshold`` resolved against the model's
calibration (checked to belong to the same model and settings), then the findings files of every map of a run.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from nnscreener.errors import ScreenerError
from nnscreener.findings.calibrate import model_record
from nnscreener.findings.calibration import Calibration, calibration_file, parse_operating_point
from nnscreener.findings.outputs import FindingsSettings, write_case_findings
from nnscreener.inference.input_files import output_file


def _matching_calibration(density_folder: Path, checkpoint_name: str, predictor, required: bool) -> Optional[Calibration]:
    path = calibration_file(density_folder, checkpoint_name)
    if not required and not path.is_file():
        return None
    calibration = Calibration.load(path)
    mismatch = calibration.model_mismatch(model_record(density_folder, checkpoint_name, predictor))
    if not mismatch:
        return calibration
    message = (f"calibration {path} was made for other maps ({'; '.join(mismatch)}); rerun nnScreener_calibrate "
               f"(--overwrite) or predict with the calibrated settings")
    if required:
        raise ScreenerError(message)
    print(f"nnScreener_predict: note: {message}; percentiles among normal voxels are left empty", file=sys.stderr)
    return None


def findings_settings(spec: str, density_folder: Path, checkpoint_name: str, predictor, min_volume_ml: float = 0.0,
                      organ_dir: Optional[Path] = None) -> FindingsSettings:
    """The findings settings of a ``--threshold`` spec for the model the predictor holds.

    ``fpr=`` and ``fp_ml=`` need the checkpoint's calibration, made with the same model and sliding-window settings;
    ``value=`` does not (a matching calibration, when present, still gives percentiles among normal voxels).

    Raises:
        ScreenerError: a bad spec, a missing or mismatching calibration, a negative minimum volume, a missing
            organ folder.
    """
    point = parse_operating_point(spec)
    if min_volume_ml < 0:
        raise ScreenerError(f"--min_volume_ml must be >= 0, got {min_volume_ml}")
    if organ_dir is not None and not Path(organ_dir).is_dir():
        raise ScreenerError(f"--organ_masks folder {organ_dir} does not exist")
    calibration = _matching_calibration(Path(density_folder), checkpoint_name, predictor, point.kind != "value")
    threshold = calibration.threshold(point) if calibration is not None else float(point.target)
    return FindingsSettings(point, threshold, calibration, float(min_volume_ml),
                            Path(organ_dir) if organ_dir is not None else None)


def write_run_findings(output_dir: Path, predicted: Sequence[str], skipped: Sequence[str], settings: FindingsSettings,
                       overwrite: bool = False) -> Tuple[Dict[str, int], Dict[str, str]]:
    """Writes the findings of a prediction run's maps.

    Maps predicted in this run get new findings files; maps that were skipped (they existed) get them only when
    they have none yet, or with ``overwrite``.

    Returns:
        (case -> number of findings written, case -> error message of cases that failed).
    """
    written: Dict[str, int] = {}
    failed: Dict[str, str] = {}
    for case in sorted(predicted) + sorted(skipped):
        try:
            findings = write_case_findings(output_file(output_dir, case), case, settings,
                                           overwrite=overwrite or case in predicted)
        except ScreenerError as e:
            failed[case] = str(e)
            continue
        if findings is not None:
            written[case] = len(findings.rows)
    return written, failed


def write_run_outputs(output_dir: Path, predicted: Sequence[str], skipped: Sequence[str], settings: FindingsSettings,
                      overwrite: bool, images: Mapping[str, str], series: Mapping[str, Any],
                      report: bool = False) -> Tuple[Dict[str, int], Dict[str, str]]:
    """The findings files of a run (:func:`write_run_findings`), a DICOM-SEG for each case that came from a DICOM
    series (``series``: case -> DicomSeries) and, with ``report``, report PNGs (scans from ``images``: case -> image
    file) and the folder's index.

    Returns:
        (case -> number of findings written, case -> error message).
    """
    written, failed = write_run_findings(output_dir, predicted, skipped, settings, overwrite)
    for case in sorted(set(written) & set(series)):
        try:
            write_case_seg(output_dir, case, series[case], settings.point.name)
        except (ScreenerError, ValueError) as e:
            failed[case] = f"DICOM-SEG: {e}"
    if report:
        from nnscreener.findings.report import write_reports

        failed.update(write_reports(output_dir, {c: images[c] for c in written if c in images}))
    return written, failed


def write_case_seg(output_dir: Path, case: str, series, operating_point: str) -> Path:
    """Writes ``{case}_findings_seg.dcm`` from the case's findings mask file."""
    import SimpleITK as sitk

    from nnscreener.findings.dicom_out import seg_file, write_dicom_seg
    from nnscreener.findings.outputs import findings_files
    from nnscreener.io.images import read_image

    mask = sitk.GetArrayFromImage(read_image(findings_files(output_dir, case)["mask"]))
    return write_dicom_seg(mask, series, seg_file(output_dir, case), operating_point)


def findings_lines(settings: FindingsSettings, written: Mapping[str, int], failed: Mapping[str, str]) -> List[str]:
    """What the run printed about findings: the operating point, counts, and one FAILED line per failure."""
    lines = [f"nnScreener_predict: findings at {settings.point.name} (threshold {settings.threshold:.4f} nats"
             f"{f', min volume {settings.min_volume_ml:g} mL' if settings.min_volume_ml else ''}): "
             f"{len(written)} cases, {sum(written.values())} findings"]
    return lines + [f"  FAILED findings of {case}: {message}" for case, message in sorted(failed.items())]
