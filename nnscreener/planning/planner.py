"""ScreenerPlanner: nnU-Net's experiment planner with Screener's fixed geometry.

Screener does not adapt spacing or patch to the dataset: both come from the config (paper App. D: 1.5 x 1.5 x
2.25 mm, 96 x 96 x 64 voxels, (x, y, z)). nnU-Net's planner still does what it is good at: it reads the
dataset fingerprint, picks the reader and resampling functions, and plans the UNet topology for the patch
(stages, strides, kernels) with the config's feature widths. The plans contain only ``3d_fullres``; spacing and
patch are stored in nnU-Net's (z, y, x) order with an identity transpose, and the resolved
:class:`nnscreener.config.ScreenerConfig` is written as the top-level ``"nnscreener"`` block.
"""
from __future__ import annotations

import contextlib
import io
import json
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner
from nnunetv2.preprocessing.resampling.default_resampling import compute_new_shape

from nnscreener import paths
from nnscreener.config import ScreenerConfig, default_config, merge
from nnscreener.errors import ScreenerError
from nnscreener.networks.norms import ChannelLayerNorm3d
from nnscreener.planning.normalization import ScreenerCTNormalization
from nnscreener.planning.unlabeled import load_derived_dataset
from nnscreener.plans import PLANS_BLOCK

PREPROCESSOR_NAME = "ScreenerPreprocessor"
NO_VRAM_LIMIT_GB = 1e9  # keeps nnU-Net's planner from shrinking the configured patch


def with_channel_layer_norm(architecture: dict) -> dict:
    """A copy of a plans ``architecture`` block whose norm_op is the per-voxel LayerNorm over channels
    (:mod:`nnscreener.networks.norms`) instead of InstanceNorm; the topology is unchanged."""
    architecture = json.loads(json.dumps(architecture))
    architecture["arch_kwargs"]["norm_op"] = f"{ChannelLayerNorm3d.__module__}.{ChannelLayerNorm3d.__name__}"
    architecture["arch_kwargs"]["norm_op_kwargs"] = {"eps": 1e-5, "affine": True}
    return architecture


def condition_configuration(fullres: dict) -> dict:
    """The condition network's configuration: ``3d_fullres`` (same data and topology) with a per-voxel LayerNorm
    in place of InstanceNorm, so masking elsewhere in the crop does not shift a voxel's features
    (:mod:`nnscreener.networks.norms`). nnU-Net resolves ``inherits_from`` with a shallow update, so the whole
    ``architecture`` block is repeated."""
    return {"inherits_from": paths.CONFIGURATION, "architecture": with_channel_layer_norm(fullres["architecture"])}


def plans_name_for_preset(preset: str) -> str:
    """``nnScreenerPlans`` for the default preset, ``nnScreenerPlans_<preset>`` otherwise."""
    return paths.DEFAULT_PLANS if preset == "default" else f"{paths.DEFAULT_PLANS}_{preset}"


