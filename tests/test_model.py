"""ScreenerModel: shapes, pooling stride, noise only in training, frozen parts, and the density-folder round trip."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from nnscreener import paths
from nnscreener.config import merge
from nnscreener.density.conditions import NoCondition, SinCosCondition
from nnscreener.density.gaussian import MarginalGaussian
from nnscreener.errors import ScreenerError
from nnscreener.checkpoints import FINAL_CHECKPOINT, save_checkpoint
from nnscreener.model import ScreenerModel, build_screener_model, load_screener_model
from nnscreener.networks.dense_net import build_dense_net
from tests.helpers.fake_dataset import make_fake_preprocessed_dataset

D = 3


class _ScaledCopies(nn.Module):
    """A pointwise stand-in descriptor: channel k = (k + 1) * x."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.arange(1.0, D + 1).view(1, D, 1, 1, 1))

    def forward(self, x):
        return x * self.scale


def _gaussian_model(stride_zyx=(2, 3, 1), noise_std=0.0) -> ScreenerModel:
    density = MarginalGaussian(D)
    with torch.no_grad():
        density.mean.copy_(torch.tensor([0.1, -0.2, 0.3]))
        density.raw_log_var.copy_(torch.tensor([0.0, 0.5, -1.0]))
    return ScreenerModel(_ScaledCopies(), NoCondition(), density, stride_zyx, noise_std)


def test_anomaly_map_pools_with_the_configured_stride():
    model = _gaussian_model(stride_zyx=(2, 3, 1))
    x = torch.rand(2, 1, 4, 7, 5)
    origin = torch.zeros(2, 3, dtype=torch.int64)
    nll = model.anomaly_map(x, origin)
    assert nll.shape == (2, 1, 2, 2, 5) and nll.dtype == torch.float32
    mean = model.density.mean.detach().numpy()
    var = np.exp(model.density.log_variance().detach().numpy())
    xs = x.numpy()
    for b in range(2):
        for k in range(2):
            for j in range(2):
                for i in range(5):
                    pooled_x = xs[b, 0, 2 * k:2 * k + 2, 3 * j:3 * j + 3, i].mean()  # the 7th y row is dropped
                    y = pooled_x * np.arange(1, D + 1)
                    expected = 0.5 * np.sum((y - mean) ** 2 / var + np.log(2 * np.pi * var))
                    assert abs(float(nll[b, 0, k, j, i]) - expected) < 1e-5


def test_noise_is_added_in_training_only():
    model = _gaussian_model(noise_std=0.1)
    x, origin = torch.rand(1, 1, 4, 6, 5), torch.zeros(1, 3, dtype=torch.int64)
    model.eval()
    torch.testing.assert_close(model(x, origin), model.anomaly_map(x, origin))
    model.train()
    noisy_a, noisy_b = model(x, origin), model(x, origin)
    assert not torch.allclose(noisy_a, noisy_b)
    torch.testing.assert_close(model.anomaly_map(x, origin), model.anomaly_map(x, origin))  # never noised


def test_latent_score_is_the_density_latent_energy_and_training_stays_on_the_nll():
    model = _gaussian_model()
    x, origin = torch.rand(2, 1, 4, 6, 5), torch.zeros(2, 3, dtype=torch.int64)
    nll = model.anomaly_map(x, origin)
    model.score = "latent"
    latent = model.anomaly_map(x, origin)
    y, _ = model.pooled_maps(x, origin)
    torch.testing.assert_close(latent, model.density.latent_energy(y))
    volume = 0.5 * (model.density.log_variance() + np.log(2 * np.pi)).sum()
    torch.testing.assert_close(nll - latent, volume.expand_as(nll))
    torch.testing.assert_close(model.eval()(x, origin), nll)  # the training objective is the NLL
    torch.testing.assert_close(model.anomaly_map_and_features(x, origin)[:, :1], latent)  # distillation targets
    model.score = "max"
    with pytest.raises(ScreenerError, match="unknown anomaly score 'max'"):
        model.anomaly_map(x, origin)


def test_only_the_density_is_trained():
    model = _gaussian_model()
    model.train()
    assert not model.descriptor.training
    assert all(not p.requires_grad for p in model.descriptor.parameters())
    loss = model(torch.rand(1, 1, 4, 6, 5), torch.zeros(1, 3, dtype=torch.int64)).mean()
    loss.backward()
    assert model.density.mean.grad is not None and model.descriptor.scale.grad is None


def test_sincos_condition_grid_matches_the_pooled_descriptor():
    condition = SinCosCondition(6, (2.0, 1.0, 1.0), (2, 3, 1))
    model = ScreenerModel(_ScaledCopies(), condition, MarginalGaussian(D), (2, 3, 1), 0.0)
    y, c = model.pooled_maps(torch.rand(2, 1, 4, 7, 5), torch.tensor([[0, 0, 0], [5, -3, 2]]))
    assert y.shape == (2, D, 2, 2, 5) and c.shape == (2, 6, 2, 2, 5)


