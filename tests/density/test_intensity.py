"""Intensity channels appended to the descriptor: smoothed intensities against scipy's Gaussian filter, the soft
histogram against the formula, and both in the model."""
from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

import math

import pytest

from nnscreener.config import cpu_config, merge, validate
from nnscreener.density.conditions import NoCondition, average_pool
from nnscreener.density.intensity import IntensityFeatures, soft_histogram
from nnscreener.errors import ScreenerError
from nnscreener.model import ScreenerModel, build_screener_model


def test_intensity_features_match_scipy_gaussian_filter_with_nearest_padding():
    rng = np.random.default_rng(0)
    image = rng.random((2, 1, 9, 12, 10)).astype(np.float32)
    spacing_zyx = (4.5, 3.0, 3.0)
    features = IntensityFeatures((0.0, 4.5, 9.0), spacing_zyx, scale=100.0)(torch.from_numpy(image))
    assert features.shape == (2, 3, 9, 12, 10)
    for s, sigma_mm in enumerate((0.0, 4.5, 9.0)):
        sigma_vox = [sigma_mm / sp for sp in spacing_zyx]
        for b in range(2):
            expected = 100.0 * ndimage.gaussian_filter(image[b, 0].astype(np.float64), sigma_vox, mode="nearest",
                                                       truncate=3.0)
            np.testing.assert_allclose(features[b, s].numpy(), expected, rtol=1e-5, atol=1e-4)


class _ConstantDescriptor(torch.nn.Module):
    embedding_dim = 3

    def forward(self, x):
        return torch.zeros(x.shape[0], 3, *x.shape[2:])


def test_screener_model_appends_pooled_intensities_to_the_descriptor():
    config = merge(cpu_config(), {"preprocessing": {"keep_window_channel": False},  # one channel, as the paper
                                  "density": {"condition": "none", "density": "gaussian",
                                              "intensity_sigmas_mm": "0,6", "intensity_histogram_bins": 0,
                                              "pool_stride_xyz": "2,2,1"}})
    model = build_screener_model(config, _ConstantDescriptor())
    assert model.density.dim == 3 + 2
    x = torch.rand(1, 1, 4, 6, 6)
    y, c = model.pooled_maps(x, torch.zeros(1, 3, dtype=torch.int64))
    assert c is None and y.shape == (1, 5, 4, 3, 3)
    torch.testing.assert_close(y[:, 3:4], average_pool(100.0 * x, (1, 2, 2)))  # sigma 0: the image itself
    assert torch.equal(y[:, :3], torch.zeros(1, 3, 4, 3, 3))


class _RecordingDescriptor(_ConstantDescriptor):
    def forward(self, x):
        self.seen = x
        return super().forward(x)


class _RecordingCondition(NoCondition):
    def forward(self, image, origin_zyx):
        self.seen = image
        return None


def test_with_a_kept_window_the_networks_read_channel_0_and_the_intensities_channel_1():
    """preprocessing.keep_window_channel: descriptor and condition see the CLAHE channel, the intensity features the
    window kept beside it."""
    config = merge(cpu_config(), {"preprocessing": {"keep_window_channel": True},
                                  "density": {"condition": "none", "density": "gaussian", "intensity_sigmas_mm": "0",
                                              "intensity_histogram_bins": 0, "pool_stride_xyz": "2,2,1"}})
    descriptor = _RecordingDescriptor()
    built = build_screener_model(config, descriptor)
    assert built.image_channels == 2
    condition = _RecordingCondition()
    model = ScreenerModel(descriptor, condition, built.density, built.pool_stride_zyx, 0.0, built.intensity,
                          image_channels=built.image_channels)
    x = torch.rand(1, 2, 4, 6, 6)
    origin = torch.zeros(1, 3, dtype=torch.int64)
    y, _ = model.pooled_maps(x, origin)
    assert torch.equal(descriptor.seen, x[:, :1]) and torch.equal(condition.seen, x[:, :1])
    torch.testing.assert_close(y[:, 3:4], average_pool(100.0 * x[:, 1:], (1, 2, 2)))
    with pytest.raises(ValueError, match=r"\(B, 2, Z, Y, X\) patches"):
        model.pooled_maps(x[:, :1], origin)
    without = merge(config, {"preprocessing": {"keep_window_channel": False}})
    assert build_screener_model(without, _ConstantDescriptor()).image_channels == 1


