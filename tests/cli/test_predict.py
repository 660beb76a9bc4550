"""nnScreener_predict end to end on an untrained (randomly initialised) model saved as a density checkpoint."""
import copy
import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from nnscreener import paths
from nnscreener.cli.predict import main
from nnscreener.checkpoints import FINAL_CHECKPOINT, save_checkpoint
from nnscreener.inference.predictor import SETTINGS_FILE
from nnscreener.model import build_screener_model
from nnscreener.networks.dense_net import build_dense_net
from tests.helpers.fake_dataset import make_fake_preprocessed_dataset

DATASET_ID = 990
SPACING_XYZ = (2.0, 2.5, 4.0)
ORIGIN = (12.0, -7.5, 100.0)
DIRECTION = (1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, -1.0)


@pytest.fixture
def plans(nnunet_env):
    plans = make_fake_preprocessed_dataset(nnunet_env, dataset_id=DATASET_ID, n_cases=1, shape_zyx=(8, 16, 16))
    raw = copy.deepcopy(plans.plans)
    raw["configurations"]["3d_fullres"]["normalization_schemes"] = ["ScreenerCTNormalization"]
    return dataclasses.replace(plans, plans=raw)


def write_untrained_density_folder(plans) -> Path:
    """A density result folder (docs/design.md C10) holding a randomly initialised masking + flow ScreenerModel."""
    torch.manual_seed(0)
    model = build_screener_model(plans.config, build_dense_net(plans, 1), build_dense_net(plans, 2))
    folder = paths.stage_folder(DATASET_ID, "density", paths.density_variant("masking", "flow"), plans.plans_name)
    folder.mkdir(parents=True)
    save_checkpoint({"stage": "density", "screener_config": plans.config.to_dict(),
                     "network_weights": model.state_dict()}, folder / FINAL_CHECKPOINT)
    (folder / "plans.json").write_text(json.dumps(plans.plans))
    (folder / "dataset.json").write_text(json.dumps(plans.dataset_json))
    return folder


def write_ct(path: Path, shape_zyx=(18, 40, 36)) -> None:
    """Air around an ellipsoid of soft tissue, in HU, with a non-trivial geometry."""
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape_zyx], indexing="ij")
    image = np.where((z / 0.95) ** 2 + (y / 0.7) ** 2 + (x / 0.8) ** 2 <= 1, 40, -1000).astype(np.int16)
    itk = sitk.GetImageFromArray(image)
    itk.SetSpacing(SPACING_XYZ)
    itk.SetOrigin(ORIGIN)
    itk.SetDirection(DIRECTION)
    sitk.WriteImage(itk, str(path))


def _run(capsys, *argv) -> tuple:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_predicts_scans_in_their_own_geometry_and_skips_finished_ones(plans, tmp_path, capsys):
    write_untrained_density_folder(plans)
    scans = tmp_path / "scans"
    scans.mkdir()
    write_ct(scans / "ct_a.nii.gz")
    write_ct(scans / "ct_b.nrrd", shape_zyx=(20, 36, 40))
    (scans / "ct_c.mha").write_bytes(b"garbage")
    out = tmp_path / "maps"
    common = ("-i", scans, "-o", out, "-d", DATASET_ID, "-p", plans.plans_name, "-device", "cpu",
              "-npp", 0, "-nps", 0)

    code, stdout, stderr = _run(capsys, *common, "--save_png")
    assert code == 1  # one case failed
    assert "2 predicted" in stdout and "FAILED" not in stdout
    assert "FAILED ct_c" in stderr and "ct_c.mha" in stderr
    for case, source in (("ct_a", "ct_a.nii.gz"), ("ct_b", "ct_b.nrrd")):
        written, original = sitk.ReadImage(str(out / f"{case}.nii.gz")), sitk.ReadImage(str(scans / source))
        assert written.GetPixelID() == sitk.sitkFloat32
        assert (written.GetSize(), written.GetSpacing(), written.GetOrigin(), written.GetDirection()) == (
            original.GetSize(), original.GetSpacing(), original.GetOrigin(), original.GetDirection())
        values = sitk.GetArrayFromImage(written)
        assert np.isfinite(values).all() and values[0, 0, 0] == values.min() and np.ptp(values) > 0
        assert (out / "previews" / f"{case}_coronal.png").is_file()

    (scans / "ct_c.mha").unlink()
    code, stdout, _ = _run(capsys, *common)
    assert code == 0 and "0 predicted, 2 skipped" in stdout
    code, stdout, _ = _run(capsys, *common, "--overwrite", "-num_parts", 2, "-part_id", 1)
    assert code == 0 and "1 predicted, 0 skipped" in stdout


