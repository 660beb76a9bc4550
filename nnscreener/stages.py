"""The registry of training stages: trainer, config section, result-folder naming, SSL or not, input channels, and
which ``nnScreener_predict --method`` scores with a stage's result folder.

Screener's own model is three stages (descriptor, condition, density; :data:`SCREENER_STAGES`); the baselines
(``baseline_ae``, ``baseline_synthetic``, ``baseline_draem``) are one stage each, trained and predicted with the
same machinery.

Result folders follow nnU-Net's ``Trainer__Plans__configuration`` pattern with the stage and its variant in place
of the trainer: ``<stage>__<variant>__<plans>`` (e.g. ``descriptor__vicreg_d32__nnScreenerPlans``,
``density__masking_flow__nnScreenerPlans``, ``distill__map_masking_flow_nnScreenerPlans__nnUNetPlans``). Trainer
classes are imported only when asked for, so this module stays cheap to import and free of import cycles (the
trainers import it). The registry also maps ``nnScreener_predict --method`` names to the stage whose model writes
those maps (:data:`METHODS`).
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
        section: the config section holding its schedule (``nnScreener_train --num_iterations`` sets it there).
        method: the ``nnScreener_predict --method`` that scores scans with this stage's result folder ("" = none).
        model_loader: ``module:function`` ``(folder, device, checkpoint_name) -> (model, config)`` loading that
            scoring model (an ``anomaly_map(x, origin_zyx)`` module, docs/design.md C9) for the sliding-window
            predictor, or "" (the distilled student has its own predictor, nnscreener/distill/predict.py).
    """

    name: str
    trainer: str
    is_ssl: bool
    in_channels: Optional[int]
    masked_input: bool = False
    section: str = "ssl"
    method: str = ""
    model_loader: str = ""

    def trainer_class(self) -> Type:
        """The trainer class (a ``ScreenerTrainerBase`` subclass), imported now."""
        module, cls = self.trainer.split(":")
        return getattr(importlib.import_module(module), cls)

    def load_model(self, folder, device="cpu", checkpoint_name: Optional[str] = None):
        """The scoring model of a trained result folder and its config (:attr:`model_loader`), imported now."""
        if not self.model_loader:
            raise ScreenerError(f"stage {self.name!r} has no scoring model")
        module, function = self.model_loader.split(":")
        loader = getattr(importlib.import_module(module), function)
        return loader(folder, device) if checkpoint_name is None else loader(folder, device, checkpoint_name)


STAGES: Dict[str, Stage] = {
    "descriptor": Stage("descriptor", "nnscreener.trainers.ssl:DescriptorTrainer", is_ssl=True, in_channels=1),
    "condition": Stage("condition", "nnscreener.trainers.ssl:ConditionTrainer", is_ssl=True, in_channels=2,
                       masked_input=True),
    "density": Stage("density", "nnscreener.trainers.density:DensityTrainer", is_ssl=False, in_channels=None,
                     section="density", method="screener", model_loader="nnscreener.model:load_screener_model"),
    "baseline_ae": Stage("baseline_ae", "nnscreener.trainers.baselines:AutoencoderTrainer", is_ssl=False,
                         in_channels=1, section="baseline_ae", method="baseline_ae",
                         model_loader="nnscreener.baselines.autoencoder:load_autoencoder_model"),
    "baseline_synthetic": Stage("baseline_synthetic", "nnscreener.trainers.baselines:SyntheticAnomalyTrainer",
                                is_ssl=False, in_channels=1, section="baseline_synthetic",
                                method="baseline_synthetic",
                                model_loader="nnscreener.baselines.blend_regression:load_blend_model"),
    "baseline_draem": Stage("baseline_draem", "nnscreener.trainers.baselines:DraemTrainer", is_ssl=False,
                            in_channels=1, section="baseline_draem", method="baseline_draem",
                            model_loader="nnscreener.baselines.draem:load_draem_model"),
    "distill": Stage("distill", "nnscreener.trainers.distill:DistillTrainer", is_ssl=False, in_channels=None,
                     section="distill", method="distilled"),
}
STAGE_NAMES = tuple(STAGES)
SCREENER_STAGES = ("descriptor", "condition", "density")  # the default model, trained in this order
DENSITY = "density"
DISTILL = "distill"
#: ``nnScreener_predict --method`` -> the stage whose result folder scores the scans ("screener" is the default).
METHODS: Dict[str, Stage] = {stage.method: stage for stage in STAGES.values() if stage.method}
DEFAULT_METHOD = "screener"


def method_stage(method: str) -> Stage:
    """The stage behind a prediction method; raises ScreenerError listing the valid ones."""
    if method not in METHODS:
        raise ScreenerError(f"unknown method {method!r}; choose one of {list(METHODS)}")
    return METHODS[method]


def get_stage(name: str) -> Stage:
    """Looks a stage up; raises ScreenerError listing the valid ones."""
    if name not in STAGES:
        raise ScreenerError(f"unknown stage {name!r}; choose one of {list(STAGE_NAMES)}")
    return STAGES[name]


def trainer_class(name: str) -> Type:
    """The trainer class of stage ``name``."""
    return get_stage(name).trainer_class()


def input_channels(name: str) -> int:
    """Input channels of the network a stage trains (descriptor 1, condition 2, the baselines 1)."""
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
