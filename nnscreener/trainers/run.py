"""Running one training stage: the library function behind ``nnScreener_train``.

Like ``nnUNetv2_train``, but the stage names its trainer class directly (from :mod:`nnscreener.stages`), the fold is
always ``all``, and the run's options are merged into the plans' ``"nnscreener"`` block before the trainer is built
(nnU-Net trainers take no extra arguments). Results: ``$nnUNet_results/DatasetXXX/<stage>__<variant>__<plans>/``.
"""
from __future__ import annotations

import copy
import multiprocessing
import os
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Type

import torch

from nnscreener import paths, stages
from nnscreener.config import ScreenerConfig
from nnscreener.errors import ScreenerError
from nnscreener.plans import ScreenerPlans

FOLD = "all"

# Settings the plans fix (the preprocessed data and the planned UNet depend on them): changing them needs new plans.
# The patch size is not among them: the UNet is fully convolutional, so any patch divisible by its total stride works.
PLANNED_FIELDS = {"preprocessing": None, "network": ("base_num_features", "max_num_features")}


def reject_planned_fields(overrides: Mapping[str, Any]) -> None:
    """Raises ScreenerError for config overrides of settings that only planning can change."""
    for section, fields in PLANNED_FIELDS.items():
        names = [f for f in overrides.get(section, {}) if fields is None or f in fields]
        if names:
            keys = ", ".join(f"{section}.{f}" for f in names)
            raise ScreenerError(
                f"{keys} is fixed by the plans (the preprocessed data and the UNet were planned with it); plan "
                f"anew under another name and train on those plans: nnScreener_plan_and_preprocess -d DATASET "
                f"--preset PRESET --set {section}.{names[0]}=... -p NEW_PLANS, then nnScreener_train ... -p NEW_PLANS")


def resolved_plans_dict(plans: ScreenerPlans, config: ScreenerConfig, continue_training: bool) -> Dict[str, Any]:
    """A copy of the plans dict with the resolved config as its ``"nnscreener"`` block, ready for a trainer."""
    plans_dict = copy.deepcopy(plans.plans)
    plans_dict["nnscreener"] = config.to_dict()
    plans_dict["continue_training"] = continue_training
    return plans_dict


def prepare_stage_folder(folder: Path, continue_training: bool, overwrite: bool) -> None:
    """Refuses to silently replace an existing run; with ``overwrite`` removes its checkpoints."""
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


def resolve_training_device(device: Optional[str], num_gpus: int) -> str:
    """``cuda`` when available unless ``device`` says otherwise; ScreenerError for an impossible request."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ScreenerError("-device cuda was requested but CUDA is not available; use -device cpu")
    if num_gpus < 1 or (num_gpus > 1 and device != "cuda"):
        raise ScreenerError(f"-num_gpus {num_gpus}: multi-GPU training needs -device cuda and N >= 1")
    if device == "cuda" and num_gpus > torch.cuda.device_count():
        raise ScreenerError(f"-num_gpus {num_gpus} but only {torch.cuda.device_count()} GPUs are visible")
    return device


def _spawn_ddp(cls: Type, plans_dict: Dict[str, Any], dataset_json: Dict[str, Any], continue_training: bool,
               num_gpus: int) -> None:
    """Trains on ``num_gpus`` GPUs with DDP; a rank's ScreenerError becomes one ScreenerError here."""
    import torch.multiprocessing as mp
    from nnunetv2.run.run_training import find_free_network_port

    os.environ.setdefault("MASTER_ADDR", "localhost")
    os.environ.setdefault("MASTER_PORT", str(find_free_network_port()))
    try:
        mp.spawn(_run_ddp, args=(cls, plans_dict, dataset_json, continue_training, num_gpus), nprocs=num_gpus,
                 join=True)
    except mp.ProcessRaisedException as e:  # a rank's ScreenerError (e.g. the NaN guard) -> one line
        last = str(e).strip().splitlines()[-1]
        if "Error:" in last and ("ScreenerError" in last or "NonFiniteLossError" in last):
            raise ScreenerError(last.split("Error:", 1)[1].strip()) from e
        raise


def train_stage(dataset: str, stage: str, plans_name: str = paths.DEFAULT_PLANS,
                overrides: Optional[Mapping[str, Any]] = None, device: Optional[str] = None, num_gpus: int = 1,
                continue_training: bool = False, overwrite: bool = False) -> Path:
    """Trains one stage of a dataset's plans and returns its result folder.

    Args:
        dataset: dataset id or name.
        stage: ``descriptor`` | ``condition`` | ``density`` | ``distill`` (:mod:`nnscreener.stages`).
        plans_name: plans in ``$nnUNet_preprocessed`` (for ``distill``: the student's nnU-Net plans).
        overrides: nested config overrides (``--set`` and the named flags); planned fields are refused.
        device: ``cuda`` | ``cpu`` (default: cuda when available).
        num_gpus: GPUs for DDP training (CUDA only).
        continue_training: resume from the latest (or final) checkpoint.
        overwrite: start a finished run over (its checkpoints are deleted); without it an existing run is refused.

    Raises:
        ScreenerError: an impossible device request, unknown plans or stage, a planned field overridden, an existing
            run without ``continue_training`` / ``overwrite``, or a training failure the trainer reports.
    """
    device = resolve_training_device(device, num_gpus)
    reject_planned_fields(overrides or {})
    cls = stages.trainer_class(stage)
    plans = cls.stage_plans(dataset, plans_name, overrides or {})
    config = plans.config
    folder = paths.stage_folder(plans.dataset_name, stage, cls.variant_for(config), plans.plans_name)
    prepare_stage_folder(folder, continue_training, overwrite)
    cls.prepare_data(plans, device)
    plans_dict = resolved_plans_dict(plans, config, continue_training)
    if num_gpus > 1:
        _spawn_ddp(cls, plans_dict, plans.dataset_json, continue_training, num_gpus)
    else:
        if device == "cpu":
            torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", multiprocessing.cpu_count())))
        run_single(cls, plans_dict, plans.dataset_json, torch.device(device), continue_training)
    return folder