def test_errors_name_the_missing_input_dataset_model_or_checkpoint(plans, tmp_path, capsys):
    scans = tmp_path / "scans"
    scans.mkdir()
    base = ("-o", tmp_path / "out", "-p", plans.plans_name, "-device", "cpu")

    code, _, err = _run(capsys, "-i", tmp_path / "nowhere", "-d", DATASET_ID, *base)
    assert code == 1 and "input folder" in err and "nowhere" in err and err.count("\n") == 1

    code, _, err = _run(capsys, "-i", scans, "-d", 123, *base)
    assert code == 1 and "dataset '123' was not found" in err

    code, _, err = _run(capsys, "-i", scans, "-d", DATASET_ID, *base, "--density", "gaussian")
    assert code == 1 and "no trained model" in err and "density__masking_gaussian__nnScreenerPlans_cpu" in err

    folder = write_untrained_density_folder(plans)
    code, _, err = _run(capsys, "-i", scans, "-d", DATASET_ID, *base, "--density", "gaussian")
    assert "trained density models of this dataset: ['density__masking_flow__nnScreenerPlans_cpu']" in err

    code, _, err = _run(capsys, "-i", scans, "-d", DATASET_ID, *base, "-chk", "checkpoint_best.pth")
    assert code == 1 and str(folder / "checkpoint_best.pth") in err and "checkpoint_final.pth" in err

    code, _, err = _run(capsys, "-i", scans, "-d", DATASET_ID, *base)
    assert code == 1 and "holds no images" in err

    write_ct(scans / "a.nii.gz")
    code, _, err = _run(capsys, "-i", scans, "-d", DATASET_ID, *base, "-num_parts", 2, "-part_id", 2)
    assert code == 1 and "-part_id must lie in 0..1" in err


def test_score_latent_writes_the_latent_energy_map_and_is_recorded(plans, tmp_path, capsys):
    write_untrained_density_folder(plans)
    scans = tmp_path / "scans"
    scans.mkdir()
    write_ct(scans / "ct_a.nii.gz")
    common = ("-i", scans, "-d", DATASET_ID, "-p", plans.plans_name, "-device", "cpu", "-npp", 0, "-nps", 0)
    maps = {}
    for score in ("nll", "latent"):
        code, _, _ = _run(capsys, *common, "-o", tmp_path / score, "--score", score)
        assert code == 0
        maps[score] = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / score / "ct_a.nii.gz")))
        assert json.loads((tmp_path / score / SETTINGS_FILE).read_text())["runs"][0]["score"] == score
    code, _, _ = _run(capsys, *common, "-o", tmp_path / "default")
    default = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "default" / "ct_a.nii.gz")))
    np.testing.assert_array_equal(default, maps["nll"])  # the config's score, nll, is the default
    assert not np.allclose(maps["latent"], maps["nll"])
    assert maps["latent"].min() >= 0  # 0.5 ||z||^2, unlike an NLL

    code, _, err = _run(capsys, *common, "-o", tmp_path / "ae", "--method", "baseline_ae", "--score", "latent")
    assert code == 1 and "--score applies to --method screener only" in err and err.count("\n") == 1


def test_help_lists_the_variant_choices(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    assert "masking,sincos,none" in text and "flow,gaussian" in text and "uniform,gaussian" in text


def test_truncated_and_non_ct_scans_fail_by_name_unless_non_ct_is_allowed(plans, tmp_path, capsys):
    write_untrained_density_folder(plans)
    scans = tmp_path / "scans"
    scans.mkdir()
    write_ct(scans / "good.nii.gz")
    write_ct(scans / "cut.nii.gz")
    whole = (scans / "cut.nii.gz").read_bytes()
    (scans / "cut.nii.gz").write_bytes(whole[: len(whole) // 2])
    mri = sitk.GetImageFromArray(np.random.default_rng(0).uniform(0, 1, (18, 40, 36)).astype(np.float32))
    mri.SetSpacing(SPACING_XYZ)
    sitk.WriteImage(mri, str(scans / "mri.nii.gz"))
    out = tmp_path / "maps"
    common = ("-i", scans, "-o", out, "-d", DATASET_ID, "-p", plans.plans_name, "-device", "cpu",
              "-npp", 0, "-nps", 0)

    code, stdout, stderr = _run(capsys, *common)
    assert code == 1 and "1 predicted" in stdout and "2 failed" in stdout
    assert f"FAILED cut: cannot read image {scans / 'cut.nii.gz'}: truncated" in stderr
    assert f"FAILED mri: {scans / 'mri.nii.gz'} does not look like a CT" in stderr and "--allow_non_ct" in stderr
    assert not (out / "cut.nii.gz").exists() and not (out / "mri.nii.gz").exists()

    code, stdout, stderr = _run(capsys, *common, "--allow_non_ct")
    assert code == 1 and "1 predicted, 1 skipped" in stdout and "FAILED cut" in stderr and "mri" not in stderr, stderr
    assert (out / "mri.nii.gz").is_file()


def test_an_output_path_that_is_a_file_or_not_writable_is_one_error_line(plans, tmp_path, capsys):
    write_untrained_density_folder(plans)
    scans = tmp_path / "scans"
    scans.mkdir()
    write_ct(scans / "good.nii.gz")
    a_file = tmp_path / "taken"
    a_file.write_text("not a folder")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    # root writes anywhere chmod forbids; sysfs refuses new files even to root
    unwritable = locked if os.geteuid() != 0 else Path("/sys")
    for out, message in ((a_file, f"output path {a_file} is a file"),
                         (unwritable, f"output folder {unwritable} is not writable"),
                         (a_file / "below", f"output folder {a_file / 'below'} is not writable")):
        code, stdout, stderr = _run(capsys, "-i", scans, "-o", out, "-d", DATASET_ID, "-p", plans.plans_name,
                                    "-device", "cpu", "-npp", 0, "-nps", 0)
        assert code == 1 and stderr.startswith(f"nnScreener_predict: error: {message}"), stderr
        assert stderr.count("\n") == 1 and "Traceback" not in stderr
    locked.chmod(0o700)
