import itertools

import blosc2
import numpy as np
import pytest
import torch
from acvl_utils.cropping_and_padding.bounding_boxes import crop_and_pad_nd

from nnscreener.data.pair_sampling import (CropBox, Orientation, PairParams, extract_view, extract_views,
                                           sample_pair_params, sample_positions, view_to_frame)
from nnscreener.errors import ScreenerError

PATCH = (12, 16, 20)


def coordinate_volume(shape_zyx, offset=0.0):
    """(3, z, y, x) float32 whose channels hold each voxel's own (z, y, x) index (+ offset)."""
    grids = np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape_zyx], indexing="ij")
    return np.stack(grids) + np.float32(offset)


def values_at(view, idx):
    """(n, C) values of a (C, Z, Y, X) view at (n, 3) voxel indices."""
    return view[:, idx[:, 0], idx[:, 1], idx[:, 2]].numpy().T


def fine_voxel_size_per_volume_axis(params):
    """For each volume axis (z, y, x): the finer view's voxel size along the oriented axis showing it."""
    perm, _ = params.orientation.axis_map
    out = np.empty(3)
    for a in range(3):
        out[perm[a]] = min(params.box1.voxel_size(PATCH)[a], params.box2.voxel_size(PATCH)[a])
    return out


def body_at_nearest_voxel(body, points):
    """body[] at the nearest voxel of (n, 3) points; a point half-way between voxels counts if either side does."""
    out = np.zeros(len(points), dtype=bool)
    for shifts in itertools.product((-1e-3, 1e-3), repeat=3):
        v = np.floor(points + 0.5 + np.asarray(shifts)).astype(int)
        out |= body[v[:, 0], v[:, 1], v[:, 2]]
    return out


def coarse_view_per_volume_axis(params):
    perm, _ = params.orientation.axis_map
    out = np.empty(3, dtype=int)
    for a in range(3):
        out[perm[a]] = 0 if params.box1.size_zyx[a] >= params.box2.size_zyx[a] else 1
    return out


@pytest.mark.parametrize("k", [0, 1, 2, 3])
@pytest.mark.parametrize("flips", [(False, False, False), (True, False, True), (False, True, False),
                                   (True, True, True)])
def test_orientation_equals_numpy_flip_then_rot90_also_for_boxes(k, flips):
    vol = coordinate_volume((5, 7, 9))
    o = Orientation(flips, k)
    flip_axes = [1 + a for a in range(3) if flips[a]]
    ref = np.rot90(np.flip(vol, flip_axes) if flip_axes else vol, k, axes=(2, 3))
    np.testing.assert_array_equal(o.apply(vol), ref)
    assert o.frame_shape((5, 7, 9)) == ref.shape[1:]
    # a box partly outside the oriented volume: reading only the box equals cropping the oriented volume
    start, stop = (-2, 1, 3), (4, ref.shape[2] + 2, ref.shape[3] - 1)
    region = o.apply(crop_and_pad_nd(vol, o.box_in_volume(start, stop, vol.shape[1:])))
    expected = crop_and_pad_nd(np.ascontiguousarray(ref), [[a, b] for a, b in zip(start, stop)])
    np.testing.assert_array_equal(region, expected)


def test_view_voxel_centres_follow_the_documented_mapping():
    vol = coordinate_volume((30, 40, 50))
    box = CropBox((3, -2, 5), (17, 29, 31))
    view = extract_view(vol, box, PATCH, Orientation())
    assert view.shape == (3, *PATCH) and view.dtype.is_floating_point
    for a in range(3):
        centres = view_to_frame(np.arange(PATCH[a]), box.start_zyx[a], box.size_zyx[a], PATCH[a])
        line = view[a].numpy().transpose(*([a] + [d for d in range(3) if d != a]))[:, -1, -1]
        inside = (centres >= 0) & (centres <= vol.shape[1 + a] - 1)  # linear field, no padding involved
        np.testing.assert_allclose(line[inside], centres[inside], atol=1e-4)

    first = extract_view(vol, box, PATCH, Orientation(flip_zyx=(True, False, True), rot90_k=1), channels=1)
    assert torch.equal(first, extract_view(vol[:1], box, PATCH, Orientation(flip_zyx=(True, False, True), rot90_k=1)))
    assert first.shape == (1, *PATCH)


