"""Training batches of the baselines, from the same preprocessed cases and patch sampler as the density stage.

``baseline_ae``: plain patches (:class:`~nnscreener.data.loaders.DensityPatchDataLoader`: centred on a random body
voxel, no augmentation). ``baseline_synthetic``: such patches with a synthetic anomaly each
(:mod:`nnscreener.baselines.synthetic_anomalies`), the foreign content cut from another case at a random body
voxel; ``baseline_draem``: the same with DRAEM's anomalies. Workers and seeding as :mod:`nnscreener.data.loaders`.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Sequence

import numpy as np
import torch

from nnscreener.baselines.synthetic_anomalies import SyntheticAnomaly, make_draem_anomaly, make_synthetic_anomaly
from nnscreener.data.loaders import DensityPatchDataLoader, Loader, open_preprocessed_dataset, wrap_in_workers
from nnscreener.plans import ScreenerPlans


AnomalyFn = Callable[..., SyntheticAnomaly]  # (image, foreign, spacing_zyx_mm, cfg, rng), as make_synthetic_anomaly


class SyntheticAnomalyDataLoader(DensityPatchDataLoader):
    """Batches of patches with synthetic anomalies (drawn by ``make_anomaly`` with the settings ``anomalies``) and
    their per-voxel targets."""

    def __init__(self, dataset, batch_size: int, patch_zyx: Sequence[int], spacing_zyx_mm: Sequence[float],
                 anomalies: Any, seed: int, make_anomaly: AnomalyFn = make_synthetic_anomaly) -> None:
        super().__init__(dataset, batch_size, patch_zyx, seed, channels=1)  # the networks' input channel (C3)
        self.spacing_zyx_mm = tuple(float(s) for s in spacing_zyx_mm)
        self.anomalies = anomalies
        self.make_anomaly = make_anomaly

    def foreign_identifier(self, identifier: str) -> str:
        """Another case than ``identifier`` (the same one only when there is no other)."""
        others = [i for i in self.indices if i != identifier] or [identifier]
        return others[int(self.rng.integers(len(others)))]

    def make_sample(self, identifier: str) -> Dict[str, torch.Tensor]:
        """'image', 'target' and 'clean' (1, Z, Y, X) float32 of one case."""
        patch, _ = self.make_patch(identifier)
        foreign, _ = self.make_patch(self.foreign_identifier(identifier))
        sample = self.make_anomaly(patch[0].numpy(), foreign[0].numpy(), self.spacing_zyx_mm, self.anomalies,
                                   self.rng)
        return {"image": torch.from_numpy(sample.image[None]), "target": torch.from_numpy(sample.target[None]),
                "clean": patch[:1]}

    def generate_train_batch(self) -> Dict[str, Any]:
        """'image' (with the anomalies), 'target' (the blending factor, or DRAEM's {0, 1} region; 0 off the
        anomaly) and 'clean' (the patches before the anomalies), each (B, 1, Z, Y, X) float32; 'keys'."""
        keys = self.draw_identifiers()
        samples = [self.make_sample(k) for k in keys]
        batch: Dict[str, Any] = {name: torch.stack([s[name] for s in samples]) for name in samples[0]}
        batch["keys"] = keys
        return batch


def make_patch_loader(plans: ScreenerPlans, identifiers: Sequence[str], batch_size: int, num_workers: int,
                      seed: int, pin_memory: bool = False) -> Loader:
    """Plain patches of ``network.patch_size_zyx`` (batches as the density loader's, docs/design.md C8), of the
    networks' input channel only (a kept HU window, C3, is not the baselines')."""
    loader = DensityPatchDataLoader(open_preprocessed_dataset(plans.data_dir, identifiers), batch_size,
                                    plans.config.network.patch_size_zyx, seed, channels=1)
    return wrap_in_workers(loader, num_workers, seed, pin_memory)


def make_synthetic_anomaly_loader(plans: ScreenerPlans, identifiers: Sequence[str], batch_size: int,
                                  num_workers: int, seed: int, pin_memory: bool = False) -> Loader:
    """Patches with synthetic anomalies (``baseline_synthetic`` settings of ``plans.config``)."""
    loader = SyntheticAnomalyDataLoader(open_preprocessed_dataset(plans.data_dir, identifiers), batch_size,
                                        plans.config.network.patch_size_zyx,
                                        np.asarray(plans.configuration_manager.spacing, dtype=float),
                                        plans.config.baseline_synthetic, seed)
    return wrap_in_workers(loader, num_workers, seed, pin_memory)


def make_draem_loader(plans: ScreenerPlans, identifiers: Sequence[str], batch_size: int, num_workers: int, seed: int,
                      pin_memory: bool = False) -> Loader:
    """Patches with DRAEM's anomalies (``baseline_draem`` settings of ``plans.config``)."""
    loader = SyntheticAnomalyDataLoader(open_preprocessed_dataset(plans.data_dir, identifiers), batch_size,
                                        plans.config.network.patch_size_zyx,
                                        np.asarray(plans.configuration_manager.spacing, dtype=float),
                                        plans.config.baseline_draem, seed, make_draem_anomaly)
    return wrap_in_workers(loader, num_workers, seed, pin_memory)
