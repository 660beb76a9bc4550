"""Voxel-level anomaly segmentation metrics: AUROC, AUROC up to an FPR, and MVTec's AUPRO (3D).

Pure functions on flat score arrays; the evaluation loop (``evaluate.py``) only gathers the samples.

Definitions (paper section 4.2; docs/method-notes.md section 4):

- ``voxel_auroc``: area under the full ROC curve.
- ``partial_auroc``: area under the ROC curve (scikit-learn's ``roc_curve``) from FPR 0 to ``max_fpr``,
  integrated by trapezoid with linear interpolation at ``max_fpr``, divided by ``max_fpr`` (MVTec's
  normalization, chance level ``max_fpr / 2``, i.e. 0.15 at 0.3). scikit-learn's ``roc_auc_score(max_fpr=...)``
  returns the McClish-standardized value instead (chance 0.5); it is offered only as ``mcclish_partial_auroc``.
- ``aupro``: MVTec AD's per-region-overlap curve (Bergmann et al., IJCV 2021). Regions are 26-connected
  components of the lesion mask (``label_regions``); each region weighs equally whatever its size. PRO(t) is the
  mean over all regions of the fraction of each region's voxels scoring ``>= t``; FPR(t) the fraction of negative
  voxels scoring ``>= t``. Of each run of tied scores only the last point is kept (the curve steps through
  ties at once); (0, 0) is prepended; the area up to ``max_fpr`` (linear interpolation at ``max_fpr``) is
  divided by ``max_fpr``. A random score gives about ``max_fpr / 2``.

All functions accept any real-valued scores where higher means more anomalous (NLL in nats, HU-density scores,
probabilities); they are invariant under strictly increasing transforms of the scores.
"""
from __future__ import annotations

from typing import Sequence, Tuple

import numpy as np
from scipy import ndimage
from sklearn.metrics import roc_auc_score, roc_curve

from nnscreener.errors import ScreenerError

CONNECTIVITY = 26
"""Voxel connectivity of lesion regions: faces, edges and corners (the 3D analogue of MVTec's 8-connectivity)."""

REGION_STRUCTURE = np.ones((3, 3, 3), dtype=bool)
"""``scipy.ndimage.label`` structuring element for 26-connectivity (scipy's default would be 6)."""


class MetricInputError(ScreenerError, ValueError):
    """Invalid input to a metric (bad ``max_fpr``, no positives or negatives, mismatched shapes, NaN scores).

    Both a ``ScreenerError`` (CLIs print it) and a ``ValueError`` (what a library user expects)."""


def label_regions(lesion_mask: np.ndarray) -> Tuple[np.ndarray, int]:
    """26-connected components of a lesion mask.

    Args:
        lesion_mask: (z, y, x) array, nonzero inside lesions.

    Returns:
        ``(regions, n)``: (z, y, x) int32 array with 0 outside lesions and 1..n inside, and the number of regions.
    """
    mask = np.asarray(lesion_mask)
    if mask.ndim != 3:
        raise MetricInputError(f"expected a (z, y, x) lesion mask, got shape {mask.shape}")
    regions, n = ndimage.label(mask != 0, structure=REGION_STRUCTURE, output=np.int32)
    return regions, int(n)


def check_max_fpr(max_fpr: float) -> float:
    """Returns ``max_fpr`` as a float; MetricInputError unless it is in (0, 1]."""
    max_fpr = float(max_fpr)
    if not 0.0 < max_fpr <= 1.0:  # also rejects NaN
        raise MetricInputError(f"max_fpr must be in (0, 1], got {max_fpr}")
    return max_fpr


def _as_finite_scores(scores: np.ndarray, what: str) -> np.ndarray:
    scores = np.asarray(scores, dtype=np.float64).ravel()
    if not np.isfinite(scores).all():
        raise MetricInputError(f"{what} contain {int((~np.isfinite(scores)).sum())} NaN or infinite values")
    return scores


