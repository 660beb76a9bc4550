"""The registry of Screener's training stages: trainer, result-folder naming, SSL or not, input channels.

Result folders follow nnU-Net's ``Trainer__Plans__configuration`` pattern with the stage and its variant in place
of the trainer: ``<stage>__<variant>__<plans>`` (e.g. ``descriptor__vicreg_d32__nnScreenerPlans``,
``density__masking_flow__nnScreenerPlans``, ``distill__map_masking_flow_nnScreenerPlans__nnUNetPlans``). Trainer
classes are imported only when asked for, so this module stays cheap to import and free of import cycles (the
trainers import it). The registry also maps ``nnScreener_predict --method`` names to the stage whose model writes
those maps (:data:`PREDICT_METHODS`).
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Dict, Optional, Type

from nnscreener.errors import ScreenerError


@dataclass(frozen=True)
class Stage:
    """One training stage.

    Attributes:
        name: ``descriptor`` | ``condition`` | ``density`` | ``distill``; the first part of the result folder's name.
        trainer: ``module:Class`` of its trainer (imported by :meth:`trainer_class`).
        is_ssl: whether it is a dense SSL stage (trains a DenseFeatureNet; config section ``ssl``).
        in_channels: input channels of the network it trains (1: the image; 2: the masked image and the mask),
            or None for the density stage.
        masked_input: whether that network is trained on block-masked views, with the mask as its last input
            channel (the condition model: built from the plans' condition configuration with a mask token).
        config_section: the config section holding its schedule (``ssl``, ``density``, ``distill``).
        predict_method: the ``nnScreener_predict --method`` whose maps this stage's model writes ("" = none).
    """

    name: str
    trainer: str
    is_ssl: bool
    in_channels: Optional[int]
    masked_input: bool = False
    config_section: str = "ssl"
    predict_method: str = ""

    def trainer_class(self) -> Type:
        """The trainer class (a ``ScreenerTrainerBase`` subclass), imported now."""
        module, cls = self.trainer.split(":")
        return getattr(importlib.import_module(module), cls)


STAGES: Dict[str, Stage] = {
    "descriptor": Stage("descriptor", "nnscreener.trainers.ssl:DescriptorTrainer", is_ssl=True, in_channels=1),
    "condition": Stage("condition", "nnscreener.trainers.ssl:ConditionTrainer", is_ssl=True, in_channels=2,
                       masked_input=True),
    "density": Stage("density", "nnscreener.trainers.density:DensityTrainer", is_ssl=False, in_channels=None,
                     config_section="density", predict_method="screener"),
    "distill": Stage("distill", "nnscreener.trainers.distill:DistillTrainer", is_ssl=False, in_channels=None,
                     config_section="distill", predict_method="distilled"),
}
STAGE_NAMES = tuple(STAGES)
DENSITY = "density"
DISTILL = "distill"
#: ``nnScreener_predict --method`` -> the stage whose trained model writes those maps.
PREDICT_METHODS: Dict[str, str] = {s.predict_method: s.name for s in STAGES.values() if s.predict_method}
DEFAULT_PREDICT_METHOD = "screener"


def predict_stage(method: str) -> str:
    """The stage of a ``--method``; raises ScreenerError listing the valid methods."""
    if method not in PREDICT_METHODS:
        raise ScreenerError(f"unknown method {method!r}; choose one of {sorted(PREDICT_METHODS)}")
    return PREDICT_METHODS[method]


def get_stage(name: str) -> Stage:
    """Looks a stage up; raises ScreenerError listing the valid ones."""
    if name not in STAGES:
        raise ScreenerError(f"unknown stage {name!r}; choose one of {list(STAGE_NAMES)}")
    return STAGES[name]


def trainer_class(name: str) -> Type:
    """The trainer class of stage ``name``."""
    return get_stage(name).trainer_class()


def input_channels(name: str) -> int:
    """Input channels of the network an SSL stage trains (descriptor 1, condition 2)."""
    stage = get_stage(name)
    if stage.in_channels is None:
        raise ScreenerError(f"stage {name!r} trains no dense feature network")
    return stage.in_channels


def masked_input(name: str) -> bool:
    """Whether the network of an SSL stage sees block-masked views and the mask (the condition model)."""
    return get_stage(name).masked_input


def ssl_variant(objective: str, embedding_dim: int) -> str:
    """Variant name of a descriptor / condition run, e.g. ``vicreg_d32``."""
    return f"{objective}_d{embedding_dim}"


def density_variant(condition: str, density: str, descriptor_variant: str = "", condition_variant: str = "") -> str:
    """Variant name of a density run, e.g. ``masking_flow``.

    When the run uses a descriptor or condition model other than the default variant of its config, that
    variant is part of the name (``masking_flow_desc-infonce_d32``), so runs on different frozen models coexist.
    ``condition_variant`` counts only for a condition that uses the trained condition network.
    """
    from nnscreener.density.conditions import condition_option

    name = f"{condition}_{density}"
    if descriptor_variant:
        name += f"_desc-{descriptor_variant}"
    if condition_variant and condition_option(condition).needs_trained_network:
        name += f"_cond-{condition_variant}"
    return name


def distill_variant(targets: str, teacher_variant: str, teacher_plans: str) -> str:
    """Variant name of a distillation run: its targets, the teacher's density variant and the teacher's plans, e.g.
    ``map_masking_flow_nnScreenerPlans_cpu`` (``map+features`` is written ``mapfeat``)."""
    return f"{targets.replace('map+features', 'mapfeat')}_{teacher_variant}_{teacher_plans}"


def folder_name(stage: str, variant: str, plans_name: str) -> str:
    """``<stage>__<variant>__<plans>``; raises ScreenerError for an unknown stage."""
    return f"{get_stage(stage).name}__{variant}__{plans_name}"
