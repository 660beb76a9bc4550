"""Writing the synthetic dataset in nnU-Net's raw format (docs/design.md C1).

``$nnUNet_raw/DatasetXXX_Name/{dataset.json, imagesTr/, imagesTs/, labelsTs/}``: unlabeled training images,
test images with lesion masks. Files are written into a hidden staging folder next to the target and moved into
place at the end, so an interrupted run never leaves a half-written dataset under the dataset's name.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Dict, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

from nnscreener.errors import ScreenerError

FILE_ENDING = ".nii.gz"


def write_nifti(path: Path, array_zyx: np.ndarray, spacing_zyx: Sequence[float], origin_xyz: Sequence[float]) -> None:
    """Writes a (z, y, x) array as a compressed NIfTI with the given spacing (mm) and origin (world mm, x, y, z),
    identity direction. The file stores (x, y, z) order, as ITK does."""
    image = sitk.GetImageFromArray(array_zyx)
    image.SetSpacing(tuple(float(s) for s in spacing_zyx[::-1]))
    image.SetOrigin(tuple(float(o) for o in origin_xyz))
    image.SetDirection((1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
    sitk.WriteImage(image, str(path), useCompression=True)


def dataset_folder_name(dataset_id: int, name: str) -> str:
    """``Dataset500_SyntheticCT``; raises ScreenerError on an id outside 1..999 or a name nnU-Net cannot use."""
    if not 1 <= int(dataset_id) <= 999:
        raise ScreenerError(f"dataset id {dataset_id} is outside nnU-Net's range 1..999")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_\-]*", name):
        raise ScreenerError(f"dataset name {name!r} must be letters, digits, '_' or '-' (no spaces or slashes)")
    return f"Dataset{int(dataset_id):03d}_{name}"


def prepare_staging(raw_root: Path, folder_name: str, overwrite: bool) -> Tuple[Path, Path]:
    """Checks that the dataset may be written and makes an empty staging folder.

    Returns:
        (final dataset folder, staging folder with imagesTr/, imagesTs/, labelsTs/).

    Raises:
        ScreenerError: the raw folder does not exist; the dataset exists and ``overwrite`` is False; another
            dataset uses the same id (nnU-Net would then not know which one ``-d`` means).
    """
    if not raw_root.is_dir():
        raise ScreenerError(f"nnUNet_raw folder {raw_root} does not exist; create it or point nnUNet_raw elsewhere")
    final = raw_root / folder_name
    prefix = folder_name.split("_", 1)[0] + "_"
    clashes = sorted(d.name for d in raw_root.iterdir() if d.is_dir() and d.name.startswith(prefix))
    clashes = [c for c in clashes if c != folder_name]
    if clashes:
        raise ScreenerError(
            f"dataset id {folder_name[7:10]} is already used by {', '.join(clashes)} in {raw_root}; "
            f"choose another id (-d)"
        )
    if final.exists() and not overwrite:
        raise ScreenerError(f"{final} already exists; pass --overwrite (overwrite=True) to replace it")
    staging = raw_root / f".{folder_name}.partial"
    if staging.exists():
        shutil.rmtree(staging)
    for sub in ("imagesTr", "imagesTs", "labelsTs"):
        (staging / sub).mkdir(parents=True)
    return final, staging


def publish(staging: Path, final: Path) -> None:
    """Moves the finished staging folder to its final name, replacing an existing dataset of that name."""
    old = final.with_name(f".{final.name}.old")
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        os.replace(final, old)
    os.replace(staging, final)
    if old.exists():
        shutil.rmtree(old)


def write_json(path: Path, content: Dict) -> None:
    with open(path, "w") as f:
        json.dump(content, f, indent=2)
        f.write("\n")
