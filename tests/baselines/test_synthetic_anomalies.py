"""The synthetic-anomaly generator of baseline_synthetic: exact targets, unchanged context, determinism."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from scipy.ndimage import zoom

from nnscreener.baselines.synthetic_anomalies import (KINDS, blend, cubic_upsample, deformation_source,
                                                      make_synthetic_anomaly, random_region, visible_target)
from nnscreener.config import get_preset

SHAPE = (12, 20, 16)
SPACING = (4.5, 3.0, 3.0)


def patches(seed: int = 0):
    rng = np.random.default_rng(seed)
    return rng.random(SHAPE, dtype=np.float32), rng.random(SHAPE, dtype=np.float32)


def config(**changes):
    return dataclasses.replace(get_preset("cpu").baseline_synthetic, **changes)


@pytest.mark.parametrize("kind", KINDS)
def test_target_is_the_blend_factor_exactly_where_blended_and_zero_elsewhere(kind):
    weights = tuple(float(k == kind) for k in KINDS)
    cfg = config(p_anomaly=1.0, kind_weights=weights, radius_mm_range=(6.0, 15.0))
    image, foreign = patches()
    for seed in range(8):
        sample = make_synthetic_anomaly(image, foreign, SPACING, cfg, np.random.default_rng(seed))
        assert sample.kind == kind and cfg.alpha_range[0] <= sample.alpha <= cfg.alpha_range[1]
        assert sample.region.any() and not sample.region.all()
        np.testing.assert_array_equal(sample.target[sample.region], np.float32(sample.alpha))
        assert (sample.target[~sample.region] == 0).all()
        np.testing.assert_array_equal(sample.image[~sample.region], image[~sample.region])  # context untouched
        assert sample.image.dtype == np.float32 and sample.target.dtype == np.float32
        if kind == "foreign":  # the blend of the two patches, voxel by voxel
            expected = (1 - sample.alpha) * image + sample.alpha * foreign
            np.testing.assert_allclose(sample.image[sample.region], expected[sample.region], rtol=1e-5, atol=1e-6)
        else:
            assert not np.allclose(sample.image[sample.region], image[sample.region])


def test_deterministic_under_a_seed_and_different_across_seeds():
    image, foreign = patches()
    cfg = config(p_anomaly=1.0)
    draws = [make_synthetic_anomaly(image, foreign, SPACING, cfg, np.random.default_rng(s)) for s in (5, 5, 6)]
    np.testing.assert_array_equal(draws[0].image, draws[1].image)
    np.testing.assert_array_equal(draws[0].target, draws[1].target)
    assert not np.array_equal(draws[0].target, draws[2].target)


def test_normal_patches_keep_image_and_zero_target():
    image, foreign = patches()
    sample = make_synthetic_anomaly(image, foreign, SPACING, config(p_anomaly=0.0), np.random.default_rng(0))
    assert sample.kind == "none" and not sample.target.any()
    np.testing.assert_array_equal(sample.image, image)
    rng = np.random.default_rng(1)
    kinds = [make_synthetic_anomaly(image, foreign, SPACING, config(p_anomaly=0.5), rng).kind for _ in range(200)]
    assert 70 < kinds.count("none") < 130  # p_anomaly is the chance of an anomaly


def test_region_size_follows_the_radius_in_mm():
    rng = np.random.default_rng(0)
    shape = (40, 40, 40)
    extents = []
    for _ in range(10):
        region = random_region(shape, (2.0, 1.0, 1.0), (5.0, 5.0), rng)
        extents.append([int(np.ptp(i)) + 1 for i in np.nonzero(region)])
    extents = np.array(extents)  # (trials, 3) voxels spanned per axis (z, y, x)
    assert (extents <= [6, 11, 11]).all()  # 5 mm half-axes: at most 2.5 z voxels, 5 y / x voxels each side
    assert (extents.max(axis=0) >= [4, 9, 9]).all()  # and not much less where the patch does not clip


@pytest.mark.parametrize("nodes,shape", [((4, 4, 4), (32, 48, 48)), ((3, 6, 2), (17, 33, 20)), ((5, 9, 7), SHAPE)])
def test_cubic_upsample_is_scipys_3d_spline_zoom(nodes, shape):
    coarse = np.random.default_rng(0).standard_normal(nodes)
    factors = [s / n for s, n in zip(shape, nodes)]
    expected = zoom(coarse, factors, order=3)  # the slow, obvious reference
    got = cubic_upsample(coarse, factors)
    assert got.shape == expected.shape == shape
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)


def test_blend_formula_and_deformation_peak():
    image, source = patches()
    region = np.zeros(SHAPE, dtype=bool)
    region[2:5, 3:9, 4:6] = True
    out, target = blend(image, source, region, 0.25)
    np.testing.assert_allclose(out[region], 0.75 * image[region] + 0.25 * source[region], rtol=1e-6)
    assert (target[region] == 0.25).all() and (target[~region] == 0).all()
    ramp = np.broadcast_to(np.arange(SHAPE[2], dtype=np.float32), SHAPE).copy()  # x: a linear ramp
    cfg = config(deformation_mm_range=(6.0, 6.0))
    warped = deformation_source(ramp, SPACING, cfg, np.random.default_rng(0))
    shift_x = np.abs(warped - ramp)[:, :, 3:-3]  # away from the replicated edges
    assert 0.5 < shift_x.max() <= 6.0 / SPACING[2] + 1e-4  # peak displacement 6 mm = 2 voxels in x


def test_visible_target_is_the_blend_factor_scaled_by_the_visible_change_voxel_by_voxel():
    image, foreign = patches(3)
    cfg = config(p_anomaly=1.0, target="visible", visible_change=0.05)
    for seed in range(6):
        sample = make_synthetic_anomaly(image, foreign, SPACING, cfg, np.random.default_rng(seed))
        for index in np.ndindex(SHAPE):  # the slow, obvious reference
            change = abs(float(sample.image[index]) - float(image[index]))
            expected = sample.alpha * min(1.0, change / 0.05) if sample.region[index] else 0.0
            assert sample.target[index] == pytest.approx(expected, abs=1e-6)
        blended = make_synthetic_anomaly(image, foreign, SPACING, config(p_anomaly=1.0), np.random.default_rng(seed))
        np.testing.assert_array_equal(sample.image, blended.image)  # the same draw, only the target differs
        assert (sample.target <= blended.target + 1e-7).all()


def test_an_invisible_anomaly_gets_no_visible_target():
    """A deformation of homogeneous tissue changes nothing: 'blend' still labels its region, 'visible' does not."""
    flat, foreign = np.full(SHAPE, 0.4, dtype=np.float32), patches()[1]
    deform = dict(p_anomaly=1.0, kind_weights=(0.0, 0.0, 1.0))
    blended = make_synthetic_anomaly(flat, foreign, SPACING, config(**deform), np.random.default_rng(0))
    visible = make_synthetic_anomaly(flat, foreign, SPACING, config(target="visible", **deform),
                                     np.random.default_rng(0))
    np.testing.assert_allclose(visible.image, flat, atol=1e-6)
    assert blended.target[blended.region].min() == np.float32(blended.alpha) and not visible.target.any()
    region = np.zeros(SHAPE, dtype=bool)
    region[1:3, 2:4, 2:4] = True
    half_visible = visible_target(flat, flat + 0.01, region, 0.8, 0.02)
    assert np.allclose(half_visible[region], 0.4) and not half_visible[~region].any()


@pytest.mark.parametrize("setting", ["p_anomaly=1.5", "alpha_range=0,1", "kind_weights=0,0,0",
                                     "kind_weights=1,1", "radius_mm_range=5,2", "visible_change=0",
                                     "target=everywhere"])
def test_impossible_anomaly_settings_are_refused_by_name(setting):
    from nnscreener.config import merge, parse_set_overrides, validate
    from nnscreener.errors import ScreenerError

    field = setting.split("=")[0]
    with pytest.raises(ScreenerError, match=f"baseline_synthetic.{field}="):
        validate(merge(get_preset("cpu"), parse_set_overrides([f"baseline_synthetic.{setting}"])))
