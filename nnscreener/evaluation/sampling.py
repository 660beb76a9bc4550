"""Per-scan collection of the voxels the metrics are computed on (paper section 4.2, docs/method-notes.md 4.4).

For each scan: ALL lesion voxels (score, label value, 26-connected region id) and a fixed, seeded number K of
normal voxels drawn without replacement from the non-lesion voxels of the body. The TPR and the per-region
overlaps are then exact, the FPR a Monte-Carlo estimate pooled over scans.

The body is ``body_mask_from_hu`` of the CT image when the image is given; otherwise the voxels where the
anomaly map is above its minimum (the predictor writes the map's minimum outside the body, docs/design.md C11). A
map without any voxel above its minimum (a constant map) counts as all body.

Everything is computed in the geometry of the stored label and map files (the original image geometry for
``nnScreener_predict`` outputs); labels and maps must share size, spacing, origin and direction exactly.
"""
from __future__ import annotations

import dataclasses
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Optional, Tuple, Union

import numpy as np
import SimpleITK as sitk

from nnscreener.errors import ScreenerError
from nnscreener.evaluation.local_contrast import lesion_local_aurocs, ring_box
from nnscreener.evaluation.metrics import label_regions
from nnscreener.io.images import IMAGE_ENDINGS, read_image
from nnscreener.planning.body_mask import body_mask_from_hu

VOLUME_ENDINGS = IMAGE_ENDINGS
"""File endings recognized in label, map and image folders (the package's readable image endings)."""

DEFAULT_N_NEGATIVES = 10_000
"""Normal voxels drawn per scan (K). FPR resolution per scan is 1/K; pooled over n scans, 1/(n K)."""

PROTOCOLS = ("all", "balanced")
"""Which voxels of a scan enter the metrics (docs/method-notes.md 4.4):

- ``all``: every lesion voxel and K seeded normal body voxels (exact TPR and region overlaps; large lesions weigh
  by their size in the pooled AUROC);
- ``balanced``: the authors' validation protocol: up to :data:`BALANCED_VOXELS_PER_SCAN` lesion voxels and as many
  normal body voxels per scan, each drawn uniformly without replacement (seeded), so every scan with a lesion
  weighs about the same in the pooled metrics. Region overlaps (AUPRO) are then estimated from the drawn voxels.
"""

BALANCED_VOXELS_PER_SCAN = 1000

_SPACING_RTOL = 1e-4  # relative tolerance on spacing
_ORIGIN_ATOL_MM = 1e-3
_DIRECTION_ATOL = 1e-4


@dataclass(frozen=True)
class CaseSample:
    """The voxels of one scan that enter the metrics.

    Attributes:
        case: case identifier.
        positive_scores: (n_pos,) float32 map values of all lesion voxels (label > 0).
        positive_labels: (n_pos,) int64 label value (lesion kind) of each lesion voxel.
        region_ids: (n_pos,) int64 26-connected component of the lesion mask (label > 0), 1..n_regions.
        kind_region_ids: (n_pos,) int64 26-connected component of the voxels sharing the voxel's label value,
            unique within the case (used for per-kind AUPRO; equals ``region_ids`` up to numbering when the
            labels are binary or lesions of different kinds do not touch).
        n_regions: number of regions of the lesion mask.
        negative_scores: (n_neg,) float32 map values of the sampled normal body voxels.
        negative_indices: (n_neg,) int64 flat (C-order, z, y, x) indices of the sampled normal voxels, ascending.
        n_negative_candidates: number of non-lesion body voxels the negatives were drawn from.
        local_aurocs: (n_lesions,) float64 local AUROC of each lesion of the scan against the normal ring around
            it (:mod:`nnscreener.evaluation.local_contrast`; NaN: empty ring); entry i is region i + 1 of the full
            sample's ``region_ids``. Empty when the spacing was not given. Computed from all voxels of lesion and
            ring, so the ``balanced`` subsample keeps it unchanged (its renumbered regions do not index it).
        local_kinds: (n_lesions,) int64 label value (most frequent) of each of those lesions.
    """

    case: str
    positive_scores: np.ndarray
    positive_labels: np.ndarray
    region_ids: np.ndarray
    kind_region_ids: np.ndarray
    n_regions: int
    negative_scores: np.ndarray
    negative_indices: np.ndarray
    n_negative_candidates: int
    local_aurocs: np.ndarray = field(default_factory=lambda: np.zeros(0))
    local_kinds: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))


