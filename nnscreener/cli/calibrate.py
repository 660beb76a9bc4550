"""``nnScreener_calibrate``: thresholds of a trained model calibrated on normal scans held out from its training.

Predicts the maps of the normal scans with the model, pools their body-voxel scores and writes
``calibration_<checkpoint>.json`` into the density result folder (docs/design.md C13): score quantiles and the
thresholds of named operating points (voxel false-positive rates, false-positive mL per scan), which
``nnScreener_predict --threshold`` uses.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import List, Optional

from nnscreener import paths
from nnscreener.checkpoints import FINAL_CHECKPOINT
from nnscreener.cli.common import run_cli
from nnscreener.cli.predict import density_folder, resolve_device
from nnscreener.config import BLENDINGS, CONDITIONS, DENSITIES
from nnscreener.findings.calibration import DEFAULT_FP_ML, DEFAULT_FPRS, DEFAULT_MAX_VOXELS_PER_SCAN

PROG = "nnScreener_calibrate"


def build_parser() -> argparse.ArgumentParser:
    """The command's argument parser."""
    parser = argparse.ArgumentParser(
        prog=PROG, description="Calibrate a trained model's thresholds on normal CT scans that it was not trained "
                               "on (voxel false-positive rates and false-positive mL per scan).")
    parser.add_argument("-d", required=True, metavar="DATASET", help="dataset the model was trained on: id or name")
    parser.add_argument("-i", required=True, metavar="NORMAL_SCANS",
                        help="folder (or one file) of normal CT scans held out from training, named as "
                             "nnScreener_predict -i takes them")
    parser.add_argument("-p", default=paths.DEFAULT_PLANS, metavar="PLANS", help="plans name")
    parser.add_argument("--condition", default="masking", choices=CONDITIONS)
    parser.add_argument("--density", default="flow", choices=DENSITIES)
    parser.add_argument("--descriptor_variant", default="")
    parser.add_argument("--condition_variant", default="")
    parser.add_argument("-chk", default=FINAL_CHECKPOINT, metavar="CHECKPOINT", help="checkpoint file name")
    parser.add_argument("-device", default=None, choices=("cpu", "cuda"))
    parser.add_argument("-step_size", type=float, default=None, help="as for nnScreener_predict")
    parser.add_argument("--blending", default=None, choices=BLENDINGS, help="as for nnScreener_predict")
    parser.add_argument("--fpr", type=float, nargs="+", default=list(DEFAULT_FPRS),
                        help=f"named voxel false-positive rates (default {' '.join(map(str, DEFAULT_FPRS))})")
    parser.add_argument("--fp_ml", type=float, nargs="+", default=list(DEFAULT_FP_ML),
                        help="named false-positive volumes per scan in mL (default "
                             f"{' '.join(map(str, DEFAULT_FP_ML))})")
    parser.add_argument("--max_voxels_per_scan", type=int, default=DEFAULT_MAX_VOXELS_PER_SCAN,
                        help="body voxels kept per scan; larger bodies are subsampled uniformly (seeded)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the subsamples (default 0)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing calibration of the checkpoint")
    parser.add_argument("--allow_training_scans", action="store_true",
                        help="accept scans the model was trained on (their scores are optimistic)")
    parser.add_argument("--allow_non_ct", action="store_true", help="as for nnScreener_predict")
    return parser


def run(args: argparse.Namespace) -> None:
    """Calibrates and prints the operating points."""
    from nnscreener.findings.calibrate import calibrate, load_predictor, summary_lines

    folder = density_folder(args.d, args.condition, args.density, args.p, args.descriptor_variant,
                            args.condition_variant)
    predictor = load_predictor(folder, args.chk, resolve_device(args.device), args.step_size, args.blending,
                               args.allow_non_ct)
    written = calibrate(predictor, folder, args.chk, args.i, overwrite=args.overwrite, fprs=args.fpr,
                        fp_mls=args.fp_ml, max_voxels_per_scan=args.max_voxels_per_scan, seed=args.seed,
                        allow_training_scans=args.allow_training_scans)
    calibration = json.loads(written.read_text())
    print(f"{PROG}: {calibration['n_scans']} normal scans, {calibration['n_body_voxels']} body voxels; "
          f"calibration written to {written}")
    print("\n".join(summary_lines(calibration)))


def main(argv: Optional[List[str]] = None) -> int:
    """Console entry point; a ScreenerError becomes one line on stderr and exit code 1."""
    args = build_parser().parse_args(argv)
    return run_cli(PROG, lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
