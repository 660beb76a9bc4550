"""Calibrating a trained model on normal scans: predict their maps with the model, pool the body-voxel scores and
write the calibration beside the density checkpoint (the function behind ``nnScreener_calibrate``).

The scans must be normal (no pathology) and held out from the training of the model: a scan listed in the density
model's ``dataset.json`` (the files it was trained on) is refused unless ``allow_training_scans``. Maps are
computed by the prediction code (:class:`nnscreener.inference.predictor.ScreenerPredictor`) in each scan's own
geometry and scored inside the evaluation's body mask (``body_mask_from_hu``).
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

import SimpleITK as sitk

from nnscreener.errors import ScreenerError
from nnscreener.findings.calibration import (DEFAULT_FP_ML, DEFAULT_FPRS, DEFAULT_MAX_VOXELS_PER_SCAN, ScanScores,
                                              body_scores, build_calibration, calibration_file, write_calibration)
from nnscreener.inference.dicom_inputs import collect_inputs
from nnscreener.inference.input_files import InputCase
from nnscreener.io.images import read_image
from nnscreener.planning.body_mask import body_mask_from_hu


def file_sha256(path: Union[str, Path]) -> str:
    """Hex SHA-256 of a file's bytes (read in 1 MiB blocks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while block := stream.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def model_record(density_folder: Union[str, Path], checkpoint_name: str, predictor) -> Dict[str, Any]:
    """What decides the maps a calibration is valid for: the density folder, the checkpoint (name and SHA-256),
    dataset, plans, sliding-window step and blending. Prediction compares it with its own (see
    :meth:`nnscreener.findings.calibration.Calibration.model_mismatch`)."""
    folder = Path(density_folder).resolve()
    return {"density_folder": str(folder), "checkpoint": checkpoint_name,
            "checkpoint_sha256": file_sha256(folder / checkpoint_name), "dataset": predictor.plans.dataset_name,
            "plans": predictor.plans.plans_name, "step_size": float(predictor.step_size),
            "blending": predictor.blending}


def _training_files(density_folder: Path) -> Dict[Path, str]:
    """Resolved image file -> case id of the scans the model was trained on (the folder's dataset.json)."""
    try:
        dataset = json.loads((density_folder / "dataset.json").read_text()).get("dataset", {})
    except (OSError, ValueError):
        return {}
    files: Dict[Path, str] = {}
    for case, entry in dataset.items() if isinstance(dataset, dict) else ():
        for image in entry.get("images", []) if isinstance(entry, dict) else []:
            files[Path(os.path.expandvars(str(image))).resolve()] = case
    return files


def refuse_training_scans(cases: Sequence[InputCase], density_folder: Path) -> None:
    """Raises ScreenerError naming the calibration scans that are files the density model was trained on."""
    training = _training_files(density_folder)
    clashes = [f"{case.case_id} ({training[Path(f).resolve()]})" for case in cases for f in case.files
               if Path(f).resolve() in training]
    if clashes:
        raise ScreenerError(f"{len(clashes)} calibration scan(s) are training scans of {density_folder}: "
                            f"{', '.join(clashes[:5])}; calibrate on held-out normal scans (or pass "
                            f"--allow_training_scans to use them anyway)")


def score_normal_scan(predictor, case: InputCase, max_voxels: int, seed: int) -> ScanScores:
    """Predicts one normal scan's map in its own geometry and returns its body-voxel scores."""
    image = read_image(Path(case.files[0]))
    body = body_mask_from_hu(sitk.GetArrayViewFromImage(image))
    if not body.any():
        raise ScreenerError(f"calibration scan {case.files[0]} has no body voxel (nothing denser than -500 HU)")
    score_map = predictor.predict_case(case.files)  # (z, y, x), the input's geometry
    return body_scores(case.case_id, score_map, body, image.GetSpacing(), max_voxels, seed)


def _score_with_progress(predictor, case: InputCase, max_voxels: int, seed: int, progress: bool) -> ScanScores:
    scores = score_normal_scan(predictor, case, max_voxels, seed)
    if progress:
        print(f"calibration: {case.case_id}: {scores.n_body} body voxels scored", file=sys.stderr)
    return scores


def calibrate(predictor, density_folder: Union[str, Path], checkpoint_name: str, scans: Union[str, Path],
              overwrite: bool = False, fprs: Sequence[float] = DEFAULT_FPRS, fp_mls: Sequence[float] = DEFAULT_FP_ML,
              max_voxels_per_scan: int = DEFAULT_MAX_VOXELS_PER_SCAN, seed: int = 0,
              allow_training_scans: bool = False, progress: bool = True) -> Path:
    """Calibrates a model on the normal scans in ``scans`` and writes its calibration file (docs/design.md C13).

    Args:
        predictor: a ScreenerPredictor holding the model of ``density_folder`` / ``checkpoint_name``.
        density_folder: the model's density result folder; the calibration is written there.
        checkpoint_name: the checkpoint the predictor loaded.
        scans: folder (or one file) of normal CT scans (image files or DICOM series), as ``nnScreener_predict -i``
            takes them.
        overwrite: replace an existing calibration of this checkpoint.
        fprs, fp_mls: named operating points (voxel false-positive rates; mL per scan).
        max_voxels_per_scan: body voxels kept per scan (seeded uniform subsample above).
        seed: seed of the subsamples.
        allow_training_scans: accept scans the model was trained on.
        progress: print one line per scan.

    Returns:
        The calibration file written.
    """
    density_folder = Path(density_folder)
    target = calibration_file(density_folder, checkpoint_name)
    if target.exists() and not overwrite:
        raise ScreenerError(f"calibration {target} exists; pass --overwrite to replace it")
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="nnscreener_dicom_") as staging:
        inputs = collect_inputs(scans, Path(staging))
        for message in inputs.skipped:
            print(f"calibration: {message}", file=sys.stderr)
        if not allow_training_scans:
            refuse_training_scans(inputs.cases, density_folder)
        scored = [_score_with_progress(predictor, case, max_voxels_per_scan, seed, progress)
                  for case in inputs.cases]
    provenance = {"model": model_record(density_folder, checkpoint_name, predictor),
                  "normal_scans": {"folder": str(Path(scans).resolve()), "seed": seed,
                                   "max_voxels_per_scan": max_voxels_per_scan,
                                   "seconds": round(time.perf_counter() - start, 1)}}
    return write_calibration(build_calibration(scored, provenance, fprs, fp_mls), target, overwrite)


def summary_lines(calibration: Mapping[str, Any]) -> List[str]:
    """One line per named operating point: threshold and realised rates."""
    return [f"  {p['name']:>12}: threshold {p['threshold']:.4f} nats (realised fpr {p['fpr']:.3g}, "
            f"{p['fp_ml_per_scan']:.3g} mL per scan)" for p in calibration.get("operating_points", [])]


def load_predictor(density_folder: Path, checkpoint_name: str, device: str, step_size: Optional[float],
                   blending: Optional[str], allow_non_ct: bool):
    """A single-process predictor for the model of ``density_folder`` (calibration scores one scan at a time)."""
    from nnscreener.inference.predictor import ScreenerPredictor

    return ScreenerPredictor.from_density_folder(density_folder, device, checkpoint_name, step_size=step_size,
                                                 blending=blending, num_processes_preprocessing=0,
                                                 num_processes_export=0, progress=False, allow_non_ct=allow_non_ct)