def test_intensity_from_all_channels_appends_the_features_of_the_clahe_image_then_of_the_window():
    """density.intensity_from_all_channels: each stored channel gets its own intensity channels (S + K each), in
    channel order, after the descriptor's D."""
    config = merge(cpu_config(), {"preprocessing": {"keep_window_channel": True},
                                  "density": {"condition": "none", "density": "gaussian", "intensity_sigmas_mm": "0",
                                              "intensity_histogram_bins": 3, "pool_stride_xyz": "2,2,1",
                                              "intensity_from_all_channels": True}})
    model = build_screener_model(validate(config), _ConstantDescriptor())
    assert model.intensity_channels == (0, 1) and model.density.dim == 3 + 2 * (1 + 3)
    x = torch.rand(1, 2, 4, 6, 6)
    y, _ = model.pooled_maps(x, torch.zeros(1, 3, dtype=torch.int64))
    for offset, channel in ((3, 0), (7, 1)):
        expected = torch.cat([100.0 * x[:, channel:channel + 1], 100.0 * soft_histogram(x[:, channel:channel + 1], 3)],
                             dim=1)
        torch.testing.assert_close(y[:, offset:offset + 4], average_pool(expected, (1, 2, 2)))
    last = build_screener_model(merge(config, {"density": {"intensity_from_all_channels": False}}),
                                _ConstantDescriptor())
    assert last.intensity_channels == (1,) and last.density.dim == 3 + 4  # the window's only
    one_channel = build_screener_model(validate(merge(config, {"preprocessing": {"keep_window_channel": False}})),
                                       _ConstantDescriptor())
    assert one_channel.intensity_channels == (0,) and one_channel.density.dim == 3 + 4  # all = the only channel


def test_soft_histogram_matches_the_normalised_gaussian_memberships_voxel_by_voxel():
    rng = np.random.default_rng(1)
    image = rng.random((1, 1, 3, 4, 5)).astype(np.float32)
    bins = 5
    memberships = soft_histogram(torch.from_numpy(image), bins).numpy()
    assert memberships.shape == (1, bins, 3, 4, 5)
    for index in np.ndindex(3, 4, 5):
        x = float(image[(0, 0, *index)])
        raw = [math.exp(-0.5 * ((x - k / (bins - 1)) / (0.5 / (bins - 1))) ** 2) for k in range(bins)]
        np.testing.assert_allclose(memberships[(0, slice(None), *index)], np.array(raw) / sum(raw), rtol=1e-4,
                                   atol=1e-6)
        assert int(np.argmax(memberships[(0, slice(None), *index)])) == round(x * (bins - 1))  # nearest centre


def test_a_cells_histogram_tells_a_mixture_from_a_uniform_cell_of_the_same_mean():
    """Lung parenchyma with vessels and a hazy raise of attenuation can share a cell mean; not a histogram."""
    mixture = torch.tensor([0.1, 0.9] * 9).view(1, 1, 2, 3, 3)
    uniform = torch.full((1, 1, 2, 3, 3), 0.5)
    features = IntensityFeatures((0.0,), (1.0, 1.0, 1.0), scale=100.0, histogram_bins=5)
    pooled = [average_pool(features(x), (2, 3, 3)).flatten() for x in (mixture, uniform)]
    assert features.out_channels == 1 + 5
    assert pooled[0][0] == pytest.approx(pooled[1][0])  # the same mean intensity (x 100)
    torch.testing.assert_close(pooled[0][1:].sum(), torch.tensor(100.0))  # shares of the cell's voxels, in %
    assert pooled[1][3] > 75 and pooled[0][3] < 1  # the middle bin: most of the uniform cell, none of the mixture


def test_screener_model_appends_the_pooled_histogram_and_the_config_refuses_one_bin():
    config = merge(cpu_config(), {"preprocessing": {"keep_window_channel": False},
                                  "density": {"condition": "none", "density": "gaussian",
                                              "intensity_histogram_bins": 4, "pool_stride_xyz": "2,2,1"}})
    model = build_screener_model(config, _ConstantDescriptor())
    assert model.density.dim == 3 + 4
    x = torch.rand(1, 1, 4, 6, 6)
    y, _ = model.pooled_maps(x, torch.zeros(1, 3, dtype=torch.int64))
    torch.testing.assert_close(y[:, 3:], average_pool(100.0 * soft_histogram(x, 4), (1, 2, 2)))
    with pytest.raises(ScreenerError, match="density.intensity_histogram_bins"):
        validate(merge(cpu_config(), {"density": {"intensity_histogram_bins": 1}}))
    with pytest.raises(ValueError, match="histogram bins"):
        IntensityFeatures((), (1.0, 1.0, 1.0), scale=1.0, histogram_bins=0)
