"""The student's input: scans preprocessed by nnU-Net's own preprocessor for the student plans.

Training cases are the unlabeled dataset's raw training images with the body masks nnScreener's planning wrote
for them (docs/design.md C3); the preprocessor named by the student plans (normally nnU-Net's
``DefaultPreprocessor``: transpose, crop to non-zero, the plans' normalization, e.g. ``CTNormalization`` with the
labelled dataset's intensity statistics, resampling) writes them in nnU-Net's format to the student plans'
``data_identifier`` folder under ``$nnUNet_preprocessed``; the raw folder is only read. The body mask rides along
as nnU-Net's segmentation (label 1 = body; -1 outside nnU-Net's non-zero crop), so the loader can centre patches on
body voxels. A case is written under a ``.partial_`` name and renamed, properties last, so a killed run leaves no
case that looks finished; the next run redoes it and keeps the finished ones.

At prediction, :func:`preprocess_student_case` runs the same preprocessor on one scan (with the body mask computed
from its HU as at planning) and returns docs/design.md C4's :class:`PreprocessedCase`.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np

from nnscreener import paths
from nnscreener.errors import ScreenerError
from nnscreener.planning.preprocessor import PreprocessedCase, check_ct_channels, check_spacing, read_ct_image
from nnscreener.plans import ScreenerPlans

BODY_LABEL = 1  # the body in the student's preprocessed seg (nnScreener's stand-in label, docs/design.md C3)
PARTIAL_PREFIX = ".partial_"
CASE_SUFFIXES = (".b2nd", "_seg.b2nd", ".pkl")  # nnU-Net's blosc2 case files; the .pkl is renamed last


def _managers(plans_dict: Dict[str, Any]):
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    plans_manager = PlansManager(plans_dict)
    return plans_manager, plans_manager.get_configuration(paths.CONFIGURATION)


def student_preprocessor(configuration_manager):
    """An instance of the preprocessor the student plans name, found by nnU-Net in its own package."""
    cls = configuration_manager.preprocessor_class
    if cls is None:
        raise ScreenerError(f"the student plans' preprocessor {configuration_manager.preprocessor_name!r} is not an "
                            f"nnU-Net preprocessor (stock nnUNetv2_train could not preprocess with it either)")
    return cls(verbose=False)


def preprocess_training_case(output_truncated: str, images: Sequence[str], label: str, plans_dict: Dict[str, Any],
                             dataset_json: Dict[str, Any]) -> str:
    """Preprocesses one training case with the student plans' preprocessor into ``output_truncated``.{b2nd,...}."""
    plans_manager, configuration_manager = _managers(plans_dict)
    out = Path(output_truncated)
    partial = out.with_name(PARTIAL_PREFIX + out.name)
    preprocessor = student_preprocessor(configuration_manager)
    try:
        preprocessor.run_case_save(str(partial), list(images), label, plans_manager, configuration_manager,
                                   dataset_json)
    except Exception as e:  # nnU-Net raises assorted errors for bad files; name the case
        raise ScreenerError(f"nnU-Net's {type(preprocessor).__name__} failed on {images[0]}: {e}") from None
    for suffix in CASE_SUFFIXES:
        os.replace(f"{partial}{suffix}", f"{out}{suffix}")
    return out.name


def remove_partial_cases(data_dir: Path) -> None:
    """Removes the leftovers of a killed run (nnU-Net would take them for cases)."""
    for leftover in Path(data_dir).glob(f"{PARTIAL_PREFIX}*"):
        leftover.unlink()


def training_cases(dataset_name: str) -> Dict[str, Tuple[List[str], str]]:
    """``{case: ([raw image], body mask file)}`` of the unlabeled dataset: the raw training images (nnU-Net's listing)
    and the body masks nnScreener's planning wrote under ``$nnUNet_preprocessed`` (docs/design.md C3).

    Raises:
        ScreenerError: a bad raw dataset, or a case without its body mask (planning has not run on it).
    """
    from nnscreener.planning.unlabeled import (BODY_MASK_FOLDER, body_mask_path, list_training_cases,
                                               load_raw_dataset_json)

    raw_dir = paths.raw_root() / dataset_name
    raw_json = load_raw_dataset_json(raw_dir)
    mask_dir = paths.preprocessed_root() / dataset_name / BODY_MASK_FOLDER
    cases = {}
    for case, images in list_training_cases(raw_dir, raw_json).items():
        mask = body_mask_path(mask_dir, case, raw_json["file_ending"])
        if not mask.is_file():
            raise ScreenerError(f"missing body mask {mask} of training case {case!r}; run "
                                f"nnScreener_plan_and_preprocess -d {dataset_name} first")
        cases[case] = (images, str(mask))
    return cases


def preprocess_training_cases(plans: ScreenerPlans, num_processes: int = 1) -> List[str]:
    """Preprocesses every training case of the unlabeled dataset for the student plans (finished ones are kept).

    Returns:
        The case identifiers, sorted.

    Raises:
        ScreenerError: the derived dataset.json is missing (run nnScreener_plan_and_preprocess), the dataset is not
            one CT channel, or a case fails.
    """
    from nnscreener.planning.unlabeled import run_with_progress

    check_ct_channels(plans.dataset_json, f"dataset.json of {plans.dataset_name}")
    cases = training_cases(plans.dataset_name)
    data_dir = plans.data_dir
    data_dir.mkdir(parents=True, exist_ok=True)
    remove_partial_cases(data_dir)
    todo = [(str(data_dir / case), images, mask, plans.plans, plans.dataset_json)
            for case, (images, mask) in sorted(cases.items()) if not (data_dir / f"{case}.pkl").is_file()]
    if todo:
        run_with_progress(preprocess_training_case, todo, num_processes, f"preprocessing for {plans.plans_name}")
    return sorted(cases)


def preprocess_student_case(image_files: Sequence[str], plans: ScreenerPlans,
                            allow_non_ct: bool = False) -> PreprocessedCase:
    """One scan preprocessed as the student's training data (docs/design.md C4's signature, for the predictor).

    Returns:
        data (1, z, y, x) float32 as the student plans normalise it (e.g. z-scored HU), body_mask (z, y, x) bool,
        and nnU-Net's properties (no ``class_locations``).

    Raises:
        ScreenerError naming the file: missing / unreadable / non-3D / non-CT image or a spacing outside CT's range.
    """
    from nnscreener.planning.body_mask import body_mask_from_hu

    check_ct_channels(plans.dataset_json, f"dataset.json of {plans.dataset_name}")
    plans_manager, configuration_manager = _managers(plans.plans)
    data, properties = read_ct_image([str(f) for f in image_files], plans_manager.image_reader_writer_class(),
                                     allow_non_ct)
    check_spacing(properties["spacing"])
    body = body_mask_from_hu(data[0], plans.config.preprocessing.body_threshold_hu)[None].astype(np.int16)
    preprocessor = student_preprocessor(configuration_manager)
    data, seg, properties = preprocessor.run_case_npy(data, body, properties, plans_manager, configuration_manager,
                                                      plans.dataset_json)
    properties.pop("class_locations", None)
    return PreprocessedCase(data=np.asarray(data, dtype=np.float32), body_mask=np.asarray(seg[0]) == BODY_LABEL,
                            properties=properties)
