"""The distill stage: regresses a trained Screener model's outputs with the UNet of an nnU-Net plans file.

``nnScreener_train DATASET distill -p PLANS [--targets map|map+features] [--teacher_plans P]``. Before the trainer
is built (:meth:`DistillTrainer.prepare_data`, in the launching process): the unlabeled training cases are
preprocessed with nnU-Net's own preprocessor for ``PLANS`` (in ``nnUNet_def_n_proc`` processes, default 8, as nnU-Net) (:mod:`nnscreener.distill.preprocessing`) and the
teacher's targets computed on that grid and cached (:mod:`nnscreener.distill.cache`); both steps skip finished
cases. Training is the shared machinery of :class:`~nnscreener.trainers.base.ScreenerTrainerBase` (iterations,
AdamW, checkpoints, ``--c``, seeds, progress); the loss is nnU-Net's deep supervision over an MSE: the student's
outputs at every decoder scale against the normalised targets reduced to that scale by area averaging (nnU-Net
reduces label maps by nearest neighbour; targets here are continuous), weighted 1, 1/2, 1/4, ... with the lowest
scale at 0 and normalised to sum 1, as ``nnUNetTrainer._build_loss``. With ``map+features`` the loss is the map
channel's MSE plus ``distill.feature_weight`` times the mean MSE of the feature channels.

Result folder ``distill__<targets>_<teacher variant>_<teacher plans>__<PLANS>``; besides the stage checkpoints
(docs/design.md C6/C15 keys) it holds ``nnunet_pretrained_weights.pth``, written at the end of training, for stock
``nnUNetv2_train LABELLED 3d_fullres FOLD -p PLANS -pretrained_weights FILE``.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, List, Mapping, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from nnscreener import checkpoints, paths, stages
from nnscreener.config import ScreenerConfig
from nnscreener.distill.cache import TargetCache
from nnscreener.distill.student import MAP_CHANNEL, build_student, load_student_plans
from nnscreener.plans import ScreenerPlans
from nnscreener.trainers.base import ScreenerTrainerBase, unwrap


def masked_mse(output: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Per-channel weighted MSE, (C,): ``sum w (o - t)^2 / sum w`` over batch and voxels; ``weight`` (B, 1, ...)."""
    squared = (output.float() - target) ** 2 * weight
    dims = [0, *range(2, output.ndim)]
    return squared.sum(dim=dims) / weight.sum().clamp_min(1e-6)


def deep_supervision_weights(n_outputs: int, ddp: bool = False) -> np.ndarray:
    """nnU-Net's weights of the deep-supervision outputs: 1/2^i, the lowest resolution 0 (1e-6 under DDP, which
    refuses parameters without a gradient, as nnU-Net does), normalised to sum 1."""
    weights = np.array([1 / (2 ** i) for i in range(n_outputs)])
    if n_outputs > 1:
        weights[-1] = 1e-6 if ddp else 0
    return weights / weights.sum()


def reduce_to(target: torch.Tensor, valid: torch.Tensor, shape) -> Tuple[torch.Tensor, torch.Tensor]:
    """Area-averages a target (B, C, Z, Y, X) over its valid voxels, and the valid fraction, to ``shape``."""
    if tuple(target.shape[2:]) == tuple(shape):
        return target, valid
    weight = F.interpolate(valid, size=tuple(shape), mode="area")
    mean = F.interpolate(target * valid, size=tuple(shape), mode="area") / weight.clamp_min(1e-6)
    return mean, weight


