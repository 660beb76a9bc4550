"""Unlabeled CT datasets on nnU-Net's planning machinery, without writing into ``nnUNet_raw``.

nnU-Net's fingerprint extractor, experiment planner and preprocessor read a label file per training case.
nnScreener's training sets have no labels, so for every training image it writes a **body mask** (label 1 =
body, see :func:`nnscreener.planning.body_mask.body_mask_from_hu`) under
``$nnUNet_preprocessed/DatasetXXX/nnscreener_body_masks/`` and a *derived* ``dataset.json`` in
``$nnUNet_preprocessed/DatasetXXX/`` whose ``"dataset"`` dict lists each case's image (in the raw folder) and
its body mask explicitly (the form nnU-Net's ``get_filenames_of_train_images_and_targets`` supports), with
``labels = {"background": 0, "body": 1}``. The raw dataset's own labels are kept as ``"raw_labels"``.
The classes below point nnU-Net's extractor and planner at that derived ``dataset.json``; the preprocessor reads
it anyway. As a side effect the fingerprint's "foreground" intensity statistics are body statistics.

Reading every image to write its mask is also where the dataset is validated: a missing, unreadable, non-3D,
NaN-holding or body-less image raises ScreenerError naming the file before any planning output is written.
"""
from __future__ import annotations

import copy
import json
import multiprocessing
import os
from pathlib import Path
from typing import Any, Callable, Dict, List, Sequence, Tuple

import numpy as np
from nnunetv2.experiment_planning.dataset_fingerprint.fingerprint_extractor import DatasetFingerprintExtractor
from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_dataset_json
from nnunetv2.paths import nnUNet_preprocessed
from nnunetv2.utilities.utils import get_filenames_of_train_images_and_targets
from tqdm import tqdm

from nnscreener.errors import ScreenerError
from nnscreener.planning.body_mask import body_mask_from_hu
from nnscreener.planning.preprocessor import check_ct_channels, read_ct_image
from nnscreener.workers import exit_with_parent

BODY_MASK_FOLDER = "nnscreener_body_masks"
BODY_LABELS = {"background": 0, "body": 1}
REQUIRED_DATASET_KEYS = ("channel_names", "file_ending", "numTraining")


def load_raw_dataset_json(raw_dataset_dir: Path) -> Dict[str, Any]:
    """Reads and checks ``dataset.json`` of a raw dataset (keys, a single CT channel).

    Raises:
        ScreenerError naming the file when it is missing, not JSON, lacks a required key or is not CT.
    """
    path = Path(raw_dataset_dir) / "dataset.json"
    if not path.is_file():
        raise ScreenerError(f"missing {path}; every nnU-Net raw dataset needs a dataset.json")
    try:
        dataset_json = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ScreenerError(f"cannot parse {path}: {e}") from None
    missing = [k for k in REQUIRED_DATASET_KEYS if k not in dataset_json]
    if "channel_names" in missing and "modality" in dataset_json:
        missing.remove("channel_names")
    if missing:
        raise ScreenerError(f"{path} lacks the key(s) {missing}; required: {list(REQUIRED_DATASET_KEYS)}")
    check_ct_channels(dataset_json, str(path))
    return dataset_json


