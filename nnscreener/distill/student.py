"""The student network and the plans it is trained on.

The student is exactly the network stock nnU-Net builds for the student plans' ``3d_fullres`` configuration:
``nnUNetTrainer.build_network_architecture`` (``get_network_from_plans`` with the plans' architecture kwargs),
with as many input channels as nnU-Net gives the dataset (``determine_num_input_channels``: one CT channel) and
deep supervision on, as in training. Only its segmentation layers (the 1x1x1 ``.seg_layers.`` convolutions) differ
from the fine-tuning network: here they output the distillation targets (1 channel, or 1 + d with the features),
there the labelled dataset's classes. nnU-Net's ``load_pretrained_weights`` skips exactly the keys containing
``.seg_layers.`` and requires every other key with the same shape, so the student's file loads into the
fine-tuning network whatever its number of classes (tested in tests/distill/test_student.py).

The student plans are an nnU-Net plans file in the unlabeled dataset's ``nnUNet_preprocessed`` folder, normally
the labelled dataset's plans moved there with ``nnUNetv2_move_plans_between_datasets``. They carry no
``"nnscreener"`` block: the run's config is the teacher's (the teacher plans' block), with the run's overrides.
"""
from __future__ import annotations

import json
from dataclasses import replace
from typing import Any, Dict, Mapping

from torch import nn

from nnscreener import paths
from nnscreener.config import merge, validate
from nnscreener.errors import ScreenerError
from nnscreener.planning.unlabeled import BODY_LABELS
from nnscreener.plans import ScreenerPlans, load_plans

MAP_CHANNEL = 0  # target channel 0 is the teacher's anomaly map; channels 1.. its pooled descriptor (map+features)


def target_channels(targets: str, descriptor_dim: int) -> int:
    """Output channels of the student: 1 for ``map``, 1 + the teacher's descriptor channels for ``map+features``."""
    return 1 if targets == "map" else 1 + int(descriptor_dim)


def teacher_plans_name(overrides: Mapping[str, Any]) -> str:
    """The teacher's plans name from the run's overrides (``distill.teacher_plans``), default nnScreenerPlans."""
    return str(overrides.get("distill", {}).get("teacher_plans") or paths.DEFAULT_PLANS)


def move_plans_hint(dataset_name: str, plans_name: str) -> str:
    return (f"plan the labelled dataset with nnU-Net and move its plans here: nnUNetv2_move_plans_between_datasets "
            f"-s LABELLED_DATASET -t {dataset_name} -sp nnUNetPlans -tp {plans_name}")


def read_student_plans(dataset_name: str, plans_name: str) -> Dict[str, Any]:
    """The student's nnU-Net plans dict from ``$nnUNet_preprocessed/<dataset>/<plans_name>.json``.

    Raises:
        ScreenerError: missing or unparsable, nnScreener plans, written for another dataset (copied instead of
            moved), or without a ``3d_fullres`` configuration.
    """
    path = paths.preprocessed_root() / dataset_name / f"{plans_name}.json"
    if not path.is_file():
        raise ScreenerError(f"no student plans {path}; {move_plans_hint(dataset_name, plans_name)}")
    try:
        plans = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ScreenerError(f"cannot parse the student plans {path}: {e}") from None
    if plans.get("dataset_name") != dataset_name:
        raise ScreenerError(f"{path} names dataset {plans.get('dataset_name')!r}, not {dataset_name!r}: it was copied, "
                            f"not moved; {move_plans_hint(dataset_name, plans_name)}")
    if "nnscreener" in plans:
        raise ScreenerError(f"{path} are nnScreener plans (the teacher's kind); -p must name the nnU-Net plans the "
                            f"supervised training will use: {move_plans_hint(dataset_name, 'nnUNetPlans_from<ID>')}")
    if paths.CONFIGURATION not in plans.get("configurations", {}):
        raise ScreenerError(f"{path} has no {paths.CONFIGURATION!r} configuration, which the student is built from")
    return plans


def load_student_plans(dataset: str, plans_name: str, overrides: Mapping[str, Any]) -> ScreenerPlans:
    """The plans a distillation run trains on: the student's nnU-Net plans, the teacher's dataset.json with the body
    mask as its one label (nnU-Net samples patch centres from it, docs/design.md C3) and the teacher's config
    merged with ``overrides`` (``distill.teacher_plans`` resolved to the name used).

    Raises:
        ScreenerError: see :func:`read_student_plans`; the teacher plans are missing (:func:`load_plans`).
    """
    teacher_name = teacher_plans_name(overrides)
    teacher = load_plans(dataset, teacher_name)
    config = validate(merge(teacher.config, overrides))
    config = merge(config, {"distill": {"teacher_plans": teacher_name}})
    plans = read_student_plans(teacher.dataset_name, plans_name)
    dataset_json = {**teacher.dataset_json, "labels": dict(BODY_LABELS)}  # the body mask is the student's seg
    dataset_json.pop("dataset", None)
    return replace(teacher, plans_name=plans_name, plans=plans, dataset_json=dataset_json, config=config)


def build_student(plans: ScreenerPlans, out_channels: int, deep_supervision: bool = True) -> nn.Module:
    """The student UNet, built as ``nnUNetTrainer.initialize`` builds its network from ``plans``' ``3d_fullres``.

    Args:
        plans: the student plans (architecture) and dataset.json (input channels).
        out_channels: seg-layer outputs (:func:`target_channels`).
        deep_supervision: True in training (a list of outputs, full resolution first), False for prediction; the
            state dict is the same either way.

    Returns:
        The network (on CPU): (B, C_in, Z, Y, X) -> (B, out_channels, Z, Y, X) [+ lower-resolution outputs].
    """
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels

    plans_manager = plans.plans_manager
    configuration_manager = plans_manager.get_configuration(paths.CONFIGURATION)
    num_inputs = determine_num_input_channels(plans_manager, configuration_manager, plans.dataset_json)
    return nnUNetTrainer.build_network_architecture(plans_manager, configuration_manager, num_inputs, out_channels,
                                                    deep_supervision)
