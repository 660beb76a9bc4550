"""Local contrast of lesions: the ring against a brute-force distance, the local AUROC against scikit-learn, and a
map whose level differs between regions (high pooled AUROC, chance local AUROC)."""
from __future__ import annotations

import itertools

import numpy as np
from sklearn.metrics import roc_auc_score

from nnscreener.evaluation.local_contrast import lesion_local_aurocs, ring_box, surrounding_ring
from nnscreener.evaluation.metrics import label_regions, voxel_auroc
from nnscreener.evaluation.sampling import sample_case

SPACING_ZYX = (4.0, 1.5, 2.0)


def _brute_force_ring(region: np.ndarray, allowed: np.ndarray, ring_mm) -> np.ndarray:
    """Every voxel's distance (mm) to every lesion voxel, the slow obvious way."""
    lesion_mm = np.argwhere(region) * np.asarray(SPACING_ZYX)
    ring = np.zeros(region.shape, bool)
    for index in itertools.product(*map(range, region.shape)):
        d = np.sqrt(((lesion_mm - np.asarray(index) * np.asarray(SPACING_ZYX)) ** 2).sum(axis=1)).min()
        ring[index] = ring_mm[0] < d <= ring_mm[1] and allowed[index]
    return ring


def test_ring_equals_brute_force_distances_with_anisotropic_spacing():
    rng = np.random.default_rng(0)
    region = np.zeros((7, 16, 14), bool)
    region[3, 7:9, 6:8] = region[4, 8, 7] = True
    allowed = rng.random(region.shape) > 0.2
    ring = surrounding_ring(region, allowed, SPACING_ZYX, (3.0, 7.5))
    np.testing.assert_array_equal(ring, _brute_force_ring(region, allowed, (3.0, 7.5)))
    assert ring.sum() > 20


def test_ring_box_holds_the_whole_ring_and_stays_inside_the_volume():
    box = ring_box((slice(2, 4), slice(10, 12), slice(0, 3)), (6, 40, 40), SPACING_ZYX, outer_mm=6.0)
    assert box == (slice(0, 6), slice(5, 17), slice(0, 7))  # margins ceil(6 / s) + 1 = 3, 5, 4 voxels


def test_local_auroc_is_lesion_against_ring_and_ignores_region_levels():
    """Left half of the body scores 10, right half 0 (a region effect). Lesion A (left) scores 10 like its
    surroundings: pooled AUROC ~0.75, local 0.5. Lesion B (right) scores 1 against 0 around it: local 1."""
    shape = (6, 40, 60)
    labels = np.zeros(shape, np.uint8)
    labels[2:4, 18:22, 10:14] = 1  # A, left
    labels[2:4, 18:22, 46:50] = 2  # B, right
    body = np.ones(shape, bool)
    score = np.where(np.arange(shape[2]) < 30, 10.0, 0.0)[None, None, :] * np.ones(shape)
    score[labels == 2] = 1.0
    regions, n = label_regions(labels > 0)
    aurocs, kinds = lesion_local_aurocs(score, regions, n, labels, body, SPACING_ZYX, (3.0, 12.0))
    assert list(kinds) == [1, 2]
    np.testing.assert_allclose(aurocs, [0.5, 1.0])
    ring_a = surrounding_ring(regions == 1, body & (labels == 0), SPACING_ZYX, (3.0, 12.0))
    scores = np.concatenate([score[regions == 1], score[ring_a]])
    truth = np.concatenate([np.ones((regions == 1).sum()), np.zeros(ring_a.sum())])
    assert aurocs[0] == roc_auc_score(truth, scores)
    pooled = voxel_auroc(np.concatenate([score[labels == 1], score[labels == 0]]),
                         np.concatenate([np.ones((labels == 1).sum(), bool), np.zeros((labels == 0).sum(), bool)]))
    assert pooled > 0.7  # the region effect the local AUROC is blind to


def test_case_sample_carries_local_aurocs_when_the_spacing_is_known():
    shape = (6, 40, 60)
    labels = np.zeros(shape, np.uint8)
    labels[2:4, 18:22, 46:50] = 2
    score = np.zeros(shape)
    score[labels == 2] = 1.0
    body = np.ones(shape, bool)
    sample = sample_case("c", score, labels, body, n_negatives=50, spacing_zyx=SPACING_ZYX)
    assert list(sample.local_kinds) == [2] and list(sample.local_aurocs) == [1.0]
    assert sample_case("c", score, labels, body, n_negatives=50).local_aurocs.size == 0
    no_ring = sample_case("c", score, labels, labels > 0, n_negatives=50, spacing_zyx=SPACING_ZYX)
    assert np.isnan(no_ring.local_aurocs).all()  # the body holds no normal voxel around it