def test_bad_inputs_are_rejected():
    model = _gaussian_model()
    with pytest.raises(ValueError, match="B, 1, Z, Y, X"):
        model.anomaly_map(torch.rand(1, 2, 4, 6, 5), torch.zeros(1, 3))
    with pytest.raises(ValueError, match="origin_zyx"):
        model.anomaly_map(torch.rand(2, 1, 4, 6, 5), torch.zeros(1, 3))
    with pytest.raises(ValueError, match="smaller than the pooling stride"):
        model.anomaly_map(torch.rand(1, 1, 1, 6, 5), torch.zeros(1, 3))


def _save_density_folder(plans, config, weights, stored_config) -> Path:
    """Writes dataset 991's density result folder as the trainer does, ``stored_config`` as the checkpoint's."""
    variant = paths.density_variant(config.density.condition, config.density.density)
    folder = paths.stage_folder(991, "density", variant, plans.plans_name)
    folder.mkdir(parents=True)
    save_checkpoint({"stage": "density", "screener_config": stored_config, "network_weights": weights},
                    folder / FINAL_CHECKPOINT)
    (folder / "plans.json").write_text(json.dumps(plans.plans))
    (folder / "dataset.json").write_text(json.dumps(plans.dataset_json))
    return folder


@pytest.mark.parametrize("condition,density", [("masking", "flow"), ("sincos", "gaussian")])
def test_density_folder_round_trip(nnunet_env, condition, density):
    """build -> save like the trainer -> load_screener_model gives the same finite maps."""
    plans = make_fake_preprocessed_dataset(nnunet_env, dataset_id=991, n_cases=1, shape_zyx=(8, 16, 16))
    config = merge(plans.config, {"density": {"condition": condition, "density": density, "flow_blocks": 2,
                                              "flow_hidden": 8, "gaussian_hidden": 8}})
    plans = dataclasses.replace(plans, config=config)
    torch.manual_seed(0)
    model = build_screener_model(config, build_dense_net(plans, 1),
                                 build_dense_net(plans, 2) if condition == "masking" else None)
    patch_zyx = config.network.patch_size_zyx
    x = torch.rand(2, config.preprocessing.channels, *patch_zyx)
    origin = torch.tensor([[0, 0, 0], [-4, 7, 3]])
    model.train()
    model(x, origin)  # first forward: data-dependent ActNorm initialisation, as in training
    expected = model.anomaly_map(x, origin)
    folder = _save_density_folder(plans, config, model.state_dict(), config.to_dict())

    loaded, loaded_config = load_screener_model(folder, "cpu")
    assert loaded_config == config and not loaded.training
    pooled = tuple(p // s for p, s in zip(patch_zyx, config.density.pool_stride_zyx))
    with torch.inference_mode():
        got = loaded.anomaly_map(x, origin)
    assert got.shape == (2, 1, *pooled) and torch.isfinite(got).all()
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-5)


def test_checkpoint_from_before_the_histogram_loads_without_it(nnunet_env):
    """A stored config lacks the fields added after it was written; they take the class default (the behaviour
    before them), not the current value of the preset it names: a cpu density checkpoint trained before the cpu
    preset appended 8 histogram channels to y still loads (its flow has d = 32 input channels, not 40)."""
    plans = make_fake_preprocessed_dataset(nnunet_env, dataset_id=991, n_cases=1, shape_zyx=(8, 16, 16))
    assert plans.config.preset == "cpu" and plans.config.density.intensity_histogram_bins > 0
    config = merge(plans.config, {"density": {"intensity_histogram_bins": 0, "flow_blocks": 2, "flow_hidden": 8}})
    model = build_screener_model(config, build_dense_net(plans, 1), build_dense_net(plans, 2))
    stored = config.to_dict()
    del stored["density"]["intensity_histogram_bins"]  # as written before the field existed
    folder = _save_density_folder(plans, config, model.state_dict(), stored)

    loaded, loaded_config = load_screener_model(folder, "cpu")
    assert loaded_config.density.intensity_histogram_bins == 0 and loaded_config == config
    assert loaded.intensity is None


def test_load_screener_model_names_what_is_missing(nnunet_env, tmp_path):
    with pytest.raises(ScreenerError, match="checkpoint_final.pth"):
        load_screener_model(tmp_path / "nothing_here")
    folder = tmp_path / "descriptor_folder"
    folder.mkdir()
    torch.save({"stage": "descriptor", "screener_config": {}}, folder / "checkpoint_final.pth")
    with pytest.raises(ScreenerError, match="not a density checkpoint"):
        load_screener_model(folder)
