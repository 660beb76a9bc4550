"""A tiny preprocessed dataset in nnU-Net 2.8.1's format, written without running planning or preprocessing.

Used by every test that needs plans and ``.b2nd`` cases (trainers, loaders, prediction) so that none of them has
to run the real planner. The files follow docs/design.md C2/C3: ``$nnUNet_preprocessed/DatasetXXX_Fake/`` holds
``<plans_name>.json`` (nnU-Net plans with a ``3d_fullres`` configuration and the ``"nnscreener"`` block),
``dataset.json``, ``dataset_fingerprint.json`` and ``<data_identifier>/{case}.b2nd|_seg.b2nd|.pkl``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, Mapping, Optional, Tuple

import numpy as np
from scipy.ndimage import gaussian_filter

from nnscreener import paths
from nnscreener.config import get_preset, merge
from nnscreener.plans import ScreenerPlans, load_plans

_CONV3D = "torch.nn.modules.conv.Conv3d"
_INSTANCE_NORM3D = "torch.nn.modules.instancenorm.InstanceNorm3d"
_LEAKY_RELU = "torch.nn.LeakyReLU"


def plans_name_for_preset(preset: str) -> str:
    """``nnScreenerPlans`` for the default preset, ``nnScreenerPlans_<preset>`` otherwise (docs/design.md C2)."""
    return paths.DEFAULT_PLANS if preset == "default" else f"{paths.DEFAULT_PLANS}_{preset}"


def plain_conv_unet_architecture(patch_size_zyx: Tuple[int, int, int], spacing_zyx: Tuple[float, float, float],
                                 base_num_features: int, max_num_features: int) -> Dict:
    """The ``architecture`` block nnU-Net's default planner writes for this patch (PlainConvUNet).

    The topology comes from nnU-Net's own ``get_pool_and_conv_props`` (min feature-map edge 4, as the planner);
    for the cpu preset (patch z,y,x 32x48x48) this is 4 stages, features 16,32,64,64, strides 1,2,2,2, kernels 3.
    """
    from nnunetv2.experiment_planning.experiment_planners.network_topology import get_pool_and_conv_props

    _, strides, kernels, _, _ = get_pool_and_conv_props(list(spacing_zyx), list(patch_size_zyx), 4, 999999)
    n_stages = len(strides)
    return {
        "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
        "arch_kwargs": {
            "n_stages": n_stages,
            "features_per_stage": [min(base_num_features * 2 ** i, max_num_features) for i in range(n_stages)],
            "conv_op": _CONV3D,
            "kernel_sizes": [list(k) for k in kernels],
            "strides": [list(s) for s in strides],
            "n_conv_per_stage": [2] * n_stages,
            "n_conv_per_stage_decoder": [2] * (n_stages - 1),
            "conv_bias": True,
            "norm_op": _INSTANCE_NORM3D,
            "norm_op_kwargs": {"eps": 1e-05, "affine": True},
            "dropout_op": None,
            "dropout_op_kwargs": None,
            "nonlin": _LEAKY_RELU,
            "nonlin_kwargs": {"inplace": True},
        },
        "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
    }


def _phantom(shape_zyx: Tuple[int, int, int], rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
    """A smooth random 'body' in [0, 1] inside an ellipsoid, and that ellipsoid as the body mask.

    Returns:
        image (z, y, x) float32 in [0, 1] (0 outside the body) and body mask (z, y, x) bool.
    """
    grid = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape_zyx], indexing="ij")
    radii = rng.uniform(0.75, 0.95, size=3)
    body = sum((g / r) ** 2 for g, r in zip(grid, radii)) <= 1.0
    texture = gaussian_filter(rng.standard_normal(shape_zyx), sigma=2.0)
    texture = (texture - texture.min()) / (np.ptp(texture) + 1e-8)
    blobs = gaussian_filter(rng.standard_normal(shape_zyx), sigma=5.0)
    blobs = (blobs - blobs.min()) / (np.ptp(blobs) + 1e-8)
    image = np.where(body, 0.3 + 0.4 * blobs + 0.3 * texture, 0.0)
    return np.clip(image, 0.0, 1.0).astype(np.float32), body


def _properties(shape_zyx: Tuple[int, int, int], spacing_zyx: Tuple[float, float, float], seg: np.ndarray) -> Dict:
    """nnU-Net case properties for a volume that was neither cropped nor resampled."""
    from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor

    return {
        "spacing": list(spacing_zyx),
        "sitk_stuff": {
            "spacing": tuple(float(s) for s in spacing_zyx[::-1]),  # SimpleITK order (x, y, z)
            "origin": (0.0, 0.0, 0.0),
            "direction": (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0),
        },
        "shape_before_cropping": tuple(shape_zyx),
        "bbox_used_for_cropping": [[0, s] for s in shape_zyx],
        "shape_after_cropping_and_before_resampling": tuple(shape_zyx),
        "class_locations": DefaultPreprocessor._sample_foreground_locations(seg, [1], seed=1234, verbose=False),
    }


def _write_json(path: Path, obj: Mapping) -> None:
    path.write_text(json.dumps(obj, indent=2))


def make_fake_preprocessed_dataset(root_env: dict, dataset_id: int = 990, n_cases: int = 3,
                                   shape_zyx: Tuple[int, int, int] = (40, 64, 64),
                                   preset: str = "cpu", window_channel: Optional[bool] = None) -> ScreenerPlans:
    """Writes plans, dataset.json and ``n_cases`` blosc2 cases of smooth phantoms under ``nnUNet_preprocessed``.

    Args:
        root_env: the ``nnunet_env`` fixture's dict (``nnUNet_preprocessed`` -> folder); the env vars must already
            point there (the fixture does this).
        dataset_id: 3-digit dataset id; the dataset is named ``Dataset{id}_Fake``.
        n_cases: number of cases ``case_000``, ``case_001``, ...
        shape_zyx: voxel shape of every case, (z, y, x).
        preset: config preset stored in the plans' ``"nnscreener"`` block (``"cpu"`` -> ``nnScreenerPlans_cpu``).
        window_channel: store a second channel, the phantom squared, as ``preprocessing.keep_window_channel``
            preprocessing stores the HU window beside the CLAHE image (docs/design.md C3); default the preset's
            ``keep_window_channel``.

    Returns:
        The dataset's plans, loaded through :func:`nnscreener.plans.load_plans`.
    """
    from nnunetv2.training.dataloading.nnunet_dataset import comp_blosc2_params, nnUNetDatasetBlosc2

    config = get_preset(preset)
    if window_channel is None:
        window_channel = config.preprocessing.keep_window_channel
    config = merge(config, {"preprocessing": {"keep_window_channel": window_channel}})
    name = f"Dataset{dataset_id:03d}_Fake"
    plans_name = plans_name_for_preset(preset)
    spacing_zyx = tuple(float(s) for s in config.preprocessing.spacing_zyx)
    patch_zyx = tuple(int(p) for p in config.network.patch_size_zyx)
    data_identifier = f"{plans_name}_{paths.CONFIGURATION}"

    pre = Path(root_env["nnUNet_preprocessed"]) / name
    data_dir = pre / data_identifier
    data_dir.mkdir(parents=True, exist_ok=True)

    dataset_json = {
        "channel_names": {"0": "CT"},
        "labels": {"background": 0, "body": 1},
        "numTraining": n_cases,
        "file_ending": ".nii.gz",
        "name": name,
    }
    _write_json(pre / "dataset.json", dataset_json)
    _write_json(pre / "dataset_fingerprint.json", {
        "spacings": [list(spacing_zyx)] * n_cases,
        "shapes_after_crop": [list(shape_zyx)] * n_cases,
    })

    plans = {
        "dataset_name": name,
        "plans_name": plans_name,
        "original_median_spacing_after_transp": list(spacing_zyx),
        "original_median_shape_after_transp": list(shape_zyx),
        "image_reader_writer": "SimpleITKIO",
        "transpose_forward": [0, 1, 2],
        "transpose_backward": [0, 1, 2],
        "configurations": {
            paths.CONFIGURATION: {
                "data_identifier": data_identifier,
                "preprocessor_name": "DefaultPreprocessor",
                "batch_size": config.ssl.batch_size,
                "patch_size": list(patch_zyx),
                "median_image_size_in_voxels": list(shape_zyx),
                "spacing": list(spacing_zyx),
                "normalization_schemes": ["NoNormalization"],
                "use_mask_for_norm": [False],
                "resampling_fn_data": "resample_data_or_seg_to_shape",
                "resampling_fn_seg": "resample_data_or_seg_to_shape",
                "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
                "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
                "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
                "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0,
                                                       "force_separate_z": None},
                "architecture": plain_conv_unet_architecture(patch_zyx, spacing_zyx,
                                                             config.network.base_num_features,
                                                             config.network.max_num_features),
                "batch_dice": False,
            }
        },
        "experiment_planner_used": "tests.helpers.fake_dataset",
        "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {
            "0": {"max": 1.0, "mean": 0.5, "median": 0.5, "min": 0.0, "percentile_00_5": 0.0,
                  "percentile_99_5": 1.0, "std": 0.2}
        },
        "nnscreener": config.to_dict(),
    }
    _write_json(pre / f"{plans_name}.json", plans)

    rng = np.random.default_rng(dataset_id)
    for i in range(n_cases):
        image, body = _phantom(shape_zyx, rng)
        data = np.stack([image, image ** 2]) if window_channel else image[None]  # (C, z, y, x) float32
        seg = body[None].astype(np.int16)  # (1, z, y, x) body mask
        blocks, chunks = comp_blosc2_params(data.shape, patch_zyx, data.itemsize)
        blocks_seg, chunks_seg = comp_blosc2_params(seg.shape, patch_zyx, seg.itemsize)
        nnUNetDatasetBlosc2.save_case(data, seg, _properties(shape_zyx, spacing_zyx, seg),
                                      str(data_dir / f"case_{i:03d}"), chunks=chunks, blocks=blocks,
                                      chunks_seg=chunks_seg, blocks_seg=blocks_seg)
    return load_plans(dataset_id, plans_name)
