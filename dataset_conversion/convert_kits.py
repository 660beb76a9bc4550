"""KiTS (kits19 / kits21 / kits23) -> nnU-Net raw TEST set with a binary pathology mask (kidney tumor or cyst).

Source layout (the challenge repository's data folder, e.g. kits23/dataset or kits19/data):

    SRC/case_00000/imaging.nii.gz
    SRC/case_00000/segmentation.nii.gz        kits19, kits23
    SRC/case_00000/aggregated_MAJ_seg.nii.gz  kits21 (used when segmentation.nii.gz is absent)

Case folders may sit at any depth below SRC. Source labels: kits19 1 kidney, 2 tumor; kits21 / kits23 1 kidney,
2 tumor, 3 cyst. Pathology = tumor or cyst (labels 2 and 3), written as 1. Cases without a segmentation (the kits19
test cases 210-299), unreadable files and labels whose geometry differs from the image are skipped and listed.

Output: DatasetXXX_KiTS/{imagesTs/case_00000_0000.nii.gz (int16 HU), labelsTs/case_00000.nii.gz (uint8 0/1),
dataset.json, conversion.json}.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import SimpleITK as sitk

from dataset_conversion.raw_dataset import DatasetSpec, OutputDataset, check_same_grid, write_labeled_case
from dataset_conversion.runner import build_parser, run_converter
from nnscreener.errors import ScreenerError
from nnscreener.io.images import read_image

SPEC = DatasetSpec(module="convert_kits", default_name="KiTS", split="Ts", lesion_kind="kidney_tumor_or_cyst",
                   description="KiTS kidney CT; labelsTs: 1 = kidney tumor or cyst (source labels 2 and 3)",
                   reference="Heller et al., The KiTS19 challenge data, arXiv:1904.00445 (and KiTS21 / KiTS23)")
PATHOLOGY_VALUES = (2, 3)  # tumor, cyst
SEGMENTATION_NAMES = ("segmentation.nii.gz", "aggregated_MAJ_seg.nii.gz")


@dataclass(frozen=True)
class KitsCase:
    case_id: str
    image: Path
    segmentation: Optional[Path]


def find_cases(source: Path) -> tuple[list[KitsCase], dict[str, str]]:
    """Every ``case_NNNNN`` folder below ``source``, with its segmentation file if one exists."""
    folders = sorted(p for p in source.rglob("case_*") if p.is_dir() and re.fullmatch(r"case_\d+", p.name))
    cases = []
    for folder in folders:
        segmentation = next((folder / n for n in SEGMENTATION_NAMES if (folder / n).is_file()), None)
        cases.append(KitsCase(folder.name, folder / "imaging.nii.gz", segmentation))
    return cases, {}


def pathology_mask(segmentation_zyx: np.ndarray, values: Sequence[int] = PATHOLOGY_VALUES) -> np.ndarray:
    """bool (z, y, x): voxels whose source label is one of ``values``."""
    return np.isin(segmentation_zyx, values)


def convert_case(case: KitsCase, dataset: OutputDataset) -> dict:
    if case.segmentation is None:
        raise ScreenerError(f"no segmentation in {case.image.parent} (looked for {', '.join(SEGMENTATION_NAMES)}); "
                            f"kits19 test cases have none")
    image = read_image(case.image)
    segmentation = read_image(case.segmentation)
    check_same_grid(image, segmentation, case.image, case.segmentation)
    mask = pathology_mask(sitk.GetArrayViewFromImage(segmentation))
    write_labeled_case(dataset, case.case_id, image, mask, str(case.image))
    return {"image": str(case.image), "segmentation": str(case.segmentation), "pathology_voxels": int(mask.sum())}


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser(SPEC, __doc__).parse_args(argv)
    return run_converter(SPEC, args, find_cases, convert_case,
                         options={"pathology_source_labels": list(PATHOLOGY_VALUES)})


if __name__ == "__main__":
    raise SystemExit(main())
