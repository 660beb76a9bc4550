"""Metrics against slow references written from the definitions (per-threshold loops) and scikit-learn."""
from __future__ import annotations

import doctest
from typing import List, Sequence, Tuple

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from nnscreener.errors import ScreenerError
from nnscreener.evaluation import metrics
from nnscreener.evaluation.metrics import (MetricInputError, aupro, aupro_of_volumes, label_regions,
                                           mcclish_partial_auroc, partial_auroc, pro_curve, voxel_auroc)

# ----------------------------------------------------------------------------------------------- references


def _integrate_to(points: Sequence[Tuple[float, float]], max_fpr: float) -> float:
    """Trapezoid area of a polyline (FPR-sorted points) from x=0 to max_fpr, interpolating the crossing segment."""
    area = 0.0
    for (x0, y0), (x1, y1) in zip(points[:-1], points[1:]):
        if x0 >= max_fpr:
            break
        if x1 <= max_fpr:
            area += (x1 - x0) * (y0 + y1) / 2
        else:
            y_at = y0 + (y1 - y0) * (max_fpr - x0) / (x1 - x0)
            area += (max_fpr - x0) * (y0 + y_at) / 2
            break
    return area / max_fpr


def reference_partial_auroc(scores: np.ndarray, labels: np.ndarray, max_fpr: float) -> float:
    """ROC through every distinct threshold t (TPR/FPR = fraction of positives/negatives with score >= t)."""
    scores, labels = np.ravel(scores).astype(float), np.ravel(labels).astype(bool)
    pos, neg = scores[labels], scores[~labels]
    points = [(0.0, 0.0)]
    for t in sorted(set(scores.tolist()), reverse=True):
        points.append((float(np.sum(neg >= t)) / neg.size, float(np.sum(pos >= t)) / pos.size))
    return _integrate_to(points, max_fpr)


def reference_aupro(positive_scores: np.ndarray, region_ids: np.ndarray, negative_scores: np.ndarray,
                    max_fpr: float) -> float:
    """PRO(t) = mean over regions of the fraction of the region's voxels >= t, FPR(t) over negatives."""
    regions = {r: positive_scores[region_ids == r] for r in np.unique(region_ids).tolist()}
    points = [(0.0, 0.0)]
    all_scores = np.concatenate([positive_scores, negative_scores]).tolist()
    for t in sorted(set(all_scores), reverse=True):
        overlaps = [float(np.sum(s >= t)) / s.size for s in regions.values()]
        points.append((float(np.sum(negative_scores >= t)) / negative_scores.size, sum(overlaps) / len(overlaps)))
    return _integrate_to(points, max_fpr)


def reference_aupro_of_volumes(maps: Sequence[np.ndarray], masks: Sequence[np.ndarray], max_fpr: float) -> float:
    """Regions found by explicit flood fill over the 26 neighbours (no scipy), all non-lesion voxels negative."""
    positives, ids, negatives = [], [], []
    next_id = 0
    for score_map, mask in zip(maps, masks):
        seen = np.zeros(mask.shape, bool)
        offsets = [(a, b, c) for a in (-1, 0, 1) for b in (-1, 0, 1) for c in (-1, 0, 1) if (a, b, c) != (0, 0, 0)]
        for start in zip(*np.nonzero(mask)):
            if seen[start]:
                continue
            next_id += 1
            stack = [start]
            seen[start] = True
            while stack:
                p = stack.pop()
                positives.append(score_map[p])
                ids.append(next_id)
                for o in offsets:
                    q = tuple(int(p[i] + o[i]) for i in range(3))
                    if all(0 <= q[i] < mask.shape[i] for i in range(3)) and mask[q] and not seen[q]:
                        seen[q] = True
                        stack.append(q)
        negatives.append(score_map[~mask.astype(bool)])
    return reference_aupro(np.array(positives, float), np.array(ids), np.concatenate(negatives).astype(float),
                           max_fpr)


# ----------------------------------------------------------------------------------------------- fixtures


