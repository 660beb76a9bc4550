import dataclasses

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from nnscreener.config import AugmentationConfig
from nnscreener.data.augmentations import (ViewAugmentation, add_gaussian_noise, apply_gamma, apply_view_augmentation,
                                           augment_view, blur_in_plane, sample_view_augmentation, scale_brightness,
                                           scale_contrast, sharpen_in_plane)

NEVER = AugmentationConfig(p_blur_or_sharpen=0.0, p_noise=0.0, p_brightness=0.0, p_contrast=0.0, p_gamma=0.0)
ALWAYS = AugmentationConfig(p_blur_or_sharpen=1.0, p_noise=1.0, p_brightness=1.0, p_contrast=1.0, p_gamma=1.0)


def smooth_view(shape=(1, 8, 32, 32), seed=0):
    """A smooth random (C, Z, Y, X) view in [0, 1] with min exactly 0 and max exactly 1."""
    rng = np.random.default_rng(seed)
    x = gaussian_filter(rng.standard_normal(shape), sigma=(0, 1, 2, 2))
    x = (x - x.min()) / np.ptp(x)
    return torch.from_numpy(x.astype(np.float32))


def scipy_in_plane(view, sigma_y, sigma_x):
    """Reference: scipy's Gaussian with bgv2's kernel radius (3 sigma) and reflect-without-edge padding."""
    out = [gaussian_filter(c.double().numpy(), sigma=(0, sigma_y, sigma_x), mode="mirror", truncate=3.0)
           for c in view]
    return np.stack(out)


def test_probability_zero_leaves_the_view_unchanged_and_input_is_never_modified():
    view = smooth_view()
    before = view.clone()
    out = augment_view(view, (2.25, 1.5, 1.5), NEVER, np.random.default_rng(0))
    torch.testing.assert_close(out, before, rtol=0, atol=0)
    out = augment_view(view, (2.25, 1.5, 1.5), ALWAYS, np.random.default_rng(0))
    torch.testing.assert_close(view, before, rtol=0, atol=0)
    assert not torch.equal(out, before) and out.dtype == torch.float32 and out.shape == view.shape


def test_blur_is_in_plane_only():
    z_profile = torch.linspace(0, 1, 8).view(1, 8, 1, 1)
    view = z_profile.expand(1, 8, 16, 16).contiguous()  # constant in-plane, varies along z
    torch.testing.assert_close(blur_in_plane(view, 1.5, (2.25, 1.5, 1.5)), view, rtol=0, atol=1e-6)
    impulse = torch.zeros(1, 8, 16, 16)
    impulse[0, 4, 8, 8] = 1.0
    out = blur_in_plane(impulse, 1.5, (2.25, 1.5, 1.5))
    assert out[0, 4].sum() == pytest.approx(1.0, abs=1e-5) and out[0, 4, 8, 7] > 0
    assert out[0, [0, 1, 2, 3, 5, 6, 7]].abs().max() == 0


@pytest.mark.parametrize("sigma_mm, spacing_zyx, voxel_sigma_yx", [
    (1.5, (2.25, 1.5, 1.5), (1.0, 1.0)),
    (3.0, (2.25, 1.5, 1.5), (2.0, 2.0)),
    (3.0, (4.5, 3.0, 3.0), (1.0, 1.0)),  # same mm sigma on a 2x coarser view: half the voxel sigma
    (3.0, (2.25, 1.5, 3.0), (2.0, 1.0)),  # anisotropic in-plane spacing
])
def test_blur_sigma_is_in_mm_of_the_view(sigma_mm, spacing_zyx, voxel_sigma_yx):
    view = smooth_view(seed=1)
    out = blur_in_plane(view, sigma_mm, spacing_zyx)
    np.testing.assert_allclose(out.numpy(), scipy_in_plane(view, *voxel_sigma_yx), atol=1e-5)


def test_sharpen_adds_alpha_times_the_high_frequencies():
    view = smooth_view(seed=2)
    out = sharpen_in_plane(view, 1.5, 0.7, (2.25, 1.5, 1.5))
    expected = view.numpy() + 0.7 * (view.numpy() - scipy_in_plane(view, 1.0, 1.0))
    np.testing.assert_allclose(out.numpy(), expected, atol=1e-5)


