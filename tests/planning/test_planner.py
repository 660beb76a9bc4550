"""ScreenerPlanner writes nnU-Net plans with the config's fixed geometry and the nnscreener block."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from nnscreener.config import ScreenerConfig, get_preset
from nnscreener.errors import ScreenerError
from nnscreener.plans import load_plans
from nnscreener.planning.planner import ScreenerPlanner, plans_name_for_preset
from tests.planning.test_preprocessor import plan_phantom_dataset


def _plans_file(env, plans_name: str) -> dict:
    return json.loads((Path(env["nnUNet_preprocessed"]) / "Dataset500_Phantom" / f"{plans_name}.json").read_text())


def test_cpu_preset_plans_in_nnunet_format(nnunet_env):
    plan_phantom_dataset(nnunet_env, preset="cpu")
    plans = _plans_file(nnunet_env, "nnScreenerPlans_cpu")
    cfg = get_preset("cpu")
    assert list(plans["configurations"]) == ["3d_fullres", "3d_fullres_condition"]
    conf = plans["configurations"]["3d_fullres"]
    assert conf["spacing"] == [4.5, 3.0, 3.0]  # z, y, x of spacing_xyz (3, 3, 4.5)
    assert conf["patch_size"] == [32, 48, 48]  # z, y, x of patch_size_xyz (48, 48, 32)
    assert conf["data_identifier"] == "nnScreenerPlans_cpu_3d_fullres"
    assert conf["normalization_schemes"] == ["ScreenerCTNormalization"]
    assert conf["batch_size"] == cfg.ssl.batch_size
    assert conf["median_image_size_in_voxels"] == [11.0, 20.0, 20.0]  # 20x40x40 phantoms at 2.5/1.5 mm -> cpu spacing
    arch = conf["architecture"]["arch_kwargs"]
    n = cfg.network
    assert arch["features_per_stage"] == [min(n.base_num_features * 2 ** i, n.max_num_features) for i in range(4)]
    assert arch["strides"] == [[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2]]
    assert plans["transpose_forward"] == plans["transpose_backward"] == [0, 1, 2]
    assert plans["plans_name"] == "nnScreenerPlans_cpu"
    assert ScreenerConfig.from_dict(plans["nnscreener"]) == cfg
    # nnU-Net's own plans handling and nnScreener's loader both read it
    assert PlansManager(plans).get_configuration("3d_fullres").patch_size == [32, 48, 48]
    loaded = load_plans(500, "nnScreenerPlans_cpu")
    assert loaded.config == cfg and loaded.configuration_manager.spacing == [4.5, 3.0, 3.0]
    # the condition network: same data and topology, per-voxel LayerNorm instead of InstanceNorm
    condition = PlansManager(plans).get_configuration("3d_fullres_condition")
    assert condition.data_identifier == conf["data_identifier"] and condition.patch_size == [32, 48, 48]
    cond_arch = condition.network_arch_init_kwargs
    assert cond_arch["norm_op"] == "nnscreener.networks.norms.ChannelLayerNorm3d"
    assert arch["norm_op"] == "torch.nn.modules.instancenorm.InstanceNorm3d"
    assert [k for k in cond_arch if cond_arch[k] != arch[k]] == ["norm_op"]
    assert loaded.network_configuration_manager(masked_input=True).network_arch_init_kwargs == cond_arch


def test_default_preset_uses_paper_geometry(nnunet_env):
    plan_phantom_dataset(nnunet_env, preset="default")
    conf = _plans_file(nnunet_env, "nnScreenerPlans")["configurations"]["3d_fullres"]
    assert conf["spacing"] == [2.25, 1.5, 1.5] and conf["patch_size"] == [64, 96, 96]
    assert conf["architecture"]["arch_kwargs"]["features_per_stage"] == [32, 64, 128, 256, 320]


def test_overrides_are_planned_and_recorded(nnunet_env):
    plan_phantom_dataset(nnunet_env, preset="cpu", overrides={"preprocessing": {"spacing_xyz": "2,2,3"},
                                                              "network": {"base_num_features": 8}})
    plans = _plans_file(nnunet_env, "nnScreenerPlans_cpu")
    conf = plans["configurations"]["3d_fullres"]
    assert conf["spacing"] == [3.0, 2.0, 2.0]
    assert conf["architecture"]["arch_kwargs"]["features_per_stage"][0] == 8
    assert plans["nnscreener"]["preprocessing"]["spacing_xyz"] == [2.0, 2.0, 3.0]


def test_overwrite_target_spacing_is_zyx(nnunet_env):
    plan_phantom_dataset(nnunet_env, preset="cpu")
    planner = ScreenerPlanner(500, overwrite_target_spacing=(4.0, 2.0, 1.0), config=get_preset("cpu"))
    assert list(planner.determine_fullres_target_spacing()) == [4.0, 2.0, 1.0]
    assert planner.config.preprocessing.spacing_xyz == (1.0, 2.0, 4.0)


def test_patch_that_nnunet_would_change_is_rejected(nnunet_env):
    with pytest.raises(ScreenerError, match="patch_size_xyz"):
        plan_phantom_dataset(nnunet_env, preset="cpu", overrides={"network": {"patch_size_xyz": "50,48,32"}})


def test_plans_names():
    assert plans_name_for_preset("default") == "nnScreenerPlans"
    assert plans_name_for_preset("cpu") == "nnScreenerPlans_cpu"


def test_descriptor_norm_layer_plans_the_per_voxel_norm_for_the_descriptor(nnunet_env):
    plan_phantom_dataset(nnunet_env, preset="cpu", overrides={"network": {"descriptor_norm": "layer"}})
    plans = _plans_file(nnunet_env, "nnScreenerPlans_cpu")
    manager = PlansManager(plans)
    descriptor = manager.get_configuration("3d_fullres").network_arch_init_kwargs
    condition = manager.get_configuration("3d_fullres_condition").network_arch_init_kwargs
    assert descriptor["norm_op"] == condition["norm_op"] == "nnscreener.networks.norms.ChannelLayerNorm3d"
    assert descriptor == condition


def test_unknown_descriptor_norm_is_rejected():
    from nnscreener.config import merge, validate
    with pytest.raises(ScreenerError, match="network.descriptor_norm"):
        validate(merge(get_preset("cpu"), {"network": {"descriptor_norm": "batch"}}))