def blob_volume(rng: np.random.Generator, shape=(14, 15, 16), radii=(0.5, 1.0, 1.8, 2.6),
                signal: float = 1.0, decimals: int | None = None) -> Tuple[np.ndarray, np.ndarray]:
    """Noise map with spherical lesions of several sizes (radius 0.5 = one voxel) where scores are raised."""
    zz, yy, xx = np.indices(shape)
    mask = np.zeros(shape, bool)
    for radius in radii:
        centre = [rng.integers(3, s - 3) for s in shape]
        mask |= (zz - centre[0]) ** 2 + (yy - centre[1]) ** 2 + (xx - centre[2]) ** 2 <= radius ** 2
    scores = rng.normal(size=shape) + signal * mask * rng.uniform(0.2, 2.0)
    if decimals is not None:
        scores = np.round(scores, decimals)  # many ties
    return scores, mask


def pooled_samples(maps: List[np.ndarray], masks: List[np.ndarray]) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    positives, ids, negatives, offset = [], [], [], 0
    for score_map, mask in zip(maps, masks):
        regions, n = label_regions(mask)
        positives.append(score_map[mask])
        ids.append(regions[mask] + offset)
        negatives.append(score_map[~mask])
        offset += n
    return np.concatenate(positives), np.concatenate(ids), np.concatenate(negatives)


# ----------------------------------------------------------------------------------------------- tests


def test_docstring_examples_run():
    result = doctest.testmod(metrics)
    assert result.attempted >= 3 and result.failed == 0


@pytest.mark.parametrize("decimals", [None, 1])
def test_voxel_auroc_matches_sklearn(decimals):
    rng = np.random.default_rng(0)
    scores, mask = blob_volume(rng, decimals=decimals)
    assert voxel_auroc(scores, mask) == pytest.approx(roc_auc_score(mask.ravel(), scores.ravel()), abs=1e-12)
    assert voxel_auroc(scores, mask) > 0.6  # the fixture carries signal, so the test is not trivially at chance


@pytest.mark.parametrize("max_fpr", [0.3, 0.05, 0.5, 1.0])
@pytest.mark.parametrize("decimals", [None, 1])
def test_partial_auroc_matches_threshold_loop(max_fpr, decimals):
    rng = np.random.default_rng(1)
    scores, mask = blob_volume(rng, decimals=decimals)
    assert partial_auroc(scores, mask, max_fpr) == pytest.approx(
        reference_partial_auroc(scores, mask, max_fpr), abs=1e-12)


def test_partial_auroc_at_fpr_one_is_auroc_and_bound_on_a_curve_point_needs_no_interpolation():
    rng = np.random.default_rng(2)
    scores, mask = blob_volume(rng)
    assert partial_auroc(scores, mask, 1.0) == pytest.approx(voxel_auroc(scores, mask), abs=1e-12)
    # 4 negatives: FPR steps of 0.25 land exactly on 0.5
    s, y = np.array([0.9, 0.1, 0.8, 0.2, 0.7, 0.3]), np.array([1, 1, 0, 0, 0, 0])
    assert partial_auroc(s, y, 0.5) == pytest.approx(reference_partial_auroc(s, y, 0.5), abs=1e-12)
    # points (0, 0), (0, 0.5), (0.25, 0.5), (0.5, 0.5), ...: area up to 0.5 is 0.25, divided by 0.5
    assert partial_auroc(s, y, 0.5) == pytest.approx(0.5, abs=1e-12)


def test_mcclish_is_sklearns_standardized_value_with_chance_one_half():
    rng = np.random.default_rng(3)
    scores, mask = blob_volume(rng)
    assert mcclish_partial_auroc(scores, mask, 0.3) == pytest.approx(
        roc_auc_score(mask.ravel(), scores.ravel(), max_fpr=0.3), abs=1e-12)
    a = partial_auroc(scores, mask, 0.3) * 0.3  # raw area
    assert mcclish_partial_auroc(scores, mask, 0.3) == pytest.approx(
        0.5 * (1 + (a - 0.045) / (0.3 - 0.045)), abs=1e-9)
    assert mcclish_partial_auroc(np.zeros(10), np.arange(10) % 2, 0.3) == pytest.approx(0.5)


@pytest.mark.parametrize("max_fpr", [0.3, 0.02, 1.0])
@pytest.mark.parametrize("decimals", [None, 1])
def test_aupro_matches_threshold_loop_with_26_connected_regions(max_fpr, decimals):
    rng = np.random.default_rng(4)
    volumes = [blob_volume(rng, decimals=decimals) for _ in range(2)]
    maps, masks = [v[0] for v in volumes], [v[1] for v in volumes]
    expected = reference_aupro_of_volumes(maps, masks, max_fpr)
    assert aupro_of_volumes(maps, masks, max_fpr) == pytest.approx(expected, abs=1e-12)
    assert aupro(*pooled_samples(maps, masks), max_fpr=max_fpr) == pytest.approx(expected, abs=1e-12)


