"""Agreement of a distilled student's anomaly maps with its teacher's: voxel Spearman over body voxels.

Both folders hold maps written by ``nnScreener_predict`` for the same scans (``--method screener`` and ``--method
distilled``); the body is :func:`nnscreener.planning.body_mask.body_mask_from_hu` of each scan, as the evaluation
uses for its negatives. Prints the Spearman correlation per case, its mean, and the correlation pooled over a seeded
sample of body voxels per case. AUROC of each folder: ``nnScreener_evaluate``; speed: the headlines of the two
``nnScreener_predict`` runs.

    python benchmarks/distill_agreement.py --teacher MAPS_SCREENER --student MAPS_DISTILLED --images SCANS
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import List, Tuple

import numpy as np
import SimpleITK as sitk
from scipy.stats import spearmanr

from nnscreener.inference.input_files import discover_cases, output_file
from nnscreener.planning.body_mask import body_mask_from_hu


def case_values(image: str, teacher: Path, student: Path, case: str) -> Tuple[np.ndarray, np.ndarray]:
    """Teacher and student map values at the body voxels of one scan."""
    body = body_mask_from_hu(sitk.GetArrayFromImage(sitk.ReadImage(image)).astype(np.float32))
    maps = [sitk.GetArrayFromImage(sitk.ReadImage(str(output_file(folder, case)))) for folder in (teacher, student)]
    return maps[0][body], maps[1][body]


def main(argv: List[str] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", type=Path, required=True, help="maps of nnScreener_predict --method screener")
    parser.add_argument("--student", type=Path, required=True, help="maps of nnScreener_predict --method distilled")
    parser.add_argument("--images", required=True, help="the scans both were predicted for")
    parser.add_argument("--sample", type=int, default=50_000, help="body voxels per case in the pooled figure")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    per_case, pooled = [], ([], [])
    for case in discover_cases(args.images):
        t, s = case_values(case.files[0], args.teacher, args.student, case.case_id)
        per_case.append(spearmanr(t, s).statistic)
        idx = rng.choice(t.size, size=min(t.size, args.sample), replace=False)
        pooled[0].append(t[idx])
        pooled[1].append(s[idx])
        print(f"{case.case_id}: {t.size} body voxels, Spearman {per_case[-1]:.3f}")
    print(f"Spearman per case: mean {np.mean(per_case):.3f}, min {np.min(per_case):.3f}; pooled over {args.sample} "
          f"body voxels per case: {spearmanr(np.concatenate(pooled[0]), np.concatenate(pooled[1])).statistic:.3f}")


if __name__ == "__main__":
    main()
