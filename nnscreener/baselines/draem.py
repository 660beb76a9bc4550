"""The ``baseline_draem`` stage's model: DRAEM (Zavrtanik et al., ICCV 2021) in 3D on the plans' UNet.

A reconstructive network (the :class:`~nnscreener.baselines.autoencoder.ConvAutoencoder`: the plans' encoder, a
spatial bottleneck, a decoder without skips) learns to restore the clean patch from one with a synthetic anomaly
(:func:`~nnscreener.baselines.synthetic_anomalies.make_draem_anomaly`), with an L2 + (1 - SSIM) loss; a
discriminative network (the plans' UNet with 2 input channels, one output logit) sees (image, reconstruction) and
segments the anomaly, trained with a binary focal loss. Score: the discriminative probability, smoothed by a mean
filter of ``baseline_draem.score_window_mm`` mm per axis (an odd number of voxels, replicate padding), in [0, 1].
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from nnscreener.baselines.autoencoder import ConvAutoencoder
from nnscreener.baselines.common import load_baseline_model, planned_unet
from nnscreener.checkpoints import FINAL_CHECKPOINT
from nnscreener.plans import ScreenerPlans

STAGE = "baseline_draem"


def ssim3d(a: torch.Tensor, b: torch.Tensor, window: int = 7, data_range: float = 1.0) -> torch.Tensor:
    """Mean structural similarity of (B, 1, Z, Y, X) volumes with a uniform ``window``^3 window over the positions
    where it fits (as ``skimage.metrics.structural_similarity`` with its defaults: sample covariances, K1 0.01,
    K2 0.03)."""
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    a, b = a.float(), b.float()

    def mean(t: torch.Tensor) -> torch.Tensor:
        return F.avg_pool3d(t, window, stride=1)

    n = window ** 3
    mu_a, mu_b = mean(a), mean(b)
    var_a = (mean(a * a) - mu_a ** 2) * n / (n - 1)
    var_b = (mean(b * b) - mu_b ** 2) * n / (n - 1)
    cov = (mean(a * b) - mu_a * mu_b) * n / (n - 1)
    ssim = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    return ssim.mean()


def focal_loss(logits: torch.Tensor, target: torch.Tensor, gamma: float) -> torch.Tensor:
    """Mean binary focal loss ``-(1 - p_t)^gamma log p_t`` of logits against a {0, 1} target (nats per voxel)."""
    bce = F.binary_cross_entropy_with_logits(logits.float(), target.float(), reduction="none")  # -log p_t
    return ((1 - torch.exp(-bce)) ** gamma * bce).mean()


def box_smooth(x: torch.Tensor, window_voxels_zyx: Sequence[int]) -> torch.Tensor:
    """Mean filter of (B, 1, Z, Y, X) with odd edges ``window_voxels_zyx``, replicate padding (same shape out)."""
    k = [int(w) for w in window_voxels_zyx]
    pad = [k[2] // 2, k[2] // 2, k[1] // 2, k[1] // 2, k[0] // 2, k[0] // 2]
    return F.avg_pool3d(F.pad(x, pad, mode="replicate"), k, stride=1)


def odd_window(window_mm: float, spacing_zyx_mm: Sequence[float]) -> Tuple[int, int, int]:
    """The odd number of voxels per axis nearest to ``window_mm`` mm (at least 1)."""
    return tuple(max(1, 2 * int(round((window_mm / float(s) - 1) / 2)) + 1) for s in spacing_zyx_mm)


class DraemModel(nn.Module):
    """The ``baseline_draem`` scoring model (docs/design.md C9).

    Args:
        reconstructive: a :class:`ConvAutoencoder` (1 channel in and out).
        discriminative: the plans' UNet with 2 input channels and 1 output channel.
        window_voxels_zyx: the score's mean-filter edges (odd voxels, z, y, x).
    """

    def __init__(self, reconstructive: ConvAutoencoder, discriminative: nn.Module,
                 window_voxels_zyx: Sequence[int]) -> None:
        super().__init__()
        self.reconstructive = reconstructive
        self.discriminative = discriminative
        self.window_voxels_zyx = tuple(int(w) for w in window_voxels_zyx)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(B, 1, Z, Y, X) in [0, 1] -> the reconstruction and the discriminative logits, both (B, 1, Z, Y, X)."""
        reconstruction = self.reconstructive(x)
        return reconstruction, self.discriminative(torch.cat([x, reconstruction.to(x.dtype)], dim=1))

    @torch.no_grad()
    def anomaly_map(self, x: torch.Tensor, origin_zyx: torch.Tensor) -> torch.Tensor:
        """(B, 1, Z, Y, X) float32 smoothed anomaly probability; ``origin_zyx`` (B, 3) is not used."""
        _, logits = self(x)
        return box_smooth(torch.sigmoid(logits.float()), self.window_voxels_zyx)


def build_draem_model(plans: ScreenerPlans) -> DraemModel:
    """An untrained :class:`DraemModel` of the plans, with ``plans.config.baseline_draem``'s settings."""
    cfg = plans.config.baseline_draem
    reconstructive = ConvAutoencoder(planned_unet(plans, 1, 1), cfg.latent_channels)
    window = odd_window(cfg.score_window_mm, plans.configuration_manager.spacing)
    return DraemModel(reconstructive, planned_unet(plans, 2, 1), window)


def load_draem_model(folder: Union[str, Path], device: Union[str, torch.device] = "cpu",
                     checkpoint_name: str = FINAL_CHECKPOINT):
    """A trained :class:`DraemModel` and its config from a ``baseline_draem`` result folder."""
    return load_baseline_model(folder, STAGE, build_draem_model, device, checkpoint_name)
