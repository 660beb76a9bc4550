"""Condition encoders (sin-cos absolute positions, learned, none) and the variant registries."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from nnscreener import config as config_module
from nnscreener.config import cpu_config
from nnscreener.density.conditions import (CONDITIONS, DENSITIES, LearnedCondition, NoCondition, SinCosCondition,
                                           average_pool, condition_option, density_option, pairs_per_axis,
                                           pooled_voxel_centres_mm, sincos_wavelengths_mm)
from nnscreener.density.flow import FlowDensity
from nnscreener.density.gaussian import ConditionalGaussian, MarginalGaussian
from nnscreener.errors import ScreenerError

SPACING_ZYX = (4.5, 3.0, 2.0)
STRIDE_ZYX = (2, 3, 3)


def _reference_code(voxel_zyx, origin_zyx, channels, min_wavelength, max_wavelength=1000.0):
    """The code of one pooled voxel, by the documented formula, with plain Python loops."""
    code = []
    for axis, n_pairs in enumerate(pairs_per_axis(channels)):
        centre = origin_zyx[axis] + voxel_zyx[axis] * STRIDE_ZYX[axis] + (STRIDE_ZYX[axis] - 1) / 2
        position_mm = centre * SPACING_ZYX[axis]
        if n_pairs == 1:
            wavelengths = [max_wavelength]
        else:
            wavelengths = [min_wavelength * (max_wavelength / min_wavelength) ** (k / (n_pairs - 1))
                           for k in range(n_pairs)]
        code += [math.sin(2 * math.pi * position_mm / w) for w in wavelengths]
        code += [math.cos(2 * math.pi * position_mm / w) for w in wavelengths]
    return np.array(code)


def test_sincos_code_matches_the_formula_per_voxel():
    encoder = SinCosCondition(16, SPACING_ZYX, STRIDE_ZYX)
    image = torch.zeros(2, 1, 8, 12, 9)
    origin = torch.tensor([[0, 0, 0], [-3, 17, 250]])
    codes = encoder(image, origin)
    assert codes.shape == (2, 16, 4, 4, 3) and codes.dtype == torch.float32
    min_wavelength = 2 * max(s * p for s, p in zip(SPACING_ZYX, STRIDE_ZYX))
    for b in range(2):
        for voxel in [(0, 0, 0), (3, 1, 2), (2, 3, 1)]:
            expected = _reference_code(voxel, origin[b].tolist(), 16, min_wavelength)
            np.testing.assert_allclose(codes[b, :, voxel[0], voxel[1], voxel[2]].numpy(), expected, atol=1e-6)


def test_sincos_depends_on_the_absolute_position_not_the_patch():
    """The same scan voxel seen from two different patches gets the same code."""
    encoder = SinCosCondition(32, SPACING_ZYX, STRIDE_ZYX)
    image = torch.zeros(2, 1, 8, 12, 12)
    # patch 2 starts 2 pooled voxels further in z, 1 in y, 3 in x (multiples of the stride keep the grids aligned)
    origin_a, shift = torch.tensor([10, 30, 40]), torch.tensor([2, 1, 3]) * torch.tensor(STRIDE_ZYX)
    codes = encoder(image, torch.stack([origin_a, origin_a + shift]))
    torch.testing.assert_close(codes[1, :, :2, :3, :1], codes[0, :, 2:, 1:, 3:], atol=1e-6, rtol=0)
    # and different voxels of one patch get different codes
    flat = codes[0].reshape(32, -1).T  # (voxels, C)
    distances = torch.cdist(flat, flat) + torch.eye(flat.shape[0]) * 1e3
    assert distances.min() > 0.1


def test_pooled_voxel_centres_are_in_mm_from_the_volume_start():
    z, y, x = pooled_voxel_centres_mm(torch.tensor([[-2, 0, 6]]), (2, 1, 2), STRIDE_ZYX, SPACING_ZYX)
    torch.testing.assert_close(z, torch.tensor([[(-2 + 0.5) * 4.5, (0 + 0.5) * 4.5]], dtype=torch.float64))
    torch.testing.assert_close(y, torch.tensor([[1 * 3.0]], dtype=torch.float64))
    torch.testing.assert_close(x, torch.tensor([[7 * 2.0, 10 * 2.0]], dtype=torch.float64))


def test_sincos_channel_split_and_wavelengths():
    assert pairs_per_axis(32) == (6, 5, 5)
    assert pairs_per_axis(6) == (1, 1, 1)
    for bad in (4, 7, 33):
        with pytest.raises(ScreenerError, match="sincos_dim"):
            pairs_per_axis(bad)
    w = sincos_wavelengths_mm(5, 10.0, 1000.0)
    np.testing.assert_allclose(w.numpy(), [10, 10 * 10 ** 0.5, 100, 100 * 10 ** 0.5, 1000], rtol=1e-12)


def test_average_pool_matches_block_means():
    x = torch.randn(1, 2, 5, 7, 6)
    pooled = average_pool(x, STRIDE_ZYX)
    assert pooled.shape == (1, 2, 2, 2, 2)
    for c in range(2):
        for k in range(2):
            for j in range(2):
                for i in range(2):
                    block = x[0, c, 2 * k:2 * k + 2, 3 * j:3 * j + 3, 3 * i:3 * i + 3]
                    assert torch.isclose(pooled[0, c, k, j, i], block.mean(), atol=1e-6)


class _RecordingNet(nn.Module):
    """A stand-in condition network: remembers its input, outputs 4 channels, has a dropout (train/eval differ)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv3d(2, 4, 1)
        self.dropout = nn.Dropout(0.5)
        self.seen = None

    def forward(self, x):
        self.seen = x
        return self.dropout(self.conv(x))


