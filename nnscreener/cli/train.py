"""``nnScreener_train DATASET {descriptor,condition,density}``: train one Screener stage.

Like ``nnUNetv2_train``, but the stage names its trainer class directly (no name lookup), the fold is always
``all``, and the run's options are merged into the plans' ``"nnscreener"`` block before the trainer is built
(nnU-Net trainers take no extra arguments). Results: ``$nnUNet_results/DatasetXXX/<stage>__<variant>__<plans>/``.
"""
from __future__ import annotations

import argparse
import copy
import multiprocessing
import os
import sys
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Type

import torch

from nnscreener import paths, stages
from nnscreener.cli.common import report_error
from nnscreener.config import CONDITIONS, DENSITIES, OBJECTIVES, ScreenerConfig, merge, parse_set_overrides, validate
from nnscreener.errors import ScreenerError
from nnscreener.plans import ScreenerPlans, load_plans

FOLD = "all"


def trainer_class(stage: str) -> Type:
    """The trainer of a stage (from :mod:`nnscreener.stages`; imported only when asked for)."""
    return stages.trainer_class(stage)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="nnScreener_train",
        description="Train a Screener stage: the descriptor and condition models (dense SSL), then the density "
                    "model on top of them. Results go to $nnUNet_results/DatasetXXX/<stage>__<variant>__<plans>/.")
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
    p.add_argument("--num_iterations", type=int, help="optimizer steps (sets ssl.* or density.num_iterations)")
    p.add_argument("--objective", choices=OBJECTIVES, help="SSL objective (ssl.objective)")
    p.add_argument("--dim", type=int, help="embedding dimension d of descriptor/condition (network.embedding_dim)")
    p.add_argument("--condition", choices=CONDITIONS, help="density stage: condition kind (density.condition)")
    p.add_argument("--density", choices=DENSITIES, help="density stage: density model (density.density)")
    p.add_argument("--descriptor_variant", help="density stage: variant folder of the descriptor to use, "
                                                "e.g. vicreg_d32 (default: from --objective/--dim)")
    p.add_argument("--condition_variant", help="density stage: variant folder of the condition model to use")
    p.add_argument("--set", dest="overrides", action="append", metavar="SECTION.FIELD=VALUE",
                   help="override any config field, e.g. --set ssl.learning_rate=1e-4 (repeatable; geometric "
                        "fields are *_xyz, in x, y, z order)")
    return p


# Settings the plans fix (the preprocessed data and the planned UNet depend on them): changing them needs new plans.
# The patch size is not among them: the UNet is fully convolutional, so any patch divisible by its total stride works.
PLANNED_FIELDS = {"preprocessing": None, "network": ("base_num_features", "max_num_features")}


def reject_planned_fields(overrides: Dict[str, Any]) -> None:
    """Raises ScreenerError for ``--set`` overrides of settings that only planning can change."""
    for section, fields in PLANNED_FIELDS.items():
        names = [f for f in overrides.get(section, {}) if fields is None or f in fields]
        if names:
            keys = ", ".join(f"{section}.{f}" for f in names)
            raise ScreenerError(
                f"{keys} is fixed by the plans (the preprocessed data and the UNet were planned with it); plan "
                f"anew under another name and train on those plans: nnScreener_plan_and_preprocess -d DATASET "
                f"--preset PRESET --set {section}.{names[0]}=... -p NEW_PLANS, then nnScreener_train ... -p NEW_PLANS")


def run_overrides(args: argparse.Namespace) -> Dict[str, Any]:
    """The nested config overrides of the command line: ``--set`` first, then the named flags."""
    overrides = parse_set_overrides(args.overrides)
    reject_planned_fields(overrides)
    section = "ssl" if stages.get_stage(args.stage).is_ssl else "density"
    named = {
        (section, "num_iterations"): args.num_iterations,
        ("ssl", "objective"): args.objective,
        ("network", "embedding_dim"): args.dim,
        ("density", "condition"): args.condition,
        ("density", "density"): args.density,
        ("density", "descriptor_variant"): args.descriptor_variant,
        ("density", "condition_variant"): args.condition_variant,
    }
    for (sec, field), value in named.items():
        if value is not None:
            overrides.setdefault(sec, {})[field] = value
    if args.seed is not None:
        overrides["seed"] = args.seed
    return overrides


