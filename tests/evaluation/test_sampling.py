"""Per-scan sampling: all lesion voxels, K seeded negatives from the non-lesion body, geometry checks."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from nnscreener.errors import ScreenerError
from nnscreener.evaluation.sampling import (body_from_map, load_case_sample, sample_case, sample_flat_indices,
                                            volume_files_by_case)
from nnscreener.planning.body_mask import body_mask_from_hu


def _case(rng: np.random.Generator, shape=(10, 20, 22)):
    """A map, labels with two kinds (touching each other) plus a separate lesion, and an ellipsoid body."""
    zz, yy, xx = np.indices(shape)
    body = ((yy - 10) / 8.0) ** 2 + ((xx - 11) / 9.0) ** 2 <= 1
    labels = np.zeros(shape, np.uint8)
    labels[3:6, 8:11, 6:9] = 1
    labels[3:6, 8:11, 9:11] = 2  # kind 2 touches kind 1: one lesion region, two kind regions
    labels[7, 14, 14] = 1  # a one-voxel lesion
    labels[8, 15, 15] = 1  # touches the previous voxel at a corner only
    score_map = rng.normal(size=shape).astype(np.float32)
    return score_map, labels, body


def test_sample_flat_indices_is_seeded_distinct_and_inside_candidates():
    rng = np.random.default_rng(0)
    candidates = rng.random((12, 30, 31)) < 0.3
    a = sample_flat_indices(candidates, 500, np.random.default_rng(5))
    b = sample_flat_indices(candidates, 500, np.random.default_rng(5))
    c = sample_flat_indices(candidates, 500, np.random.default_rng(6))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert a.size == 500 and np.unique(a).size == 500 and np.all(np.diff(a) > 0)
    assert candidates.ravel()[a].all()
    everything = sample_flat_indices(candidates, 10 ** 6, np.random.default_rng(5))
    np.testing.assert_array_equal(everything, np.flatnonzero(candidates))


def test_sample_flat_indices_is_uniform_over_candidates():
    candidates = np.zeros((4, 5, 5), bool)
    candidates[0, 0, :2] = candidates[3, 4, 4] = candidates[2, 1, 1] = True  # 4 candidates in 3 slices
    hits = np.zeros(candidates.size)
    rng = np.random.default_rng(1)
    for _ in range(2000):
        hits[sample_flat_indices(candidates, 2, rng)] += 1
    np.testing.assert_allclose(hits[np.flatnonzero(candidates)] / 2000, 0.5, atol=0.05)
    assert hits[~candidates.ravel()].sum() == 0


def test_sample_case_takes_all_lesion_voxels_and_negatives_in_body_outside_lesions():
    rng = np.random.default_rng(2)
    score_map, labels, body = _case(rng)
    sample = sample_case("c1", score_map, labels, body, n_negatives=200, seed=3)
    lesion = labels > 0
    assert sample.positive_scores.size == lesion.sum()
    np.testing.assert_array_equal(np.sort(sample.positive_scores), np.sort(score_map[lesion]))
    np.testing.assert_array_equal(np.sort(sample.positive_labels), np.sort(labels[lesion].astype(np.int64)))
    assert sample.negative_scores.size == 200
    assert body.ravel()[sample.negative_indices].all() and not lesion.ravel()[sample.negative_indices].any()
    np.testing.assert_array_equal(sample.negative_scores, score_map.ravel()[sample.negative_indices])
    assert sample.n_negative_candidates == (body & ~lesion).sum()
    # regions: the two-kind block is one lesion region; the corner-touching voxels are one region (26-conn.)
    assert sample.n_regions == 2 and np.unique(sample.region_ids).size == 2
    assert np.unique(sample.kind_region_ids).size == 3  # kind 1 block, kind 2 block, the corner pair


def test_sample_case_is_deterministic_by_seed_and_case_name():
    rng = np.random.default_rng(4)
    score_map, labels, body = _case(rng)
    a = sample_case("c1", score_map, labels, body, n_negatives=100, seed=0)
    b = sample_case("c1", score_map, labels, body, n_negatives=100, seed=0)
    other_seed = sample_case("c1", score_map, labels, body, n_negatives=100, seed=1)
    other_case = sample_case("c2", score_map, labels, body, n_negatives=100, seed=0)
    np.testing.assert_array_equal(a.negative_indices, b.negative_indices)
    assert not np.array_equal(a.negative_indices, other_seed.negative_indices)
    assert not np.array_equal(a.negative_indices, other_case.negative_indices)


def test_case_without_lesions_and_small_body():
    score_map = np.arange(60, dtype=np.float32).reshape(3, 4, 5)
    body = np.zeros((3, 4, 5), bool)
    body[1, 1:3, 1:4] = True
    sample = sample_case("empty", score_map, np.zeros((3, 4, 5), np.uint8), body, n_negatives=100)
    assert sample.positive_scores.size == 0 and sample.n_regions == 0
    np.testing.assert_array_equal(np.sort(sample.negative_scores), np.sort(score_map[body]))  # all 6 taken


def test_sample_case_rejects_bad_arguments():
    with pytest.raises(ScreenerError, match="shapes"):
        sample_case("c", np.zeros((2, 2, 2)), np.zeros((2, 2, 3), np.uint8), np.ones((2, 2, 2), bool))
    with pytest.raises(ScreenerError, match=">= 1"):
        sample_case("c", np.zeros((2, 2, 2)), np.zeros((2, 2, 2), np.uint8), np.ones((2, 2, 2), bool), 0)


def test_body_from_map_is_above_minimum_or_everything_for_constant_maps():
    m = np.zeros((2, 3, 3), np.float32)
    m[1, 1, 1] = 2.0
    np.testing.assert_array_equal(body_from_map(m), m > 0)
    assert body_from_map(np.full((2, 3, 3), 5.0)).all()


def _write(array: np.ndarray, path: Path, spacing=(1.0, 1.0, 2.0), origin=(0.0, 0.0, 0.0)) -> Path:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    sitk.WriteImage(image, str(path))
    return path


def _ct_phantom(shape=(8, 24, 24)) -> np.ndarray:
    zz, yy, xx = np.indices(shape)
    image = np.full(shape, -1000, np.int16)
    image[((yy - 12) / 9.0) ** 2 + ((xx - 12) / 9.0) ** 2 <= 1] = 40
    return image


def test_load_case_sample_uses_the_hu_body_or_the_map_and_checks_geometry(tmp_path: Path):
    rng = np.random.default_rng(5)
    image = _ct_phantom()
    body = body_mask_from_hu(image)
    labels = np.zeros(image.shape, np.uint8)
    labels[3:5, 10:13, 10:13] = 1
    score_map = rng.random(image.shape).astype(np.float32)
    score_map[~body] = score_map[body].min()  # the predictor's convention (docs/design.md C11)
    label_file = _write(labels, tmp_path / "c.nii.gz")
    map_file = _write(score_map, tmp_path / "m.nii.gz")
    image_file = _write(image, tmp_path / "i.nii.gz")

    with_image = load_case_sample("c", label_file, map_file, image_file, n_negatives=10 ** 6)
    assert with_image.negative_scores.size == (body & (labels == 0)).sum()
    assert body.ravel()[with_image.negative_indices].all()
    from_map = load_case_sample("c", label_file, map_file, None, n_negatives=10 ** 6)
    assert body.ravel()[from_map.negative_indices].all()
    assert with_image.positive_scores.size == from_map.positive_scores.size == 18

    moved = _write(score_map, tmp_path / "moved.nii.gz", origin=(0.0, 0.0, 5.0))
    with pytest.raises(ScreenerError, match="case c: .*origin"):
        load_case_sample("c", label_file, moved)
    wrong_size = _write(score_map[:, :20], tmp_path / "small.nii.gz")
    with pytest.raises(ScreenerError, match="case c: .*size"):
        load_case_sample("c", label_file, wrong_size)
    wrong_spacing = _write(image, tmp_path / "i2.nii.gz", spacing=(1.0, 1.0, 3.0))
    with pytest.raises(ScreenerError, match="case c: the image .*spacing"):
        load_case_sample("c", label_file, map_file, wrong_spacing)


def test_load_case_sample_rejects_nan_maps_and_bad_labels(tmp_path: Path):
    labels = np.zeros((4, 5, 6), np.float32)
    labels[1, 1, 1] = 1
    score_map = np.zeros((4, 5, 6), np.float32)
    score_map[0, 0, 0] = np.nan
    with pytest.raises(ScreenerError, match="NaN"):  # .mha keeps NaN (SimpleITK reads NIfTI NaN as 0)
        load_case_sample("c", _write(labels, tmp_path / "l.mha"), _write(score_map, tmp_path / "m.mha"))
    labels[1, 1, 2] = 0.5
    with pytest.raises(ScreenerError, match="integers"):
        load_case_sample("c", _write(labels, tmp_path / "l2.nii.gz"),
                         _write(np.zeros_like(labels), tmp_path / "z.nii.gz"))
    (tmp_path / "broken.nii.gz").write_bytes(b"not an image")
    with pytest.raises(ScreenerError, match="cannot read"):
        load_case_sample("c", tmp_path / "broken.nii.gz", tmp_path / "z.nii.gz")


def test_volume_files_by_case(tmp_path: Path):
    for name in ("a_0000.nii.gz", "lung_0001_0000.nii.gz", "plain_0001.NII.GZ", ".partial_x.nii.gz", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    images = volume_files_by_case(tmp_path, channel_suffix="_0000")
    assert sorted(images) == ["a", "lung_0001", "plain_0001"]
    assert sorted(volume_files_by_case(tmp_path)) == ["a_0000", "lung_0001_0000", "plain_0001"]
    (tmp_path / "a.nii").write_bytes(b"")
    with pytest.raises(ScreenerError, match="case a has two files"):
        volume_files_by_case(tmp_path, channel_suffix="_0000")
    with pytest.raises(ScreenerError, match="does not exist"):
        volume_files_by_case(tmp_path / "missing")


def test_geometry_message_names_the_map_and_gives_its_values_before_the_labels():
    from nnscreener.evaluation.sampling import check_same_geometry

    label = sitk.Image(4, 5, 6, sitk.sitkUInt8)
    anomaly_map = sitk.Image(4, 5, 6, sitk.sitkFloat32)
    anomaly_map.SetSpacing((1.0, 1.0, 2.0))
    with pytest.raises(ScreenerError) as info:
        check_same_geometry(label, anomaly_map, "c", "label", Path("l/c.nii.gz"), "anomaly map", Path("m/c.nii.gz"))
    assert str(info.value) == ("case c: the anomaly map m/c.nii.gz does not match the geometry of the label "
                               "l/c.nii.gz; spacing (x, y, z, mm): anomaly map (1.0, 1.0, 2.0), label (1.0, 1.0, 1.0)")
