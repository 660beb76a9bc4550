"""Dense-foreground cropping: min-pooled blocks against a loop reference, and known phantom extents."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
from acvl_utils.cropping_and_padding.bounding_boxes import insert_crop_into_image

from nnscreener.planning.cropping import (block_size_voxels, crop_to_bbox, dense_block_mask,
                                          dense_foreground_bbox)


def test_block_size_is_ceil_of_mm_over_spacing():
    assert block_size_voxels((2.5, 1.5, 0.7), 5.0) == (2, 4, 8)
    assert block_size_voxels((5.0, 1.25, 6.0), 5.0) == (1, 4, 1)
    with pytest.raises(ValueError):
        block_size_voxels((1, 1, 1), 0)


def test_block_mask_matches_loop_reference_with_partial_blocks():
    rng = np.random.default_rng(0)
    image = np.where(rng.random((13, 17, 22)) < 0.93, 100.0, -900.0)
    block = (3, 4, 5)
    pooled = dense_block_mask(image, block, -500.0)
    assert pooled.shape == (5, 5, 5)
    for bz, by, bx in itertools.product(*(range(n) for n in pooled.shape)):
        region = image[bz * 3:(bz + 1) * 3, by * 4:(by + 1) * 4, bx * 5:(bx + 1) * 5]
        assert pooled[bz, by, bx] == bool(np.all(region >= -500.0)), (bz, by, bx)


def _box_phantom():
    """1 mm voxels (block 5): a dense box z 0..23 (reaching the far z end, a partial block), y 10..29,
    x 5..39; a 2-voxel table at y 33..34; a dense 3-voxel speck far away."""
    image = np.full((24, 40, 50), -1000.0)
    image[:, 10:30, 5:40] = 30.0
    image[:, 33:35, :] = 300.0
    image[2:5, 2:5, 45:48] = 500.0
    return image


def test_bbox_of_box_phantom_drops_table_and_specks():
    bbox = dense_foreground_bbox(_box_phantom(), (1.0, 1.0, 1.0), -500.0, 5.0)
    assert bbox == [[0, 24], [10, 30], [5, 40]]


def test_bbox_shrinks_to_whole_blocks_inside_an_unaligned_body():
    image = np.full((20, 40, 40), -1000.0)
    image[:, 12:29, 7:33] = 30.0  # y 12..28 -> blocks 3..4 fully dense; x 7..32 -> blocks 2..5
    assert dense_foreground_bbox(image, (1.0, 1.0, 1.0)) == [[0, 20], [15, 25], [10, 30]]


def test_anisotropic_spacing_uses_per_axis_blocks():
    image = np.full((10, 30, 30), -1000.0)
    image[3:7, 6:24, 6:24] = 30.0  # z spacing 5 mm -> block 1 in z; 2.5 mm in-plane -> block 2
    assert dense_foreground_bbox(image, (5.0, 2.5, 2.5)) == [[3, 7], [6, 24], [6, 24]]


def test_all_air_gives_none():
    assert dense_foreground_bbox(np.full((10, 10, 10), -1000.0), (1.0, 1.0, 1.0)) is None


def test_crop_is_inverted_by_nnunets_insert_crop_into_image():
    image = _box_phantom()[None]
    bbox = dense_foreground_bbox(image[0], (1.0, 1.0, 1.0))
    crop = crop_to_bbox(image, bbox)
    assert crop.shape == (1, 24, 20, 35)
    restored = insert_crop_into_image(np.full_like(image, -1000.0), crop, bbox)
    np.testing.assert_array_equal(restored[:, :, 10:30, 5:40], image[:, :, 10:30, 5:40])
