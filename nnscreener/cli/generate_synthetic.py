"""``nnScreener_generate_synthetic``: writes the built-in synthetic CT dataset into ``$nnUNet_raw``."""
from __future__ import annotations

import argparse
import sys
import time
from typing import Optional, Sequence

from nnscreener.cli.common import run_cli

PROG = "nnScreener_generate_synthetic"


def build_parser() -> argparse.ArgumentParser:
    """The command's argument parser."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Generate the built-in synthetic CT dataset (int16 HU phantoms with exact lesion masks) as an "
        "nnU-Net raw dataset $nnUNet_raw/DatasetXXX_NAME: imagesTr/ (unlabeled; a share of the cases carry "
        "lesions), imagesTs/ + labelsTs/ (every case has at least one lesion), dataset.json.",
    )
    parser.add_argument("-d", "--dataset_id", type=int, default=500, help="nnU-Net dataset id (default 500)")
    parser.add_argument("--name", default="SyntheticCT", help="dataset name after the id (default SyntheticCT)")
    parser.add_argument("-n_train", type=int, default=60, help="number of training cases (default 60)")
    parser.add_argument("-n_test", type=int, default=20, help="number of test cases (default 20)")
    parser.add_argument(
        "--size",
        choices=("cpu", "full"),
        default="cpu",
        help="cpu: coarse grid, ~110-150 voxels in plane (x, y) at 2.4-4 mm and 45-100 slices (z) at 2.5-6 mm, "
        "about a second per case (default); full: clinical grid, 512 x 512 (x, y) at 0.6-1.0 mm and 1-5 mm "
        "slices (z), about 30 s and 1 GB per case",
    )
    parser.add_argument("--seed", type=int, default=0, help="master seed; the same seed gives the same files")
    parser.add_argument(
        "--lesion_share", type=float, default=0.3, help="share of training cases carrying lesions (default 0.3)"
    )
    parser.add_argument(
        "-np", "--num_processes", type=int, default=None, help="worker processes (default: CPU count, at most 8 "
        "for cpu size and 4 for full size)"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing dataset of the same name")
    return parser


def run(args: argparse.Namespace) -> None:
    """Writes the dataset for parsed arguments; Ctrl-C exits with code 130 (nothing is left under the dataset's
    name)."""
    try:
        from nnscreener.synthetic.generator import generate_dataset
        from nnscreener.paths import raw_root

        start = time.perf_counter()
        folder = generate_dataset(
            raw_root(),
            dataset_id=args.dataset_id,
            name=args.name,
            n_train=args.n_train,
            n_test=args.n_test,
            size=args.size,
            seed=args.seed,
            lesion_share=args.lesion_share,
            num_processes=args.num_processes,
            overwrite=args.overwrite,
        )
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; nothing was written under the dataset's name", file=sys.stderr)
        sys.exit(130)
    print(f"wrote {args.n_train} training and {args.n_test} test cases to {folder} "
          f"in {time.perf_counter() - start:.0f} s")


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Console entry point; a ScreenerError becomes one line on stderr and ``sys.exit(1)``."""
    args = build_parser().parse_args(argv)
    rc = run_cli(PROG, lambda: run(args))
    if rc:
        sys.exit(rc)


if __name__ == "__main__":
    main()
