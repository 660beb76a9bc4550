"""The findings table against a slow reference: a breadth-first flood fill over 26 neighbours, voxel by voxel, and
SimpleITK's own index-to-world transform."""
import itertools
from collections import deque

import numpy as np
import pytest
import SimpleITK as sitk

from nnscreener.errors import ScreenerError
from nnscreener.findings.components import Geometry, find_findings

SHAPE_ZYX = (9, 11, 13)
SPACING = (0.8, 1.5, 2.5)
ORIGIN = (-30.0, 12.5, 100.0)
# an oblique direction (rotation about z by 30 degrees, then a flip of z)
C, S = np.cos(np.pi / 6), np.sin(np.pi / 6)
DIRECTION = (C, -S, 0.0, S, C, 0.0, 0.0, 0.0, -1.0)


def _image(array):
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(SPACING)
    image.SetOrigin(ORIGIN)
    image.SetDirection(DIRECTION)
    return image


def _slow_components(above):
    """Components of a boolean (z, y, x) array by flood fill over the 26 neighbours: lists of (z, y, x)."""
    seen = np.zeros(above.shape, bool)
    components = []
    offsets = [d for d in itertools.product((-1, 0, 1), repeat=3) if d != (0, 0, 0)]
    for start in zip(*np.nonzero(above)):
        if seen[start]:
            continue
        seen[start] = True
        queue, voxels = deque([start]), []
        while queue:
            v = queue.popleft()
            voxels.append(v)
            for d in offsets:
                w = tuple(a + b for a, b in zip(v, d))
                if all(0 <= w[i] < above.shape[i] for i in range(3)) and above[w] and not seen[w]:
                    seen[w] = True
                    queue.append(w)
        components.append(voxels)
    return components


def _score_map(seed):
    rng = np.random.default_rng(seed)
    score = rng.normal(size=SHAPE_ZYX).astype(np.float32)
    score[2:5, 3:6, 4:9] += 4.0  # one large blob
    score[7, 9, 1] = 9.0  # a single voxel
    return score


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("min_volume_ml", [0.0, 0.02])
def test_findings_match_a_flood_fill_and_sitk_world_coordinates(seed, min_volume_ml):
    score = _score_map(seed)
    threshold = 1.5
    image = _image(score)
    organs = np.zeros(SHAPE_ZYX, np.int64)
    organs[:, :, 6:] = 3
    organs[:, :4, :] = 7
    found = find_findings(score, threshold, Geometry.of(image), min_volume_ml=min_volume_ml,
                          percentile=lambda s: s * 10, organs=organs, organ_names={3: "liver"})
    voxel_ml = np.prod(SPACING) / 1000
    reference = [c for c in _slow_components(score > threshold) if len(c) * voxel_ml >= min_volume_ml]
    reference.sort(key=lambda c: (-max(score[v] for v in c), -len(c)))
    assert len(found.rows) == len(reference) and found.n_components == len(_slow_components(score > threshold))
    expected_mask = np.zeros(SHAPE_ZYX, np.uint8)
    for rank, (row, voxels) in enumerate(zip(found.rows, reference), start=1):
        values = np.array([score[v] for v in voxels], dtype=np.float64)
        zyx = np.array(voxels, dtype=np.float64)
        assert row["id"] == rank and row["voxels"] == len(voxels)
        assert row["volume_ml"] == pytest.approx(len(voxels) * voxel_ml)
        assert row["max_score"] == pytest.approx(values.max()) and row["mean_score"] == pytest.approx(values.mean())
        assert row["max_score_percentile_normal"] == pytest.approx(values.max() * 10, rel=1e-6)
        centroid_xyz = zyx.mean(axis=0)[::-1]
        np.testing.assert_allclose(row["centroid_voxel_xyz"], centroid_xyz)
        np.testing.assert_allclose(row["centroid_lps_mm"],
                                   image.TransformContinuousIndexToPhysicalPoint(centroid_xyz.tolist()), atol=1e-9)
        peak = voxels[int(np.argmax(values))]
        np.testing.assert_allclose(row["peak_lps_mm"], image.TransformIndexToPhysicalPoint(
            [int(peak[2]), int(peak[1]), int(peak[0])]), atol=1e-9)
        lo, hi = zyx.min(axis=0)[::-1].astype(int), zyx.max(axis=0)[::-1].astype(int)
        corners = np.array([image.TransformIndexToPhysicalPoint([int(c[0]), int(c[1]), int(c[2])])
                            for c in itertools.product(*zip(lo, hi))])
        np.testing.assert_allclose(row["bbox_lps_min_mm"], corners.min(axis=0), atol=1e-9)
        np.testing.assert_allclose(row["bbox_lps_max_mm"], corners.max(axis=0), atol=1e-9)
        assert row["bbox_voxel_xyz_min"] == lo.tolist() and row["bbox_voxel_xyz_max"] == hi.tolist()
        organ_values = [organs[v] for v in voxels if organs[v] > 0]
        if organ_values:
            best = max(set(organ_values), key=lambda o: (organ_values.count(o), -o))
            assert row["organ_label"] == best
            assert row["organ_fraction"] == pytest.approx(organ_values.count(best) / len(voxels))
            assert row["organ"] == ("liver" if best == 3 else "")
        else:
            assert row["organ_label"] == 0 and row["organ"] == ""
        for v in voxels:
            expected_mask[v] = 1
    np.testing.assert_array_equal(found.mask, expected_mask)


def test_nothing_above_the_threshold_gives_an_empty_table_and_mask():
    score = _score_map(0)
    found = find_findings(score, float(score.max()), Geometry.of(_image(score)))
    assert found.rows == [] and found.mask.dtype == np.uint8 and not found.mask.any()


def test_a_map_that_does_not_fit_its_geometry_is_refused():
    score = _score_map(0)
    with pytest.raises(ScreenerError, match="does not fit"):
        find_findings(score[:-1], 0.0, Geometry.of(_image(score)))
