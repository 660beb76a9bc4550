"""``nnScreener_evaluate``: voxel AUROC, AUROC@0.3 and AUPRO@0.3 of a folder of anomaly maps, per case, per
lesion kind and pooled over the dataset; prints a table and writes a JSON summary."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import List, Optional

from nnscreener.cli.common import run_cli
from nnscreener.errors import ScreenerError
from nnscreener.evaluation.evaluate import (evaluate_folder, format_summary_table, lesion_kinds_from_dataset_json,
                                            write_summary)
from nnscreener.evaluation.sampling import BALANCED_VOXELS_PER_SCAN, DEFAULT_N_NEGATIVES, PROTOCOLS


def build_parser() -> argparse.ArgumentParser:
    """The command's argument parser."""
    parser = argparse.ArgumentParser(
        prog="nnScreener_evaluate",
        description="Evaluate anomaly maps against lesion labels: voxel AUROC, AUROC up to FPR 0.3 (area / 0.3) "
                    "and MVTec AUPRO up to FPR 0.3 (26-connected lesion regions). Positives are all lesion voxels; "
                    "negatives a fixed, seeded number of non-lesion body voxels per scan.")
    parser.add_argument("-ref", type=Path, required=True,
                        help="folder of lesion labels {case}.nii.gz (0 background, >0 lesion kinds), e.g. labelsTs")
    parser.add_argument("-pred", type=Path, required=True,
                        help="folder of anomaly maps {case}.nii.gz from nnScreener_predict (same geometry as labels)")
    parser.add_argument("-img", type=Path, default=None,
                        help="folder of the CT images {case}_0000.nii.gz; negatives are then drawn from the HU body "
                             "mask (otherwise from the voxels where the map is above its minimum)")
    parser.add_argument("-o", dest="output", type=Path, default=None,
                        help="summary JSON (default: PRED/summary.json)")
    parser.add_argument("--n_negatives", type=int, default=DEFAULT_N_NEGATIVES,
                        help=f"normal voxels drawn per scan (default {DEFAULT_N_NEGATIVES})")
    parser.add_argument("--protocol", choices=PROTOCOLS, default="all",
                        help="all: every lesion voxel and --n_negatives normal voxels per scan (default); balanced: "
                             f"the authors' protocol, up to {BALANCED_VOXELS_PER_SCAN} lesion and "
                             f"{BALANCED_VOXELS_PER_SCAN} normal body voxels per scan")
    parser.add_argument("--seed", type=int, default=0, help="seed of the voxel draws (default 0)")
    parser.add_argument("--max_fpr", type=float, default=0.3, help="FPR bound of AUROC@ and AUPRO@ (default 0.3)")
    parser.add_argument("--dataset_json", type=Path, default=None,
                        help="dataset.json naming the label values (\"lesion_kinds\" or \"labels\"); default: "
                             "REF/../dataset.json when it exists")
    parser.add_argument("--no_per_case", action="store_true", help="print only the pooled and per-kind rows")
    return parser


def run(args: argparse.Namespace) -> Path:
    """Evaluates the maps of ``-pred`` against ``-ref``, prints the table and returns the summary JSON's path."""
    for flag, folder in (("-ref", args.ref), ("-pred", args.pred), ("-img", args.img)):
        if folder is not None and not folder.is_dir():
            raise ScreenerError(f"{flag} folder {folder} does not exist")
    dataset_json = args.dataset_json
    if dataset_json is None and (args.ref.parent / "dataset.json").is_file():
        dataset_json = args.ref.parent / "dataset.json"
    lesion_kinds = lesion_kinds_from_dataset_json(dataset_json) if dataset_json is not None else None
    summary = evaluate_folder(args.ref, args.pred, images_dir=args.img, n_negatives=args.n_negatives,
                              seed=args.seed, lesion_kinds=lesion_kinds, max_fpr=args.max_fpr, progress=True,
                              protocol=args.protocol)
    print(format_summary_table(summary, per_case=not args.no_per_case))
    output = write_summary(summary, args.output if args.output is not None else args.pred / "summary.json")
    print(f"summary written to {output}")
    return output


def main(argv: Optional[List[str]] = None) -> int:
    """Console entry point; a ScreenerError becomes one line on stderr and exit code 1."""
    args = build_parser().parse_args(argv)
    return run_cli("nnScreener_evaluate", lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
