"""Calibration thresholds against slow references: per-threshold counting over every voxel, numpy quantiles."""
import json

import numpy as np
import pytest

from nnscreener.errors import ScreenerError
from nnscreener.findings.calibration import (Calibration, NormalScores, OperatingPoint, ScanScores, body_scores,
                                              build_calibration, calibration_file, parse_operating_point,
                                              rate_columns, write_calibration)


def _scans(seed=0, ties=False):
    rng = np.random.default_rng(seed)
    scans = []
    for i, (n, voxel_ml) in enumerate([(3000, 0.002), (5000, 0.001), (800, 0.01)]):
        scores = rng.normal(loc=i, scale=1 + i, size=n)
        if ties:
            scores = np.round(scores, 1)
        scans.append(ScanScores(f"n{i}", scores.astype(np.float32), n, voxel_ml, 2 * n))
    return scans


def _slow_rates(scans, t):
    """fpr and mean mL per scan above t, by counting every voxel."""
    n_total = sum(s.n_body for s in scans)
    above = [int((s.scores.astype(np.float64) > t).sum()) for s in scans]
    return sum(above) / n_total, sum(a * s.voxel_ml for a, s in zip(above, scans)) / len(scans)


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("kind,target", [("fpr", 1e-2), ("fpr", 1e-3), ("fpr", 0.3), ("fp_ml", 0.05),
                                         ("fp_ml", 1.0), ("fp_ml", 0.002)])
def test_threshold_is_the_smallest_observed_score_whose_rate_is_at_most_the_target(ties, kind, target):
    scans = _scans(ties=ties)
    normal = NormalScores(scans)
    t = normal.threshold_for(kind, target)
    fpr, ml = _slow_rates(scans, t)
    assert (fpr if kind == "fpr" else ml) <= target * (1 + 1e-9)
    np.testing.assert_allclose(normal.rate_above("fpr", t), fpr, rtol=1e-9)
    np.testing.assert_allclose(normal.rate_above("fp_ml", t), ml, rtol=1e-9)
    values = np.unique(np.concatenate([s.scores for s in scans]).astype(np.float64))
    assert t in values
    lower = values[values < t]
    if lower.size:  # the next smaller observed score exceeds the target
        rates = _slow_rates(scans, lower[-1])
        assert (rates[0] if kind == "fpr" else rates[1]) > target * (1 + 1e-9)


def test_quantiles_match_numpy_on_one_scan_without_ties():
    scores = np.random.default_rng(1).normal(size=10_001).astype(np.float32)
    normal = NormalScores([ScanScores("a", scores, scores.size, 0.001, scores.size)])
    for level in (0.0, 0.1, 0.5, 0.9, 0.99, 0.999):
        # at most a fraction (1 - level) above: numpy's "higher" quantile of the sorted values
        expected = np.quantile(scores.astype(np.float64), level, method="inverted_cdf")
        assert normal.quantile(level) == pytest.approx(float(expected), abs=0)


def test_subsampled_scans_weigh_as_many_voxels_as_their_body():
    rng = np.random.default_rng(2)
    full = rng.normal(size=200_000)
    body = np.ones((50, 40, 100), bool)
    sub = body_scores("big", full.reshape(body.shape), body, (1.0, 2.0, 5.0), max_voxels=20_000, seed=3)
    assert sub.scores.size == 20_000 and sub.n_body == 200_000 and sub.voxel_ml == pytest.approx(0.01)
    again = body_scores("big", full.reshape(body.shape), body, (1.0, 2.0, 5.0), max_voxels=20_000, seed=3)
    np.testing.assert_array_equal(sub.scores, again.scores)
    normal = NormalScores([sub])
    t = normal.threshold_for("fp_ml", 100.0)  # 100 mL of 2000 mL: the top 5 %
    assert normal.rate_above("fp_ml", t) == pytest.approx(100.0, rel=0.02)
    assert (full > t).mean() == pytest.approx(0.05, rel=0.1)


def test_calibration_file_round_trip_thresholds_percentiles_and_interpolation(tmp_path):
    scans = _scans()
    data = build_calibration(scans, {"model": {"checkpoint": "c.pth"}})
    path = write_calibration(data, calibration_file(tmp_path, "checkpoint_final.pth"))
    assert path.name == "calibration_checkpoint_final.json"
    with pytest.raises(ScreenerError, match="--overwrite"):
        write_calibration(data, path)
    calibration = Calibration.load(path)
    normal = NormalScores(scans)
    for point in data["operating_points"]:
        assert calibration.threshold(OperatingPoint(point["kind"], point["target"])) == point["threshold"]
        assert point["threshold"] == normal.threshold_for(point["kind"], point["target"])
    for kind, target in (("fpr", 3e-3), ("fp_ml", 0.2)):  # not stored: interpolated, close to the exact one
        t = calibration.threshold(OperatingPoint(kind, target))
        realised = _slow_rates(scans, t)[0 if kind == "fpr" else 1]
        assert realised == pytest.approx(target, rel=0.35)
    assert calibration.threshold(parse_operating_point("value=2.5")) == 2.5
    top = max(float(s.scores.max()) for s in scans)
    assert calibration.percentile(top + 1) == 100.0
    t = calibration.threshold(OperatingPoint("fpr", 1e-2))
    assert calibration.percentile(t) == pytest.approx(100 * (1 - _slow_rates(scans, t)[0]), abs=1e-9)
    assert rate_columns(calibration, t)[0] == pytest.approx(_slow_rates(scans, t)[0])
    with pytest.raises(ScreenerError, match="outside the range"):
        calibration.threshold(OperatingPoint("fpr", 1e-9))
    for point in data["operating_points"]:  # per scan, by counting; their mean is the point's fp_ml
        by_case = [(s.scores.astype(np.float64) > point["threshold"]).sum() * s.voxel_ml for s in scans]
        np.testing.assert_allclose(point["fp_ml_by_case"], by_case)
        assert np.mean(by_case) == pytest.approx(point["fp_ml_per_scan"])
    assert json.loads(path.read_text())["cases"][0] == {"case": "n0", "voxels": 6000, "body_voxels": 3000,
                                                        "scored_voxels": 3000, "voxel_ml": 0.002}


@pytest.mark.parametrize("spec", ["fpr=2", "fpr=0", "fp_ml=-1", "value=abc", "top=3", "fpr"])
def test_bad_threshold_specs_are_one_clear_error(spec):
    with pytest.raises(ScreenerError):
        parse_operating_point(spec)


def test_a_missing_or_foreign_calibration_is_named(tmp_path):
    with pytest.raises(ScreenerError, match="nnScreener_calibrate"):
        Calibration.load(tmp_path / "none.json")
    (tmp_path / "x.json").write_text("{}")
    with pytest.raises(ScreenerError, match="x.json"):
        Calibration.load(tmp_path / "x.json")
