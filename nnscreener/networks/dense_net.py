"""The dense feature network of the descriptor and condition models (paper 3.1-3.2; docs/method-notes.md 2.4).

The backbone is the UNet the plans describe (dynamic-network-architectures, built by nnU-Net's
``get_network_from_plans``) with ``num_classes = d`` and deep supervision on, so that its per-decoder-level
``seg_layers`` are exactly the 1x1x1 convolutions to ``d`` channels of Screener's linear multi-scale head. The
head upsamples every level's output to the input resolution (trilinear) and sums them: the descriptor is linear
in the decoder features, with no final norm or activation.

Checkpoints of the descriptor / condition stages (docs/design.md C6, owned by :mod:`nnscreener.checkpoints`) store this
module's state dict under ``network_weights``, the resolved config under ``screener_config`` and the input channel
count under ``in_channels``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from nnscreener import paths
from nnscreener.checkpoints import FINAL_CHECKPOINT, load_ssl_checkpoint
from nnscreener.config import ScreenerConfig
from nnscreener.errors import ScreenerError


class DenseFeatureNet(nn.Module):
    """UNet + linear multi-scale dense head: (B, C_in, Z, Y, X) -> (B, d, Z, Y, X) features at full resolution.

    Args:
        unet: a dynamic-network-architectures UNet built with ``num_classes=d`` and ``deep_supervision=True``
            (its forward returns one (B, d, Z/s, Y/s, X/s) map per decoder level, full resolution first).
        in_channels: C_in the UNet was built for.
        shape_divisor_zyx: the product of the UNet's strides per axis (z, y, x); inputs must be divisible by it.
    """

    def __init__(self, unet: nn.Module, in_channels: int, shape_divisor_zyx: Tuple[int, int, int]):
        super().__init__()
        assert unet.decoder.deep_supervision, "the dense head needs every decoder level's 1x1 output"
        self.unet = unet
        self.in_channels = int(in_channels)
        self.embedding_dim = int(unet.decoder.num_classes)
        self.shape_divisor_zyx = tuple(int(s) for s in shape_divisor_zyx)

    def level_outputs(self, x: torch.Tensor) -> List[torch.Tensor]:
        """The per-level 1x1x1 projections to d, full resolution first: [(B, d, Z/s_l, Y/s_l, X/s_l)]."""
        self._check_shape(x)
        return list(self.unet(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Dense features.

        Args:
            x: (B, C_in, Z, Y, X) input in normalized [0, 1] intensities (condition model: image*mask, mask).

        Returns:
            (B, d, Z, Y, X) linear features: the sum of every level's 1x1x1 output, trilinearly upsampled.
        """
        levels = self.level_outputs(x)
        size = x.shape[2:]
        out = levels[0]
        for level in levels[1:]:
            out = out + F.interpolate(level, size=size, mode="trilinear", align_corners=False)
        return out

    def _check_shape(self, x: torch.Tensor) -> None:
        if x.ndim != 5:
            raise ValueError(f"DenseFeatureNet expects (B, C, Z, Y, X) input, got shape {tuple(x.shape)}")
        bad = [s for s, d in zip(x.shape[2:], self.shape_divisor_zyx) if s % d]
        if bad:
            raise ValueError(f"input spatial shape (z, y, x) {tuple(x.shape[2:])} must be divisible by "
                             f"{self.shape_divisor_zyx} (the UNet's total stride); pad it first")


def shape_divisor_from_strides(strides: List[List[int]]) -> Tuple[int, int, int]:
    """Product of the per-stage strides per axis (z, y, x), e.g. strides 1,2,2,2 -> (8, 8, 8)."""
    return tuple(int(v) for v in np.prod(np.asarray(strides, dtype=np.int64), axis=0))


