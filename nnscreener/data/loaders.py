"""Training batches from nnU-Net's preprocessed cases, produced by background workers (docs/design.md C7, C8).

Both loaders are batchgenerators ``DataLoader`` subclasses over ``nnUNetDatasetBlosc2`` (memory-mapped: only the
crop regions are read, never a whole dataset), wrapped in batchgenerators' ``NonDetMultiThreadedAugmenter`` when
``num_workers > 0`` (``SingleThreadedAugmenter`` when 0), as nnU-Net's trainer does. Every worker draws from its
own ``numpy`` generator seeded with ``(seed, worker id)`` (and batchgenerators seeds the worker's global numpy and
torch with ``seed + worker id``), so a run is reproducible per worker and workers never repeat each other (the
batch order across several workers is not deterministic; with one worker, the CPU default, it is). The trainers
derive ``seed`` from the config's ``seed``, the DDP rank and the resume iteration
(:func:`nnscreener.trainers.seeding.run_seed`).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from acvl_utils.cropping_and_padding.bounding_boxes import crop_and_pad_nd
from batchgenerators.dataloading.data_loader import DataLoader
from batchgenerators.dataloading.nondet_multi_threaded_augmenter import NonDetMultiThreadedAugmenter
from batchgenerators.dataloading.single_threaded_augmenter import SingleThreadedAugmenter
from nnunetv2.training.dataloading.nnunet_dataset import nnUNetDatasetBlosc2

from nnscreener.config import AugmentationConfig, MaskingConfig
from nnscreener.data.augmentations import augment_view
from nnscreener.data.masking import random_block_mask
from nnscreener.data.pair_sampling import extract_view, sample_pair_params, sample_positions
from nnscreener.errors import ScreenerError
from nnscreener.plans import ScreenerPlans
from nnscreener.workers import exit_with_parent

Loader = Union[NonDetMultiThreadedAugmenter, SingleThreadedAugmenter]
BODY_LABEL = 1  # the body mask's label in the preprocessed ``_seg.b2nd`` (docs/design.md C3)


class SeededCaseLoader(DataLoader):
    """An infinite batchgenerators DataLoader over preprocessed cases with a per-worker numpy generator."""

    def __init__(self, dataset: nnUNetDatasetBlosc2, batch_size: int, seed: int):
        super().__init__(dataset, batch_size, num_threads_in_multithreaded=1, seed_for_shuffle=seed,
                         return_incomplete=False, shuffle=True, infinite=True)
        self.indices = list(dataset.identifiers)
        self.seed = int(seed)
        self.rng = np.random.default_rng([self.seed, 0])
        self.owner_pid = os.getpid()  # the training process; background workers end when it is gone

    def set_thread_id(self, thread_id: int) -> None:
        """Called by the multi-process augmenter in each worker: reseeds with ``(seed, worker id)`` and, in a
        background process, starts the watchdog that ends it with the training process."""
        super().set_thread_id(thread_id)
        self.rng = np.random.default_rng([self.seed, int(thread_id)])
        if os.getpid() != self.owner_pid:
            exit_with_parent(self.owner_pid)

    def draw_identifiers(self) -> List[str]:
        """``batch_size`` case identifiers drawn uniformly with replacement."""
        return [self.indices[i] for i in self.rng.integers(0, len(self.indices), size=self.batch_size)]


class SSLPairDataLoader(SeededCaseLoader):
    """Batches of view pairs for dense SSL (docs/design.md C7).

    Per case: :func:`sample_pair_params` -> two views -> paired positions inside the body -> an independent colour
    augmentation per view (at the view's own spacing) -> an independent block mask per view when masking.
    """

    def __init__(self, dataset: nnUNetDatasetBlosc2, batch_size: int, patch_zyx: Sequence[int],
                 spacing_zyx_mm: Sequence[float], n_pairs: int, spacing_factor_range: Sequence[float],
                 augmentation: AugmentationConfig, masking: Optional[MaskingConfig], seed: int):
        """
        Args:
            dataset: the preprocessed cases.
            batch_size: images per batch (two views each).
            patch_zyx: view shape (Z, Y, X) in voxels.
            spacing_zyx_mm: preprocessed voxel spacing (z, y, x) in mm.
            n_pairs: paired positions per image.
            spacing_factor_range: per-axis view spacing / preprocessed spacing, (low, high).
            augmentation: colour augmentation settings.
            masking: block masking settings, or None for no masking (all-ones masks).
            seed: base seed.
        """
        super().__init__(dataset, batch_size, seed)
        self.patch_zyx = tuple(int(p) for p in patch_zyx)
        self.spacing_zyx_mm = tuple(float(s) for s in spacing_zyx_mm)
        self.n_pairs = int(n_pairs)
        self.spacing_factor_range = tuple(float(f) for f in spacing_factor_range)
        self.augmentation = augmentation
        self.masking = masking

    def _mask(self) -> torch.Tensor:
        if self.masking is None:
            return torch.ones(self.patch_zyx, dtype=torch.float32)
        m = self.masking
        return random_block_mask(self.patch_zyx, m.block_fraction, m.ratio, m.probability, self.rng)

    def make_pair(self, identifier: str) -> Dict[str, torch.Tensor]:
        """One case's sample: 'view1', 'view2', 'mask1', 'mask2' (1, Z, Y, X); 'idx1', 'idx2' (n, 3)."""
        data, seg, _, _ = self._data.load_case(identifier)
        params = sample_pair_params(data.shape[1:], self.patch_zyx, self.spacing_factor_range, self.rng)
        idx1, idx2 = sample_positions(params, seg, self.n_pairs, self.rng)
        sample = {"idx1": torch.from_numpy(idx1), "idx2": torch.from_numpy(idx2)}
        for k, box in (("1", params.box1), ("2", params.box2)):
            spacing = tuple(s * f for s, f in zip(self.spacing_zyx_mm, box.voxel_size(self.patch_zyx)))
            # channel 0 only: the networks' input (a kept HU window, preprocessing.keep_window_channel, is not)
            view = augment_view(extract_view(data, box, self.patch_zyx, params.orientation, channels=1), spacing,
                                self.augmentation, self.rng)
            mask = self._mask()[None]
            sample["view" + k] = view * mask
            sample["mask" + k] = mask
        return sample

    def generate_train_batch(self) -> Dict[str, Any]:
        """A batch per docs/design.md C7: 'view1', 'view2', 'mask1', 'mask2' (B, 1, Z, Y, X) float32; 'idx1', 'idx2'
        (B, n, 3) int64 (z, y, x); 'keys' the case identifiers."""
        keys = self.draw_identifiers()
        samples = [self.make_pair(k) for k in keys]
        batch: Dict[str, Any] = {name: torch.stack([s[name] for s in samples]) for name in samples[0]}
        batch["keys"] = keys
        return batch


def body_voxels(properties: Dict[str, Any]) -> Optional[np.ndarray]:
    """(N, 3) body voxel indices (z, y, x) from nnU-Net's ``class_locations`` (stored as (c, z, y, x)), or None."""
    locations = properties.get("class_locations") or {}
    voxels = locations.get(BODY_LABEL)
    if voxels is None or len(voxels) == 0:
        return None
    return np.asarray(voxels)[:, 1:]


def patch_origin(centre_zyx: Sequence[int], shape_zyx: Sequence[int], patch_zyx: Sequence[int]) -> Tuple[int, ...]:
    """First voxel of a patch centred on ``centre_zyx``, shifted to stay inside the volume when it fits there, and
    placed so the volume stays inside the patch (negative origin, padded) when the volume is smaller."""
    origin = []
    for c, s, p in zip(centre_zyx, shape_zyx, patch_zyx):
        lo, hi = min(0, s - p), max(0, s - p)
        origin.append(int(np.clip(int(c) - p // 2, lo, hi)))
    return tuple(origin)


class DensityPatchDataLoader(SeededCaseLoader):
    """Batches of plain patches for density training (docs/design.md C8): no augmentation, centred on a random body
    voxel (nnU-Net's stored ``class_locations`` of the body label; any voxel if a case has none)."""

    def __init__(self, dataset: nnUNetDatasetBlosc2, batch_size: int, patch_zyx: Sequence[int], seed: int,
                 channels: Optional[int] = None):
        super().__init__(dataset, batch_size, seed)
        self.patch_zyx = tuple(int(p) for p in patch_zyx)
        self.channels = channels  # read only the first ``channels`` of docs/design.md C3 (None: all)

    def make_patch(self, identifier: str) -> Tuple[torch.Tensor, Tuple[int, ...]]:
        """One case's patch (C, Z, Y, X) float32 (zero-padded outside the volume) and its origin (z, y, x)."""
        data, _, _, properties = self._data.load_case(identifier)
        shape = data.shape[1:]
        body = body_voxels(properties)
        if body is not None:
            centre = body[self.rng.integers(len(body))]
        else:
            centre = [self.rng.integers(s) for s in shape]
        origin = patch_origin(centre, shape, self.patch_zyx)
        box = [[o, o + p] for o, p in zip(origin, self.patch_zyx)]
        if self.channels is not None:
            box = [[0, self.channels], *box]
        patch = np.asarray(crop_and_pad_nd(data, box, pad_value=0), dtype=np.float32)
        return torch.from_numpy(np.ascontiguousarray(patch)), origin

    def generate_train_batch(self) -> Dict[str, Any]:
        """'image' (B, C, Z, Y, X) float32, 'origin_zyx' (B, 3) int64 (may be negative), 'keys'."""
        keys = self.draw_identifiers()
        patches, origins = zip(*(self.make_patch(k) for k in keys))
        return {"image": torch.stack(patches), "origin_zyx": torch.tensor(origins, dtype=torch.int64),
                "keys": keys}


def open_preprocessed_dataset(data_dir: Union[str, Path], identifiers: Sequence[str]) -> nnUNetDatasetBlosc2:
    """nnU-Net's memory-mapped dataset over ``identifiers`` in ``data_dir``.

    Raises:
        ScreenerError: no identifiers, or a case's ``.b2nd`` / ``_seg.b2nd`` / ``.pkl`` is missing.
    """
    data_dir = Path(data_dir)
    identifiers = list(identifiers)
    if not identifiers:
        raise ScreenerError(f"no training cases given for {data_dir}")
    missing = [str(data_dir / f"{i}{suffix}") for i in identifiers for suffix in (".b2nd", "_seg.b2nd", ".pkl")
               if not (data_dir / f"{i}{suffix}").is_file()]
    if missing:
        raise ScreenerError(f"missing preprocessed files ({len(missing)}), e.g. {missing[:3]}. "
                            f"Run nnScreener_plan_and_preprocess first.")
    return nnUNetDatasetBlosc2(str(data_dir), identifiers)


def wrap_in_workers(loader: DataLoader, num_workers: int, seed: int, pin_memory: bool = False) -> Loader:
    """Runs ``loader`` in ``num_workers`` background processes (``NonDetMultiThreadedAugmenter``, nnU-Net's
    choice), or in the calling process when 0."""
    if num_workers < 0:
        raise ScreenerError(f"num_workers must be >= 0, got {num_workers}")
    if num_workers == 0:
        return SingleThreadedAugmenter(loader, None)
    return NonDetMultiThreadedAugmenter(loader, None, num_workers, num_cached=max(6, num_workers // 2),
                                        seeds=[seed + i for i in range(num_workers)], pin_memory=pin_memory)


def make_ssl_loader(plans: ScreenerPlans, identifiers: Sequence[str], masking: bool, num_workers: int, seed: int,
                    pin_memory: bool = False) -> Loader:
    """The SSL loader of docs/design.md C7, with the settings of ``plans.config``.

    Batch size ``ssl.batch_size``, ``ssl.n_pairs_per_image`` pairs per image, patch ``network.patch_size_zyx``,
    view scale range ``ssl.masked_crop_spacing_factor`` when masking else ``ssl.crop_spacing_factor``, colour
    augmentation ``ssl.augmentation`` and block masking ``ssl.masking`` (condition model).

    Args:
        plans: the dataset's plans (cases are read from ``plans.data_dir``).
        identifiers: training case identifiers.
        masking: True for the condition model.
        num_workers: background processes (0: produce batches in the calling process).
        seed: base seed of the workers' generators.
        pin_memory: pin batches for fast host-to-GPU copies (CUDA only).

    Returns:
        An infinite iterator of batch dicts (see :meth:`SSLPairDataLoader.generate_train_batch`).
    """
    cfg = plans.config
    loader = SSLPairDataLoader(
        open_preprocessed_dataset(plans.data_dir, identifiers),
        batch_size=cfg.ssl.batch_size,
        patch_zyx=cfg.network.patch_size_zyx,
        spacing_zyx_mm=plans.configuration_manager.spacing,
        n_pairs=cfg.ssl.n_pairs_per_image,
        spacing_factor_range=cfg.ssl.masked_crop_spacing_factor if masking else cfg.ssl.crop_spacing_factor,
        augmentation=cfg.ssl.augmentation,
        masking=cfg.ssl.masking if masking else None,
        seed=seed,
    )
    return wrap_in_workers(loader, num_workers, seed, pin_memory)


def make_density_loader(plans: ScreenerPlans, identifiers: Sequence[str], num_workers: int, seed: int,
                        pin_memory: bool = False) -> Loader:
    """The density loader of docs/design.md C8: ``density.batch_size`` patches of ``network.patch_size_zyx`` voxels.

    Args and returns as :func:`make_ssl_loader` (batches from :meth:`DensityPatchDataLoader.generate_train_batch`).
    """
    cfg = plans.config
    loader = DensityPatchDataLoader(open_preprocessed_dataset(plans.data_dir, identifiers),
                                    batch_size=cfg.density.batch_size, patch_zyx=cfg.network.patch_size_zyx,
                                    seed=seed)
    return wrap_in_workers(loader, num_workers, seed, pin_memory)