class DistillTrainer(ScreenerTrainerBase):
    """Trains the student UNet of the student plans on the cached teacher targets."""

    stage = stages.DISTILL
    config_section = "distill"

    @classmethod
    def variant_for(cls, config: ScreenerConfig) -> str:
        d = config.density
        teacher = stages.density_variant(d.condition, d.density, d.descriptor_variant, d.condition_variant)
        return stages.distill_variant(config.distill.targets, teacher,
                                      config.distill.teacher_plans or paths.DEFAULT_PLANS)

    @classmethod
    def stage_plans(cls, dataset: str, plans_name: str, overrides: Mapping[str, Any]) -> ScreenerPlans:
        """The student plans with the teacher's config (:func:`nnscreener.distill.student.load_student_plans`)."""
        return load_student_plans(dataset, plans_name, overrides)

    @classmethod
    def prepare_data(cls, plans: ScreenerPlans, device: str) -> None:
        """Preprocesses the training cases for the student plans and caches the teacher's targets (resumable)."""
        from nnscreener.distill.cache import build_target_cache
        from nnscreener.distill.preprocessing import preprocess_training_cases

        preprocess_training_cases(plans, int(os.environ.get("nnUNet_def_n_proc", 8)))  # nnU-Net's worker count
        build_target_cache(plans, cls.variant_for(plans.config), device)

    def __init__(self, plans: dict, configuration: str, fold, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.enable_deep_supervision = True  # the student trains with nnU-Net's deep supervision
        self.cache = TargetCache.for_plans(self.screener_plans, self.variant)
        self.target_stats = self.cache.stats()
        self.out_channels = len(self.target_stats["median"])

    def build_network(self) -> nn.Module:
        network = build_student(self.screener_plans, self.out_channels, deep_supervision=True)
        self.print_to_log_file(f"student: {type(network).__name__} of plans {self.plans_manager.plans_name}, "
                               f"{self.out_channels} target channels, teacher {self.variant}")
        return network

    def build_loader(self, identifiers: List[str], seed: int):
        from nnscreener.distill.loader import make_distill_loader

        return make_distill_loader(self.screener_plans.data_dir, identifiers, self.cache, self.batch_size,
                                   self.configuration_manager.patch_size, self.num_loader_workers(), seed,
                                   self.device.type == "cuda")

    def compute_loss(self, batch: Mapping[str, Any]) -> Tuple[torch.Tensor, Dict[str, float]]:
        """Deep-supervised MSE of the normalised targets (batch keys of :mod:`nnscreener.distill.loader`)."""
        data = torch.as_tensor(batch["data"]).to(self.device, non_blocking=True)
        target = torch.as_tensor(batch["target"]).to(self.device, non_blocking=True)
        valid = torch.as_tensor(batch["valid"]).to(self.device, non_blocking=True)
        outputs = self.network(data)
        outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
        weights = deep_supervision_weights(len(outputs), self.is_ddp)
        feature_weight = self.screener_config.distill.feature_weight
        loss, logged = 0.0, {}
        for i, (output, w) in enumerate(zip(outputs, weights)):
            if w == 0:
                continue
            mse = masked_mse(output, *reduce_to(target, valid, output.shape[2:]))
            term = mse[MAP_CHANNEL] + (feature_weight * mse[1:].mean() if mse.numel() > 1 else 0.0)
            loss = loss + float(w) * term
            if i == 0:
                logged["loss/map_mse"] = float(mse[MAP_CHANNEL].detach())
                if mse.numel() > 1:
                    logged["loss/feature_mse"] = float(mse[1:].mean().detach())
        return loss, logged

    def checkpoint_extras(self) -> Dict[str, Any]:
        """The target normalisation and what the student regresses (docs/design.md C15)."""
        return {"target_median": list(self.target_stats["median"]), "target_iqr": list(self.target_stats["iqr"]),
                "out_channels": self.out_channels, "targets": self.screener_config.distill.targets,
                "teacher": self.variant}

    def on_train_start(self) -> None:
        """Removes an earlier run's export first: until this run ends, no file offers weights it does not hold."""
        if self.local_rank == 0:
            (Path(self.output_folder) / checkpoints.PRETRAINED_WEIGHTS).unlink(missing_ok=True)
        super().on_train_start()

    def on_train_end(self) -> None:
        super().on_train_end()
        if self.local_rank == 0:
            path = Path(self.output_folder) / checkpoints.PRETRAINED_WEIGHTS
            checkpoints.save_pretrained_weights(unwrap(self.network).state_dict(), path, {
                "stage": self.stage, "plans": self.plans_manager.plans_name, "teacher": self.variant,
                "targets": self.screener_config.distill.targets, "iteration": self.iteration})
            self.print_to_log_file(f"weights for nnUNetv2_train -pretrained_weights: {path}")