def dense_net_from_configuration(configuration_manager, in_channels: int, embedding_dim: int) -> DenseFeatureNet:
    """Builds a :class:`DenseFeatureNet` from an nnU-Net ``ConfigurationManager``'s architecture block.

    Args:
        configuration_manager: nnU-Net's view of the plans' ``3d_fullres`` configuration.
        in_channels: 1 (descriptor: the image) or 2 (condition: image*mask, mask).
        embedding_dim: d, the number of output feature channels.
    """
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    if in_channels < 1 or embedding_dim < 1:
        raise ScreenerError(f"in_channels ({in_channels}) and embedding_dim ({embedding_dim}) must be >= 1")
    unet = get_network_from_plans(
        configuration_manager.network_arch_class_name,
        configuration_manager.network_arch_init_kwargs,
        configuration_manager.network_arch_init_kwargs_req_import,
        in_channels,
        embedding_dim,
        allow_init=True,
        deep_supervision=True,
    )
    strides = configuration_manager.network_arch_init_kwargs["strides"]
    return DenseFeatureNet(unet, in_channels, shape_divisor_from_strides(strides))


def build_dense_net(plans, in_channels: int, embedding_dim: Optional[int] = None) -> DenseFeatureNet:
    """The descriptor / condition network of a dataset's plans.

    Args:
        plans: a :class:`nnscreener.plans.ScreenerPlans`.
        in_channels: 1 (descriptor) or 2 (condition).
        embedding_dim: d; defaults to ``plans.config.network.embedding_dim``.
    """
    d = plans.config.network.embedding_dim if embedding_dim is None else int(embedding_dim)
    return dense_net_from_configuration(plans.configuration_manager, in_channels, d)


def features_at(feature_map: torch.Tensor, idx_zyx: torch.Tensor) -> torch.Tensor:
    """Reads features at exact voxels.

    Args:
        feature_map: (B, d, Z, Y, X).
        idx_zyx: (B, n, 3) int64 voxel indices (z, y, x) into each map.

    Returns:
        (B, n, d) features.
    """
    b, d, z, y, x = feature_map.shape
    idx = idx_zyx.to(device=feature_map.device, dtype=torch.long)
    flat = (idx[..., 0] * y + idx[..., 1]) * x + idx[..., 2]  # (B, n)
    gathered = torch.gather(feature_map.reshape(b, d, z * y * x), 2, flat[:, None, :].expand(b, d, flat.shape[1]))
    return gathered.transpose(1, 2)  # (B, n, d)


def load_dense_net(stage_folder: Union[str, Path], device: Union[str, torch.device] = "cpu",
                   checkpoint_name: str = FINAL_CHECKPOINT) -> Tuple[DenseFeatureNet, ScreenerConfig]:
    """Loads a trained descriptor / condition network from its result folder (docs/design.md C6/C10).

    Args:
        stage_folder: ``$nnUNet_results/DatasetXXX/<stage>__<variant>__<plans>/``.
        device: where to put the network (it is returned in eval mode).
        checkpoint_name: ``FINAL_CHECKPOINT`` or ``LATEST_CHECKPOINT`` (:mod:`nnscreener.checkpoints`).

    Returns:
        The network and the resolved config it was trained with.

    Raises:
        ScreenerError: the folder, its plans.json or the checkpoint is missing or not a dense-net checkpoint.
    """
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    folder = Path(stage_folder)
    ckpt_path, plans_path = folder / checkpoint_name, folder / "plans.json"
    for p in (ckpt_path, plans_path):
        if not p.is_file():
            raise ScreenerError(f"missing {p}: train this stage first (nnScreener_train DATASET "
                                f"{folder.name.split('__')[0]} ...)")
    ckpt = load_ssl_checkpoint(ckpt_path)
    config = ScreenerConfig.from_dict(ckpt["screener_config"])
    configuration = PlansManager(json.loads(plans_path.read_text())).get_configuration(paths.CONFIGURATION)
    net = dense_net_from_configuration(configuration, int(ckpt["in_channels"]), config.network.embedding_dim)
    net.load_state_dict(ckpt["network_weights"])
    return net.to(device).eval(), config
