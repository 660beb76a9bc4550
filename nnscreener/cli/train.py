"""``nnScreener_train DATASET STAGE``: train one stage (Screener's descriptor, condition, density, a baseline, or
the distilled student).

Parses the command line into config overrides and calls :func:`nnscreener.trainers.run.train_stage`.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

from nnscreener import paths, stages
from nnscreener.cli.common import report_error
from nnscreener.config import CONDITIONS, DENSITIES, DISTILL_TARGETS, OBJECTIVES, parse_set_overrides
from nnscreener.errors import ScreenerError
from nnscreener.trainers.run import train_stage


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="nnScreener_train",
        description="Train a Screener stage: the descriptor and condition models (dense SSL), then the density "
                    "model on top of them; or a baseline (baseline_ae: a convolutional autoencoder; "
                    "baseline_synthetic: a UNet regressing synthetic anomalies). "
                    "Or distil the trained model into the UNet of nnU-Net plans "
                    "(distill -p PLANS) for stock nnUNetv2_train -pretrained_weights. Results go to "
                    "$nnUNet_results/DatasetXXX/<stage>__<variant>__<plans>/.")
    p.add_argument("dataset", help="dataset id or name, e.g. 500 or Dataset500_SyntheticCT")
    p.add_argument("stage", choices=stages.STAGE_NAMES, help="which model to train")
    p.add_argument("-p", dest="plans", default=paths.DEFAULT_PLANS,
                   help=f"plans name in nnUNet_preprocessed (default {paths.DEFAULT_PLANS}; the cpu preset's plans "
                        f"are {paths.DEFAULT_PLANS}_cpu)")
    p.add_argument("-device", choices=("cuda", "cpu"), default=None,
                   help="device (default: cuda when available, else cpu)")
    p.add_argument("-num_gpus", type=int, default=1, help="GPUs for DDP training (CUDA only; default 1)")
    p.add_argument("--c", action="store_true", help="continue from the latest (or final) checkpoint")
    p.add_argument("--overwrite", action="store_true",
                   help="start over, deleting the checkpoints of an existing run of the same variant")
    p.add_argument("--seed", type=int, help="seed of python random, numpy, torch and the data loaders (seed; "
                                            "default 0): identical runs on the CPU give identical weights")
    p.add_argument("--num_iterations", type=int,
                   help="optimizer steps (sets num_iterations of the stage's config section: ssl, density, "
                        "baseline_ae or baseline_synthetic)")
    p.add_argument("--objective", choices=OBJECTIVES, help="SSL objective (ssl.objective)")
    p.add_argument("--dim", type=int, help="embedding dimension d of descriptor/condition (network.embedding_dim)")
    p.add_argument("--condition", choices=CONDITIONS, help="density stage: condition kind (density.condition)")
    p.add_argument("--density", choices=DENSITIES, help="density stage: density model (density.density)")
    p.add_argument("--descriptor_variant", help="density stage: variant folder of the descriptor to use, "
                                                "e.g. vicreg_d32 (default: from --objective/--dim)")
    p.add_argument("--condition_variant", help="density stage: variant folder of the condition model to use")
    p.add_argument("--targets", choices=DISTILL_TARGETS,
                   help="distill stage: what the student regresses: the teacher's anomaly map, or the map and the "
                        "descriptor's features (distill.targets; default map)")
    p.add_argument("--teacher_plans", help="distill stage: plans of the trained Screener model (the teacher; "
                                           f"default {paths.DEFAULT_PLANS}); -p names the student's nnU-Net plans")
    p.add_argument("--set", dest="overrides", action="append", metavar="SECTION.FIELD=VALUE",
                   help="override any config field, e.g. --set ssl.learning_rate=1e-4 (repeatable; geometric "
                        "fields are *_xyz, in x, y, z order)")
    return p


def run_overrides(args: argparse.Namespace) -> Dict[str, Any]:
    """The nested config overrides of the command line: ``--set`` first, then the named flags."""
    overrides = parse_set_overrides(args.overrides)
    section = stages.get_stage(args.stage).section
    named = {
        (section, "num_iterations"): args.num_iterations,
        ("ssl", "objective"): args.objective,
        ("network", "embedding_dim"): args.dim,
        ("density", "condition"): args.condition,
        ("density", "density"): args.density,
        ("density", "descriptor_variant"): args.descriptor_variant,
        ("density", "condition_variant"): args.condition_variant,
        ("distill", "targets"): args.targets,
        ("distill", "teacher_plans"): args.teacher_plans,
    }
    for (sec, field), value in named.items():
        if value is not None:
            overrides.setdefault(sec, {})[field] = value
    if args.seed is not None:
        overrides["seed"] = args.seed
    return overrides


def train(args: argparse.Namespace) -> Path:
    """Runs ``nnScreener_train`` for parsed arguments; returns the stage folder."""
    return train_stage(args.dataset, args.stage, args.plans, run_overrides(args), args.device, args.num_gpus,
                       args.c, args.overwrite)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Console entry point; ScreenerErrors become one line on stderr and exit code 1."""
    args = build_parser().parse_args(argv)
    try:
        folder = train(args)
    except ScreenerError as e:
        return report_error("nnScreener_train", e)
    print(f"nnScreener_train: {args.stage} done: {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