def list_training_cases(raw_dataset_dir: Path, dataset_json: Dict[str, Any]) -> Dict[str, List[str]]:
    """Training cases of a raw dataset: ``{case: [image path]}`` from ``imagesTr/`` or dataset.json's
    ``"dataset"`` dict (nnU-Net's own listing), checked against ``numTraining``.

    Raises:
        ScreenerError: no imagesTr, no images, a listed image missing, or a count that differs from numTraining.
    """
    raw_dataset_dir = Path(raw_dataset_dir)
    if "dataset" not in dataset_json:
        images_dir = raw_dataset_dir / "imagesTr"
        if not images_dir.is_dir():
            raise ScreenerError(f"missing folder {images_dir} (the training images)")
    dataset_json = copy.deepcopy(dataset_json)
    for entry in dataset_json.get("dataset", {}).values():
        entry.setdefault("label", "")  # unlabeled "dataset" entries; nnU-Net's listing expects the key
    listing = get_filenames_of_train_images_and_targets(str(raw_dataset_dir), dataset_json)
    cases = {str(k): [str(p) for p in v["images"]] for k, v in sorted(listing.items())}
    if not cases:
        raise ScreenerError(f"no training images ending in {dataset_json['file_ending']!r} found for "
                            f"{raw_dataset_dir} (expected imagesTr/<case>_0000{dataset_json['file_ending']})")
    for case, images in cases.items():
        if len(images) != 1:
            raise ScreenerError(f"case {case!r} has {len(images)} image files {images}; expected one CT channel "
                                f"(<case>_0000{dataset_json['file_ending']})")
        if not os.path.isfile(images[0]):
            raise ScreenerError(f"missing image file {images[0]} (case {case!r})")
    if int(dataset_json["numTraining"]) != len(cases):
        raise ScreenerError(
            f"{raw_dataset_dir / 'dataset.json'} says numTraining={dataset_json['numTraining']} but "
            f"{len(cases)} training case(s) were found (e.g. {list(cases)[:5]}); fix numTraining or the images")
    return cases


def body_mask_path(mask_dir: Path, case: str, file_ending: str) -> Path:
    return Path(mask_dir) / f"{case}{file_ending}"


def _mask_is_current(mask: Path, image: str) -> bool:
    return mask.is_file() and mask.stat().st_mtime >= os.stat(image).st_mtime


def write_body_mask(image_file: str, mask_file: str, reader_writer_class: type, threshold_hu: float,
                    allow_non_ct: bool = False) -> str:
    """Reads and checks one CT, writes its body mask (uint8, the image's geometry) atomically.

    ``allow_non_ct`` skips the check that the intensities look like CT in HU.

    Raises:
        ScreenerError naming the image (see :func:`nnscreener.planning.preprocessor.read_ct_image`), or when no
        body is found.
    """
    rw = reader_writer_class()
    data, properties = read_ct_image([image_file], rw, allow_non_ct)
    mask = body_mask_from_hu(data[0], threshold_hu)
    del data
    if not mask.any():
        raise ScreenerError(f"{image_file}: no body found (no voxels >= {threshold_hu:g} HU inside the scan). "
                            f"Is this a CT in Hounsfield units?")
    mask_file = Path(mask_file)
    partial = mask_file.with_name(f".partial_{os.getpid()}_{mask_file.name}")
    try:
        rw.write_seg(mask.astype(np.uint8), str(partial), properties)
        os.replace(partial, mask_file)
    finally:
        if partial.exists():
            partial.unlink()
    return str(mask_file)


def _call(job: Tuple[Callable, tuple]):
    fn, args = job
    return fn(*args)


def run_with_progress(fn: Callable, arg_tuples: Sequence[tuple], num_processes: int, desc: str) -> List[Any]:
    """Runs ``fn(*args)`` for each tuple, in spawn workers (ending with this process) when ``num_processes > 1``,
    with a progress bar. A worker's exception (e.g. ScreenerError) is re-raised here and stops the run."""
    results = []
    with tqdm(total=len(arg_tuples), desc=desc) as bar:
        if num_processes <= 1 or len(arg_tuples) <= 1:
            for args in arg_tuples:
                results.append(fn(*args))
                bar.update()
        else:
            with multiprocessing.get_context("spawn").Pool(min(num_processes, len(arg_tuples)),
                                                           initializer=exit_with_parent,
                                                           initargs=(os.getpid(),)) as pool:
                for r in pool.imap_unordered(_call, [(fn, a) for a in arg_tuples]):
                    results.append(r)
                    bar.update()
    return results


