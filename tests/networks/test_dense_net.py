"""DenseFeatureNet: the plans' UNet plus a linear multi-scale head (sum of upsampled per-level 1x1x1 convs)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.ndimage import zoom

from tests.helpers.fake_dataset import make_fake_preprocessed_dataset
from nnscreener.errors import ScreenerError
from nnscreener.networks.dense_net import build_dense_net, features_at, load_dense_net


@pytest.fixture
def plans(nnunet_env):
    return make_fake_preprocessed_dataset(nnunet_env, n_cases=1, shape_zyx=(16, 24, 24))


def test_output_is_d_channels_at_full_resolution(plans):
    torch.manual_seed(0)
    net = build_dense_net(plans, in_channels=2, embedding_dim=7)
    x = torch.rand(2, 2, 16, 24, 32)
    assert net(x).shape == (2, 7, 16, 24, 32)
    assert net.in_channels == 2 and net.embedding_dim == 7 and net.shape_divisor_zyx == (8, 8, 8)
    assert build_dense_net(plans, in_channels=1).embedding_dim == plans.config.network.embedding_dim


def test_head_is_the_sum_of_upsampled_level_projections(plans):
    """Reference: capture each decoder level's features, apply its 1x1x1 conv as a matrix product, upsample with
    scipy (order-1, half-pixel grid = trilinear, align_corners=False) and sum."""
    torch.manual_seed(0)
    net = build_dense_net(plans, in_channels=1, embedding_dim=5).double().eval()
    seg_layers = net.unet.decoder.seg_layers
    captured = {}
    hooks = [layer.register_forward_hook(lambda m, inp, out, i=i: captured.__setitem__(i, inp[0]))
             for i, layer in enumerate(seg_layers)]
    x = torch.rand(1, 1, 16, 24, 24, dtype=torch.float64)
    with torch.no_grad():
        out = net(x)[0].numpy()
    for h in hooks:
        h.remove()
    expected = np.zeros_like(out)
    for i, layer in enumerate(seg_layers):
        feats = captured[i][0].numpy()  # (C_l, z_l, y_l, x_l)
        w = layer.weight[:, :, 0, 0, 0].detach().numpy()  # (d, C_l)
        proj = np.einsum("dc,czyx->dzyx", w, feats) + layer.bias.detach().numpy()[:, None, None, None]
        factor = out.shape[1] // proj.shape[1]
        expected += np.stack([zoom(p, factor, order=1, mode="nearest", grid_mode=True) for p in proj])
    assert len(seg_layers) == 3  # one 1x1x1 conv per decoder level (4 stages -> 3 levels)
    np.testing.assert_allclose(out, expected, rtol=1e-10, atol=1e-10)


def test_head_is_linear_without_final_activation(plans):
    """With the 1x1 weights zeroed the map is the constant sum of the level biases (no norm / activation after)."""
    net = build_dense_net(plans, in_channels=1, embedding_dim=4)
    with torch.no_grad():
        biases = torch.zeros(4)
        for layer in net.unet.decoder.seg_layers:
            layer.weight.zero_()
            layer.bias.copy_(torch.linspace(-3, 2, 4))
            biases += layer.bias
        out = net(torch.rand(1, 1, 8, 16, 16))
    torch.testing.assert_close(out, biases[None, :, None, None, None].expand_as(out), rtol=0, atol=1e-6)


def test_indivisible_shape_raises(plans):
    net = build_dense_net(plans, in_channels=1)
    with pytest.raises(ValueError, match="divisible"):
        net(torch.rand(1, 1, 12, 16, 16))


def test_features_at_reads_exact_voxels():
    fmap = torch.randn(2, 3, 4, 5, 6)
    idx = torch.stack([torch.stack([torch.randint(0, s, (7,)) for s in (4, 5, 6)], dim=1) for _ in range(2)])
    got = features_at(fmap, idx)
    assert got.shape == (2, 7, 3)
    for b in range(2):
        for i in range(7):
            z, y, x = idx[b, i].tolist()
            torch.testing.assert_close(got[b, i], fmap[b, :, z, y, x], rtol=0, atol=0)


def test_load_dense_net_needs_a_trained_folder(tmp_path):
    with pytest.raises(ScreenerError, match="checkpoint_final.pth"):
        load_dense_net(tmp_path / "descriptor__vicreg_d32__nnScreenerPlans_cpu")
