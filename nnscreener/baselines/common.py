"""What the baselines share: the plans' UNet built by nnU-Net, and loading a baseline's result folder.

A baseline's scoring model (docs/design.md C9) is a module with ``anomaly_map(x, origin_zyx) -> (B, 1, Z, Y, X)``
(higher = more anomalous, at the patch's resolution); its checkpoint (docs/design.md C6, owned by
:mod:`nnscreener.checkpoints`) holds that module's state dict as ``network_weights``.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Callable, Tuple, Union

import torch
from torch import nn

from nnscreener.checkpoints import FINAL_CHECKPOINT, load_stage_checkpoint, trained_checkpoint
from nnscreener.config import ScreenerConfig
from nnscreener.plans import ScreenerPlans, load_plans_file


def planned_unet(plans: ScreenerPlans, in_channels: int, out_channels: int) -> nn.Module:
    """The plans' ``3d_fullres`` network (dynamic-network-architectures, built by nnU-Net's
    ``get_network_from_plans``), without deep supervision and its unused outputs: (B, in, Z, Y, X) -> (B, out, Z, Y,
    X)."""
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    cm = plans.configuration_manager
    unet = get_network_from_plans(cm.network_arch_class_name, cm.network_arch_init_kwargs,
                                  cm.network_arch_init_kwargs_req_import, in_channels, out_channels,
                                  allow_init=True, deep_supervision=False)
    drop_unused_outputs(unet)
    return unet


def drop_unused_outputs(unet: nn.Module) -> None:
    """Replaces the decoder's 1x1x1 outputs of the lower levels, which a UNet without deep supervision computes
    nothing with, by parameter-free identities: every remaining parameter then gets a gradient (DDP requires it)."""
    seg_layers = unet.decoder.seg_layers
    for i in range(len(seg_layers) - 1):
        seg_layers[i] = nn.Identity()


def load_baseline_model(folder: Union[str, Path], stage: str, build: Callable[[ScreenerPlans], nn.Module],
                        device: Union[str, torch.device] = "cpu",
                        checkpoint_name: str = FINAL_CHECKPOINT) -> Tuple[nn.Module, ScreenerConfig]:
    """A trained baseline from its result folder (``plans.json``, ``dataset.json``, the checkpoint).

    Args:
        folder: ``$nnUNet_results/DatasetXXX/<stage>__<variant>__<plans>/``.
        stage: ``baseline_ae`` | ``baseline_synthetic``: the checkpoint must be of this stage.
        build: builds the untrained scoring model from the plans (with the checkpoint's config).
        device: where the model goes (returned in eval mode).
        checkpoint_name: the checkpoint file in the folder.

    Raises:
        ScreenerError: a missing file, or a checkpoint of another stage.
    """
    folder = Path(folder)
    checkpoint = load_stage_checkpoint(trained_checkpoint(folder, checkpoint_name, stage), stage)
    config = ScreenerConfig.from_dict(checkpoint["screener_config"])
    plans = replace(load_plans_file(folder / "plans.json", folder / "dataset.json"), config=config)
    model = build(plans)
    model.load_state_dict(checkpoint["network_weights"])
    return model.to(device).eval(), config