def case_rng(seed: int, case: str) -> np.random.Generator:
    """A generator that depends only on the seed and the case name (not on case order or on the other cases)."""
    return np.random.default_rng([int(seed), zlib.crc32(case.encode("utf-8"))])


def body_from_map(score_map: np.ndarray) -> np.ndarray:
    """(z, y, x) bool: voxels above the map's minimum; all True for a constant map."""
    body = score_map > score_map.min()
    return body if body.any() else np.ones(score_map.shape, dtype=bool)


def sample_flat_indices(candidates: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Up to ``n`` distinct flat indices of True voxels, uniformly without replacement, ascending.

    Memory stays O(n + one slice): ranks are drawn among the candidates, then located slice by slice.

    Args:
        candidates: (z, y, x) bool array.
        n: number of voxels wanted; all candidates are returned when there are fewer.
        rng: random generator.

    Returns:
        (min(n, candidates.sum()),) int64 flat C-order indices.
    """
    assert candidates.ndim == 3 and candidates.dtype == bool
    per_slice = candidates.reshape(candidates.shape[0], -1).sum(axis=1, dtype=np.int64)  # (z,)
    total = int(per_slice.sum())
    if total <= n:
        return np.flatnonzero(candidates).astype(np.int64)
    ranks = np.sort(rng.choice(total, size=n, replace=False))
    slice_starts = np.concatenate([[0], np.cumsum(per_slice)])  # rank of each slice's first candidate
    slice_of_rank = np.searchsorted(slice_starts, ranks, side="right") - 1
    slice_size = candidates.shape[1] * candidates.shape[2]
    indices = np.empty(n, dtype=np.int64)
    for z in np.unique(slice_of_rank):
        in_slice = slice_of_rank == z
        local = np.flatnonzero(candidates[z])[ranks[in_slice] - slice_starts[z]]
        indices[in_slice] = local + z * slice_size
    return indices


def _lesion_bbox(lesion: np.ndarray) -> Tuple[slice, ...]:
    bbox = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        present = np.flatnonzero(lesion.any(axis=other))
        bbox.append(slice(int(present[0]), int(present[-1]) + 1))
    return tuple(bbox)


def _local_contrast(score_map: np.ndarray, lesion_labels: np.ndarray, body_mask: np.ndarray, bbox: Tuple[slice, ...],
                    regions: np.ndarray, n_regions: int,
                    spacing_zyx: Tuple[float, float, float]) -> Tuple[np.ndarray, np.ndarray]:
    """Local AUROC and kind of each lesion (entry i: region i + 1 of ``regions``, the lesions' regions in their
    bounding box ``bbox``), computed in that box grown by the ring's width."""
    box = ring_box(bbox, lesion_labels.shape, spacing_zyx)
    grown = np.zeros(tuple(b.stop - b.start for b in box), regions.dtype)  # the regions, placed in the grown box
    inside = tuple(slice(inner.start - outer.start, inner.stop - outer.start) for inner, outer in zip(bbox, box))
    grown[inside] = regions
    return lesion_local_aurocs(score_map[box], grown, n_regions, lesion_labels[box], body_mask[box], spacing_zyx)


def sample_case(case: str, score_map: np.ndarray, lesion_labels: np.ndarray, body_mask: np.ndarray,
                n_negatives: int = DEFAULT_N_NEGATIVES, seed: int = 0,
                spacing_zyx: Optional[Tuple[float, float, float]] = None) -> CaseSample:
    """Collects all lesion voxels and K seeded normal body voxels of one scan.

    Args:
        case: case identifier (also seeds the draw with ``seed``).
        score_map: (z, y, x) anomaly scores, higher = more anomalous.
        lesion_labels: (z, y, x) non-negative integer labels, 0 = no lesion, other values = lesion kinds.
        body_mask: (z, y, x) bool; negatives are drawn from ``body_mask & (lesion_labels == 0)``.
        n_negatives: K, normal voxels drawn (all candidates when the body has fewer).
        seed: base seed.
        spacing_zyx: voxel size in mm; when given, each lesion's local AUROC is computed too.
    """
    if not (score_map.shape == lesion_labels.shape == body_mask.shape) or score_map.ndim != 3:
        raise ScreenerError(f"case {case}: map {score_map.shape}, labels {lesion_labels.shape} and body mask "
                            f"{body_mask.shape} must be equal (z, y, x) shapes")
    if n_negatives < 1:
        raise ScreenerError(f"the number of negatives per case must be >= 1, got {n_negatives}")
    lesion = lesion_labels > 0
    positive_scores = np.zeros(0, np.float32)
    positive_labels = region_ids = kind_region_ids = np.zeros(0, np.int64)
    n_regions = 0
    local_aurocs, local_kinds = np.zeros(0), np.zeros(0, np.int64)
    if lesion.any():
        bbox = _lesion_bbox(lesion)
        labels_crop, lesion_crop = lesion_labels[bbox], lesion[bbox]
        regions, n_regions = label_regions(lesion_crop)
        kind_regions = np.zeros(labels_crop.shape, np.int64)  # (z, y, x) of the crop
        n_kind_regions = 0
        for value in np.unique(labels_crop[lesion_crop]):
            value_regions, n_value = label_regions(labels_crop == value)
            inside = value_regions > 0
            kind_regions[inside] = value_regions[inside] + n_kind_regions
            n_kind_regions += n_value
        positive_scores = score_map[bbox][lesion_crop].astype(np.float32)
        positive_labels = labels_crop[lesion_crop].astype(np.int64)
        region_ids = regions[lesion_crop].astype(np.int64)
        kind_region_ids = kind_regions[lesion_crop]
        if spacing_zyx is not None:
            local_aurocs, local_kinds = _local_contrast(score_map, lesion_labels, body_mask, bbox, regions, n_regions,
                                                        spacing_zyx)
    candidates = body_mask & ~lesion
    negative_indices = sample_flat_indices(candidates, n_negatives, case_rng(seed, case))
    return CaseSample(
        case=case,
        positive_scores=positive_scores,
        positive_labels=positive_labels,
        region_ids=region_ids,
        kind_region_ids=kind_region_ids,
        n_regions=n_regions,
        negative_scores=score_map.ravel()[negative_indices].astype(np.float32),
        negative_indices=negative_indices,
        n_negative_candidates=int(candidates.sum()),
        local_aurocs=local_aurocs,
        local_kinds=local_kinds,
    )


def balanced_subsample(sample: CaseSample, n: int = BALANCED_VOXELS_PER_SCAN, seed: int = 0) -> CaseSample:
    """The ``balanced`` protocol's voxels of one scan: up to ``n`` of its lesion voxels and up to ``n`` of its
    sampled normal voxels, uniformly without replacement, seeded by ``seed`` and the case name.

    Args:
        sample: the scan's voxels under the ``all`` protocol (drawn with at least ``n`` negatives).
        n: voxels kept per class.
        seed: base seed.
    """
    rng = case_rng(seed + 1, sample.case)  # independent of the draw of the negatives
    keep_pos = np.sort(rng.choice(sample.positive_scores.size, size=min(n, sample.positive_scores.size),
                                  replace=False))
    keep_neg = np.sort(rng.choice(sample.negative_scores.size, size=min(n, sample.negative_scores.size),
                                  replace=False))
    kept_regions = np.unique(sample.region_ids[keep_pos])
    return dataclasses.replace(
        sample,
        positive_scores=sample.positive_scores[keep_pos],
        positive_labels=sample.positive_labels[keep_pos],
        region_ids=np.searchsorted(kept_regions, sample.region_ids[keep_pos]).astype(np.int64) + 1,
        kind_region_ids=sample.kind_region_ids[keep_pos],
        n_regions=int(kept_regions.size),
        negative_scores=sample.negative_scores[keep_neg],
        negative_indices=sample.negative_indices[keep_neg],
    )


def strip_ending(name: str) -> Optional[str]:
    """``"case_001.nii.gz"`` -> ``"case_001"`` (endings matched case-insensitively); None for other endings."""
    for ending in VOLUME_ENDINGS:
        if name.lower().endswith(ending):
            return name[: -len(ending)]
    return None


def volume_files_by_case(folder: Union[str, Path], channel_suffix: str = "") -> Dict[str, Path]:
    """Volume files of a folder by case: ``{case}{channel_suffix}{ending}`` for the known endings.

    With ``channel_suffix="_0000"`` (nnU-Net image folders), files named ``{case}_0000.nii.gz`` give ``case``;
    files without the suffix are taken whole as case names (so label names like ``lung_0001`` stay whole).
    Hidden files (e.g. an interrupted write's ``.partial_*``) are ignored.

    Raises:
        ScreenerError: the folder does not exist.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ScreenerError(f"folder {folder} does not exist")
    files: Dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        stem = strip_ending(path.name)
        if stem is None or path.name.startswith(".") or not path.is_file():
            continue
        case = stem[: -len(channel_suffix)] if channel_suffix and stem.endswith(channel_suffix) else stem
        if case in files:
            raise ScreenerError(f"case {case} has two files in {folder}: {files[case].name} and {path.name}")
        files[case] = path
    return files


def read_volume(path: Union[str, Path]) -> sitk.Image:
    """Reads a 3D single-component image with :func:`nnscreener.io.images.read_image`; ScreenerError naming the
    file when it is missing, truncated, unreadable or not 3D."""
    return read_image(Path(path))


def check_same_geometry(reference: sitk.Image, other: sitk.Image, case: str, reference_kind: str,
                        reference_file: Path, other_kind: str, other_file: Path) -> None:
    """Raises ScreenerError naming the case and both files when size, spacing, origin or direction differ.

    The message names ``other`` (the file at fault, e.g. the anomaly map) and lists, per property, its value first
    and then the reference's (the label's), each labelled with its kind. Sizes are (x, y, z) (SimpleITK's order),
    spacing and origin in mm.
    """
    checks = (("size (x, y, z)", reference.GetSize(), other.GetSize(), lambda a, b: a == b),
              ("spacing (x, y, z, mm)", reference.GetSpacing(), other.GetSpacing(),
               lambda a, b: np.allclose(a, b, rtol=_SPACING_RTOL, atol=0)),
              ("origin (x, y, z, mm)", reference.GetOrigin(), other.GetOrigin(),
               lambda a, b: np.allclose(a, b, rtol=0, atol=_ORIGIN_ATOL_MM)),
              ("direction", reference.GetDirection(), other.GetDirection(),
               lambda a, b: np.allclose(a, b, rtol=0, atol=_DIRECTION_ATOL)))
    problems = []
    for what, ref_value, other_value, same in checks:
        if not same(ref_value, other_value):
            problems.append(f"{what}: {other_kind} {tuple(other_value)}, {reference_kind} {tuple(ref_value)}")
        if problems and what.startswith("size"):
            break  # other properties are not comparable across sizes
    if problems:
        raise ScreenerError(f"case {case}: the {other_kind} {other_file} does not match the geometry of the "
                            f"{reference_kind} {reference_file}; " + "; ".join(problems))


def _label_array(label_image: sitk.Image, path: Path) -> np.ndarray:
    labels = sitk.GetArrayViewFromImage(label_image)  # (z, y, x), read-only view
    if not np.issubdtype(labels.dtype, np.integer):
        if not np.isfinite(labels).all() or (labels != np.round(labels)).any():
            raise ScreenerError(f"{path}: labels must be integers (0 = no lesion, >0 = lesion kind)")
        labels = labels.astype(np.int64)
    if labels.min() < 0:
        raise ScreenerError(f"{path}: negative label value {labels.min()}; labels must be >= 0")
    return labels


def load_case_sample(case: str, label_file: Path, map_file: Path, image_file: Optional[Path] = None,
                     n_negatives: int = DEFAULT_N_NEGATIVES, seed: int = 0) -> CaseSample:
    """Reads one case's label, anomaly map and (optionally) CT image, checks their geometry, and samples it.

    Args:
        case: case identifier.
        label_file: lesion labels (0 background, >0 lesion kinds).
        map_file: float anomaly map written by ``nnScreener_predict`` or a floor (docs/design.md C11).
        image_file: the CT image in HU; when given the body is ``body_mask_from_hu`` of it, otherwise the voxels
            where the map is above its minimum.
        n_negatives: K normal voxels drawn per case.
        seed: base seed (combined with the case name).
    """
    label_image, map_image = read_volume(label_file), read_volume(map_file)
    check_same_geometry(label_image, map_image, case, "label", label_file, "anomaly map", map_file)
    image = read_volume(image_file) if image_file is not None else None
    if image is not None:
        check_same_geometry(label_image, image, case, "label", label_file, "image", image_file)
    labels = _label_array(label_image, label_file)
    score_map = sitk.GetArrayViewFromImage(map_image)  # (z, y, x), valid while map_image lives
    if not np.isfinite(score_map).all():
        raise ScreenerError(f"case {case}: the anomaly map {map_file} contains NaN or infinite values")
    if image is not None:
        body = body_mask_from_hu(sitk.GetArrayViewFromImage(image))
        del image
    else:
        body = body_from_map(score_map)
    spacing_zyx = tuple(float(s) for s in reversed(label_image.GetSpacing()))
    return sample_case(case, score_map, labels, body, n_negatives=n_negatives, seed=seed, spacing_zyx=spacing_zyx)