def _scores_and_binary_labels(scores: np.ndarray, labels: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    scores_arr, labels_arr = np.asarray(scores), np.asarray(labels)
    if scores_arr.shape != labels_arr.shape:
        raise MetricInputError(f"scores and labels differ in shape: {scores_arr.shape} vs {labels_arr.shape}")
    labels_flat = labels_arr.ravel()
    if labels_flat.dtype != bool:
        if not np.isin(labels_flat, (0, 1)).all():
            raise MetricInputError("labels must be binary (0/1 or bool); got other values "
                                   f"{np.unique(labels_flat[~np.isin(labels_flat, (0, 1))])[:5]}")
        labels_flat = labels_flat.astype(bool)
    n_pos = int(labels_flat.sum())
    if n_pos == 0:
        raise MetricInputError("no positive (lesion) voxels: the ROC curve is undefined")
    if n_pos == labels_flat.size:
        raise MetricInputError("no negative (normal) voxels: the ROC curve is undefined")
    return _as_finite_scores(scores_arr, "scores"), labels_flat


def area_up_to(x: np.ndarray, y: np.ndarray, x_max: float) -> float:
    """Trapezoid area under a curve from ``x[0]`` to ``x_max``, closing the last segment by linear interpolation.

    Args:
        x: (n,) non-decreasing abscissae (FPR) starting at or below ``x_max``; repeated values are vertical steps.
        y: (n,) ordinates (TPR or PRO), the curve's value along ``x``.
        x_max: upper integration bound, ``<= x[-1]`` or the curve is integrated to its end only.

    Returns:
        The raw area (not normalized).
    """
    assert x.ndim == 1 and x.shape == y.shape and x[0] <= x_max, "curve must start at or below x_max"
    n_inside = int(np.searchsorted(x, x_max, side="right"))  # points with x <= x_max
    xs, ys = x[:n_inside], y[:n_inside]
    area = float(np.sum((xs[1:] - xs[:-1]) * (ys[1:] + ys[:-1]) * 0.5))
    if n_inside < x.size and xs[-1] < x_max:
        x0, y0, x1, y1 = xs[-1], ys[-1], x[n_inside], y[n_inside]
        y_at_max = y0 + (y1 - y0) * (x_max - x0) / (x1 - x0)
        area += float(0.5 * (y0 + y_at_max) * (x_max - x0))
    return area


def roc_points(scores: np.ndarray, labels: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """The ROC curve through every distinct threshold (scikit-learn's ``roc_curve``, no points dropped).

    Args:
        scores: any shape, higher = more anomalous.
        labels: same shape, binary (1 / True = lesion).

    Returns:
        ``(fpr, tpr)``, each (n_thresholds + 1,), starting at (0, 0) and ending at (1, 1).
    """
    scores_flat, labels_flat = _scores_and_binary_labels(scores, labels)
    fpr, tpr, _ = roc_curve(labels_flat, scores_flat, drop_intermediate=False)
    return fpr, tpr


def voxel_auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the full voxel-level ROC curve (0.5 = chance).

    Args:
        scores: any shape, higher = more anomalous.
        labels: same shape, binary (1 / True = lesion).

    >>> voxel_auroc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1]))
    0.75
    """
    fpr, tpr = roc_points(scores, labels)
    return area_up_to(fpr, tpr, 1.0)


def partial_auroc(scores: np.ndarray, labels: np.ndarray, max_fpr: float = 0.3) -> float:
    """Area under the ROC curve up to ``max_fpr``, divided by ``max_fpr`` (chance ``max_fpr / 2``; 1 = perfect).

    Args:
        scores: any shape, higher = more anomalous.
        labels: same shape, binary (1 / True = lesion).
        max_fpr: upper FPR bound in (0, 1]; 1 gives the full AUROC.

    >>> round(partial_auroc(np.zeros(4), np.array([0, 0, 1, 1]), max_fpr=0.3), 12)  # constant map: chance
    0.15
    """
    max_fpr = check_max_fpr(max_fpr)
    fpr, tpr = roc_points(scores, labels)
    return area_up_to(fpr, tpr, max_fpr) / max_fpr


def mcclish_partial_auroc(scores: np.ndarray, labels: np.ndarray, max_fpr: float = 0.3) -> float:
    """McClish-standardized partial AUROC, scikit-learn's ``roc_auc_score(max_fpr=...)`` (chance 0.5).

    Not the paper's metric (that is ``partial_auroc``); offered for comparison with tools that report it.
    """
    max_fpr = check_max_fpr(max_fpr)
    scores_flat, labels_flat = _scores_and_binary_labels(scores, labels)
    if max_fpr == 1.0:
        return float(roc_auc_score(labels_flat, scores_flat))
    return float(roc_auc_score(labels_flat, scores_flat, max_fpr=max_fpr))


def pro_curve(positive_scores: np.ndarray, region_ids: np.ndarray,
              negative_scores: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """MVTec's per-region-overlap curve from lesion voxels and (sampled) normal voxels.

    Args:
        positive_scores: (n_pos,) scores of ALL lesion voxels of the dataset (region sizes are counted here).
        region_ids: (n_pos,) integer region of each lesion voxel, unique over the dataset (e.g. offset per case);
            any integer values, each distinct value is one region.
        negative_scores: (n_neg,) scores of the normal voxels the FPR is estimated on.

    Returns:
        ``(fpr, pro)``, each (n_distinct_scores + 1,), from (0, 0) to (1, 1), one point per distinct score
        (the last point of each run of tied scores), thresholds descending.
    """
    pos = _as_finite_scores(positive_scores, "positive scores")
    neg = _as_finite_scores(negative_scores, "negative scores")
    ids = np.asarray(region_ids).ravel()
    if ids.shape != pos.shape:
        raise MetricInputError(f"positive scores and region ids differ in length: {pos.size} vs {ids.size}")
    if pos.size == 0:
        raise MetricInputError("no positive (lesion) voxels: the PRO curve is undefined")
    if neg.size == 0:
        raise MetricInputError("no negative (normal) voxels: the PRO curve is undefined")
    _, region_index, region_sizes = np.unique(ids, return_inverse=True, return_counts=True)
    n_regions = region_sizes.size
    # each lesion voxel carries its region's share 1/|R_k|; each normal voxel a false positive of weight 1
    overlap_weight = np.concatenate([1.0 / region_sizes[region_index.ravel()], np.zeros(neg.size)])
    fp_weight = np.concatenate([np.zeros(pos.size), np.ones(neg.size)])
    scores = np.concatenate([pos, neg])
    order = np.argsort(-scores, kind="stable")
    scores, overlap_weight, fp_weight = scores[order], overlap_weight[order], fp_weight[order]
    last_of_tie_run = np.append(scores[1:] != scores[:-1], True)
    pro = np.minimum(np.cumsum(overlap_weight)[last_of_tie_run] / n_regions, 1.0)
    fpr = np.minimum(np.cumsum(fp_weight)[last_of_tie_run] / neg.size, 1.0)
    return np.concatenate([[0.0], fpr]), np.concatenate([[0.0], pro])


def aupro(positive_scores: np.ndarray, region_ids: np.ndarray, negative_scores: np.ndarray,
          max_fpr: float = 0.3) -> float:
    """Area under MVTec's PRO curve up to ``max_fpr``, divided by ``max_fpr`` (chance ``max_fpr / 2``).

    Args:
        positive_scores: (n_pos,) scores of all lesion voxels.
        region_ids: (n_pos,) region of each lesion voxel (26-connected components, unique over the dataset).
        negative_scores: (n_neg,) scores of normal voxels (all, or a random sample per scan).
        max_fpr: upper FPR bound in (0, 1].

    >>> aupro(np.array([0.9, 0.8, 0.1]), np.array([1, 1, 2]), np.array([0.5, 0.2, 0.0, 0.05]), max_fpr=1.0)
    0.75
    """
    max_fpr = check_max_fpr(max_fpr)
    fpr, pro = pro_curve(positive_scores, region_ids, negative_scores)
    return area_up_to(fpr, pro, max_fpr) / max_fpr


def aupro_of_volumes(score_maps: Sequence[np.ndarray], lesion_masks: Sequence[np.ndarray],
                     max_fpr: float = 0.3) -> float:
    """Exact AUPRO on whole volumes: every non-lesion voxel is a negative (no sampling).

    Regions are labelled per volume with 26-connectivity. For small volumes and tests; ``evaluate.py`` samples
    negatives per scan instead.

    Args:
        score_maps: list of (z, y, x) score arrays.
        lesion_masks: list of (z, y, x) arrays of the same shapes, nonzero inside lesions.
        max_fpr: upper FPR bound in (0, 1].
    """
    if len(score_maps) != len(lesion_masks):
        raise MetricInputError(f"{len(score_maps)} score maps but {len(lesion_masks)} lesion masks")
    positives, ids, negatives = [], [], []
    offset = 0
    for i, (scores, mask) in enumerate(zip(score_maps, lesion_masks)):
        scores = np.asarray(scores)
        if scores.shape != np.shape(mask):
            raise MetricInputError(f"volume {i}: score map {scores.shape} and lesion mask {np.shape(mask)} differ")
        regions, n = label_regions(mask)
        lesion = regions > 0
        positives.append(scores[lesion])
        ids.append(regions[lesion].astype(np.int64) + offset)
        negatives.append(scores[~lesion])
        offset += n
    return aupro(np.concatenate(positives), np.concatenate(ids), np.concatenate(negatives), max_fpr)
