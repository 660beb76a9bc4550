"""The nnU-Net raw dataset a converter writes: the output folder, staged case files (a case is complete or
absent), ``dataset.json`` and ``conversion.json``. The layout is described in :mod:`dataset_conversion`.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Literal, Mapping, Optional, Sequence

import numpy as np
import SimpleITK as sitk

from dataset_conversion.report import ConversionReport
from nnscreener.errors import ScreenerError
from nnscreener.io.images import NIFTI_ENDING, read_image, short_message, to_int16_hu

FILE_ENDING = NIFTI_ENDING
CT_CHANNELS = {"0": "CT"}
PATHOLOGY_LABELS = {"background": 0, "pathology": 1}


# ---------------------------------------------------------------------------------------------------------------
# The output dataset folder
# ---------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DatasetSpec:
    """What a converter produces and how its source looks (shown by ``--help``)."""

    module: str  # e.g. "convert_kits"
    default_name: str  # folder name part: DatasetXXX_<default_name>
    split: Literal["Tr", "Ts"]  # Tr: unlabeled imagesTr; Ts: imagesTs + labelsTs
    description: str
    reference: str
    lesion_kind: Optional[str] = None  # the pathology of labelsTs value 1 (test sets only)


@dataclass(frozen=True)
class OutputDataset:
    """An nnU-Net raw dataset folder being written; files of a case are staged in ``.partial`` and then moved."""

    root: Path
    split: Literal["Tr", "Ts"]

    def image_path(self, case_id: str) -> Path:
        return self.root / f"images{self.split}" / f"{case_id}_0000{FILE_ENDING}"

    def label_path(self, case_id: str) -> Path:
        assert self.split == "Ts", "only test sets carry labels (labelsTs)"
        return self.root / "labelsTs" / f"{case_id}{FILE_ENDING}"

    @property
    def staging_dir(self) -> Path:
        return self.root / ".partial"


def dataset_folder_name(dataset_id: int, name: str) -> str:
    """``DatasetXXX_name``; raises ScreenerError for an id outside 1-999 or a name nnU-Net cannot use."""
    if not 1 <= dataset_id <= 999:
        raise ScreenerError(f"dataset id {dataset_id} is out of range: nnU-Net ids are 1-999")
    if not re.fullmatch(r"[A-Za-z0-9_-]+", name):
        raise ScreenerError(f"dataset name {name!r} may only contain letters, digits, '_' and '-'")
    return f"Dataset{dataset_id:03d}_{name}"


def _is_within(path: Path, other: Path) -> bool:
    path, other = path.resolve(), other.resolve()
    return path == other or other in path.parents


def prepare_output_dataset(output_root: Path, dataset_id: int, name: str, split: Literal["Tr", "Ts"],
                           source: Path, overwrite: bool) -> OutputDataset:
    """Creates the empty dataset folder ``output_root/DatasetXXX_name`` with its image (and label) folders.

    Raises ScreenerError when the id is taken by another dataset, when the folder exists without ``overwrite``,
    or when the output and the source folders overlap (the source is never written to).
    """
    folder = output_root / dataset_folder_name(dataset_id, name)
    if _is_within(folder, source) or _is_within(source, folder):
        raise ScreenerError(f"output folder {folder} and source folder {source} overlap; the source is never "
                            f"written to: choose another nnUNet_raw / -o")
    others = [p for p in output_root.glob(f"Dataset{dataset_id:03d}_*") if p.is_dir() and p.name != folder.name]
    if others:
        raise ScreenerError(f"dataset id {dataset_id} is already used by {others[0]}; nnU-Net needs unique ids")
    if folder.exists():
        if not overwrite:
            raise ScreenerError(f"{folder} already exists; pass --overwrite to replace it")
        shutil.rmtree(folder)
    (folder / f"images{split}").mkdir(parents=True)
    if split == "Ts":
        (folder / "labelsTs").mkdir()
    return OutputDataset(folder, split)


@contextmanager
def staged(dataset: OutputDataset, final_paths: Sequence[Path]) -> Iterator[list[Path]]:
    """Yields temporary paths for ``final_paths``; moves them into place only when the block succeeds, so a case
    is either complete or absent."""
    temps = [dataset.staging_dir / p.parent.name / p.name for p in final_paths]
    for t in temps:
        t.parent.mkdir(parents=True, exist_ok=True)
    try:
        yield temps
        for t, p in zip(temps, final_paths):
            os.replace(t, p)
    finally:
        for t in temps:
            t.unlink(missing_ok=True)


def write_dataset_files(dataset: OutputDataset, spec: DatasetSpec, report: ConversionReport, source: Path,
                        options: Mapping[str, Any]) -> None:
    """Writes ``dataset.json`` (through nnU-Net's own generator) and ``conversion.json`` (source, options,
    per-case info, skipped cases), and removes the staging folder."""
    from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json

    extra: dict[str, Any] = {}
    if spec.split == "Ts":
        labels = dict(PATHOLOGY_LABELS)
        extra["lesion_kinds"] = {"1": spec.lesion_kind}
        extra["numTest"] = len(report.converted)
    else:
        labels = {"background": 0}
    generate_dataset_json(str(dataset.root), dict(CT_CHANNELS), labels,
                          num_training_cases=len(report.converted) if spec.split == "Tr" else 0,
                          file_ending=FILE_ENDING, dataset_name=dataset.root.name, reference=spec.reference,
                          description=spec.description, license="see the source dataset's license",
                          converted_by=f"nnScreener dataset_conversion.{spec.module}", **extra)
    log = {"converter": f"dataset_conversion.{spec.module}", "source": str(source), "options": dict(options),
           "num_converted": len(report.converted), "num_skipped": len(report.skipped),
           "skipped": dict(sorted(report.skipped.items())), "converted": dict(sorted(report.converted.items()))}
    (dataset.root / "conversion.json").write_text(json.dumps(log, indent=1, default=str))
    shutil.rmtree(dataset.staging_dir, ignore_errors=True)


# ---------------------------------------------------------------------------------------------------------------
# Writing cases: images as int16 HU, masks as uint8, both or neither
# ---------------------------------------------------------------------------------------------------------------
def _write(image: sitk.Image, path: Path) -> None:
    sitk.WriteImage(image, str(path), useCompression=True)


def write_mask(mask_zyx: np.ndarray, reference: sitk.Image, path: Path) -> None:
    """Writes a binary mask (z, y, x) as uint8 0/1 with ``reference``'s geometry."""
    assert mask_zyx.shape == reference.GetSize()[::-1], (mask_zyx.shape, reference.GetSize())
    out = sitk.GetImageFromArray(mask_zyx.astype(np.uint8))
    out.CopyInformation(reference)
    _write(out, path)


