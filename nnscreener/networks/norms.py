"""Normalisation layers that nnU-Net's ``get_network_from_plans`` can build by name from a plans file.

The condition model must encode context that survives masking (docs/method-notes.md 2.3). nnU-Net's default
InstanceNorm normalises every channel over the whole crop, so the share of masked (zeroed) voxels in the crop
shifts the features of every voxel, visible or not. A LayerNorm over the channels of each voxel (as in the
authors' ConvNeXt-style condition backbone) depends on that voxel's features only, so masking far away leaves
it untouched. The plans name it in the condition configuration's ``architecture`` block
(``norm_op: "nnscreener.networks.norms.ChannelLayerNorm3d"``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ChannelLayerNorm3d(nn.Module):
    """LayerNorm over the channels of each voxel of a (B, C, Z, Y, X) map, with a per-channel affine.

    Args:
        num_features: C.
        eps: added to the per-voxel variance.
        affine: learn a per-channel scale (init 1) and shift (init 0).
    """

    def __init__(self, num_features: int, eps: float = 1e-5, affine: bool = True) -> None:
        super().__init__()
        self.num_features = int(num_features)
        self.eps = float(eps)
        self.weight = nn.Parameter(torch.ones(num_features)) if affine else None
        self.bias = nn.Parameter(torch.zeros(num_features)) if affine else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, Z, Y, X) -> (B, C, Z, Y, X), each voxel's C values standardised, then scaled and shifted."""
        channels_last = x.movedim(1, -1)
        out = F.layer_norm(channels_last, (self.num_features,), self.weight, self.bias, self.eps)
        return out.movedim(-1, 1)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, affine={self.weight is not None}"
