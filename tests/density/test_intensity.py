"""Smoothed-intensity channels appended to the descriptor: against scipy's Gaussian filter, and in the model."""
from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

from nnscreener.config import cpu_config, merge
from nnscreener.density.conditions import average_pool
from nnscreener.density.intensity import IntensityFeatures
from nnscreener.model import build_screener_model


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
    config = merge(cpu_config(), {"density": {"condition": "none", "density": "gaussian",
                                              "intensity_sigmas_mm": "0,6", "pool_stride_xyz": "2,2,1"}})
    model = build_screener_model(config, _ConstantDescriptor())
    assert model.density.dim == 3 + 2
    x = torch.rand(1, 1, 4, 6, 6)
    y, c = model.pooled_maps(x, torch.zeros(1, 3, dtype=torch.int64))
    assert c is None and y.shape == (1, 5, 4, 3, 3)
    torch.testing.assert_close(y[:, 3:4], average_pool(100.0 * x, (1, 2, 2)))  # sigma 0: the image itself
    assert torch.equal(y[:, :3], torch.zeros(1, 3, 4, 3, 3))
