"""SSL heads: Linear-LayerNorm-GELU blocks and a bias-free last Linear, widths from the config."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from nnscreener.config import SSLConfig, cpu_config
from nnscreener.errors import ScreenerError
from nnscreener.networks.heads import MLPHead, build_ssl_head


def test_layer_structure_and_output_width():
    head = MLPHead(32, (64, 48, 16))
    kinds = [type(m) for m in head.layers]
    assert kinds == [nn.Linear, nn.LayerNorm, nn.GELU, nn.Linear, nn.LayerNorm, nn.GELU, nn.Linear]
    assert head.layers[-1].bias is None and head.layers[0].bias is not None
    assert [m.out_features for m in head.layers if isinstance(m, nn.Linear)] == [64, 48, 16]
    assert head(torch.randn(10, 32)).shape == (10, 16)


def test_forward_matches_manual_composition():
    torch.manual_seed(0)
    head = MLPHead(4, (6, 3))
    x = torch.randn(5, 4)
    lin1, norm, _, lin2 = head.layers
    h = x @ lin1.weight.T + lin1.bias
    h = (h - h.mean(1, keepdim=True)) / torch.sqrt(h.var(1, unbiased=False, keepdim=True) + norm.eps)
    h = h * norm.weight + norm.bias
    h = 0.5 * h * (1 + torch.erf(h / 2 ** 0.5))
    torch.testing.assert_close(head(x), h @ lin2.weight.T)


def test_objective_picks_expander_or_projector():
    ssl = cpu_config().ssl
    assert build_ssl_head(ssl, 32).out_dim == ssl.vicreg_expander_dims[-1]
    infonce = SSLConfig(objective="infonce", infonce_projector_dims=(20, 8))
    assert build_ssl_head(infonce, 32).out_dim == 8


def test_bad_widths_raise():
    with pytest.raises(ScreenerError):
        MLPHead(32, ())
    with pytest.raises(ScreenerError):
        MLPHead(32, (16, 0))
