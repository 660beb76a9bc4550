"""clahe_3d against scikit-image's equalize_adapthist (the definition Screener uses)."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter
from skimage.exposure import equalize_adapthist
from skimage.exposure._adapthist import clip_histogram

from nnscreener.planning.clahe import _clip_and_redistribute, clahe_3d


def _ct_like(shape, seed=0):
    """Clipped-and-rescaled CT-like volume: air, a soft-tissue ellipse with a lung, noise."""
    rng = np.random.default_rng(seed)
    Z, Y, X = shape
    _, y, x = np.mgrid[:Z, :Y, :X]
    hu = np.full(shape, -1000.0)
    hu[((y - Y / 2) / (0.38 * Y)) ** 2 + ((x - X / 2) / (0.45 * X)) ** 2 <= 1] = 40.0
    hu[((y - 0.45 * Y) / (0.17 * Y)) ** 2 + ((x - 0.33 * X) / (0.12 * X)) ** 2 <= 1] = -850.0
    hu += rng.normal(0, 20, shape)
    return np.clip((hu + 1000) / 1300, 0, 1).astype(np.float32)


def _smooth(shape, seed=1):
    v = gaussian_filter(np.random.default_rng(seed).random(shape), 2)
    return ((v - v.min()) / (v.max() - v.min())).astype(np.float32)


@pytest.mark.parametrize("shape", [(20, 33, 41), (9, 17, 30), (24, 24, 24)])
@pytest.mark.parametrize("clip_limit", [0.05, 0.01, 0.0])
@pytest.mark.parametrize("make", [_ct_like, _smooth])
def test_matches_skimage_default_kernel(shape, clip_limit, make):
    volume = make(shape)
    ours = clahe_3d(volume, clip_limit=clip_limit)
    ref = equalize_adapthist(volume, clip_limit=clip_limit)
    assert ours.shape == volume.shape and ours.dtype == np.float32
    diff = np.abs(ours - ref)
    # agreement up to one grey level of 2**14 (float rounding before skimage's integer truncation)
    assert diff.max() < 2e-4 and diff.mean() < 1e-5, (diff.max(), diff.mean())


@pytest.mark.parametrize("kernel_size, nbins", [((5, 7, 9), 256), ((4, 4, 4), 128), ((3, 10, 6), 64)])
def test_matches_skimage_custom_kernel_and_bins(kernel_size, nbins):
    volume = _ct_like((18, 30, 26), seed=3)
    ours = clahe_3d(volume, clip_limit=0.03, nbins=nbins, kernel_size=kernel_size)
    ref = equalize_adapthist(volume, kernel_size=kernel_size, clip_limit=0.03, nbins=nbins)
    assert np.abs(ours - ref).max() < 2e-4


def test_histogram_clipping_equals_skimage_per_tile():
    rng = np.random.default_rng(0)
    hist = rng.integers(0, 40, size=(64, 256))
    hist[:, :5] += rng.integers(200, 5000, size=(64, 5))  # CT-like peaks (air, soft tissue)
    hist[::7] = 0
    hist[::7, 3] = 3000  # a single-bin tile
    for clip in (1, 17, 150, 10_000):
        reference = np.stack([clip_histogram(h.copy(), clip) for h in hist])
        np.testing.assert_array_equal(_clip_and_redistribute(hist.copy(), clip), reference)


def test_constant_volume_behaves_like_skimage():
    for value in (0.0, 0.3, 1.0):
        volume = np.full((10, 12, 14), value, np.float32)
        np.testing.assert_array_equal(clahe_3d(volume, 0.05), equalize_adapthist(volume, clip_limit=0.05))


def test_rejects_bad_input():
    with pytest.raises(ValueError, match="\\[0, 1\\]"):
        clahe_3d(np.full((8, 8, 8), 1.5, np.float32))
    with pytest.raises(ValueError, match="NaN"):
        clahe_3d(np.full((8, 8, 8), np.nan, np.float32))
    with pytest.raises(ValueError, match="\\(z, y, x\\)"):
        clahe_3d(np.zeros((8, 8), np.float32))
    with pytest.raises(ValueError, match="kernel_size"):
        clahe_3d(np.zeros((8, 8, 8), np.float32), kernel_size=(0, 2, 2))
