"""LiTS (Liver Tumor Segmentation challenge) -> nnU-Net raw TEST set with a binary pathology mask (liver tumor).

Source layout (the challenge's training batches, .nii or .nii.gz, at any depth below SRC):

    SRC/Training Batch 1/volume-0.nii
    SRC/Training Batch 1/segmentation-0.nii
    SRC/Training Batch 2/volume-28.nii  ...

Source labels: 1 liver, 2 tumor. Pathology = tumor (label 2), written as 1. A volume without its segmentation-N
file (e.g. the challenge's test-volume-N files, which are not listed at all), unreadable files and labels whose
geometry differs from the image are skipped and listed. Case ids are ``lits_NNN`` (N = the volume number).

Output: DatasetXXX_LiTS/{imagesTs/lits_000_0000.nii.gz (int16 HU), labelsTs/lits_000.nii.gz (uint8 0/1),
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

SPEC = DatasetSpec(module="convert_lits", default_name="LiTS", split="Ts", lesion_kind="liver_tumor",
                   description="LiTS liver CT; labelsTs: 1 = liver tumor (source label 2)",
                   reference="Bilic et al., The Liver Tumor Segmentation Benchmark (LiTS), Medical Image Analysis "
                             "84:102680, 2023")
TUMOR_VALUE = 2
_VOLUME = re.compile(r"volume-(\d+)\.nii(\.gz)?")
_SEGMENTATION = re.compile(r"segmentation-(\d+)\.nii(\.gz)?")


@dataclass(frozen=True)
class LitsCase:
    case_id: str
    volume: Path
    segmentation: Optional[Path]


def _numbered_files(source: Path, pattern: re.Pattern) -> dict[int, list[Path]]:
    found: dict[int, list[Path]] = {}
    for path in sorted(source.rglob("*.nii*")):
        match = pattern.fullmatch(path.name)
        if match and path.is_file():
            found.setdefault(int(match.group(1)), []).append(path)
    return found


def find_cases(source: Path) -> tuple[list[LitsCase], dict[str, str]]:
    """Every ``volume-N`` below ``source`` paired with ``segmentation-N`` (searched anywhere below ``source``)."""
    volumes, segmentations = _numbered_files(source, _VOLUME), _numbered_files(source, _SEGMENTATION)
    for number, files in list(volumes.items()) + list(segmentations.items()):
        if len(files) > 1:
            raise ScreenerError(f"LiTS case {number} has several files: {[str(f) for f in files]}; point -i at a "
                                f"single copy of the dataset")
    cases = [LitsCase(f"lits_{n:03d}", files[0], segmentations.get(n, [None])[0])
             for n, files in sorted(volumes.items())]
    return cases, {}


def convert_case(case: LitsCase, dataset: OutputDataset) -> dict:
    if case.segmentation is None:
        raise ScreenerError(f"no segmentation file for {case.volume} (expected "
                            f"{case.volume.name.replace('volume-', 'segmentation-')} below the source folder)")
    image = read_image(case.volume)
    segmentation = read_image(case.segmentation)
    check_same_grid(image, segmentation, case.volume, case.segmentation)
    mask = np.asarray(sitk.GetArrayViewFromImage(segmentation)) == TUMOR_VALUE  # (z, y, x)
    write_labeled_case(dataset, case.case_id, image, mask, str(case.volume))
    return {"image": str(case.volume), "segmentation": str(case.segmentation), "pathology_voxels": int(mask.sum())}


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser(SPEC, __doc__).parse_args(argv)
    return run_converter(SPEC, args, find_cases, convert_case, options={"pathology_source_label": TUMOR_VALUE})


if __name__ == "__main__":
    raise SystemExit(main())
