"""The stage registry: trainers, folder naming, SSL flag and input channels in one place."""
from __future__ import annotations

import pytest

from nnscreener import paths, stages
from nnscreener.errors import ScreenerError


def test_registry_names_trainers_and_channels():
    from nnscreener.trainers.density import FROZEN_INPUT_CHANNELS, DensityTrainer
    from nnscreener.trainers.distill import DistillTrainer
    from nnscreener.trainers.ssl import ConditionTrainer, DescriptorTrainer

    from nnscreener.trainers.baselines import AutoencoderTrainer, DraemTrainer, SyntheticAnomalyTrainer

    assert stages.SCREENER_STAGES == paths.STAGES == ("descriptor", "condition", "density")
    assert stages.STAGE_NAMES == paths.STAGES + ("baseline_ae", "baseline_synthetic", "baseline_draem", "distill")
    assert [stages.trainer_class(s) for s in stages.STAGE_NAMES] == [DescriptorTrainer, ConditionTrainer,
                                                                     DensityTrainer, AutoencoderTrainer,
                                                                     SyntheticAnomalyTrainer, DraemTrainer,
                                                                     DistillTrainer]
    assert all(stages.trainer_class(s).stage == s for s in stages.STAGE_NAMES)
    assert all(stages.trainer_class(s).config_section == stages.get_stage(s).section for s in stages.STAGE_NAMES)
    assert [stages.get_stage(s).is_ssl for s in stages.STAGE_NAMES] == [True, True, False, False, False, False,
                                                                        False]
    assert stages.METHODS["distilled"].name == "distill" and stages.get_stage("distill").model_loader == ""
    assert (DescriptorTrainer.in_channels, ConditionTrainer.in_channels) == (1, 2)
    assert FROZEN_INPUT_CHANNELS == {"descriptor": 1, "condition": 2}
    with pytest.raises(ScreenerError, match="trains no dense feature network"):
        stages.input_channels("density")
    with pytest.raises(ScreenerError, match=r"unknown stage 'segmentation'; choose one of \['descriptor'"):
        stages.trainer_class("segmentation")


def test_folder_names_and_variants():
    assert stages.folder_name("descriptor", stages.ssl_variant("vicreg", 32), "P") == "descriptor__vicreg_d32__P"
    assert stages.density_variant("masking", "flow") == "masking_flow"
    assert stages.density_variant("masking", "flow", "infonce_d32", "vicreg_d16") == \
        "masking_flow_desc-infonce_d32_cond-vicreg_d16"
    # a condition variant only names runs whose condition uses the trained condition network
    assert stages.density_variant("sincos", "gaussian", "", "vicreg_d16") == "sincos_gaussian"
    assert stages.density_variant("none", "flow", "infonce_d32", "x") == "none_flow_desc-infonce_d32"
    assert stages.distill_variant("map+features", "masking_flow", "nnScreenerPlans_cpu") == \
        "mapfeat_masking_flow_nnScreenerPlans_cpu"


def test_stage_folder_rejects_unknown_stages(nnunet_env):
    with pytest.raises(ScreenerError, match="unknown stage 'detector'"):
        paths.stage_folder(1, "detector", "v")


def test_only_the_condition_network_sees_masked_views():
    assert stages.masked_input("condition") and not stages.masked_input("descriptor")
    from nnscreener.trainers.ssl import ConditionTrainer, DescriptorTrainer

    assert ConditionTrainer.masking and not DescriptorTrainer.masking


def test_prediction_methods_name_their_stage_and_scoring_model():
    assert {m: s.name for m, s in stages.METHODS.items()} == {
        "screener": "density", "baseline_ae": "baseline_ae", "baseline_synthetic": "baseline_synthetic",
        "baseline_draem": "baseline_draem", "distilled": "distill"}
    assert stages.method_stage(stages.DEFAULT_METHOD).model_loader == "nnscreener.model:load_screener_model"
    with pytest.raises(ScreenerError, match=r"unknown method 'draem'; choose one of \['screener'"):
        stages.method_stage("draem")
    with pytest.raises(ScreenerError, match="has no scoring model"):
        stages.get_stage("descriptor").load_model("/nonexistent")