@pytest.mark.parametrize("factor_range", [(1.0, 1.5), (1.0, 2.0), (1.0, 4.0)])
def test_paired_positions_show_the_same_scan_point(factor_range):
    vol = coordinate_volume((48, 70, 90))
    rng = np.random.default_rng(0)
    normalized = []
    for _ in range(40):
        params = sample_pair_params(vol.shape[1:], PATCH, factor_range, rng)
        v1, v2 = extract_views(vol, params)
        idx1, idx2 = sample_positions(params, None, 256, rng)
        diff = np.abs(values_at(v1, idx1) - values_at(v2, idx2))  # (n, 3) in volume voxels, channel = volume axis
        fine = fine_voxel_size_per_volume_axis(params)
        assert np.all(diff <= 0.5 * fine + 1e-4), "more than half a finer-view voxel apart"
        normalized.append(diff / fine)
    normalized = np.concatenate(normalized)
    assert normalized.max() <= 0.5 + 1e-4
    assert normalized.mean() < 0.3  # rounding to the finer grid: about 0.25 on average


def test_equal_scales_give_exactly_the_same_point_under_every_orientation():
    vol = coordinate_volume((20, 30, 40))
    rng = np.random.default_rng(1)
    seen = set()
    for _ in range(40):
        params = sample_pair_params(vol.shape[1:], PATCH, (1.0, 1.0), rng)
        seen.add((params.orientation.flip_zyx, params.orientation.rot90_k))
        v1, v2 = extract_views(vol, params)
        idx1, idx2 = sample_positions(params, None, 128, rng)
        np.testing.assert_array_equal(values_at(v1, idx1), values_at(v2, idx2))
    assert len({k for _, k in seen}) == 4 and len({f for f, _ in seen}) > 4


def test_crop_sizes_overlap_and_indices_are_in_range():
    rng = np.random.default_rng(2)
    shape = (40, 60, 70)
    for _ in range(100):
        params = sample_pair_params(shape, PATCH, (1.0, 2.0), rng)
        frame = params.frame_shape_zyx
        for box in (params.box1, params.box2):
            for a in range(3):
                assert round(PATCH[a] * 1.0) <= box.size_zyx[a] <= round(PATCH[a] * 2.0)
                assert 0 <= box.start_zyx[a] and box.stop_zyx[a] <= frame[a]  # the union fits: no padding
        ov = params.overlap
        smaller = np.minimum(params.box1.size_zyx, params.box2.size_zyx)
        assert np.all(np.asarray(ov.size_zyx) >= 1) and np.all(np.asarray(ov.size_zyx) <= smaller)
        idx1, idx2 = sample_positions(params, None, 300, rng)
        for idx in (idx1, idx2):
            assert idx.shape == (300, 3) and idx.dtype == np.int64
            assert np.all(idx >= 0) and np.all(idx < np.asarray(PATCH))


