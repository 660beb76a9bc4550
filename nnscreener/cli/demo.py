"""``nnScreener_demo``: the whole Screener pipeline on the built-in synthetic CT dataset, on a CPU; parses the flags
and calls :func:`nnscreener.demo.run_demo`, which documents the steps.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import List, Optional

from nnscreener.cli.common import run_cli
# BASE_ITERATIONS and iterations_for_budget stay importable from here for existing callers
from nnscreener.demo import (BASE_ITERATIONS, DEFAULT_MINUTES, DEMO_DATASET_ID, FIXED_MINUTES, DemoSettings,
                             iterations_for_budget, run_demo)

__all__ = ["BASE_ITERATIONS", "PROG", "build_parser", "iterations_for_budget", "main", "settings_from_args"]

PROG = "nnScreener_demo"


def build_parser() -> argparse.ArgumentParser:
    """The command's argument parser."""
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Run the whole nnScreener pipeline on the built-in synthetic CT dataset (CPU, cpu preset): "
                    "generate -> plan/preprocess -> train descriptor, condition, density -> predict -> "
                    "evaluate against the intensity-only and random floors. Re-running reuses finished steps.",
    )
    p.add_argument("--work_dir", type=Path, default=Path("nnscreener_demo"),
                   help="folder for everything the demo writes; nnUNet_raw/_preprocessed/_results default to "
                        "subfolders of it unless those variables are already set (default: ./nnscreener_demo)")
    p.add_argument("--minutes", type=float, default=DEFAULT_MINUTES,
                   help=f"approximate wall-clock budget on 2 CPU cores (default {DEFAULT_MINUTES:g}); training "
                        f"iterations scale with the time left after the fixed ~{FIXED_MINUTES:g} minutes")
    p.add_argument("--iterations", type=int, default=None,
                   help="training iterations of every stage, instead of deriving them from --minutes (e.g. 2 for "
                        "a quick smoke test of the pipeline)")
    p.add_argument("-d", "--dataset_id", type=int, default=DEMO_DATASET_ID, help="dataset id (default 500)")
    p.add_argument("--n_train", type=int, default=40, help="synthetic training scans (default 40)")
    p.add_argument("--n_test", type=int, default=12, help="synthetic test scans (default 12)")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic dataset (default 0)")
    p.add_argument("-device", default="cpu", choices=["cpu", "cuda"], help="device for training and prediction")
    p.add_argument("-np", "--num_processes", type=int, default=2, help="worker processes for data steps")
    return p


def settings_from_args(args: argparse.Namespace) -> DemoSettings:
    """The demo settings of parsed arguments."""
    return DemoSettings(work_dir=args.work_dir, minutes=args.minutes, iterations=args.iterations,
                        dataset_id=args.dataset_id, n_train=args.n_train, n_test=args.n_test, seed=args.seed,
                        device=args.device, num_processes=args.num_processes)


def main(argv: Optional[List[str]] = None) -> int:
    """Console entry point; a ScreenerError becomes one line on stderr and exit code 1."""
    args = build_parser().parse_args(argv)
    return run_cli(PROG, lambda: run_demo(settings_from_args(args)))


if __name__ == "__main__":
    sys.exit(main())