class ScreenerPlanner(ExperimentPlanner):
    """Plans ``3d_fullres`` with the config's spacing, patch and UNet widths.

    Reads the fingerprint and the derived dataset.json (see :mod:`nnscreener.planning.unlabeled`) from
    ``$nnUNet_preprocessed/DatasetXXX/``.

    Args:
        dataset_name_or_id: e.g. 500 or ``"Dataset500_SyntheticCT"``.
        gpu_memory_target_in_gb: unused (the patch is fixed); kept for nnU-Net's interface.
        preprocessor_name: written into the plans.
        plans_name: defaults to :func:`plans_name_for_preset` of the config's preset.
        overwrite_target_spacing: optional spacing in mm, nnU-Net's (z, y, x) order; replaces the config's.
        suppress_transpose: unused (the transpose is always the identity); kept for nnU-Net's interface.
        config: the Screener config; defaults to the default preset.
    """

    def __init__(self, dataset_name_or_id: Union[str, int], gpu_memory_target_in_gb: float = 8,
                 preprocessor_name: str = PREPROCESSOR_NAME, plans_name: Optional[str] = None,
                 overwrite_target_spacing: Optional[Sequence[float]] = None, suppress_transpose: bool = True,
                 config: Optional[ScreenerConfig] = None):
        config = config if config is not None else default_config()
        if overwrite_target_spacing is not None:
            z, y, x = (float(s) for s in overwrite_target_spacing)
            config = merge(config, {"preprocessing": {"spacing_xyz": (x, y, z)}})
        super().__init__(dataset_name_or_id, gpu_memory_target_in_gb, preprocessor_name,
                         plans_name or plans_name_for_preset(config.preset), None, True)
        self.config = config
        self.dataset_json, self.dataset = load_derived_dataset(self.dataset_name)
        self.UNet_base_num_features = config.network.base_num_features
        self.UNet_max_features_3d = config.network.max_num_features

    def determine_fullres_target_spacing(self) -> np.ndarray:
        """The config's spacing in mm, (z, y, x)."""
        spacing = np.array(self.config.preprocessing.spacing_zyx, dtype=float)
        if spacing.shape != (3,) or np.any(spacing <= 0):
            raise ScreenerError(f"preprocessing.spacing_xyz must be three positive mm values, got "
                                f"{self.config.preprocessing.spacing_xyz}")
        return spacing

    def determine_transpose(self) -> Tuple[List[int], List[int]]:
        return [0, 1, 2], [0, 1, 2]

    def determine_normalization_scheme_and_whether_mask_is_used_for_norm(self) -> Tuple[List[str], List[bool]]:
        return [ScreenerCTNormalization.__name__], [False]

    def get_plans_for_configuration(self, spacing, median_shape, data_identifier: str,
                                    approximate_n_voxels_dataset: float, _cache: dict) -> dict:
        """nnU-Net's planning with the configured patch: the patch is passed as the "median shape" so nnU-Net's
        initial patch equals it, and the VRAM target is lifted so it is not shrunk. The real median shape and the
        config's batch size are written back afterwards."""
        patch = tuple(int(p) for p in self.config.network.patch_size_zyx)
        vram_target = self.UNet_vram_target_GB
        self.UNet_vram_target_GB = NO_VRAM_LIMIT_GB
        try:
            plan = super().get_plans_for_configuration(spacing, patch, data_identifier,
                                                       approximate_n_voxels_dataset, _cache)
        finally:
            self.UNet_vram_target_GB = vram_target
        planned = tuple(int(p) for p in plan["patch_size"])
        if planned != patch:
            raise ScreenerError(
                f"network.patch_size_xyz={self.config.network.patch_size_xyz} cannot be used with nnU-Net's UNet "
                f"at spacing {self.config.preprocessing.spacing_xyz} mm: its planner needs "
                f"{tuple(reversed(planned))} (x, y, z). Choose sizes divisible by 2 ** (number of poolings).")
        plan["median_image_size_in_voxels"] = [float(s) for s in median_shape]
        plan["batch_size"] = int(self.config.ssl.batch_size)
        return plan

    def plan_experiment(self) -> dict:
        """Writes ``<plans_name>.json`` with ``3d_fullres``, the condition network's configuration and the
        ``nnscreener`` block; returns the plans."""
        transpose_forward, transpose_backward = self.determine_transpose()
        spacing = self.determine_fullres_target_spacing()
        fingerprint = self.dataset_fingerprint
        new_shapes = [compute_new_shape(shape, sp, spacing)
                      for sp, shape in zip(fingerprint["spacings"], fingerprint["shapes_after_crop"])]
        median_shape = np.median(new_shapes, 0)
        n_voxels = float(np.prod(median_shape, dtype=np.float64) * self.dataset_json["numTraining"])
        plan = self.get_plans_for_configuration(spacing, median_shape,
                                                self.generate_data_identifier(paths.CONFIGURATION), n_voxels, {})
        plan["batch_dice"] = False
        if self.config.network.descriptor_norm == "layer":
            plan["architecture"] = with_channel_layer_norm(plan["architecture"])
        plans = {
            "dataset_name": self.dataset_name,
            "plans_name": self.plans_identifier,
            "original_median_spacing_after_transp": [float(s) for s in np.median(fingerprint["spacings"], 0)],
            "original_median_shape_after_transp": [int(round(s)) for s in
                                                   np.median(fingerprint["shapes_after_crop"], 0)],
            "image_reader_writer": self.determine_reader_writer().__name__,
            "transpose_forward": [int(i) for i in transpose_forward],
            "transpose_backward": [int(i) for i in transpose_backward],
            "configurations": {paths.CONFIGURATION: plan,
                               paths.CONDITION_CONFIGURATION: condition_configuration(plan)},
            "experiment_planner_used": self.__class__.__name__,
            "label_manager": "LabelManager",
            "foreground_intensity_properties_per_channel":
                fingerprint["foreground_intensity_properties_per_channel"],
            PLANS_BLOCK: self.config.to_dict(),
            "nnscreener_axis_order": "spacing, patch_size and median shapes are (z, y, x) as in nnU-Net; "
                                     "the nnscreener block's *_xyz fields are (x, y, z)",
        }
        self.plans = plans
        self.save_plans(plans)
        return plans

    def save_plans(self, plans: dict) -> None:
        """nnU-Net's ``save_plans`` without its "Plans were saved to" line: during nnScreener_plan_and_preprocess
        that path is the staging folder, and :func:`nnscreener.planning.pipeline.plan_and_preprocess` prints the
        final location."""
        with contextlib.redirect_stdout(io.StringIO()):
            super().save_plans(plans)
