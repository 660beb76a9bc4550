"""Training batches of the distill stage: student-preprocessed patches and their normalised teacher targets.

Like the density loader (docs/design.md C8): no augmentation, patches of the student plans' patch size centred on
a random body voxel (nnU-Net's ``class_locations`` of the body label; any voxel if a case has none), shifted to lie
inside the volume when it is large enough. Targets are read from the memory-mapped cache
(:mod:`nnscreener.distill.cache`) and normalised per channel, ``(t - median) / iqr``. Voxels outside the volume
(padding of cases smaller than a patch) have data 0 and ``valid`` 0, so the loss ignores them.
"""
from __future__ import annotations

from typing import Any, Dict, Sequence, Tuple

import numpy as np
import torch
from acvl_utils.cropping_and_padding.bounding_boxes import crop_and_pad_nd

from nnscreener.data.loaders import SeededCaseLoader, body_voxels, open_preprocessed_dataset, patch_origin, \
    wrap_in_workers
from nnscreener.distill.cache import TargetCache


class DistillPatchDataLoader(SeededCaseLoader):
    """Batches ``{"data": (B, 1, Z, Y, X), "target": (B, C, Z, Y, X), "valid": (B, 1, Z, Y, X), "keys"}``, float32.

    Args:
        dataset: nnU-Net's dataset over the student-preprocessed cases.
        cache: the targets; ``median`` / ``iqr`` (C,) their normalisation.
        batch_size, patch_zyx, seed: as the density loader.
    """

    def __init__(self, dataset, cache: TargetCache, median: Sequence[float], iqr: Sequence[float], batch_size: int,
                 patch_zyx: Sequence[int], seed: int):
        super().__init__(dataset, batch_size, seed)
        self.cache = cache
        self.median = np.asarray(median, dtype=np.float32)[:, None, None, None]
        self.iqr = np.asarray(iqr, dtype=np.float32)[:, None, None, None]
        self.patch_zyx = tuple(int(p) for p in patch_zyx)

    def make_patch(self, identifier: str) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One case's data (1, Z, Y, X), normalised target (C, Z, Y, X) and validity (1, Z, Y, X)."""
        data, _, _, properties = self._data.load_case(identifier)
        shape = data.shape[1:]
        body = body_voxels(properties)
        centre = body[self.rng.integers(len(body))] if body is not None else [self.rng.integers(s) for s in shape]
        origin = patch_origin(centre, shape, self.patch_zyx)
        box = [[o, o + p] for o, p in zip(origin, self.patch_zyx)]
        patch = np.asarray(crop_and_pad_nd(data, box, pad_value=0), dtype=np.float32)
        target = np.asarray(crop_and_pad_nd(self.cache.load(identifier), box, pad_value=np.nan), dtype=np.float32)
        valid = np.isfinite(target[:1])
        target = np.where(np.isfinite(target), (target - self.median) / self.iqr, 0.0).astype(np.float32)
        return patch, target, valid.astype(np.float32)

    def generate_train_batch(self) -> Dict[str, Any]:
        keys = self.draw_identifiers()
        data, target, valid = zip(*(self.make_patch(k) for k in keys))
        return {"data": torch.from_numpy(np.stack(data)), "target": torch.from_numpy(np.stack(target)),
                "valid": torch.from_numpy(np.stack(valid)), "keys": keys}


def make_distill_loader(data_dir, identifiers: Sequence[str], cache: TargetCache, batch_size: int,
                        patch_zyx: Sequence[int], num_workers: int, seed: int, pin_memory: bool = False):
    """The distill loader, in ``num_workers`` background processes (0: in the calling process)."""
    stats = cache.stats()
    loader = DistillPatchDataLoader(open_preprocessed_dataset(data_dir, identifiers), cache, stats["median"],
                                    stats["iqr"], batch_size, patch_zyx, seed)
    return wrap_in_workers(loader, num_workers, seed, pin_memory)
