"""Built-in synthetic CT dataset: deterministic phantoms with exact lesion masks, in nnU-Net's raw format.

Each case is a synthetic patient (body outline with skin, fat and muscle; lungs with branching vessel trees and
airways; heart, mediastinum, aorta and caval veins; spine with vertebrae and discs; ribs and sternum; liver with
vessels, gallbladder, spleen, stomach, kidneys with cortex and medulla; bowel with gas; the couch) imaged with a
per-patient field of view (chest, abdomen or both), voxel spacing, contrast phase, partial-volume blur and
correlated noise. Lesions are of kinds that intensity alone does not give away (see
:mod:`nnscreener.synthetic.lesions`).

Sizes: ``full`` is a clinical grid (512 x 512 in plane at 0.6-1.0 mm, 1-5 mm slices); ``cpu`` images the same
anatomy on a coarse grid (~110-150 voxels in plane at 2.4-4 mm, 45-100 slices at 2.5-6 mm) for demos and tests.

Python::

    from nnscreener.synthetic.generator import generate_case, generate_dataset
    image, label, spacing_zyx, info = generate_case(seed=0, size="cpu", with_lesions=True)
    folder = generate_dataset(Path(os.environ["nnUNet_raw"]), dataset_id=500)
    labelled = generate_labelled_dataset(Path(os.environ["nnUNet_raw"]), dataset_id=501)  # labelsTr, for fine-tuning

Command line: ``nnScreener_generate_synthetic -d 500`` (see ``--help``).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from nnscreener.synthetic import writer
from nnscreener.synthetic.lesions import (
    ABDOMEN_KINDS,
    LESION_KINDS,
    LUNG_KINDS,
    Lesion,
    place_lesion,
    sample_lesions,
)
from nnscreener.synthetic.noise import blur_halo
from nnscreener.synthetic.patient import (
    FIELDS_OF_VIEW,
    SIZES,
    Acquisition,
    Patient,
    sample_acquisition,
    sample_patient,
)
from nnscreener.synthetic.render import Phantom, lesion_voxels_in_anatomy, make_textures, render
from nnscreener.synthetic.tissues import tissue_names
from nnscreener.synthetic.tubes import tube_families
from nnscreener.errors import ScreenerError

Seed = Union[int, np.random.SeedSequence]
DATASET_NAME = "SyntheticCT"
_STREAMS = {"patient": 0, "tubes": 1, "lesions": 2, "texture": 3, "noise": 4}


def _stream(seed: np.random.SeedSequence, name: str) -> np.random.SeedSequence:
    """An independent child seed per concern, so e.g. changing the lesions leaves the anatomy unchanged."""
    return np.random.SeedSequence(seed.entropy, spawn_key=tuple(seed.spawn_key) + (_STREAMS[name],))


def fields_of_view_for(lesion_kinds: Sequence[int]) -> List[str]:
    """Fields of view that show every organ the given lesion kinds need."""
    kinds = set(lesion_kinds)
    unknown = kinds - set(LESION_KINDS)
    if unknown:
        raise ScreenerError(f"unknown lesion kinds {sorted(unknown)}; valid: {LESION_KINDS}")
    excluded = ({"abdomen"} if kinds & LUNG_KINDS else set()) | ({"chest"} if kinds & ABDOMEN_KINDS else set())
    return [f for f in FIELDS_OF_VIEW if f not in excluded]


def _visible_lesions(patient: Patient, acq: Acquisition, required: Sequence[int],
                     rng: np.random.Generator) -> List[Lesion]:
    """The case's lesions, each with at least one voxel in the grid: invisible required ones are redrawn (up to
    10 times), invisible optional ones dropped."""

    def visible(lesion: Optional[Lesion]) -> bool:
        return lesion is not None and lesion_voxels_in_anatomy(lesion, patient, acq.geometry) > 0

    kept = []
    for i, lesion in enumerate(sample_lesions(patient, acq, required, rng)):  # required kinds come first
        redraws = 0
        while i < len(required) and not visible(lesion) and redraws < 10:
            lesion = place_lesion(required[i], patient, acq, rng)
            redraws += 1
        if visible(lesion):
            kept.append(lesion)
        elif i < len(required):
            raise RuntimeError(f"could not place a visible {LESION_KINDS[required[i]]}")  # internal invariant
    return kept


def generate_case(
    seed: Seed,
    size: str = "cpu",
    with_lesions: bool = True,
    lesion_kinds: Sequence[int] = (),
    return_tissue_map: bool = False,
) -> Tuple[np.ndarray, np.ndarray, Tuple[float, float, float], Dict]:
    """Generates one synthetic CT case.

    Args:
        seed: an int or a ``numpy.random.SeedSequence``; the same seed gives the same case, bit for bit.
        size: "cpu" (coarse grid) or "full" (clinical grid).
        with_lesions: whether the case carries lesions (1-3, plus the required kinds).
        lesion_kinds: label values (keys of ``LESION_KINDS``) that must be present; the field of view is chosen
            to show their organs. Ignored when ``with_lesions`` is False.
        return_tissue_map: also return the (z, y, x) uint8 tissue ids as ``info["tissue_map"]`` (names in
            ``info["tissue_names"]``).

    Returns:
        ``(image, label, spacing_zyx, info)``: image int16 (z, y, x) in HU; label uint8 (z, y, x) with the lesion
        kind per voxel (0 = no lesion); spacing in mm (z, y, x); info: field_of_view, phase, origin_xyz (mm),
        shape_zyx, noise and blur settings, lesions (kind, centre, radii, HU) and lesion_voxels per kind name.
    """
    if size not in SIZES:
        raise ScreenerError(f"unknown size {size!r}; choose one of {list(SIZES)}")
    ss = seed if isinstance(seed, np.random.SeedSequence) else np.random.SeedSequence(int(seed))
    required = list(lesion_kinds) if with_lesions else []
    fovs = fields_of_view_for(required)
    rng = np.random.default_rng(_stream(ss, "patient"))
    patient, acq = sample_acquisition(sample_patient(rng), size, fovs, rng)
    tubes = tube_families(patient, np.random.default_rng(_stream(ss, "tubes")))
    lesions = []
    if with_lesions:
        lesions = _visible_lesions(patient, acq, required, np.random.default_rng(_stream(ss, "lesions")))
    fine, coarse = make_textures(acq.geometry, blur_halo(acq), np.random.default_rng(_stream(ss, "texture")))
    phantom = Phantom(patient, acq, tubes, lesions, fine, coarse, _stream(ss, "noise"))
    image, label, tissue = render(phantom, with_tissue=return_tissue_map)
    g = acq.geometry
    counts = np.bincount(label.reshape(-1), minlength=len(LESION_KINDS) + 1)
    info: Dict = {
        "field_of_view": acq.field_of_view,
        "phase": acq.phase,
        "shape_zyx": list(g.shape_zyx),
        "spacing_zyx": [float(s) for s in g.spacing_zyx],
        "origin_xyz": [float(o) for o in g.origin_xyz],
        "noise_sd_hu": round(acq.noise_sd_hu, 2),
        "noise_corr_mm": round(acq.noise_corr_mm, 2),
        "psf_mm": round(acq.psf_mm, 2),
        "slice_fwhm_mm": round(acq.slice_fwhm_mm, 2),
        "lesions": [lesion.describe() for lesion in lesions],
        "lesion_voxels": {LESION_KINDS[k]: int(counts[k]) for k in LESION_KINDS if counts[k]},
    }
    if return_tissue_map:
        info["tissue_map"] = tissue
        info["tissue_names"] = tissue_names()
    return image, label, tuple(float(s) for s in g.spacing_zyx), info


def _default_processes(size: str) -> int:
    cpus = os.cpu_count() or 1
    return max(1, min(cpus, 8 if size == "cpu" else 4))


def _make_case(job: Dict) -> Dict:
    """Worker: generates one case and writes its image (and label for test cases). Returns its summary."""
    ss = np.random.SeedSequence(job["seed"], spawn_key=tuple(job["spawn_key"]))
    image, label, spacing, info = generate_case(ss, job["size"], job["with_lesions"], job["lesion_kinds"])
    folder = Path(job["folder"])
    case = job["case"]
    suffix = "Tr" if job["split"] in ("train", "labelled") else "Ts"
    writer.write_nifti(folder / f"images{suffix}" / f"{case}_0000{writer.FILE_ENDING}", image, spacing,
                       info["origin_xyz"])
    if job["split"] != "train":  # test and labelled cases carry at least one lesion and its mask
        assert label.any(), f"{job['split']} case {case} without lesion voxels"
        if job.get("binary_labels"):
            label = (label > 0).astype(label.dtype)
        writer.write_nifti(folder / f"labels{suffix}" / f"{case}{writer.FILE_ENDING}", label, spacing,
                           info["origin_xyz"])
    return {"case": case, "split": job["split"], **info}


def _init_worker() -> None:
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(1)
    except ImportError:  # optional: only limits BLAS threads inside workers
        pass


def _validate(n_train: int, n_test: int, size: str, lesion_share: float, num_processes: Optional[int]) -> None:
    if n_train < 1:
        raise ScreenerError(f"n_train must be at least 1, got {n_train}")
    if n_test < 0:
        raise ScreenerError(f"n_test must be at least 0, got {n_test}")
    if size not in SIZES:
        raise ScreenerError(f"unknown size {size!r}; choose one of {list(SIZES)}")
    if not 0.0 <= lesion_share <= 1.0:
        raise ScreenerError(f"lesion_share must be in [0, 1], got {lesion_share}")
    if num_processes is not None and num_processes < 1:
        raise ScreenerError(f"num_processes must be at least 1, got {num_processes}")


def _jobs(folder: Path, n_train: int, n_test: int, size: str, seed: int, lesion_share: float) -> List[Dict]:
    """One job per case. Training cases with lesions are an exact random share; test case i always carries
    lesion kind (i mod 6) + 1, so every kind appears once there are at least 6 test cases."""
    chosen = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(2,))).permutation(n_train)
    lesioned = set(chosen[: int(round(lesion_share * n_train))].tolist())
    kinds = sorted(LESION_KINDS)
    jobs = []
    for i in range(n_train):
        jobs.append({"case": f"train_{i:04d}", "split": "train", "seed": seed, "spawn_key": (0, i), "size": size,
                     "with_lesions": i in lesioned, "lesion_kinds": (), "folder": str(folder)})
    for i in range(n_test):
        jobs.append({"case": f"test_{i:04d}", "split": "test", "seed": seed, "spawn_key": (1, i), "size": size,
                     "with_lesions": True, "lesion_kinds": (kinds[i % len(kinds)],), "folder": str(folder)})
    return jobs


def _labelled_jobs(folder: Path, n_labelled: int, n_test: int, size: str, seed: int) -> List[Dict]:
    """One job per case of a labelled dataset: labelled case i (``imagesTr``/``labelsTr``) and test case i
    (``imagesTs``/``labelsTs``) carry lesion kind (i mod 6) + 1; labels are binary (1 = lesion)."""
    kinds = sorted(LESION_KINDS)
    common = {"seed": seed, "size": size, "with_lesions": True, "folder": str(folder), "binary_labels": True}
    return ([{"case": f"case_{i:04d}", "split": "labelled", "spawn_key": (3, i),
              "lesion_kinds": (kinds[i % len(kinds)],), **common} for i in range(n_labelled)]
            + [{"case": f"test_{i:04d}", "split": "test", "spawn_key": (4, i),
                "lesion_kinds": (kinds[i % len(kinds)],), **common} for i in range(n_test)])


def _run_jobs(jobs: List[Dict], processes: int, desc: str, progress: bool) -> List[Dict]:
    """Runs ``_make_case`` on every job, in ``processes`` spawned workers when more than one, and returns the case
    summaries in job order (``imap`` keeps the order, so the result does not depend on ``processes``)."""
    from tqdm import tqdm

    bar = tqdm(total=len(jobs), desc=desc, unit="case", disable=not progress)
    summaries = []
    if processes == 1:
        for job in jobs:
            summaries.append(_make_case(job))
            bar.update()
    else:
        import multiprocessing

        with multiprocessing.get_context("spawn").Pool(processes, initializer=_init_worker) as pool:
            for summary in pool.imap(_make_case, jobs):
                summaries.append(summary)
                bar.update()
    bar.close()
    return summaries


def generate_dataset(
    out_root: Path,
    dataset_id: int = 500,
    name: str = DATASET_NAME,
    n_train: int = 60,
    n_test: int = 20,
    size: str = "cpu",
    seed: int = 0,
    lesion_share: float = 0.3,
    num_processes: Optional[int] = None,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Writes the synthetic dataset as ``out_root/DatasetXXX_Name`` in nnU-Net's raw format.

    Contents: ``imagesTr/train_XXXX_0000.nii.gz`` (unlabeled; ``round(lesion_share * n_train)`` of them carry
    lesions, as real training sets are uncurated), ``imagesTs/test_XXXX_0000.nii.gz`` with
    ``labelsTs/test_XXXX.nii.gz`` (every test case has at least one lesion), ``dataset.json`` (labels = lesion
    kinds, plus "lesion_kinds") and ``synthetic_cases.json`` (per-case field of view, spacing, lesions).

    Args:
        out_root: the nnUNet_raw folder.
        dataset_id: nnU-Net dataset id (1..999).
        name: dataset name after the id.
        n_train, n_test: number of training and test cases.
        size: "cpu" or "full" (see module docstring).
        seed: master seed; case files do not depend on ``num_processes``.
        lesion_share: share of training cases with lesions.
        num_processes: worker processes (default: up to 8 for cpu, 4 for full, capped by the CPU count).
        overwrite: replace an existing dataset of the same folder name.
        progress: show a progress bar.

    Returns:
        The dataset folder.

    Raises:
        ScreenerError: bad arguments, an existing dataset without ``overwrite``, another dataset with the same id.
    """
    _validate(n_train, n_test, size, lesion_share, num_processes)
    return _write_dataset(out_root, writer.dataset_folder_name(dataset_id, name), overwrite,
                          lambda staging: _jobs(staging, n_train, n_test, size, seed, lesion_share),
                          _dataset_json(name, n_train, n_test, size, seed, lesion_share), size, num_processes,
                          progress)


