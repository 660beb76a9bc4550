"""Result-folder housekeeping of a training run: nnU-Net's unused folder, missing preprocessed data, and the stage
folder of a run that failed before its first checkpoint (docs/design.md C10)."""
from __future__ import annotations

import contextlib
import shutil
from pathlib import Path

from nnscreener.errors import ScreenerError


def remove_if_empty(*folders: Path) -> None:
    """Removes each folder that is empty, in order (a folder that is not empty or missing is left as it is)."""
    for folder in folders:
        with contextlib.suppress(OSError):
            Path(folder).rmdir()


def remove_nnunet_folder(nnunet_output_folder: Path) -> None:
    """Removes nnU-Net's ``Trainer__plans__config/fold_x`` folder (made by nnUNetTrainer.__init__, never used) and
    its parent when they are empty."""
    folder = Path(nnunet_output_folder)
    remove_if_empty(folder, folder.parent)


def require_preprocessed_data(preprocessed_folder: Path, nnunet_output_folder: Path, plans_name: str,
                              dataset_name: str) -> None:
    """Raises ScreenerError, leaving no result folder behind, when the plans' preprocessed cases are missing."""
    if Path(preprocessed_folder).is_dir():
        return
    remove_nnunet_folder(nnunet_output_folder)
    remove_if_empty(Path(nnunet_output_folder).parent.parent)  # the dataset's results folder, if this made it
    raise ScreenerError(
        f"the preprocessed cases of plans {plans_name!r} are missing: {preprocessed_folder} does not exist; run "
        f"nnScreener_plan_and_preprocess -d {dataset_name} (with the same preset) first")


def remove_stage_folder_without_checkpoint(folder: Path) -> None:
    """Removes a stage folder that no checkpoint reached (an early failure leaves only copies of the plans and a log
    of the lead-up to the error, not a run), then the dataset's results folder when it is empty."""
    folder = Path(folder)
    if any(folder.glob("checkpoint_*.pth")):
        return
    shutil.rmtree(folder, ignore_errors=True)
    remove_if_empty(folder.parent)
