"""``nnScreener_plan_and_preprocess``: plan and preprocess a raw CT dataset the Screener way; parses the flags and
calls :func:`nnscreener.planning.pipeline.plan_and_preprocess`, which documents the steps and the staging.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Optional, Sequence

from nnscreener.cli.common import run_cli
from nnscreener.config import get_preset, merge, parse_set_overrides, validate
from nnscreener.planning.pipeline import plan_and_preprocess

__all__ = ["PROG", "build_parser", "main", "plan_and_preprocess"]

PROG = "nnScreener_plan_and_preprocess"


def build_parser() -> argparse.ArgumentParser:
    """The command's argument parser."""
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Plan and preprocess an nnU-Net raw CT dataset for nnScreener: crop to the dense foreground, "
                    "resample to the preset's spacing, clip and rescale HU to [0, 1], 3D CLAHE, body masks. "
                    "Works on unlabeled imagesTr; never writes into nnUNet_raw. Output goes to "
                    "$nnUNet_preprocessed/DatasetXXX/ (plans nnScreenerPlans[_<preset>].json).",
        epilog="Axis order: every *_xyz setting is (x, y, z), as spoken (e.g. --set "
               "preprocessing.spacing_xyz=1.5,1.5,2.25 in mm, --set network.patch_size_xyz=96,96,64 in voxels); the "
               "plans JSON stores spacing and patch_size in nnU-Net's (z, y, x) order.",
    )
    p.add_argument("-d", "--dataset", required=True, help="dataset id (e.g. 500) or name (Dataset500_SyntheticCT)")
    p.add_argument("-np", "--num_processes", type=int, default=None,
                   help="worker processes (default: min(nnU-Net's default, CPU count))")
    p.add_argument("--verify_dataset_integrity", action="store_true",
                   help="also run nnU-Net's integrity check (shapes, spacings, NaNs) on images and body masks")
    p.add_argument("--preset", default="default", help="settings preset: default (paper, GPU) or cpu (demo/tests)")
    p.add_argument("--set", dest="overrides", nargs="+", metavar="SECTION.FIELD=VALUE", default=None,
                   help="override config fields, e.g. preprocessing.clahe_clip_limit=0.03 or "
                        "preprocessing.spacing_xyz=2,2,3 (x, y, z)")
    p.add_argument("-p", "--plans_name", default=None,
                   help="plans name (default: nnScreenerPlans for --preset default, nnScreenerPlans_<preset> "
                        "otherwise)")
    p.add_argument("--clean", action="store_true",
                   help="recompute body masks and the dataset fingerprint instead of reusing an earlier run's")
    p.add_argument("--allow_non_ct", action="store_true",
                   help="accept images whose intensities do not look like CT in Hounsfield units (8-bit pixels, "
                        "no air or soft tissue, values in 0..1); by default they are refused")
    return p


def _default_num_processes() -> int:
    """nnU-Net's default worker count, capped at the CPU count."""
    from nnunetv2.configuration import default_num_processes

    return max(1, min(int(default_num_processes), os.cpu_count() or 1))


def run(args: argparse.Namespace) -> None:
    """Builds the config from ``--preset`` and ``--set`` and plans and preprocesses the dataset."""
    config = validate(merge(get_preset(args.preset), parse_set_overrides(args.overrides)))
    plan_and_preprocess(args.dataset, config,
                        args.num_processes if args.num_processes is not None else _default_num_processes(),
                        args.verify_dataset_integrity, args.clean, args.plans_name, args.allow_non_ct)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Console entry point; a ScreenerError becomes one line on stderr (whitespace collapsed) and exit code 1."""
    args = build_parser().parse_args(argv)
    return run_cli(PROG, lambda: run(args), one_line=True)


if __name__ == "__main__":
    sys.exit(main())