def _write_dataset(out_root: Path, folder_name: str, overwrite: bool, make_jobs: Callable[[Path], List[Dict]],
                   dataset_json: Dict, size: str, num_processes: Optional[int], progress: bool) -> Path:
    """Generates the jobs' cases into a staging folder (labelsTr/ only if a job writes there), writes dataset.json
    and synthetic_cases.json, and publishes it as ``out_root/folder_name``."""
    final, staging = writer.prepare_staging(Path(out_root), folder_name, overwrite)
    jobs = make_jobs(staging)
    if any(job["split"] == "labelled" for job in jobs):
        (staging / "labelsTr").mkdir()
    processes = min(num_processes or _default_processes(size), len(jobs))
    summaries = _run_jobs(jobs, processes, f"generating {folder_name}", progress)
    writer.write_json(staging / "dataset.json", dataset_json)
    writer.write_json(staging / "synthetic_cases.json", {"cases": summaries})
    writer.publish(staging, final)
    return final


def generate_labelled_dataset(
    out_root: Path,
    dataset_id: int,
    name: str = "SyntheticCTLabelled",
    n_labelled: int = 12,
    n_test: int = 6,
    size: str = "cpu",
    seed: int = 1,
    num_processes: Optional[int] = None,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Writes a *labelled* synthetic dataset (nnU-Net's supervised raw format) as ``out_root/DatasetXXX_Name``: the
    few labelled scans a clinic would annotate, for fine-tuning benchmarks (benchmarks/few_label.py).

    Contents: ``imagesTr/case_XXXX_0000.nii.gz`` with ``labelsTr/case_XXXX.nii.gz``, held-out
    ``imagesTs/test_XXXX_0000.nii.gz`` with ``labelsTs/test_XXXX.nii.gz``; every case carries lesions, case i
    of each split lesion kind (i mod 6) + 1; labels are binary (0 background, 1 lesion; the kinds are in
    ``synthetic_cases.json``). Cases are drawn from other random streams than :func:`generate_dataset`'s, so
    with the same seed they are still other patients.

    Args:
        out_root: the nnUNet_raw folder.
        dataset_id: nnU-Net dataset id (1..999).
        name: dataset name after the id.
        n_labelled, n_test: number of labelled (training) and held-out test cases.
        size, seed, num_processes, overwrite, progress: as :func:`generate_dataset`.

    Returns:
        The dataset folder.

    Raises:
        ScreenerError: bad arguments, an existing dataset without ``overwrite``, another dataset with the same id.
    """
    _validate(n_labelled, n_test, size, 1.0, num_processes)
    return _write_dataset(out_root, writer.dataset_folder_name(dataset_id, name), overwrite,
                          lambda staging: _labelled_jobs(staging, n_labelled, n_test, size, seed),
                          _labelled_dataset_json(name, n_labelled, n_test, size, seed), size, num_processes,
                          progress)


def _labelled_dataset_json(name: str, n_labelled: int, n_test: int, size: str, seed: int) -> Dict:
    return {
        "name": name,
        "description": "Synthetic CT phantoms with lesions (nnScreener), every case labelled: 1 = lesion.",
        "reference": "nnScreener nnscreener/synthetic/generator.py",
        "licence": "CC0",
        "channel_names": {"0": "CT"},
        "labels": {"background": 0, "lesion": 1},
        "numTraining": n_labelled,
        "numTest": n_test,
        "file_ending": writer.FILE_ENDING,
        "synthetic": {"seed": seed, "size": size, "labelled": True},
    }


def _dataset_json(name: str, n_train: int, n_test: int, size: str, seed: int, lesion_share: float) -> Dict:
    return {
        "name": name,
        "description": "Synthetic CT phantoms with lesions (nnScreener). imagesTr is unlabeled; labelsTs holds "
        "lesion masks whose label value is the lesion kind.",
        "reference": "nnScreener nnscreener/synthetic/generator.py",
        "licence": "CC0",
        "channel_names": {"0": "CT"},
        "labels": {"background": 0, **{kind: label for label, kind in LESION_KINDS.items()}},
        "lesion_kinds": {str(label): kind for label, kind in LESION_KINDS.items()},
        "numTraining": n_train,
        "numTest": n_test,
        "file_ending": writer.FILE_ENDING,
        "synthetic": {"seed": seed, "size": size, "lesion_share": lesion_share},
    }
