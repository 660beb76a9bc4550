"""baseline_draem: its anomalies, SSIM, focal loss, score smoothing and model, against slow references."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from scipy.ndimage import uniform_filter
from skimage.metrics import structural_similarity

from nnscreener.baselines.draem import box_smooth, build_draem_model, focal_loss, odd_window, ssim3d
from nnscreener.baselines.synthetic_anomalies import make_draem_anomaly, noise_region
from nnscreener.config import get_preset
from tests.helpers.fake_dataset import make_fake_preprocessed_dataset

SHAPE = (12, 20, 16)
SPACING = (4.5, 3.0, 3.0)


def config(**changes):
    return dataclasses.replace(get_preset("cpu").baseline_draem, **changes)


@pytest.mark.parametrize("source", ["foreign", "intensity"])
def test_draem_anomaly_has_a_binary_target_on_the_blended_region_only(source):
    rng = np.random.default_rng(0)
    image, foreign = rng.random(SHAPE, dtype=np.float32), rng.random(SHAPE, dtype=np.float32)
    cfg = config(p_anomaly=1.0, source_weights=(1.0, 0.0) if source == "foreign" else (0.0, 1.0))
    for seed in range(6):
        sample = make_draem_anomaly(image, foreign, SPACING, cfg, np.random.default_rng(seed))
        beta = 1 - sample.alpha
        assert sample.kind == source and cfg.beta_range[0] <= beta <= cfg.beta_range[1]
        assert sample.region.any() and set(np.unique(sample.target)) <= {0.0, 1.0}
        np.testing.assert_array_equal(sample.target, sample.region.astype(np.float32))
        np.testing.assert_array_equal(sample.image[~sample.region], image[~sample.region])
        if source == "foreign":  # DRAEM's formula: beta * image + (1 - beta) * source
            expected = beta * image + (1 - beta) * foreign
            np.testing.assert_allclose(sample.image[sample.region], expected[sample.region], rtol=1e-5, atol=1e-6)
    same = [make_draem_anomaly(image, foreign, SPACING, cfg, np.random.default_rng(3)) for _ in range(2)]
    np.testing.assert_array_equal(same[0].image, same[1].image)
    normal = make_draem_anomaly(image, foreign, SPACING, config(p_anomaly=0.0), np.random.default_rng(0))
    assert not normal.target.any() and np.array_equal(normal.image, image)


def test_noise_regions_cover_the_share_above_the_threshold_and_are_blobs_not_speckle():
    rng = np.random.default_rng(0)
    cfg = config(noise_scale_mm_range=(20.0, 20.0), noise_threshold=1.0)
    shares = [noise_region((24, 40, 40), SPACING, cfg, rng).mean() for _ in range(20)]
    assert 0.08 < np.mean(shares) < 0.25  # P(N(0, 1) > 1) = 0.16
    region = noise_region((24, 40, 40), SPACING, cfg, np.random.default_rng(1))
    speckle = np.random.default_rng(2).random(region.shape) < region.mean()  # the same share, voxel-wise random

    def boundaries(mask):
        return sum(np.count_nonzero(np.diff(mask, axis=a)) for a in range(3))

    assert boundaries(region) < 0.4 * boundaries(speckle)  # smooth blobs of ~7-voxel cells, not speckle


def test_ssim_matches_skimage_and_focal_loss_the_formula():
    g = torch.Generator().manual_seed(0)
    a = torch.rand(1, 1, 9, 12, 10, generator=g)
    b = (a + 0.2 * torch.rand(1, 1, 9, 12, 10, generator=g)).clamp(0, 1)
    expected = structural_similarity(a[0, 0].numpy().astype(np.float64), b[0, 0].numpy().astype(np.float64),
                                     win_size=7, data_range=1.0)
    assert float(ssim3d(a, b, 7)) == pytest.approx(expected, rel=1e-4)
    assert float(ssim3d(a, a, 7)) == pytest.approx(1.0, abs=1e-5)
    logits = torch.tensor([-2.0, -0.5, 0.3, 1.5]).view(1, 1, 1, 1, 4)
    target = torch.tensor([0.0, 1.0, 0.0, 1.0]).view(1, 1, 1, 1, 4)
    p = torch.sigmoid(logits).double()
    p_t = torch.where(target > 0, p, 1 - p)
    assert float(focal_loss(logits, target, 2.0)) == pytest.approx(float((-(1 - p_t) ** 2 * p_t.log()).mean()),
                                                                   rel=1e-6)
    assert float(focal_loss(logits, target, 0.0)) == pytest.approx(float(-p_t.log().mean()), rel=1e-6)


def test_score_smoothing_is_a_mean_filter_of_the_window_in_mm():
    assert odd_window(9.0, (4.5, 3.0, 1.5)) in {(1, 3, 5), (3, 3, 5)}
    assert odd_window(9.0, (3.0, 3.0, 3.0)) == (3, 3, 3) and odd_window(1.0, (3.0, 3.0, 3.0)) == (1, 1, 1)
    x = torch.rand(2, 1, 6, 9, 7, generator=torch.Generator().manual_seed(1))
    reference = np.stack([uniform_filter(v[0].numpy().astype(np.float64), (3, 5, 1), mode="nearest")[None]
                          for v in x])
    np.testing.assert_allclose(box_smooth(x, (3, 5, 1)).numpy(), reference, rtol=1e-5, atol=1e-6)


def test_draem_model_scores_in_unit_range_from_image_and_reconstruction(nnunet_env):
    plans = make_fake_preprocessed_dataset(nnunet_env, n_cases=1, shape_zyx=(16, 24, 24))
    torch.manual_seed(0)
    model = build_draem_model(plans).eval()
    assert model.window_voxels_zyx == odd_window(9.0, plans.configuration_manager.spacing)
    x = torch.rand(1, 1, 16, 24, 24)
    reconstruction, logits = model(x)
    assert reconstruction.shape == logits.shape == x.shape
    score = model.anomaly_map(x, torch.zeros(1, 3, dtype=torch.int64))
    expected = box_smooth(torch.sigmoid(model.discriminative(torch.cat([x, reconstruction], 1))),
                          model.window_voxels_zyx)
    np.testing.assert_allclose(score.numpy(), expected.detach().numpy(), rtol=1e-5, atol=1e-6)
    assert 0 <= float(score.min()) and float(score.max()) <= 1


@pytest.mark.parametrize("setting", ["p_anomaly=-0.1", "beta_range=1,1", "source_weights=0,0",
                                     "noise_scale_mm_range=0,5"])
def test_impossible_draem_settings_are_refused_by_name(setting):
    from nnscreener.config import merge, parse_set_overrides, validate
    from nnscreener.errors import ScreenerError

    with pytest.raises(ScreenerError, match=f"baseline_draem.{setting.split('=')[0]}="):
        validate(merge(get_preset("cpu"), parse_set_overrides([f"baseline_draem.{setting}"])))
