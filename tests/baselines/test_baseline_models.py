"""The baselines' models: reconstruction and blend losses, the autoencoder's bottleneck, the scores."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from nnscreener.baselines.autoencoder import build_autoencoder_model, reconstruction_loss
from nnscreener.baselines.blend_regression import blend_factor_loss, build_blend_model
from nnscreener.errors import ScreenerError
from tests.helpers.fake_dataset import make_fake_preprocessed_dataset


@pytest.fixture
def plans(nnunet_env):
    return make_fake_preprocessed_dataset(nnunet_env, n_cases=1, shape_zyx=(16, 24, 24))


def test_reconstruction_losses_against_numpy():
    g = torch.Generator().manual_seed(0)
    x, r = torch.rand(2, 1, 4, 6, 5, generator=g), torch.rand(2, 1, 4, 6, 5, generator=g)
    diff = (r - x).numpy().astype(np.float64)
    assert float(reconstruction_loss(x, r, "l1")) == pytest.approx(np.abs(diff).mean(), rel=1e-6)
    assert float(reconstruction_loss(x, r, "l2")) == pytest.approx((diff ** 2).mean(), rel=1e-6)
    with pytest.raises(ScreenerError, match="l3"):
        reconstruction_loss(x, r, "l3")


def test_blend_loss_is_the_cross_entropy_and_is_minimal_at_the_target():
    target = torch.tensor([0.0, 0.3, 0.7, 1.0]).view(1, 1, 1, 1, 4)
    logits = torch.tensor([-1.0, 0.2, 2.0, 0.5]).view(1, 1, 1, 1, 4)
    p = torch.sigmoid(logits).double()
    expected = -(target * p.log() + (1 - target) * (1 - p).log()).mean()
    assert float(blend_factor_loss(logits, target)) == pytest.approx(float(expected), rel=1e-6)
    at_target = torch.logit(target.clamp(1e-4, 1 - 1e-4)).requires_grad_(True)
    blend_factor_loss(at_target, target).backward()
    assert at_target.grad.abs().max() < 1e-4  # sigmoid(logit) = target is the minimiser


def test_autoencoder_has_no_skips_and_its_score_is_the_smoothed_residual(plans):
    torch.manual_seed(0)
    model = build_autoencoder_model(plans).eval()
    spacing = plans.configuration_manager.spacing
    assert model.sigma_voxels_zyx == pytest.approx([3.0 / s for s in spacing])  # 3 mm in voxels
    ae = model.autoencoder
    x = torch.rand(2, 1, 16, 24, 24)
    with torch.no_grad():
        latent = ae.encode(x)
        recon = model(x)
    assert recon.shape == x.shape
    assert latent.shape == (2, plans.config.baseline_ae.latent_channels, 2, 3, 3)  # strides 1, 2, 2, 2
    score = model.anomaly_map(x, torch.zeros(2, 3, dtype=torch.int64))
    residual = (x - recon).abs().numpy()
    reference = np.stack([gaussian_filter(r[0].astype(np.float64), model.sigma_voxels_zyx, mode="nearest",
                                          truncate=3.0)[None] for r in residual])
    np.testing.assert_allclose(score.numpy(), reference, rtol=1e-4, atol=1e-5)


def test_autoencoder_output_depends_on_input_only_through_the_bottleneck(plans):
    """Replacing every encoder level but the deepest by noise changes nothing: no skip connection carries detail."""
    torch.manual_seed(0)
    ae = build_autoencoder_model(plans).autoencoder.eval()
    x = torch.rand(1, 1, 16, 24, 24)
    with torch.no_grad():
        reference = ae(x)
        levels = ae.encoder(x)
        assert isinstance(levels, list) and len(levels) == 4
        ae.encoder.forward = lambda _: [torch.randn_like(f) * 100 for f in levels[:-1]] + [levels[-1]]
        np.testing.assert_array_equal(ae(x).numpy(), reference.numpy())
        ae.encoder.forward = lambda _: levels[:-1] + [levels[-1] + 1]
        assert not torch.allclose(ae(x), reference)  # the bottleneck does matter


def test_blend_model_scores_are_probabilities_of_the_planned_unet(plans):
    torch.manual_seed(0)
    model = build_blend_model(plans).eval()
    assert type(model.unet).__name__ == "PlainConvUNet"
    x = torch.rand(1, 1, 16, 24, 24)
    score = model.anomaly_map(x, torch.zeros(1, 3, dtype=torch.int64))
    assert score.shape == x.shape and float(score.min()) >= 0 and float(score.max()) <= 1
    np.testing.assert_allclose(score.numpy(), torch.sigmoid(model(x)).detach().numpy(), rtol=1e-6)


def test_blend_model_starts_at_the_first_batchs_anomaly_prior_once_and_never_after_loading(plans):
    def output_bias(model):
        return float(model.unet.decoder.seg_layers[-1].bias.detach()[0])

    def logit(p):
        return float(np.log(p / (1 - p)))

    torch.manual_seed(0)
    model = build_blend_model(plans)
    target = torch.zeros(2, 1, 16, 24, 24)
    target[0, 0, :4, :6, :6] = 0.8  # 0.8 x 144 / 18432 voxels: prior 0.00625

    model.initialize_once_from(target)
    assert output_bias(model) == pytest.approx(logit(0.00625), rel=1e-5)
    model.initialize_once_from(torch.full_like(target, 0.3))  # later batches leave it
    assert output_bias(model) == pytest.approx(logit(0.00625), rel=1e-5)
    untrained = build_blend_model(plans)
    untrained.initialize_once_from(torch.zeros_like(target))  # a batch without anomalies: the smallest prior
    assert output_bias(untrained) == pytest.approx(logit(1e-3), rel=1e-5)

    loaded = build_blend_model(plans)
    loaded.load_state_dict({k: v for k, v in model.state_dict().items() if k != "initialized"})  # an older file
    loaded.initialize_once_from(torch.full_like(target, 0.3))
    assert output_bias(loaded) == output_bias(model)


@pytest.mark.parametrize("builder", ["autoencoder", "blend", "draem"])
def test_every_parameter_of_a_baseline_gets_a_gradient(plans, builder):
    """No unused parameters (multi-GPU training with DDP refuses them), e.g. the UNet's lower-level outputs."""
    from nnscreener.baselines.draem import build_draem_model

    build = {"autoencoder": build_autoencoder_model, "blend": build_blend_model, "draem": build_draem_model}[builder]
    torch.manual_seed(0)
    model = build(plans)
    out = model(torch.rand(1, 1, 16, 24, 24))
    sum(o.sum() for o in (out if isinstance(out, tuple) else (out,))).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, missing