def write_body_masks(cases: Dict[str, List[str]], mask_dir: Path, dataset_json: Dict[str, Any],
                     threshold_hu: float = -500.0, num_processes: int = 1,
                     reuse: bool = True, allow_non_ct: bool = False) -> Tuple[Dict[str, str], int]:
    """Writes ``mask_dir/<case><file_ending>`` for every case (validating every image it reads).

    Args:
        cases: ``{case: [image path]}`` as from :func:`list_training_cases`.
        reuse: keep masks newer than their image from an earlier run.
        allow_non_ct: accept images whose intensities do not look like CT in HU.

    Returns:
        ``{case: mask path}`` and the number of masks written now.
    """
    mask_dir = Path(mask_dir)
    mask_dir.mkdir(parents=True, exist_ok=True)
    ending = dataset_json["file_ending"]
    # chosen by file ending (no trial read), so a broken first image is reported by name below
    rw_class = determine_reader_writer_from_dataset_json(dataset_json, None, verbose=False)
    masks = {case: str(body_mask_path(mask_dir, case, ending)) for case in cases}
    todo = [(images[0], masks[case], rw_class, threshold_hu, allow_non_ct) for case, images in cases.items()
            if not (reuse and _mask_is_current(Path(masks[case]), images[0]))]
    if todo:
        run_with_progress(write_body_mask, todo, num_processes, "Body masks (validating images)")
    return masks, len(todo)


def _image_entry(image: str) -> str:
    """Image path for the derived dataset.json: ``$nnUNet_raw/...`` for images under nnUNet_raw (nnU-Net expands
    environment variables, so the entry survives moving the raw folder), absolute otherwise."""
    image = os.path.abspath(image)
    root = os.path.abspath(os.environ.get("nnUNet_raw", "") or "/nonexistent")
    return "$nnUNet_raw/" + os.path.relpath(image, root) if image.startswith(root + os.sep) else image


def derived_dataset_json(raw_dataset_json: Dict[str, Any], cases: Dict[str, List[str]],
                         masks: Dict[str, str]) -> Dict[str, Any]:
    """The dataset.json nnU-Net's planning sees: the raw one with body-mask labels and an explicit case list."""
    derived = {k: copy.deepcopy(v) for k, v in raw_dataset_json.items() if k != "dataset"}
    if "labels" in raw_dataset_json:
        derived["raw_labels"] = copy.deepcopy(raw_dataset_json["labels"])
    derived["labels"] = dict(BODY_LABELS)
    derived["numTraining"] = len(cases)
    derived["dataset"] = {
        case: {"images": [_image_entry(p) for p in images], "label": os.path.abspath(masks[case])}
        for case, images in cases.items()
    }
    derived["nnscreener_note"] = ("written by nnScreener_plan_and_preprocess: labels are body masks under "
                                  f"{BODY_MASK_FOLDER}/, raw_labels are the raw dataset's labels")
    return derived


def write_json_atomically(obj: Dict[str, Any], path: Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".partial_{os.getpid()}_{path.name}")
    partial.write_text(json.dumps(obj, indent=2))
    os.replace(partial, path)


def load_derived_dataset(dataset_name: str) -> Tuple[Dict[str, Any], Dict[str, Dict[str, Any]]]:
    """The derived dataset.json in ``$nnUNet_preprocessed/<dataset_name>/`` and nnU-Net's case listing from it.

    Raises:
        ScreenerError when it is missing or was not written by nnScreener.
    """
    path = Path(str(nnUNet_preprocessed)) / dataset_name / "dataset.json"
    if not path.is_file():
        raise ScreenerError(f"missing {path}; run nnScreener_plan_and_preprocess")
    dataset_json = json.loads(path.read_text())
    if "dataset" not in dataset_json or dataset_json.get("labels") != BODY_LABELS:
        raise ScreenerError(f"{path} was not written by nnScreener (no body-mask case list); "
                            f"rerun nnScreener_plan_and_preprocess")
    from nnunetv2.paths import nnUNet_raw

    dataset = get_filenames_of_train_images_and_targets(str(Path(str(nnUNet_raw)) / dataset_name),
                                                        copy.deepcopy(dataset_json))
    return dataset_json, dataset


class ScreenerFingerprintExtractor(DatasetFingerprintExtractor):
    """nnU-Net's fingerprint extractor reading the derived dataset.json (images + body masks)."""

    def __init__(self, dataset_name_or_id, num_processes: int = 8, verbose: bool = False):
        super().__init__(dataset_name_or_id, num_processes, verbose)
        self.dataset_json, self.dataset = load_derived_dataset(self.dataset_name)

