"""The density stage: a Gaussian or Glow density of pooled descriptor maps given a condition (paper 3.3, App. B-D).

The descriptor (and, for the ``masking`` condition, the condition model) are loaded frozen from their result
folders (``descriptor__<variant>__<plans>``, ``condition__<variant>__<plans>``; the variant is
``density.descriptor_variant`` / ``density.condition_variant`` or, when empty, ``stages.ssl_variant(ssl.objective,
network.embedding_dim)``). The trained module is the whole :class:`~nnscreener.model.ScreenerModel`, so the
density checkpoint is self-contained for prediction; only its density parameters require gradients, so only they
are optimised. The loss is the mean NLL (nats) over the batch and the pooled positions, with N(0, noise_std^2)
noise on the pooled descriptors and conditions (training only).

Result folder: ``density__<condition>_<density>__<plans>`` (``stages.density_variant``), so every variant of the
paper's grid (Tables 3-4) coexists and the predictor can pick one. Logged per period besides the loss: the median
and 99th percentile of the per-voxel NLL (``nll/p50``, ``nll/p99``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Mapping, Tuple

import torch
from torch import nn

from nnscreener import paths, stages
from nnscreener.config import ScreenerConfig
from nnscreener.density.conditions import condition_option
from nnscreener.errors import ScreenerError
from nnscreener.model import build_screener_model
from nnscreener.networks.dense_net import DenseFeatureNet, load_dense_net
from nnscreener.trainers.base import ScreenerTrainerBase

#: The frozen networks of the density stage: result-folder stage -> input channels (docs/design.md C6).
FROZEN_INPUT_CHANNELS = {name: stage.in_channels for name, stage in stages.STAGES.items() if stage.is_ssl}


class DensityTrainer(ScreenerTrainerBase):
    """Trains the density model of ``density.condition`` x ``density.density`` on frozen descriptor maps."""

    stage = stages.DENSITY
    config_section = "density"

    @classmethod
    def variant_for(cls, config: ScreenerConfig) -> str:
        d = config.density
        return stages.density_variant(d.condition, d.density, d.descriptor_variant, d.condition_variant)

    def frozen_stage_folder(self, stage: str) -> Path:
        """Result folder of the trained descriptor or condition model this run uses."""
        cfg = self.screener_config
        chosen = cfg.density.descriptor_variant if stage == "descriptor" else cfg.density.condition_variant
        variant = chosen or stages.ssl_variant(cfg.ssl.objective, cfg.network.embedding_dim)
        return paths.stage_folder(self.plans_manager.dataset_name, stage, variant, self.plans_manager.plans_name)

    def load_frozen_network(self, stage: str) -> DenseFeatureNet:
        """Loads the final checkpoint of a trained descriptor / condition model (on CPU, eval mode).

        Raises:
            ScreenerError: the stage was not trained (with the command to run), or it has the wrong input channels.
        """
        folder = self.frozen_stage_folder(stage)
        network, _ = load_dense_net(folder, "cpu")
        expected = stages.input_channels(stage)
        if network.in_channels != expected:
            raise ScreenerError(f"{folder} holds a network with {network.in_channels} input channels; a {stage} "
                                f"model has {expected}")
        self.print_to_log_file(f"frozen {stage} model: {folder} (d = {network.embedding_dim})")
        return network

    def build_network(self) -> nn.Module:
        cfg = self.screener_config
        descriptor = self.load_frozen_network("descriptor")
        condition_network = None
        if condition_option(cfg.density.condition).needs_trained_network:
            condition_network = self.load_frozen_network("condition")
        self.embedding_dims = {"descriptor": descriptor.embedding_dim}
        self.masked_input = {"descriptor": descriptor.masked_input}
        if condition_network is not None:
            self.embedding_dims["condition"] = condition_network.embedding_dim
            self.masked_input["condition"] = condition_network.masked_input
        model = build_screener_model(cfg, descriptor, condition_network)
        trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
        self.print_to_log_file(f"density model {self.variant}: {trained} trained parameters")
        return model

    def checkpoint_extras(self) -> Dict[str, Any]:
        """The frozen networks' d and mask-token flags, so :func:`~nnscreener.model.load_screener_model` rebuilds
        them exactly."""
        return {"embedding_dims": dict(self.embedding_dims), "masked_input": dict(self.masked_input)}

    def build_loader(self, identifiers: List[str], seed: int):
        from nnscreener.data.loaders import make_density_loader

        plans = self.screener_plans.with_overrides({"density": {"batch_size": self.batch_size}})  # per DDP rank
        return make_density_loader(plans, identifiers, num_workers=self.num_loader_workers(), seed=seed,
                                   pin_memory=self.device.type == "cuda")

    def compute_loss(self, batch: Mapping[str, Any]) -> Tuple[torch.Tensor, Dict[str, float]]:
        """Mean NLL (nats per pooled voxel) of a batch of patches (docs/design.md C8: 'image', 'origin_zyx')."""
        image = torch.as_tensor(batch["image"]).to(self.device, non_blocking=True)  # (B, C, Z, Y, X)
        origin_zyx = torch.as_tensor(batch["origin_zyx"]).to(self.device, non_blocking=True)  # (B, 3)
        nll = self.network(image, origin_zyx)  # (B, 1, z', y', x')
        with torch.no_grad():
            quantiles = torch.quantile(nll.detach().float().flatten(), torch.tensor([0.5, 0.99], device=nll.device))
        return nll.mean(), {"nll/p50": float(quantiles[0]), "nll/p99": float(quantiles[1])}