def test_positions_are_inside_the_body_and_fall_back_without_body():
    shape = (40, 60, 70)
    vol = coordinate_volume(shape)
    zz, yy, xx = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    # off-centre, so that a wrongly flipped or rotated mask would disagree
    body = ((zz - 14) / 12.0) ** 2 + ((yy - 22) / 18.0) ** 2 + ((xx - 46) / 20.0) ** 2 <= 1.0
    rng = np.random.default_rng(3)
    outside_without_mask, pairs_in_body = 0, 0
    for _ in range(30):
        params = sample_pair_params(shape, PATCH, (1.0, 2.0), rng)
        views = extract_views(vol, params)
        idx = sample_positions(params, body[None].astype(np.int16), 200, rng)
        coarse = coarse_view_per_volume_axis(params)
        values = [values_at(v, i) for v, i in zip(views, idx)]
        point = np.stack([values[coarse[c]][:, c] for c in range(3)], axis=1)  # the coarse view's centre
        in_body = body_at_nearest_voxel(body, point)
        assert in_body.all() or not in_body.any()  # all inside, or the fallback when the overlap misses the body
        pairs_in_body += int(in_body.all())
        idx_free = sample_positions(params, None, 200, rng)
        free = np.floor(values_at(views[0], idx_free[0]) + 0.5).astype(int)
        outside_without_mask += int((~body[free[:, 0], free[:, 1], free[:, 2]]).sum())
    assert pairs_in_body >= 25 and outside_without_mask > 0  # the mask changes something
    params = sample_pair_params(shape, PATCH, (1.0, 2.0), rng)
    idx1, idx2 = sample_positions(params, np.zeros((1, *shape), np.int16), 50, rng)  # no body at all
    assert idx1.shape == idx2.shape == (50, 3)


def test_volume_smaller_than_patch_is_padded_and_positions_avoid_the_padding():
    shape = (6, 10, 12)
    vol = coordinate_volume(shape, offset=1.0)  # values >= 1 inside, 0 only in the padding
    rng = np.random.default_rng(4)
    for _ in range(20):
        params = sample_pair_params(shape, PATCH, (1.0, 1.5), rng)
        v1, v2 = extract_views(vol, params)
        assert v1.shape == v2.shape == (3, *PATCH)
        assert (v1 == 0).any() and (v2 == 0).any()
        idx1, idx2 = sample_positions(params, None, 100, rng)
        a, b = values_at(v1, idx1), values_at(v2, idx2)
        assert (a >= 1 - 1e-5).all() and (b >= 1 - 1e-5).all()
        fine = fine_voxel_size_per_volume_axis(params)
        assert np.all(np.abs(a - b) <= 0.5 * fine + 1e-4)


def test_same_seed_same_pair_and_blosc2_reads_like_numpy(tmp_path):
    vol = np.random.default_rng(5).random((1, 30, 40, 50), dtype=np.float32)
    path = str(tmp_path / "case.b2nd")
    blosc2.asarray(vol, urlpath=path, chunks=(1, 16, 16, 16), blocks=(1, 8, 8, 8))
    mmapped = blosc2.open(urlpath=path, mode="r", mmap_mode="r")

    def draw(seed, volume):
        rng = np.random.default_rng(seed)
        params = sample_pair_params(vol.shape[1:], PATCH, (1.0, 2.0), rng)
        return params, extract_views(volume, params), sample_positions(params, None, 64, rng)

    p_a, views_a, idx_a = draw(7, vol)
    p_b, views_b, idx_b = draw(7, mmapped)
    p_c, _, _ = draw(8, vol)
    assert p_a == p_b and p_a != p_c
    for x, y in zip(views_a + idx_a, views_b + idx_b):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_bad_arguments_raise():
    rng = np.random.default_rng(0)
    with pytest.raises(ScreenerError, match="spacing factor"):
        sample_pair_params((10, 10, 10), PATCH, (2.0, 1.0), rng)
    with pytest.raises(ScreenerError, match="spacing factor"):
        sample_pair_params((10, 10, 10), PATCH, (0.0, 1.0), rng)
    with pytest.raises(ScreenerError, match="patch size"):
        sample_pair_params((10, 10, 10), (0, 4, 4), (1.0, 1.0), rng)
    with pytest.raises(ScreenerError, match="volume shape"):
        sample_pair_params((10, 10), PATCH, (1.0, 1.0), rng)
    params = PairParams((10, 10, 10), PATCH, Orientation(), CropBox((0, 0, 0), PATCH), CropBox((0, 0, 0), PATCH))
    with pytest.raises(ScreenerError, match="positions"):
        sample_positions(params, None, 0, rng)
