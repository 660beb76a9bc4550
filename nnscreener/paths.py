"""nnU-Net's folders (``nnUNet_raw``, ``nnUNet_preprocessed``, ``nnUNet_results``) and nnScreener's naming in
one place.

Result folders follow nnU-Net's ``Trainer__Plans__configuration`` pattern, with the stage and the variant in
place of the trainer: ``$nnUNet_results/DatasetXXX_Name/<stage>__<variant>__<plans>/``.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Union

from nnscreener.errors import ScreenerError

DEFAULT_PLANS = "nnScreenerPlans"
CONFIGURATION = "3d_fullres"
#: The condition network's configuration: inherits ``3d_fullres`` (same data), with a masking-invariant
#: architecture (per-voxel LayerNorm; see nnscreener/networks/norms.py).
CONDITION_CONFIGURATION = "3d_fullres_condition"
STAGES = ("descriptor", "condition", "density")


def _env_dir(var: str) -> Path:
    value = os.environ.get(var)
    if not value:
        raise ScreenerError(
            f"environment variable {var} is not set. nnScreener uses nnU-Net's folders: set nnUNet_raw, "
            f"nnUNet_preprocessed and nnUNet_results (see README)."
        )
    return Path(value)


def raw_root() -> Path:
    return _env_dir("nnUNet_raw")


def preprocessed_root() -> Path:
    return _env_dir("nnUNet_preprocessed")


def results_root() -> Path:
    return _env_dir("nnUNet_results")


def dataset_name(dataset: Union[int, str]) -> str:
    """Resolves ``500`` / ``"500"`` / ``"Dataset500_SyntheticCT"`` to the dataset's folder name.

    Looks in raw, preprocessed and results like nnU-Net does; raises ScreenerError when nothing matches.
    """
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    for var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        _env_dir(var)
    try:
        return maybe_convert_to_dataset_name(int(dataset) if str(dataset).isdigit() else str(dataset))
    except (RuntimeError, ValueError) as e:
        raise ScreenerError(
            f"dataset {dataset!r} was not found in nnUNet_raw ({raw_root()}), nnUNet_preprocessed "
            f"({preprocessed_root()}) or nnUNet_results ({results_root()}): {e}"
        ) from e


def preprocessed_dir(dataset: Union[int, str]) -> Path:
    return preprocessed_root() / dataset_name(dataset)


def plans_file(dataset: Union[int, str], plans_name: str = DEFAULT_PLANS) -> Path:
    return preprocessed_dir(dataset) / f"{plans_name}.json"


def ssl_variant(objective: str, embedding_dim: int) -> str:
    """Variant name of a descriptor / condition run, e.g. ``vicreg_d32``."""
    return f"{objective}_d{embedding_dim}"


def density_variant(condition: str, density: str, descriptor_variant: str = "", condition_variant: str = "") -> str:
    """Variant name of a density run, e.g. ``masking_flow``.

    When the run uses a descriptor or condition model other than the default variant of its config, that
    variant is part of the name (``masking_flow_desc-infonce_d32``), so runs on different frozen models coexist.
    """
    name = f"{condition}_{density}"
    if descriptor_variant:
        name += f"_desc-{descriptor_variant}"
    if condition_variant:
        name += f"_cond-{condition_variant}"
    return name


def stage_folder(dataset: Union[int, str], stage: str, variant: str, plans_name: str = DEFAULT_PLANS) -> Path:
    """``$nnUNet_results/DatasetXXX_Name/<stage>__<variant>__<plans>``."""
    if stage not in STAGES:
        raise ScreenerError(f"unknown stage {stage!r}; choose one of {list(STAGES)}")
    return results_root() / dataset_name(dataset) / f"{stage}__{variant}__{plans_name}"