def write_unlabeled_case(dataset: OutputDataset, case_id: str, image: sitk.Image, what: str) -> None:
    """Writes ``images{split}/{case}_0000.nii.gz`` as int16 HU."""
    final = dataset.image_path(case_id)
    with staged(dataset, [final]) as (tmp,):
        _write(to_int16_hu(image, what), tmp)


def write_labeled_case(dataset: OutputDataset, case_id: str, image: sitk.Image, mask_zyx: np.ndarray,
                       what: str) -> None:
    """Writes ``imagesTs/{case}_0000.nii.gz`` (int16 HU) and ``labelsTs/{case}.nii.gz`` (uint8, the image's
    geometry) together: both or neither."""
    finals = [dataset.image_path(case_id), dataset.label_path(case_id)]
    with staged(dataset, finals) as (tmp_image, tmp_label):
        _write(to_int16_hu(image, what), tmp_image)
        write_mask(mask_zyx, image, tmp_label)


def copy_or_convert_nifti(dataset: OutputDataset, case_id: str, source: Path) -> dict:
    """Writes a NIfTI CT as the case's image: a byte copy when it already is a 3D int16 ``.nii.gz`` (fast at the
    scale of thousands of scans), otherwise read, rounded to int16 and rewritten. Geometry is kept either way."""
    source = Path(source)
    if not source.is_file():
        raise ScreenerError(f"missing file {source}")
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(source))
    try:
        reader.ReadImageInformation()
    except RuntimeError as e:
        raise ScreenerError(f"unreadable image {source}: {short_message(e)}") from e
    copyable = (source.name.endswith(FILE_ENDING) and reader.GetPixelID() == sitk.sitkInt16
                and reader.GetDimension() == 3 and reader.GetNumberOfComponents() == 1)
    if copyable:
        with staged(dataset, [dataset.image_path(case_id)]) as (tmp,):
            shutil.copyfile(source, tmp)
    else:
        write_unlabeled_case(dataset, case_id, read_image(source), str(source))
    return {"image": str(source), "size_xyz": list(reader.GetSize())[:3], "copied": copyable}


def check_same_grid(image: sitk.Image, label: sitk.Image, image_path: Path, label_path: Path) -> None:
    """Raises ScreenerError unless the label has the image's size, spacing, origin and direction (up to
    rounding: 1e-3 relative spacing, 0.1 voxel origin, 1e-3 direction)."""
    if image.GetSize() != label.GetSize():
        raise ScreenerError(f"label {label_path} has size {label.GetSize()} but image {image_path} has "
                            f"{image.GetSize()} (x, y, z)")
    spacing = np.array(image.GetSpacing())
    same = (np.allclose(label.GetSpacing(), spacing, rtol=1e-3)
            and np.allclose(label.GetOrigin(), image.GetOrigin(), atol=0.1 * spacing.min())
            and np.allclose(label.GetDirection(), image.GetDirection(), atol=1e-3))
    if not same:
        raise ScreenerError(f"label {label_path} and image {image_path} differ in geometry (spacing "
                            f"{label.GetSpacing()} vs {image.GetSpacing()}, origin {label.GetOrigin()} vs "
                            f"{image.GetOrigin()})")
