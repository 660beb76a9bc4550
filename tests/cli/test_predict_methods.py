"""nnScreener_predict --method: the baselines' maps through the same predictor and export as Screener's."""
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from nnscreener import paths, stages
from nnscreener.baselines.autoencoder import build_autoencoder_model
from nnscreener.baselines.blend_regression import build_blend_model
from nnscreener.baselines.draem import build_draem_model
from nnscreener.checkpoints import FINAL_CHECKPOINT, save_checkpoint
from nnscreener.cli.predict import build_parser, main
from nnscreener.inference.predictor import SETTINGS_FILE
from tests.cli.test_predict import DATASET_ID, plans, write_ct, write_untrained_density_folder  # noqa: F401

BUILDERS = {"baseline_ae": build_autoencoder_model, "baseline_synthetic": build_blend_model,
            "baseline_draem": build_draem_model}


def write_untrained_baseline(plans, stage: str, variant: str) -> Path:
    """A baseline result folder (docs/design.md C10) holding a randomly initialised scoring model."""
    torch.manual_seed(0)
    model = BUILDERS[stage](plans)
    folder = paths.stage_folder(DATASET_ID, stage, variant, plans.plans_name)
    folder.mkdir(parents=True)
    save_checkpoint({"stage": stage, "screener_config": plans.config.to_dict(), "network_weights": model.state_dict()},
                    folder / FINAL_CHECKPOINT)
    (folder / "plans.json").write_text(json.dumps(plans.plans))
    (folder / "dataset.json").write_text(json.dumps(plans.dataset_json))
    return folder


def test_method_choices_come_from_the_stage_registry():
    action = next(a for a in build_parser()._actions if "--method" in a.option_strings)
    assert tuple(action.choices) == tuple(stages.METHODS) == ("screener", "baseline_ae", "baseline_synthetic",
                                                                "baseline_draem", "distilled")
    assert action.default == "screener" and stages.METHODS["screener"].name == "density"


@pytest.mark.parametrize("stage, variant", [("baseline_ae", "l1"), ("baseline_synthetic", "blend"),
                                            ("baseline_draem", "draem")])
def test_baseline_maps_have_the_input_geometry_and_the_method_is_recorded(plans, tmp_path, stage,  # noqa: F811
                                                                           variant):
    write_untrained_baseline(plans, stage, variant)
    write_untrained_density_folder(plans)
    scans = tmp_path / "scans"
    scans.mkdir()
    write_ct(scans / "ct_a.nii.gz")
    common = ["-i", scans, "-d", DATASET_ID, "-p", plans.plans_name, "-device", "cpu", "-npp", 0, "-nps", 0]
    assert main([str(a) for a in common + ["-o", tmp_path / "maps", "--method", stage]]) == 0
    assert main([str(a) for a in common + ["-o", tmp_path / "screener"]]) == 0
    written = sitk.ReadImage(str(tmp_path / "maps" / "ct_a.nii.gz"))
    original = sitk.ReadImage(str(scans / "ct_a.nii.gz"))
    assert written.GetPixelID() == sitk.sitkFloat32
    assert (written.GetSize(), written.GetSpacing(), written.GetOrigin(), written.GetDirection()) == (
        original.GetSize(), original.GetSpacing(), original.GetOrigin(), original.GetDirection())
    values = sitk.GetArrayFromImage(written)
    assert np.isfinite(values).all() and np.ptp(values) > 0 and values[0, 0, 0] == values.min()
    screener = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "screener" / "ct_a.nii.gz")))
    assert not np.allclose(values, screener)  # another model wrote it
    run = json.loads((tmp_path / "maps" / SETTINGS_FILE).read_text())["runs"][0]
    assert run["method"] == stage and run["cases"] == ["ct_a"]
    assert json.loads((tmp_path / "screener" / SETTINGS_FILE).read_text())["runs"][0]["method"] == "screener"


def test_the_baseline_folder_is_the_only_trained_one_or_the_named_variant(plans, tmp_path, capsys):  # noqa: F811
    scans = tmp_path / "scans"
    scans.mkdir()
    write_ct(scans / "ct_a.nii.gz")
    argv = ["-i", scans, "-o", tmp_path / "maps", "-d", DATASET_ID, "-p", plans.plans_name, "-device", "cpu",
            "-npp", 0, "-nps", 0, "--method", "baseline_ae"]
    assert main([str(a) for a in argv]) == 1
    assert "train it with nnScreener_train DATASET baseline_ae" in capsys.readouterr().err
    write_untrained_baseline(plans, "baseline_ae", "l1")
    write_untrained_baseline(plans, "baseline_ae", "l2")
    assert main([str(a) for a in argv]) == 1
    err = capsys.readouterr().err
    assert "pick one with --variant" in err and "baseline_ae__l2__" in err
    assert main([str(a) for a in argv + ["--variant", "l2"]]) == 0
    assert (tmp_path / "maps" / "ct_a.nii.gz").is_file()
