import numpy as np
import pytest
import torch

from nnscreener.data.masking import block_edges, blocks_per_axis, random_block_mask
from nnscreener.errors import ScreenerError


def block_values(mask, patch, fraction):
    """(bz, by, bx) value of each block, asserting that every block is constant."""
    edges = [block_edges(p, fraction) for p in patch]
    out = np.empty([len(e) - 1 for e in edges])
    m = mask.numpy()
    for i in range(out.shape[0]):
        for j in range(out.shape[1]):
            for k in range(out.shape[2]):
                block = m[edges[0][i]:edges[0][i + 1], edges[1][j]:edges[1][j + 1], edges[2][k]:edges[2][k + 1]]
                assert block.size > 0 and np.all(block == block.flat[0]), "mask not aligned to the blocks"
                out[i, j, k] = block.flat[0]
    return out


@pytest.mark.parametrize("patch", [(32, 48, 48), (64, 96, 96), (10, 13, 7)])
def test_a_quarter_of_each_side_gives_64_blocks_and_38_are_zeroed(patch):
    rng = np.random.default_rng(0)
    for _ in range(5):
        mask = random_block_mask(patch, 0.25, 0.6, 1.0, rng)
        assert mask.shape == patch and mask.dtype == torch.float32
        blocks = block_values(mask, patch, 0.25)
        assert blocks.shape == (4, 4, 4)
        assert int((blocks == 0).sum()) == int(0.6 * 64) == 38
        assert set(np.unique(mask.numpy())) == {0.0, 1.0}


def test_blocks_tile_the_patch():
    for side in (7, 13, 32, 96):
        edges = block_edges(side, 0.25)
        assert edges[0] == 0 and edges[-1] == side and np.all(np.diff(edges) >= 1)
    assert blocks_per_axis(96, 0.125) == 8 and blocks_per_axis(3, 0.25) == 3


def test_masking_probability_and_independent_draws():
    rng = np.random.default_rng(1)
    masks = [random_block_mask((8, 8, 8), 0.25, 0.6, 0.9, rng) for _ in range(400)]
    masked = sum(bool((m == 0).any()) for m in masks)
    assert 330 <= masked <= 390  # Binomial(400, 0.9): mean 360, sd 6
    distinct = {m.numpy().tobytes() for m in masks if (m == 0).any()}
    assert len(distinct) > 300  # each draw picks its own blocks
    for _ in range(50):
        assert torch.equal(random_block_mask((8, 8, 8), 0.25, 0.6, 0.0, rng), torch.ones(8, 8, 8))


def test_bad_settings_raise():
    rng = np.random.default_rng(0)
    with pytest.raises(ScreenerError, match="block_fraction"):
        random_block_mask((8, 8, 8), 0.0, 0.6, 0.9, rng)
    with pytest.raises(ScreenerError, match="ratio"):
        random_block_mask((8, 8, 8), 0.25, 1.5, 0.9, rng)
    with pytest.raises(ScreenerError, match="probability"):
        random_block_mask((8, 8, 8), 0.25, 0.6, -0.1, rng)
    with pytest.raises(ScreenerError, match="patch size"):
        random_block_mask((8, 0, 8), 0.25, 0.6, 0.9, rng)


def test_complementary_masks_mask_every_voxel_exactly_once():
    from nnscreener.data.masking import complementary_block_masks

    masks = complementary_block_masks((32, 48, 48), 0.25, 2)
    assert masks.shape == (2, 32, 48, 48) and masks.dtype == torch.float32
    torch.testing.assert_close(masks.sum(0), torch.ones(32, 48, 48))  # K - 1 = 1 visible pass per voxel
    assert abs(float(1 - masks[0].mean()) - 0.5) < 1e-6  # a 4x4x4 checkerboard: half of the patch per pass
    assert masks[0, 0, 0, 0] != masks[0, 0, 0, 12]  # neighbouring blocks (12 voxels wide) alternate
    three = complementary_block_masks((8, 8, 8), 0.25, 3)
    torch.testing.assert_close(three.sum(0), torch.full((8, 8, 8), 2.0))
    with pytest.raises(ScreenerError):
        complementary_block_masks((8, 8, 8), 0.25, 1)
