"""The ``baseline_synthetic`` stage's model (MOOD-Top1 style, Marimont & Tarroni 2023): the plans' UNet regresses,
per voxel, the blending factor of a synthetic anomaly (:mod:`nnscreener.baselines.synthetic_anomalies`).

The UNet (nnU-Net's ``get_network_from_plans``, one output channel, no deep supervision) outputs a logit per
voxel; training minimises the binary cross-entropy against the soft target (the blending factor in [0, 1], 0 off
the anomaly), whose minimiser per voxel is sigmoid(logit) = the expected target. Score: sigmoid(logit), the
predicted blending factor in [0, 1].

Prior initialisation (a correction for short schedules, as RetinaNet's, Lin et al. 2017): anomalies cover ~0.7% of
a training patch at the cpu preset, so a UNet whose output starts at sigmoid(0) = 0.5 spends its first thousand
AdamW steps only learning that prior (its output bias moves ~lr per step), and after 2400 steps it still ranked its
own training anomalies at chance (docs/method-notes.md 6). The output bias is therefore set, on the first training
batch, to the logit of that batch's mean target (:meth:`BlendRegressionModel.initialize_from`); a loaded checkpoint
is never re-initialised.
"""
from __future__ import annotations

from pathlib import Path
from typing import Union

import torch
import torch.nn.functional as F
from torch import nn

from nnscreener.baselines.common import load_baseline_model, planned_unet
from nnscreener.checkpoints import FINAL_CHECKPOINT
from nnscreener.density.data_init import DataInitialized, channel_mean_and_variance
from nnscreener.plans import ScreenerPlans

STAGE = "baseline_synthetic"
#: Range of the prior the output bias starts at (a first batch without anomalies must not start at logit -inf).
PRIOR_RANGE = (1e-3, 0.5)


def blend_factor_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean binary cross-entropy of (B, 1, Z, Y, X) logits against soft targets in [0, 1] (nats per voxel)."""
    return F.binary_cross_entropy_with_logits(logits.float(), target.float())


class BlendRegressionModel(DataInitialized):
    """The ``baseline_synthetic`` scoring model (docs/design.md C9): ``forward`` gives logits, ``anomaly_map`` the
    predicted blending factor.

    Args:
        unet: the plans' UNet with 1 input and 1 output channel (no deep supervision).
    """

    def __init__(self, unet: nn.Module) -> None:
        super().__init__()
        self.unet = unet

    @torch.no_grad()
    def initialize_from(self, target: torch.Tensor) -> None:
        """Sets the output bias to the logit of the mean of a (B, 1, Z, Y, X) target batch (averaged over DDP
        ranks), clamped to :data:`PRIOR_RANGE`, so training starts at the anomaly prior instead of at 0.5."""
        prior = channel_mean_and_variance(target)[0].clamp(*PRIOR_RANGE)
        self.unet.decoder.seg_layers[-1].bias.copy_(torch.logit(prior))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, Z, Y, X) in [0, 1] -> (B, 1, Z, Y, X) logits."""
        return self.unet(x)

    @torch.no_grad()
    def anomaly_map(self, x: torch.Tensor, origin_zyx: torch.Tensor) -> torch.Tensor:
        """(B, 1, Z, Y, X) float32 predicted blending factor in [0, 1]; ``origin_zyx`` (B, 3) is not used."""
        return torch.sigmoid(self.unet(x).float())


def build_blend_model(plans: ScreenerPlans) -> BlendRegressionModel:
    """An untrained :class:`BlendRegressionModel` of the plans."""
    return BlendRegressionModel(planned_unet(plans, 1, 1))


def load_blend_model(folder: Union[str, Path], device: Union[str, torch.device] = "cpu",
                     checkpoint_name: str = FINAL_CHECKPOINT):
    """A trained :class:`BlendRegressionModel` and its config from a ``baseline_synthetic`` result folder."""
    return load_baseline_model(folder, STAGE, build_blend_model, device, checkpoint_name)