def test_aupro_with_sampled_negatives_matches_reference():
    rng = np.random.default_rng(5)
    scores, mask = blob_volume(rng, decimals=2)
    positives, ids, negatives = pooled_samples([scores], [mask])
    negatives = rng.choice(negatives, size=300, replace=False)
    assert aupro(positives, ids, negatives, 0.3) == pytest.approx(
        reference_aupro(positives, ids, negatives, 0.3), abs=1e-12)


def test_pro_curve_keeps_last_point_of_tied_runs_and_is_monotone():
    fpr, pro = pro_curve(np.array([2.0, 2.0, 1.0]), np.array([1, 1, 2]), np.array([2.0, 1.0, 1.0, 0.0]))
    # thresholds 2, 1, 0: one point each, after (0, 0)
    np.testing.assert_allclose(fpr, [0.0, 0.25, 0.75, 1.0])
    np.testing.assert_allclose(pro, [0.0, 0.5, 1.0, 1.0])


def test_one_voxel_regions_make_pro_equal_tpr():
    """With every region one voxel, each region weighs like one voxel, so AUPRO = AUROC@ on the same data."""
    rng = np.random.default_rng(6)
    positives, negatives = rng.normal(0.5, 1, 40), rng.normal(0, 1, 500)
    ids = np.arange(40)
    scores = np.concatenate([positives, negatives])
    labels = np.concatenate([np.ones(40), np.zeros(500)])
    assert aupro(positives, ids, negatives, 0.3) == pytest.approx(partial_auroc(scores, labels, 0.3), abs=1e-12)
    # single-voxel lesions in a volume are regions of their own
    mask = np.zeros((6, 6, 6), bool)
    mask[1, 1, 1] = mask[4, 4, 4] = True
    assert label_regions(mask)[1] == 2


def test_diagonally_touching_voxels_are_one_region():
    mask = np.zeros((5, 5, 5), bool)
    mask[1, 1, 1] = mask[2, 2, 2] = True  # corner contact only
    mask[4, 0, 4] = True
    regions, n = label_regions(mask)
    assert n == 2 and regions[1, 1, 1] == regions[2, 2, 2] != regions[4, 0, 4]
    scores = np.zeros((5, 5, 5))
    scores[1, 1, 1], scores[2, 2, 2], scores[4, 0, 4] = 5.0, -5.0, 5.0
    scores[0, 0, 0] = 1.0  # one negative above the lesion's low voxel
    # 2 regions: at FPR 0 the PRO is (1/2 + 1) / 2 = 0.75; 6-connectivity would give (1 + 0 + 1) / 3
    fpr, pro = pro_curve(scores[mask], regions[mask], scores[~mask])
    assert pro[1] == pytest.approx(0.75) and fpr[1] == 0.0
    assert aupro_of_volumes([scores], [mask], 0.3) == pytest.approx(
        reference_aupro_of_volumes([scores], [mask], 0.3), abs=1e-12)


def test_constant_maps_are_at_chance():
    rng = np.random.default_rng(7)
    _, mask = blob_volume(rng)
    constant = np.full(mask.shape, 3.0)
    assert voxel_auroc(constant, mask) == pytest.approx(0.5)
    assert partial_auroc(constant, mask, 0.3) == pytest.approx(0.15)
    assert aupro_of_volumes([constant], [mask], 0.3) == pytest.approx(0.15)


def test_volume_without_lesions_contributes_negatives_only():
    rng = np.random.default_rng(8)
    scores, mask = blob_volume(rng, decimals=1)
    empty_scores, empty_mask = np.round(rng.normal(0.3, 1, (8, 8, 8)), 1), np.zeros((8, 8, 8), bool)
    both = aupro_of_volumes([scores, empty_scores], [mask, empty_mask], 0.3)
    assert both == pytest.approx(reference_aupro_of_volumes([scores, empty_scores], [mask, empty_mask], 0.3),
                                 abs=1e-12)
    assert both != pytest.approx(aupro_of_volumes([scores], [mask], 0.3), abs=1e-6)
    with pytest.raises(MetricInputError, match="no positive"):
        aupro_of_volumes([empty_scores], [empty_mask])