def test_noise_has_the_requested_std_and_is_reproducible_by_seed():
    view = torch.full((1, 32, 32, 32), 0.5)
    out = add_gaussian_noise(view, 0.05, seed=3)
    noise = (out - view).double()
    assert noise.mean().abs() < 0.002
    assert noise.std().item() == pytest.approx(0.05, rel=0.02)
    torch.testing.assert_close(add_gaussian_noise(view, 0.05, seed=3), out, rtol=0, atol=0)
    assert not torch.equal(add_gaussian_noise(view, 0.05, seed=4), out)


def test_brightness_scales_the_mean_and_clips_to_the_view_range():
    view = smooth_view(seed=4)  # min 0: a factor < 1 clips nothing
    out = scale_brightness(view, 0.8)
    assert out.mean().item() == pytest.approx(0.8 * view.mean().item(), rel=1e-6)
    out = scale_brightness(view, 1.2)
    np.testing.assert_allclose(out.numpy(), np.clip(1.2 * view.numpy(), 0.0, 1.0), atol=1e-6)


def test_contrast_and_gamma_match_their_formulas():
    view = smooth_view(seed=5) * 0.6 + 0.2  # range [0.2, 0.8]
    x = view.numpy().astype(np.float64)
    expected = np.clip((x - x.mean()) * 1.15 + x.mean(), x.min(), x.max())
    np.testing.assert_allclose(scale_contrast(view, 1.15).numpy(), expected, atol=1e-5)
    lo, hi = x.min(), x.max()
    expected = ((x - lo) / (hi - lo)) ** 0.8 * (hi - lo) + lo
    np.testing.assert_allclose(apply_gamma(view, 0.8).numpy(), expected, atol=1e-5)


def test_apply_composes_the_operations_in_the_documented_order():
    view = smooth_view(seed=6)
    spacing = (4.5, 3.0, 3.0)
    params = ViewAugmentation(blur_sigma_mm=2.0, noise_std=0.03, noise_seed=11, brightness=1.1, contrast=0.9,
                              gamma=1.2)
    expected = apply_gamma(scale_contrast(scale_brightness(
        add_gaussian_noise(blur_in_plane(view, 2.0, spacing), 0.03, 11), 1.1), 0.9), 1.2)
    torch.testing.assert_close(apply_view_augmentation(view, params, spacing), expected, rtol=0, atol=0)


def test_sampling_follows_the_probabilities_and_ranges():
    rng = np.random.default_rng(7)
    cfg = dataclasses.replace(ALWAYS, p_noise=0.5, sharpen_share=0.25)
    draws = [sample_view_augmentation(cfg, rng) for _ in range(2000)]
    sharpened = sum(d.sharpen_sigma_mm is not None for d in draws)
    blurred = sum(d.blur_sigma_mm is not None for d in draws)
    assert sharpened + blurred == 2000 and 400 < sharpened < 600  # Binomial(2000, 0.25): mean 500, sd 19
    assert 900 < sum(d.noise_std is not None for d in draws) < 1100  # Binomial(2000, 0.5): sd 22
    assert all(d.brightness is not None and d.contrast is not None and d.gamma is not None for d in draws)
    assert all(cfg.brightness[0] <= d.brightness <= cfg.brightness[1] for d in draws)
    assert all(cfg.gamma[0] <= d.gamma <= cfg.gamma[1] for d in draws)
    assert all(cfg.sharpen_alpha[0] <= d.sharpen_alpha <= cfg.sharpen_alpha[1] for d in draws
               if d.sharpen_sigma_mm is not None)
    assert all(d == ViewAugmentation(noise_seed=d.noise_seed)
               for d in (sample_view_augmentation(NEVER, rng) for _ in range(50)))


def test_same_seed_same_augmentation():
    view = smooth_view(seed=8)
    a = augment_view(view, (2.25, 1.5, 1.5), AugmentationConfig(), np.random.default_rng(9))
    b = augment_view(view, (2.25, 1.5, 1.5), AugmentationConfig(), np.random.default_rng(9))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
