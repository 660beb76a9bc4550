"""Training batches of the baselines, from the same preprocessed cases and patch sampler as the density stage.

``baseline_ae``: plain patches (:class:`~nnscreener.data.loaders.DensityPatchDataLoader`: centred on a random body
voxel, no augmentation). ``baseline_synthetic``: such patches with a synthetic anomaly each
(:mod:`nnscreener.baselines.synthetic_anomalies`), the foreign content cut from another case at a random body
voxel. Workers and seeding as :mod:`nnscreener.data.loaders`.
"""
from __future__ import annotations

from typing import Any, Dict, Sequence

import numpy as np
import torch

from nnscreener.baselines.synthetic_anomalies import make_synthetic_anomaly
from nnscreener.config import SyntheticAnomalyConfig
from nnscreener.data.loaders import DensityPatchDataLoader, Loader, open_preprocessed_dataset, wrap_in_workers
from nnscreener.plans import ScreenerPlans


class SyntheticAnomalyDataLoader(DensityPatchDataLoader):
    """Batches of patches with synthetic anomalies and their per-voxel blending-factor targets."""

    def __init__(self, dataset, batch_size: int, patch_zyx: Sequence[int], spacing_zyx_mm: Sequence[float],
                 anomalies: SyntheticAnomalyConfig, seed: int) -> None:
        super().__init__(dataset, batch_size, patch_zyx, seed)
        self.spacing_zyx_mm = tuple(float(s) for s in spacing_zyx_mm)
        self.anomalies = anomalies

    def foreign_identifier(self, identifier: str) -> str:
        """Another case than ``identifier`` (the same one only when there is no other)."""
        others = [i for i in self.indices if i != identifier] or [identifier]
        return others[int(self.rng.integers(len(others)))]

    def make_sample(self, identifier: str) -> Dict[str, torch.Tensor]:
        """'image' and 'target' (1, Z, Y, X) float32 of one case."""
        patch, _ = self.make_patch(identifier)
        foreign, _ = self.make_patch(self.foreign_identifier(identifier))
        sample = make_synthetic_anomaly(patch[0].numpy(), foreign[0].numpy(), self.spacing_zyx_mm, self.anomalies,
                                        self.rng)
        return {"image": torch.from_numpy(sample.image[None]), "target": torch.from_numpy(sample.target[None])}

    def generate_train_batch(self) -> Dict[str, Any]:
        """'image', 'target' (B, 1, Z, Y, X) float32 (target: the blending factor, 0 off the anomaly), 'keys'."""
        keys = self.draw_identifiers()
        samples = [self.make_sample(k) for k in keys]
        return {"image": torch.stack([s["image"] for s in samples]),
                "target": torch.stack([s["target"] for s in samples]), "keys": keys}


def make_patch_loader(plans: ScreenerPlans, identifiers: Sequence[str], batch_size: int, num_workers: int,
                      seed: int, pin_memory: bool = False) -> Loader:
    """Plain patches of ``network.patch_size_zyx`` (batches as the density loader's, docs/design.md C8)."""
    loader = DensityPatchDataLoader(open_preprocessed_dataset(plans.data_dir, identifiers), batch_size,
                                    plans.config.network.patch_size_zyx, seed)
    return wrap_in_workers(loader, num_workers, seed, pin_memory)


def make_synthetic_anomaly_loader(plans: ScreenerPlans, identifiers: Sequence[str], batch_size: int,
                                  num_workers: int, seed: int, pin_memory: bool = False) -> Loader:
    """Patches with synthetic anomalies (``baseline_synthetic`` settings of ``plans.config``)."""
    loader = SyntheticAnomalyDataLoader(open_preprocessed_dataset(plans.data_dir, identifiers), batch_size,
                                        plans.config.network.patch_size_zyx,
                                        np.asarray(plans.configuration_manager.spacing, dtype=float),
                                        plans.config.baseline_synthetic, seed)
    return wrap_in_workers(loader, num_workers, seed, pin_memory)
