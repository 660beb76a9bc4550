"""AbdomenAtlas (1.0Mini / 1.1Mini) -> nnU-Net raw UNLABELED training set (imagesTr only).

Source layout (case folders at any depth below SRC, e.g. after unpacking several archive parts):

    SRC/BDMAP_00000001/ct.nii.gz
    SRC/BDMAP_00000001/segmentations/...   (organ masks: ignored, the training set is unlabeled)

Every ``BDMAP_*`` folder is a case named after it. A folder without ``ct.nii.gz`` or with an unreadable / non-3D
image is skipped and listed. A CT that already is a 3D int16 .nii.gz is copied byte for byte; others are rounded
to int16 HU.

Note: AbdomenAtlas collects scans from many public datasets (its BDMAP ids hide the origin); check its metadata
before pairing it with a test set of a source it may contain.

Output: DatasetXXX_AbdomenAtlas/{imagesTr/BDMAP_00000001_0000.nii.gz, dataset.json, conversion.json}.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from dataset_conversion.raw_dataset import DatasetSpec, OutputDataset, copy_or_convert_nifti
from dataset_conversion.runner import build_parser, run_converter

SPEC = DatasetSpec(module="convert_abdomenatlas", default_name="AbdomenAtlas", split="Tr",
                   description="AbdomenAtlas CT scans, unlabeled (organ masks not used)",
                   reference="Qu et al., AbdomenAtlas-8K, NeurIPS 36, 2024")
CT_FILE = "ct.nii.gz"


@dataclass(frozen=True)
class AtlasCase:
    case_id: str
    image: Path


def find_cases(source: Path) -> tuple[list[AtlasCase], dict[str, str]]:
    """Every ``BDMAP_<digits>`` folder below ``source``."""
    folders = sorted(p for p in source.rglob("BDMAP_*") if p.is_dir() and re.fullmatch(r"BDMAP_\d+", p.name))
    return [AtlasCase(folder.name, folder / CT_FILE) for folder in folders], {}


def convert_case(case: AtlasCase, dataset: OutputDataset) -> dict:
    return copy_or_convert_nifti(dataset, case.case_id, case.image)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser(SPEC, __doc__).parse_args(argv)
    return run_converter(SPEC, args, find_cases, convert_case)


if __name__ == "__main__":
    raise SystemExit(main())
