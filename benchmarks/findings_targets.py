"""The findings targets of issue 11 on a labelled test set: lesion-wise detection and false findings per scan at
operating points calibrated on normal scans, and the realised vs the calibrated false-positive rates.

Inputs: maps written by ``nnScreener_predict`` (docs/design.md C11), the lesion labels and CT images of the test
set, and the calibration file of the same model (``nnScreener_calibrate``, C13). For each operating point and test
scan, the findings are computed with the library (nnscreener/findings/components.py, as ``--threshold`` does) and:

- a lesion (26-connected component of label > 0) is detected when a finding holds at least one of its voxels;
- a false finding is a finding that holds no lesion voxel;
- the realised false-positive volume is the body volume (``body_mask_from_hu``, as the calibration) outside the
  lesions whose score is above the threshold, in mL, averaged over the scans; the realised voxel FPR is the pooled
  fraction of those body voxels above it.

Also printed: seconds per scan of the findings step (reading the map, components, table), to set beside the
prediction time per scan.

    python benchmarks/findings_targets.py --maps MAPS --labels labelsTs --images imagesTs \\
        --calibration RESULTS/.../calibration_checkpoint_final.json --points fp_ml=10 fp_ml=1
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Dict, List

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from nnscreener.findings.calibration import Calibration, parse_operating_point
from nnscreener.findings.components import CONNECTIVITY, Geometry, find_findings
from nnscreener.planning.body_mask import body_mask_from_hu


def case_figures(map_file: Path, label_file: Path, image_file: Path, threshold: float,
                 calibration: Calibration) -> Dict[str, float]:
    """Detection, false findings and false-positive body voxels of one scan at one threshold."""
    start = time.perf_counter()
    image = sitk.ReadImage(str(map_file))
    score = sitk.GetArrayFromImage(image)
    findings = find_findings(score, threshold, Geometry.of(image), percentile=calibration.percentile)
    seconds = time.perf_counter() - start
    lesions, n_lesions = ndimage.label(sitk.GetArrayFromImage(sitk.ReadImage(str(label_file))) > 0, CONNECTIVITY)
    hit = np.unique(lesions[findings.mask > 0])
    finding_ids, _ = ndimage.label(findings.mask > 0, CONNECTIVITY)
    touching = np.unique(finding_ids[(findings.mask > 0) & (lesions > 0)])
    body = body_mask_from_hu(sitk.GetArrayFromImage(sitk.ReadImage(str(image_file)))) & (lesions == 0)
    above = int(((score > threshold) & body).sum())
    return {"lesions": n_lesions, "detected": int((hit > 0).sum()), "findings": len(findings.rows),
            "false_findings": len(findings.rows) - int((touching > 0).sum()), "fp_voxels": above,
            "body_voxels": int(body.sum()), "fp_ml": above * Geometry.of(image).voxel_ml, "seconds": seconds}


def point_summary(rows: List[Dict[str, float]]) -> Dict[str, float]:
    """Dataset figures of one operating point from its per-scan figures."""
    return {"detection_rate": sum(r["detected"] for r in rows) / max(1, sum(r["lesions"] for r in rows)),
            "lesions": sum(r["lesions"] for r in rows), "detected": sum(r["detected"] for r in rows),
            "false_findings_per_scan": float(np.mean([r["false_findings"] for r in rows])),
            "findings_per_scan": float(np.mean([r["findings"] for r in rows])),
            "realised_fp_ml_per_scan": float(np.mean([r["fp_ml"] for r in rows])),
            "realised_fpr": sum(r["fp_voxels"] for r in rows) / sum(r["body_voxels"] for r in rows),
            "findings_seconds_per_scan": float(np.mean([r["seconds"] for r in rows]))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--maps", type=Path, required=True)
    parser.add_argument("--labels", type=Path, required=True)
    parser.add_argument("--images", type=Path, required=True)
    parser.add_argument("--calibration", type=Path, required=True)
    parser.add_argument("--points", nargs="+", default=["fp_ml=10", "fp_ml=1"])
    args = parser.parse_args()
    calibration = Calibration.load(args.calibration)
    cases = sorted(p.name[: -len(".nii.gz")] for p in args.labels.glob("*.nii.gz"))
    results = {}
    for spec in args.points:
        point = parse_operating_point(spec)
        threshold = calibration.threshold(point)
        rows = [case_figures(args.maps / f"{c}.nii.gz", args.labels / f"{c}.nii.gz",
                             args.images / f"{c}_0000.nii.gz", threshold, calibration) for c in cases]
        stored = next((p for p in calibration.data["operating_points"] if p["name"] == point.name), {})
        results[point.name] = {"threshold": threshold, "calibrated_fp_ml_per_scan": stored.get("fp_ml_per_scan"),
                               "calibrated_fpr": stored.get("fpr"), **point_summary(rows)}
    print(json.dumps({"n_scans": len(cases), "normal_scans": calibration.data["n_scans"], "points": results},
                     indent=1))


if __name__ == "__main__":
    main()
