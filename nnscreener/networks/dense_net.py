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

from nnscreener.checkpoints import FINAL_CHECKPOINT, load_ssl_checkpoint
from nnscreener.config import ScreenerConfig
from nnscreener.errors import ScreenerError
from nnscreener.plans import network_configuration_name


class DenseFeatureNet(nn.Module):
    """UNet + linear multi-scale dense head: (B, C_in, Z, Y, X) -> (B, d, Z, Y, X) features at full resolution.

    A network with ``masked_input`` sees ``concat(image * mask, mask)`` (the condition model): wherever the mask
    (its last input channel) is 0, the output of the UNet's first convolution is replaced by a learned mask token
    (one value per channel, initialised at 0), so masked voxels carry "unknown", not "black" (the authors' stem,
    docs/method-notes.md 2.3).

    Args:
        unet: a dynamic-network-architectures UNet built with ``num_classes=d`` and ``deep_supervision=True``
            (its forward returns one (B, d, Z/s, Y/s, X/s) map per decoder level, full resolution first).
        in_channels: C_in the UNet was built for.
        shape_divisor_zyx: the product of the UNet's strides per axis (z, y, x); inputs must be divisible by it.
        masked_input: the input's last channel is a visibility mask (1 visible, 0 masked); adds the mask token.
    """

    def __init__(self, unet: nn.Module, in_channels: int, shape_divisor_zyx: Tuple[int, int, int],
                 masked_input: bool = False):
        super().__init__()
        assert unet.decoder.deep_supervision, "the dense head needs every decoder level's 1x1 output"
        self.unet = unet
        self.in_channels = int(in_channels)
        self.embedding_dim = int(unet.decoder.num_classes)
        self.shape_divisor_zyx = tuple(int(s) for s in shape_divisor_zyx)
        self.masked_input = bool(masked_input)
        if self.masked_input:
            if self.in_channels < 2:
                raise ScreenerError("a masked-input network needs the mask as an extra input channel")
            stem = first_convolution(unet)
            self.mask_token = nn.Parameter(torch.zeros(stem.out_channels))
            stem.register_forward_hook(self._replace_masked_voxels_by_token)

    def _replace_masked_voxels_by_token(self, stem: nn.Module, inputs: Tuple[torch.Tensor, ...],
                                        output: torch.Tensor) -> torch.Tensor:
        """Forward hook of the first convolution: (B, C0, Z, Y, X) output, token where the input mask is 0."""
        visible = inputs[0][:, -1:] > 0.5  # (B, 1, Z, Y, X); the first convolution has stride 1
        return torch.where(visible, output, self.mask_token.to(output.dtype).view(1, -1, 1, 1, 1))

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


def first_convolution(unet: nn.Module) -> nn.Conv3d:
    """The UNet's first 3D convolution (the stem); it must keep the input resolution (stride 1)."""
    stem = next(m for m in unet.modules() if isinstance(m, nn.Conv3d))
    if any(int(s) != 1 for s in stem.stride):
        raise ScreenerError(f"the UNet's first convolution has stride {stem.stride}; the mask token needs stride 1")
    return stem


def shape_divisor_from_strides(strides: List[List[int]]) -> Tuple[int, int, int]:
    """Product of the per-stage strides per axis (z, y, x), e.g. strides 1,2,2,2 -> (8, 8, 8)."""
    return tuple(int(v) for v in np.prod(np.asarray(strides, dtype=np.int64), axis=0))


def dense_net_from_configuration(configuration_manager, in_channels: int, embedding_dim: int,
                                 masked_input: bool = False) -> DenseFeatureNet:
    """Builds a :class:`DenseFeatureNet` from an nnU-Net ``ConfigurationManager``'s architecture block.

    Args:
        configuration_manager: nnU-Net's view of a configuration of the plans.
        in_channels: 1 (descriptor: the image) or 2 (condition: image*mask, mask).
        embedding_dim: d, the number of output feature channels.
        masked_input: the last input channel is a visibility mask (adds the mask token).
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
    return DenseFeatureNet(unet, in_channels, shape_divisor_from_strides(strides), masked_input)


def build_dense_net(plans, in_channels: int, embedding_dim: Optional[int] = None,
                    masked_input: bool = False) -> DenseFeatureNet:
    """The descriptor / condition network of a dataset's plans.

    Args:
        plans: a :class:`nnscreener.plans.ScreenerPlans`.
        in_channels: 1 (descriptor) or 2 (condition).
        embedding_dim: d; defaults to ``plans.config.network.embedding_dim``.
        masked_input: a condition network: built from the plans' masking-invariant condition configuration
            (per-voxel LayerNorm; plans without one fall back to ``3d_fullres``) with the mask token.
    """
    d = plans.config.network.embedding_dim if embedding_dim is None else int(embedding_dim)
    configuration = plans.network_configuration_manager(masked_input)
    return dense_net_from_configuration(configuration, in_channels, d, masked_input)


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
    masked_input = bool(ckpt.get("masked_input", False))  # absent in checkpoints written before the mask token
    plans = json.loads(plans_path.read_text())
    configuration = PlansManager(plans).get_configuration(network_configuration_name(plans, masked_input))
    net = dense_net_from_configuration(configuration, int(ckpt["in_channels"]), config.network.embedding_dim,
                                       masked_input)
    net.load_state_dict(ckpt["network_weights"])
    return net.to(device).eval(), config