def test_learned_condition_sees_image_and_ones_mask_and_stays_frozen():
    net = _RecordingNet()
    condition = LearnedCondition(net, 4, STRIDE_ZYX)
    condition.train()
    assert not net.training and not any(p.requires_grad for p in net.parameters())
    image = torch.rand(2, 1, 4, 6, 6)
    c = condition(image, torch.zeros(2, 3, dtype=torch.int64))
    assert c.shape == (2, 4, 2, 2, 2) and not c.requires_grad
    torch.testing.assert_close(net.seen[:, :1], image)
    assert torch.equal(net.seen[:, 1:], torch.ones_like(image))
    torch.testing.assert_close(c, average_pool(net.conv(net.seen), STRIDE_ZYX))  # dropout off: eval mode


def test_no_condition_gives_none():
    assert NoCondition()(torch.zeros(1, 1, 2, 3, 3), torch.zeros(1, 3)) is None
    assert NoCondition().out_channels == 0


def test_registries_cover_the_config_choices_and_build_the_right_models():
    assert set(CONDITIONS) == set(config_module.CONDITIONS)
    assert set(DENSITIES) == set(config_module.DENSITIES)
    cfg = cpu_config()
    assert CONDITIONS["masking"].needs_trained_network
    assert not CONDITIONS["sincos"].needs_trained_network and not CONDITIONS["none"].needs_trained_network
    assert isinstance(CONDITIONS["sincos"].build(cfg, None), SinCosCondition)
    assert isinstance(CONDITIONS["none"].build(cfg, None), NoCondition)
    with pytest.raises(ScreenerError, match="condition model"):
        CONDITIONS["masking"].build(cfg, None)
    assert isinstance(DENSITIES["gaussian"].build(cfg.density, 8, 0), MarginalGaussian)
    assert isinstance(DENSITIES["gaussian"].build(cfg.density, 8, 4), ConditionalGaussian)
    flow = DENSITIES["flow"].build(cfg.density, 8, 4)
    assert isinstance(flow, FlowDensity) and len(flow.flow.blocks) == cfg.density.flow_blocks
    assert flow.cond_dim == 4


def test_unknown_variants_raise_and_list_the_choices():
    with pytest.raises(ScreenerError, match="masking.*sincos.*none"):
        condition_option("positional")
    with pytest.raises(ScreenerError, match="gaussian.*flow"):
        density_option("gmm")


def test_masked_pass_condition_takes_each_voxel_from_the_pass_that_masks_it():
    """K = 2 complementary passes: per voxel, the network's output on the pass where its block is masked, so a
    change of the image inside one block cannot reach that block's own condition features."""
    from nnscreener.data.masking import complementary_block_masks

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv3d(2, 8, 3, padding=1), nn.GELU(), nn.Conv3d(8, 4, 3, padding=1))
    condition = LearnedCondition(net, 4, (1, 1, 1), mask_passes=2, block_fraction=0.25)
    image = torch.rand(2, 1, 8, 8, 8)
    origin = torch.zeros(2, 3, dtype=torch.int64)
    c = condition(image, origin)
    masks = complementary_block_masks((8, 8, 8), 0.25, 2)
    with torch.no_grad():
        expected = sum(net(torch.cat([image * m, m.expand_as(image)], dim=1)) * (1 - m) for m in masks)
    torch.testing.assert_close(c, expected)
    block = (slice(None), slice(None), slice(0, 2), slice(0, 2), slice(0, 2))  # the first 2x2x2 block
    changed = image.clone()
    changed[block] = torch.rand(2, 1, 2, 2, 2)
    c_changed = condition(changed, origin)
    torch.testing.assert_close(c_changed[block], c[block])  # the block's own content is invisible to it
    assert not torch.allclose(c_changed, c)  # ...but it is context for the other blocks
