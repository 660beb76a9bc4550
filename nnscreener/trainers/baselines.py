"""The baseline stages (``nnScreener_train DATASET baseline_ae|baseline_synthetic``) on the shared trainer base.

Same plans, loaders, checkpoints, schedule (AdamW, warm-up / linear decay), seeding, logging, NaN guard and ``--c``
as the Screener stages (:class:`~nnscreener.trainers.base.ScreenerTrainerBase`); the trained module is the whole
scoring model, so the final checkpoint is all ``nnScreener_predict --method baseline_*`` needs.

- ``baseline_ae``: :class:`~nnscreener.baselines.autoencoder.AutoencoderModel` on plain patches, L1 or L2
  reconstruction loss (``baseline_ae.loss``); folder ``baseline_ae__<loss>__<plans>``.
- ``baseline_synthetic``: :class:`~nnscreener.baselines.blend_regression.BlendRegressionModel` on patches with
  synthetic anomalies, binary cross-entropy against the blending factor (over the region, or where the blend
  visibly changed the voxel: ``baseline_synthetic.target``); folder ``baseline_synthetic__<target>__<plans>``.
- ``baseline_draem``: :class:`~nnscreener.baselines.draem.DraemModel` on patches with DRAEM's anomalies,
  L2 + (1 - SSIM) for the reconstruction of the clean patch plus the focal loss of the discriminative network;
  folder ``baseline_draem__draem__<plans>``.

Logged per period besides the loss: the AE's mean absolute residual (``recon/mae``); the blend regressor's mean
absolute error inside and outside the anomalies (``blend/mae_anomaly``, ``blend/mae_normal``); DRAEM's three loss
terms (``loss/l2``, ``loss/ssim``, ``loss/focal``).
"""
from __future__ import annotations

from typing import Any, Dict, List, Mapping, Tuple

import torch
from torch import nn

from nnscreener import stages
from nnscreener.baselines.autoencoder import build_autoencoder_model, reconstruction_loss
from nnscreener.baselines.blend_regression import blend_factor_loss, build_blend_model
from nnscreener.baselines.draem import build_draem_model, focal_loss, ssim3d
from nnscreener.config import ScreenerConfig
from nnscreener.trainers.base import ScreenerTrainerBase, unwrap


class _BaselineTrainer(ScreenerTrainerBase):
    """Shared by the baselines: the loader's 'image' batch on the device."""

    def image(self, batch: Mapping[str, Any], key: str = "image") -> torch.Tensor:
        """(B, 1, Z, Y, X) float32 on the device."""
        return torch.as_tensor(batch[key]).to(self.device, non_blocking=True)


class AutoencoderTrainer(_BaselineTrainer):
    """Trains the 3D convolutional autoencoder to reconstruct normal-looking training patches."""

    stage = "baseline_ae"
    config_section = stages.get_stage(stage).section

    @classmethod
    def variant_for(cls, config: ScreenerConfig) -> str:
        return config.baseline_ae.loss

    def build_network(self) -> nn.Module:
        return build_autoencoder_model(self.screener_plans)

    def build_loader(self, identifiers: List[str], seed: int):
        from nnscreener.data.baseline_loaders import make_patch_loader

        return make_patch_loader(self.screener_plans, identifiers, self.batch_size, self.num_loader_workers(), seed,
                                 pin_memory=self.device.type == "cuda")

    def compute_loss(self, batch: Mapping[str, Any]) -> Tuple[torch.Tensor, Dict[str, float]]:
        """The reconstruction loss of a batch of patches (docs/design.md C8 'image')."""
        x = self.image(batch)
        reconstruction = self.network(x)
        loss = reconstruction_loss(x, reconstruction.float(), self.screener_config.baseline_ae.loss)
        return loss, {"recon/mae": float((reconstruction.detach().float() - x).abs().mean())}


class SyntheticAnomalyTrainer(_BaselineTrainer):
    """Trains the planned UNet to regress the blending factor of synthetic anomalies."""

    stage = "baseline_synthetic"
    config_section = stages.get_stage(stage).section

    @classmethod
    def variant_for(cls, config: ScreenerConfig) -> str:
        return config.baseline_synthetic.target

    def build_network(self) -> nn.Module:
        return build_blend_model(self.screener_plans)

    def build_loader(self, identifiers: List[str], seed: int):
        from nnscreener.data.baseline_loaders import make_synthetic_anomaly_loader

        return make_synthetic_anomaly_loader(self.screener_plans, identifiers, self.batch_size,
                                             self.num_loader_workers(), seed, pin_memory=self.device.type == "cuda")

    def compute_loss(self, batch: Mapping[str, Any]) -> Tuple[torch.Tensor, Dict[str, float]]:
        """Binary cross-entropy of the predicted blending factor ('image', 'target' (B, 1, Z, Y, X)); the first
        batch of a new model also sets its output bias to the anomaly prior (blend_regression.py)."""
        target = self.image(batch, "target")
        unwrap(self.network).initialize_once_from(target)
        logits = self.network(self.image(batch))
        with torch.no_grad():
            error = (torch.sigmoid(logits.float()) - target).abs()
            anomalous = target > 0
            logged = {"blend/mae_anomaly": float(error[anomalous].mean()) if anomalous.any() else float("nan"),
                      "blend/mae_normal": float(error[~anomalous].mean()) if (~anomalous).any() else float("nan")}
        return blend_factor_loss(logits, target), logged


class DraemTrainer(_BaselineTrainer):
    """Trains DRAEM's reconstructive and discriminative networks together on patches with its anomalies."""

    stage = "baseline_draem"
    config_section = stages.get_stage(stage).section

    @classmethod
    def variant_for(cls, config: ScreenerConfig) -> str:
        return "draem"

    def build_network(self) -> nn.Module:
        return build_draem_model(self.screener_plans)

    def build_loader(self, identifiers: List[str], seed: int):
        from nnscreener.data.baseline_loaders import make_draem_loader

        return make_draem_loader(self.screener_plans, identifiers, self.batch_size, self.num_loader_workers(), seed,
                                 pin_memory=self.device.type == "cuda")

    def compute_loss(self, batch: Mapping[str, Any]) -> Tuple[torch.Tensor, Dict[str, float]]:
        """L2 + (1 - SSIM) of the reconstruction against 'clean', plus the focal loss against 'target' (the region)."""
        cfg = self.screener_config.baseline_draem
        clean, target = self.image(batch, "clean"), self.image(batch, "target")
        reconstruction, logits = self.network(self.image(batch))
        l2 = (reconstruction.float() - clean).square().mean()
        ssim = ssim3d(reconstruction, clean, cfg.ssim_window)
        focal = focal_loss(logits, target, cfg.focal_gamma)
        terms = torch.stack([l2, ssim, focal]).detach().tolist()
        return l2 + (1 - ssim) + focal, dict(zip(("loss/l2", "loss/ssim", "loss/focal"), terms))
