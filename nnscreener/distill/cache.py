"""The cache of distillation targets in ``$nnUNet_preprocessed`` (docs/design.md C15) and the step that fills it.

:func:`build_target_cache` computes the targets of every training case that has none yet (the teacher runs once
per case; a killed run keeps its finished cases), then the normalisation statistics. What a target is:
:mod:`nnscreener.distill.targets`.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Sequence

import numpy as np
from tqdm import tqdm

from nnscreener.checkpoints import FINAL_CHECKPOINT
from nnscreener.errors import ScreenerError
from nnscreener.plans import ScreenerPlans

TARGETS_PREFIX = "nnscreener_distill_targets"
STATS_FILE = "stats.json"
TEACHER_FILE = "teacher.json"
PARTIAL_PREFIX = ".partial_"
STATS_VOXELS_PER_CASE = 200_000  # body voxels sampled per case (seeded) for the median / IQR
MIN_IQR = 1e-6  # a channel with a smaller interquartile range (constant) is scaled by 1 instead


def _write_json(obj: Dict, path: Path) -> None:
    partial = path.with_name(PARTIAL_PREFIX + path.name)
    partial.write_text(json.dumps(obj, indent=2))
    os.replace(partial, path)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class TargetCache:
    """One run's cached targets: ``folder/{case}.npy`` (C, z, y, x) float32 in teacher units, plus the JSON files."""

    folder: Path

    @classmethod
    def for_plans(cls, plans: ScreenerPlans, variant: str) -> "TargetCache":
        """``$nnUNet_preprocessed/<dataset>/nnscreener_distill_targets__<variant>__<student plans>``."""
        return cls(plans.preprocessed_dir / f"{TARGETS_PREFIX}__{variant}__{plans.plans_name}")

    def path(self, case: str) -> Path:
        return self.folder / f"{case}.npy"

    def missing(self, cases: Sequence[str]) -> List[str]:
        return [c for c in cases if not self.path(c).is_file()]

    def write(self, case: str, values: np.ndarray) -> None:
        """Writes one case's targets atomically."""
        partial = self.folder / f"{PARTIAL_PREFIX}{case}.npy"
        np.save(partial, np.ascontiguousarray(values, dtype=np.float32))
        os.replace(partial, self.path(case))

    def load(self, case: str) -> np.ndarray:
        """(C, z, y, x) float32, memory-mapped (patches read only their region)."""
        return np.load(self.path(case), mmap_mode="r")

    def start(self, teacher: Dict) -> None:
        """Creates the folder; removes leftovers of killed runs and, when ``teacher`` (checkpoint hash, targets)
        differs from the recorded one, every cached target (they belong to another teacher)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        for leftover in self.folder.glob(f"{PARTIAL_PREFIX}*"):
            leftover.unlink()
        recorded = self.folder / TEACHER_FILE
        if recorded.is_file() and json.loads(recorded.read_text()) == teacher:
            return
        for stale in [*self.folder.glob("*.npy"), self.folder / STATS_FILE]:
            stale.unlink(missing_ok=True)
        _write_json(teacher, recorded)

    def stats(self) -> Dict[str, List[float]]:
        """``{"median": [...], "iqr": [...]}`` per channel (teacher units)."""
        path = self.folder / STATS_FILE
        if not path.is_file():
            raise ScreenerError(f"missing {path}: the distillation targets were not completed; rerun nnScreener_train "
                                f"DATASET distill")
        return json.loads(path.read_text())


def robust_stats(cache: TargetCache, cases: Sequence[str],
                 body_of: Callable[[str], np.ndarray]) -> Dict[str, List[float]]:
    """Per channel median and interquartile range of the targets over (a seeded sample of) body voxels.

    Args:
        body_of: case -> (z, y, x) bool body mask on the student grid (all voxels when a case has no body).
    """
    rng = np.random.default_rng(0)
    samples = []
    for case in cases:
        values = cache.load(case)
        body = body_of(case)
        body = body if body.any() else np.ones(values.shape[1:], dtype=bool)
        idx = np.flatnonzero(body)
        idx = np.sort(rng.choice(idx, size=min(idx.size, STATS_VOXELS_PER_CASE), replace=False))
        samples.append(values.reshape(values.shape[0], -1)[:, idx])
    pooled = np.concatenate(samples, axis=1).astype(np.float64)
    q25, median, q75 = np.percentile(pooled, [25, 50, 75], axis=1)
    iqr = np.where(q75 - q25 > MIN_IQR, q75 - q25, 1.0)
    return {"median": median.tolist(), "iqr": iqr.tolist(), "cases": len(cases)}


def teacher_identity(teacher_folder: Path, targets: str) -> Dict[str, str]:
    """What the cached targets depend on: the teacher checkpoint's content and the targets kind."""
    checkpoint = teacher_folder / FINAL_CHECKPOINT
    if not checkpoint.is_file():
        raise ScreenerError(f"no trained teacher {checkpoint}; train the Screener model first (nnScreener_train "
                            f"DATASET descriptor / condition / density with the teacher's plans)")
    return {"teacher": teacher_folder.name, "checkpoint_sha256": file_sha256(checkpoint), "targets": targets}


def _load(dataset, case: str) -> tuple:
    data, seg, _, properties = dataset.load_case(case)
    return data, seg, properties


def build_target_cache(plans: ScreenerPlans, variant: str, device: str = "cpu") -> TargetCache:
    """Computes the missing targets of every student-preprocessed case, then (if missing) the statistics.

    Args:
        plans: the student plans with the run's config (:func:`nnscreener.distill.student.load_student_plans`);
            their cases must be preprocessed (:func:`nnscreener.distill.preprocessing.preprocess_training_cases`).
        variant: the run's variant (:func:`nnscreener.stages.distill_variant`), part of the cache's name.
        device: where the teacher runs.

    Raises:
        ScreenerError: no trained teacher, or the teacher's preprocessed cases are missing.
    """
    from nnunetv2.training.dataloading.nnunet_dataset import nnUNetDatasetBlosc2

    from nnscreener.data.loaders import open_preprocessed_dataset
    from nnscreener.distill.targets import case_targets, teacher_folder
    from nnscreener.model import load_screener_model
    from nnscreener.plans import load_plans

    cfg = plans.config
    folder = teacher_folder(cfg, plans.dataset_name)
    cache = TargetCache.for_plans(plans, variant)
    cache.start(teacher_identity(folder, cfg.distill.targets))
    cases = sorted(nnUNetDatasetBlosc2.get_identifiers(str(plans.data_dir)))
    student_data = open_preprocessed_dataset(plans.data_dir, cases)
    todo = cache.missing(cases)
    if todo:
        model, _ = load_screener_model(folder, device)
        teacher = load_plans(plans.dataset_name, cfg.distill.teacher_plans)
        teacher_data = open_preprocessed_dataset(teacher.data_dir, todo)
        for case in tqdm(todo, desc=f"teacher targets ({folder.name})"):
            cache.write(case, case_targets(model, teacher, _load(teacher_data, case), plans,
                                           _load(student_data, case)))
    if not (cache.folder / STATS_FILE).is_file():
        body_of = lambda c: np.asarray(student_data.load_case(c)[1][0]) == 1  # noqa: E731
        _write_json(robust_stats(cache, cases, body_of), cache.folder / STATS_FILE)
    return cache
