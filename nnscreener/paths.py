"""nnU-Net's folders (``nnUNet_raw``, ``nnUNet_preprocessed``, ``nnUNet_results``) and nnScreener's naming in
one place.

Result folders follow nnU-Net's ``Trainer__Plans__configuration`` pattern, with the stage and the variant in
place of the trainer: ``$nnUNet_results/DatasetXXX_Name/<stage>__<variant>__<plans>/``; the stages and their
variant names are :mod:`nnscreener.stages`' (re-exported here as ``STAGES``, ``ssl_variant``, ``density_variant``).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Union

from nnscreener import stages
from nnscreener.errors import ScreenerError
from nnscreener.stages import density_variant, ssl_variant  # noqa: F401 (re-exported)

DEFAULT_PLANS = "nnScreenerPlans"
CONFIGURATION = "3d_fullres"
#: The condition network's configuration: inherits ``3d_fullres`` (same data), with a masking-invariant
#: architecture (per-voxel LayerNorm; see nnscreener/networks/norms.py).
CONDITION_CONFIGURATION = "3d_fullres_condition"
STAGES = stages.SCREENER_STAGES  # the default model's stages (all stages: stages.STAGE_NAMES)


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


def stage_folder(dataset: Union[int, str], stage: str, variant: str, plans_name: str = DEFAULT_PLANS) -> Path:
    """``$nnUNet_results/DatasetXXX_Name/<stage>__<variant>__<plans>`` (naming: :func:`nnscreener.stages.folder_name`).

    Raises:
        ScreenerError: an unknown stage, or a dataset that is not found.
    """
    name = stages.folder_name(stage, variant, plans_name)  # validates the stage before looking the dataset up
    return results_root() / dataset_name(dataset) / name
