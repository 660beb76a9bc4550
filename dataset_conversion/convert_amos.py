"""AMOS (CT part) -> nnU-Net raw UNLABELED training set (imagesTr only); MRI scans are excluded.

Source layout (AMOS22 and its unlabeled archives unpacked below SRC; labels are not used):

    SRC/imagesTr/amos_0001.nii.gz, SRC/imagesVa/..., SRC/imagesTs/...      (amos22.zip)
    SRC/amos_unlabeled_ct_5000_5399/amos_5000.nii.gz ...                    (amos22_unlabeled_ct_*.zip)
    SRC/dataset.json                                                         (optional)

Which scans are CT: AMOS tells the modality by the case number only (its README: "id numbers less than 500 belong
to CT data, otherwise they belong to MRI data"; the unlabeled CT archives hold ids 5000-6899 and the unlabeled MRI
archive ids 7000-8199). AMOS22's dataset.json declares a single "modality" for the whole collection, so it cannot
tell CT from MRI per case; it is only checked to declare CT at all. Rule used here:

    ids 1-499 and 5000-6999: CT, converted;  ids 500-999 and 7000-8999: MRI, excluded;  other ids: excluded.

As a second guard, a "CT" without any voxel at or below -500 HU (no air: MRI-like intensities) is excluded too.
Excluded scans are listed with the reason. Files under labels* folders are ignored; case ids are ``amos_NNNN``.

Output: DatasetXXX_AMOSCT/{imagesTr/amos_0001_0000.nii.gz (int16 HU), dataset.json, conversion.json}.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import SimpleITK as sitk

from dataset_conversion.raw_dataset import DatasetSpec, OutputDataset, write_unlabeled_case
from dataset_conversion.runner import build_parser, run_converter
from nnscreener.errors import ScreenerError
from nnscreener.io.images import read_image

SPEC = DatasetSpec(module="convert_amos", default_name="AMOSCT", split="Tr",
                   description="AMOS abdominal CT scans (MRI excluded), unlabeled",
                   reference="Ji et al., AMOS: A Large-Scale Abdominal Multi-Organ Benchmark, NeurIPS 35, 2022")
CT_ID_RANGES = ((1, 499), (5000, 6999))
MRI_ID_RANGES = ((500, 999), (7000, 8999))
AIR_HU = -500.0  # a CT of a body always shows air at or below this
_FILE = re.compile(r"amos_(\d+)\.nii\.gz")


@dataclass(frozen=True)
class AmosCase:
    case_id: str
    amos_id: int
    image: Path


def modality_of_id(amos_id: int) -> Optional[str]:
    """The modality, "CT" or "MR", by AMOS's id ranges; None for an id outside them."""
    if any(lo <= amos_id <= hi for lo, hi in CT_ID_RANGES):
        return "CT"
    if any(lo <= amos_id <= hi for lo, hi in MRI_ID_RANGES):
        return "MR"
    return None


def check_declared_modality(source: Path) -> None:
    """Raises ScreenerError when ``source/dataset.json`` exists and declares no CT channel at all."""
    path = source / "dataset.json"
    if not path.is_file():
        return
    try:
        declared = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ScreenerError(f"unreadable {path}: {e}") from e
    modality = declared.get("modality") or declared.get("channel_names") or {}
    values = [str(v).upper() for v in (modality.values() if isinstance(modality, dict) else [modality])]
    if values and "CT" not in values:
        raise ScreenerError(f"{path} declares modality {modality}, not CT: is {source} the AMOS CT data?")


def find_cases(source: Path) -> tuple[list[AmosCase], dict[str, str]]:
    """Every ``amos_NNNN.nii.gz`` below ``source`` outside ``labels*`` folders."""
    check_declared_modality(source)
    found: dict[int, list[Path]] = {}
    for path in sorted(source.rglob("amos_*.nii.gz")):
        match = _FILE.fullmatch(path.name)
        relative_dirs = path.relative_to(source).parts[:-1]
        if match and path.is_file() and not any(d.lower().startswith("labels") for d in relative_dirs):
            found.setdefault(int(match.group(1)), []).append(path)
    duplicates = {i: files for i, files in found.items() if len(files) > 1}
    if duplicates:
        i, files = next(iter(duplicates.items()))
        raise ScreenerError(f"AMOS id {i} occurs {len(files)} times: {[str(f) for f in files]}")
    return [AmosCase(f"amos_{i:04d}", i, files[0]) for i, files in sorted(found.items())], {}


def convert_case(case: AmosCase, dataset: OutputDataset) -> dict:
    modality = modality_of_id(case.amos_id)
    if modality == "MR":
        raise ScreenerError(f"{case.image} is MRI by AMOS's id ranges (MRI ids: {MRI_ID_RANGES}); excluded")
    if modality is None:
        raise ScreenerError(f"{case.image}: id {case.amos_id} is outside AMOS's CT id ranges {CT_ID_RANGES}; "
                            f"excluded")
    image = read_image(case.image)
    lowest = float(np.min(sitk.GetArrayViewFromImage(image)))
    if lowest > AIR_HU:
        raise ScreenerError(f"{case.image} has no voxel at or below {AIR_HU:.0f} HU (minimum {lowest:.1f}): "
                            f"not a CT in HU (MRI?); excluded")
    write_unlabeled_case(dataset, case.case_id, image, str(case.image))
    return {"image": str(case.image), "size_xyz": list(image.GetSize())}


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser(SPEC, __doc__).parse_args(argv)
    return run_converter(SPEC, args, find_cases, convert_case,
                         options={"ct_id_ranges": CT_ID_RANGES, "air_hu_check": AIR_HU})


if __name__ == "__main__":
    raise SystemExit(main())