def resolved_plans_dict(plans: ScreenerPlans, config: ScreenerConfig, continue_training: bool) -> Dict[str, Any]:
    """A copy of the plans dict with the resolved config as its ``"nnscreener"`` block, ready for a trainer."""
    plans_dict = copy.deepcopy(plans.plans)
    plans_dict["nnscreener"] = config.to_dict()
    plans_dict["continue_training"] = continue_training
    return plans_dict


def prepare_stage_folder(folder: Path, continue_training: bool, overwrite: bool) -> None:
    """Refuses to silently replace an existing run; with ``--overwrite`` removes its checkpoints."""
    checkpoints = sorted(folder.glob("checkpoint_*.pth")) if folder.is_dir() else []
    if not checkpoints or continue_training:
        return
    if not overwrite:
        raise ScreenerError(f"{folder} already holds a run ({', '.join(p.name for p in checkpoints)}); pass --c to "
                            f"continue it or --overwrite to start over")
    for p in checkpoints:
        p.unlink()


def run_single(cls: Type, plans_dict: Dict[str, Any], dataset_json: Dict[str, Any], device: torch.device,
               continue_training: bool) -> Any:
    """Builds the trainer, restores ``--c`` state with nnU-Net's own logic and trains. Returns the trainer."""
    from nnunetv2.run.run_training import maybe_load_checkpoint

    trainer = cls(plans=plans_dict, configuration=paths.CONFIGURATION, fold=FOLD, dataset_json=dataset_json,
                  device=device)
    maybe_load_checkpoint(trainer, continue_training, False, None)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    trainer.run_training()
    return trainer


def _run_ddp(rank: int, cls: Type, plans_dict: Dict[str, Any], dataset_json: Dict[str, Any],
             continue_training: bool, world_size: int) -> None:
    """One DDP rank (started by ``mp.spawn``), as nnU-Net's ``run_ddp`` with the trainer class given directly."""
    import torch.distributed as dist

    dist.init_process_group("nccl", rank=rank, world_size=world_size)
    torch.cuda.set_device(torch.device("cuda", rank))
    try:
        run_single(cls, copy.deepcopy(plans_dict), dataset_json, torch.device("cuda", rank), continue_training)
    finally:
        dist.destroy_process_group()


def train(args: argparse.Namespace) -> Optional[Path]:
    """Runs ``nnScreener_train`` for parsed arguments; returns the stage folder."""
    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cuda" and not torch.cuda.is_available():
        raise ScreenerError("-device cuda was requested but CUDA is not available; use -device cpu")
    if args.num_gpus < 1 or (args.num_gpus > 1 and args.device != "cuda"):
        raise ScreenerError(f"-num_gpus {args.num_gpus}: multi-GPU training needs -device cuda and N >= 1")
    if args.num_gpus > torch.cuda.device_count() and args.device == "cuda":
        raise ScreenerError(f"-num_gpus {args.num_gpus} but only {torch.cuda.device_count()} GPUs are visible")

    plans = load_plans(args.dataset, args.plans)
    config = validate(merge(plans.config, run_overrides(args)))
    cls = trainer_class(args.stage)
    folder = paths.stage_folder(plans.dataset_name, args.stage, cls.variant_for(config), plans.plans_name)
    prepare_stage_folder(folder, args.c, args.overwrite)
    plans_dict = resolved_plans_dict(plans, config, args.c)

    if args.num_gpus > 1:
        import torch.multiprocessing as mp
        from nnunetv2.run.run_training import find_free_network_port

        os.environ.setdefault("MASTER_ADDR", "localhost")
        os.environ.setdefault("MASTER_PORT", str(find_free_network_port()))
        try:
            mp.spawn(_run_ddp, args=(cls, plans_dict, plans.dataset_json, args.c, args.num_gpus),
                     nprocs=args.num_gpus, join=True)
        except mp.ProcessRaisedException as e:  # a rank's ScreenerError (e.g. the NaN guard) -> one line
            last = str(e).strip().splitlines()[-1]
            if "Error:" in last and ("ScreenerError" in last or "NonFiniteLossError" in last):
                raise ScreenerError(last.split("Error:", 1)[1].strip()) from e
            raise
    else:
        if args.device == "cpu":
            torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", multiprocessing.cpu_count())))
        run_single(cls, plans_dict, plans.dataset_json, torch.device(args.device), args.c)
    return folder


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
