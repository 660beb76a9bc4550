"""The quality campaign refuses to train or reuse a stage whose settings differ from what its row means (today's
cpu preset with the row's arguments): after a preset change, plans and finished models of an older preset would
otherwise be measured under the new preset's name."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from nnscreener.config import cpu_config, merge
from tests.benchmarks.test_quality_smoke import quality


def _campaign(work: Path, planned_histogram_bins: int) -> "quality.Campaign":
    """A campaign over ``work`` whose base plans were made when the cpu preset had ``planned_histogram_bins``."""
    campaign = quality.Campaign.__new__(quality.Campaign)  # no dataset needed: plans and folders are written here
    campaign.args = quality.build_parser().parse_args(["--work_dir", str(work), "--base_iterations", "10"])
    campaign.work_dir, campaign.raw_dir = work, work / "nnUNet_raw" / "Dataset500_SyntheticCT"
    campaign.base_pre_root = campaign.own_pre_root = work / "nnUNet_preprocessed"
    stored = merge(cpu_config(), {"density": {"intensity_histogram_bins": planned_histogram_bins}}).to_dict()
    plans = campaign.pre_root(quality.BASE_PLANS) / campaign.raw_dir.name / f"{quality.BASE_PLANS}.json"
    plans.parent.mkdir(parents=True)
    plans.write_text(json.dumps({"nnscreener": stored}))
    return campaign


DENSITY_ARGS = ["--num_iterations", "10", "--set", "seed=0", "--condition", "masking", "--density", "flow"]


def test_plans_of_an_older_preset_are_refused_for_the_stages_they_would_change(tmp_path):
    assert cpu_config().density.intensity_histogram_bins == 8  # the preset change this guards against
    campaign = _campaign(tmp_path, planned_histogram_bins=0)
    default = campaign.setup("default", 1)
    folder = campaign.stage_dir(default, 0, "density", "masking_flow")
    with pytest.raises(quality.SettingsDiffer,
                       match=r"density.intensity_histogram_bins: 0 \(meant 8\).*fresh --work_dir"):
        campaign.check_config(default, "density", folder, DENSITY_ARGS)
    # the descriptor does not read the density section; a configuration that sets the field gets what it means
    campaign.check_config(default, "descriptor", campaign.stage_dir(default, 0, "descriptor", "vicreg_d32"),
                          ["--num_iterations", "10", "--set", "seed=0"])
    hist8 = campaign.setup("intensity_hist8", 1)
    campaign.check_config(hist8, "density", campaign.stage_dir(hist8, 0, "density", "masking_flow"), DENSITY_ARGS)


def test_a_finished_model_of_other_settings_is_refused_by_its_folder(tmp_path):
    campaign = _campaign(tmp_path, planned_histogram_bins=8)
    default = campaign.setup("default", 1)
    folder = campaign.stage_dir(default, 0, "density", "masking_flow")
    campaign.check_config(default, "density", folder, DENSITY_ARGS)  # plans as today's preset: nothing to refuse
    trained = merge(cpu_config(), {"seed": 0, "density": {"num_iterations": 10, "intensity_histogram_bins": 0}})
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(trained.to_json())
    with pytest.raises(quality.SettingsDiffer, match=f"{folder}.*intensity_histogram_bins: 0 \\(meant 8\\)"):
        campaign.check_config(default, "density", folder, DENSITY_ARGS)
    (folder / "config.json").write_text(merge(trained, {"density": {"intensity_histogram_bins": 8}}).to_json())
    campaign.check_config(default, "density", folder, DENSITY_ARGS)
    with pytest.raises(quality.SettingsDiffer, match=r"seed: 0 \(meant 1\)"):  # another seed's model is not this seed's
        campaign.check_config(default, "density", folder, [*DENSITY_ARGS, "--set", "seed=1"])


def test_a_row_with_other_settings_fails_alone_and_is_reported(tmp_path):
    campaign = _campaign(tmp_path, planned_histogram_bins=0)
    campaign.failed = {}
    default = campaign.setup("default", 1)
    folder = campaign.stage_dir(default, 0, "density", "masking_flow")
    assert campaign.attempt(lambda: campaign.check_config(default, "density", folder, DENSITY_ARGS), "1x, seed 0") \
        is None
    assert list(campaign.failed) == ["settings/1x, seed 0"] and "intensity_histogram_bins" in campaign.failed[
        "settings/1x, seed 0"]


@pytest.mark.parametrize("name", sorted(quality.CONFIGS))
def test_every_configuration_resolves_to_valid_settings_for_each_stage(tmp_path, name):
    """A misspelt ``--set`` field or an invalid value in :data:`quality_configs.CONFIGS` fails here, not after an
    hour of the campaign; a density-only configuration means its SSL models' settings."""
    campaign = quality.Campaign.__new__(quality.Campaign)  # settings only
    campaign.args = quality.build_parser().parse_args(["--work_dir", str(tmp_path)])
    setup = campaign.setup(name, 1)
    for stage in quality.paths.STAGES:
        extra = ["--condition", "masking", "--density", "flow"] if stage == "density" else []
        campaign.resolved_config(setup, stage, extra)
    for stage, owner in campaign.stage_setups(setup).items():  # shared models: the same plans and settings
        assert owner.plans == setup.plans, (name, stage, owner)
        if stage != "density":
            assert campaign.resolved_config(owner, stage) == campaign.resolved_config(setup, stage), (name, stage)