def test_random_scores_give_chance_levels_on_large_samples():
    rng = np.random.default_rng(9)
    sizes = rng.integers(1, 400, size=300)  # regions of 1 to 400 voxels
    ids = np.repeat(np.arange(sizes.size), sizes)
    positives, negatives = rng.random(ids.size), rng.random(200_000)
    scores = np.concatenate([positives, negatives])
    labels = np.concatenate([np.ones(positives.size), np.zeros(negatives.size)])
    assert voxel_auroc(scores, labels) == pytest.approx(0.5, abs=0.01)
    assert partial_auroc(scores, labels, 0.3) == pytest.approx(0.15, abs=0.01)
    assert aupro(positives, ids, negatives, 0.3) == pytest.approx(0.15, abs=0.01)


@pytest.mark.parametrize("transform", [lambda s: 3.0 * s - 7.0, np.exp, np.arctan, lambda s: s ** 3])
def test_invariant_under_monotone_score_transforms(transform):
    rng = np.random.default_rng(10)
    scores, mask = blob_volume(rng)
    positives, ids, negatives = pooled_samples([scores], [mask])
    t_scores = transform(scores)
    t_positives, _, t_negatives = pooled_samples([t_scores], [mask])
    assert voxel_auroc(t_scores, mask) == pytest.approx(voxel_auroc(scores, mask), abs=1e-12)
    assert partial_auroc(t_scores, mask) == pytest.approx(partial_auroc(scores, mask), abs=1e-12)
    assert aupro(t_positives, ids, t_negatives) == pytest.approx(aupro(positives, ids, negatives), abs=1e-12)


def test_a_perfect_and_an_inverted_score():
    rng = np.random.default_rng(11)
    _, mask = blob_volume(rng)
    perfect = mask.astype(float)
    assert voxel_auroc(perfect, mask) == 1.0 and partial_auroc(perfect, mask) == 1.0
    assert aupro_of_volumes([perfect], [mask]) == 1.0
    assert voxel_auroc(-perfect, mask) == 0.0 and partial_auroc(-perfect, mask) == 0.0
    assert aupro_of_volumes([-perfect], [mask]) == 0.0


@pytest.mark.parametrize("max_fpr", [0.0, -0.1, 1.5, float("nan")])
def test_bad_max_fpr_is_rejected(max_fpr):
    scores, labels = np.array([0.1, 0.9]), np.array([0, 1])
    with pytest.raises(MetricInputError, match="max_fpr"):
        partial_auroc(scores, labels, max_fpr)
    with pytest.raises(MetricInputError, match="max_fpr"):
        mcclish_partial_auroc(scores, labels, max_fpr)
    with pytest.raises(MetricInputError, match="max_fpr"):
        aupro(np.array([0.9]), np.array([1]), np.array([0.1]), max_fpr)


def test_bad_inputs_are_rejected_as_value_and_screener_errors():
    with pytest.raises(ValueError, match="no positive"):
        voxel_auroc(np.array([0.1, 0.2]), np.array([0, 0]))
    with pytest.raises(ScreenerError, match="no negative"):
        partial_auroc(np.array([0.1, 0.2]), np.array([1, 1]))
    with pytest.raises(MetricInputError, match="shape"):
        voxel_auroc(np.zeros((2, 3)), np.zeros((3, 2)))
    with pytest.raises(MetricInputError, match="binary"):
        voxel_auroc(np.zeros(3), np.array([0, 1, 2]))
    with pytest.raises(MetricInputError, match="NaN"):
        voxel_auroc(np.array([0.1, np.nan]), np.array([0, 1]))
    with pytest.raises(MetricInputError, match="no positive"):
        aupro(np.zeros(0), np.zeros(0), np.array([0.1]))
    with pytest.raises(MetricInputError, match="no negative"):
        aupro(np.array([0.1]), np.array([1]), np.zeros(0))
    with pytest.raises(MetricInputError, match="length"):
        aupro(np.array([0.1, 0.2]), np.array([1]), np.array([0.0]))
    with pytest.raises(MetricInputError, match="differ"):
        aupro_of_volumes([np.zeros((2, 2, 2))], [np.zeros((2, 2, 3))])
    with pytest.raises(MetricInputError, match="z, y, x"):
        label_regions(np.zeros((3, 3)))
