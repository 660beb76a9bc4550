"""nnScreener_calibrate and nnScreener_predict --threshold end to end on an untrained model (tests/cli/test_predict.py)."""
import json

import numpy as np
import pytest
import SimpleITK as sitk

from nnscreener.cli.calibrate import main as calibrate_main
from nnscreener.cli.predict import main as predict_main
from nnscreener.findings.calibration import calibration_file
from nnscreener.planning.body_mask import body_mask_from_hu
from tests.cli.test_predict import DATASET_ID, plans, write_ct, write_untrained_density_folder  # noqa: F401


def _normal_scans(folder, shapes):
    folder.mkdir()
    for i, shape in enumerate(shapes):
        write_ct(folder / f"normal_{i}.nii.gz", shape_zyx=shape)
    return folder


def _run(main, capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def calibrated(plans, tmp_path, capsys):  # noqa: F811
    folder = write_untrained_density_folder(plans)
    normals = _normal_scans(tmp_path / "normals", [(18, 40, 36), (16, 36, 40)])
    common = ("-d", DATASET_ID, "-p", plans.plans_name, "-device", "cpu")
    code, out, err = _run(calibrate_main, capsys, *common, "-i", normals)
    assert code == 0, err
    return folder, normals, common, out


def test_calibration_thresholds_equal_numpy_on_the_predicted_maps(calibrated, tmp_path, capsys):
    folder, normals, common, out = calibrated
    path = calibration_file(folder, "checkpoint_final.pth")
    data = json.loads(path.read_text())
    assert "fpr=0.001" in out and str(path) in out
    assert [c["case"] for c in data["cases"]] == ["normal_0", "normal_1"]
    assert data["model"]["checkpoint"] == "checkpoint_final.pth" and len(data["model"]["checkpoint_sha256"]) == 64
    # the same maps from nnScreener_predict, scored inside the evaluation's body mask
    code, _, err = _run(predict_main, capsys, "-i", normals, "-o", tmp_path / "maps", *common, "-npp", 0, "-nps", 0)
    assert code == 0, err
    scores, ml_per_voxel = [], []
    for i in range(2):
        image = sitk.ReadImage(str(normals / f"normal_{i}.nii.gz"))
        body = body_mask_from_hu(sitk.GetArrayFromImage(image))
        scores.append(sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "maps" / f"normal_{i}.nii.gz")))[body])
        ml_per_voxel.append(np.prod(image.GetSpacing()) / 1000)
        assert data["cases"][i]["body_voxels"] == body.sum()
    pooled = np.concatenate(scores).astype(np.float64)
    for point in data["operating_points"]:
        t = point["threshold"]
        if point["kind"] == "fpr":
            assert t == pytest.approx(np.quantile(pooled, 1 - point["target"], method="inverted_cdf"), rel=1e-6)
            assert (pooled > t).mean() <= point["target"] * (1 + 1e-9)
        else:
            mean_ml = np.mean([(s > t).sum() * v for s, v in zip(scores, ml_per_voxel)])
            assert mean_ml == pytest.approx(point["fp_ml_per_scan"], rel=1e-6) and mean_ml <= point["target"]
    code, _, err = _run(calibrate_main, capsys, *common, "-i", normals)
    assert code == 1 and "--overwrite" in err


def test_predict_writes_findings_at_a_calibrated_operating_point(calibrated, tmp_path, capsys):
    folder, normals, common, _ = calibrated
    scans = tmp_path / "scans"
    scans.mkdir()
    write_ct(scans / "patient.nii.gz", shape_zyx=(18, 40, 36))
    out = tmp_path / "out"
    code, stdout, err = _run(predict_main, capsys, "-i", scans, "-o", out, *common, "-npp", 0, "-nps", 0,
                             "--threshold", "fpr=1e-2", "--report")
    assert code == 0, err
    assert "findings at fpr=0.01" in stdout
    document = json.loads((out / "patient_findings.json").read_text())
    calibration = json.loads(calibration_file(folder, "checkpoint_final.pth").read_text())
    assert document["threshold"] == next(p["threshold"] for p in calibration["operating_points"]
                                         if p["name"] == "fpr=0.01")
    score = sitk.ReadImage(str(out / "patient.nii.gz"))
    mask = sitk.ReadImage(str(out / "patient_findings.nii.gz"))
    assert mask.GetPixelID() == sitk.sitkUInt8
    assert (mask.GetSize(), mask.GetSpacing(), mask.GetOrigin(), mask.GetDirection()) == (
        score.GetSize(), score.GetSpacing(), score.GetOrigin(), score.GetDirection())
    np.testing.assert_array_equal(sitk.GetArrayFromImage(mask) > 0,
                                  sitk.GetArrayFromImage(score) > document["threshold"])
    assert sum(r["voxels"] for r in document["findings"]) == int(sitk.GetArrayFromImage(mask).sum())
    csv_lines = (out / "patient_findings.csv").read_text().splitlines()
    assert len(csv_lines) == 1 + document["n_findings"] and csv_lines[0].startswith("id,voxels,volume_ml")
    assert (out / "patient_findings.png").stat().st_size > 0
    assert "patient_findings.png" in (out / "findings_index.html").read_text()
    map_time = (out / "patient.nii.gz").stat().st_mtime_ns
    code, stdout, _ = _run(predict_main, capsys, "-i", scans, "-o", out, *common, "-npp", 0, "-nps", 0,
                           "--threshold", "fp_ml=1")
    assert code == 0 and "0 cases" in stdout  # existing findings are kept
    code, stdout, _ = _run(predict_main, capsys, "-i", scans, "-o", out, *common, "-npp", 0, "-nps", 0,
                           "--threshold", "fp_ml=1", "--overwrite_findings")
    assert code == 0 and "1 cases" in stdout and "0 predicted, 1 skipped" in stdout
    assert json.loads((out / "patient_findings.json").read_text())["operating_point"] == "fp_ml=1"
    assert (out / "patient.nii.gz").stat().st_mtime_ns == map_time


def test_operating_points_need_a_matching_calibration_but_values_do_not(plans, tmp_path, capsys):  # noqa: F811
    write_untrained_density_folder(plans)
    scans = _normal_scans(tmp_path / "scans", [(18, 40, 36)])
    common = ("-i", scans, "-d", DATASET_ID, "-p", plans.plans_name, "-device", "cpu", "-npp", 0, "-nps", 0)
    code, _, err = _run(predict_main, capsys, *common, "-o", tmp_path / "a", "--threshold", "fp_ml=5")
    assert code == 1 and "nnScreener_calibrate" in err and not (tmp_path / "a").exists()
    code, out, err = _run(predict_main, capsys, *common, "-o", tmp_path / "b", "--threshold", "value=-1e9",
                          "--min_volume_ml", 0.5)
    assert code == 0, err
    document = json.loads((tmp_path / "b" / "normal_0_findings.json").read_text())
    assert all(r["volume_ml"] >= 0.5 for r in document["findings"]) and document["calibration"] is None
    _run(calibrate_main, capsys, "-d", DATASET_ID, "-p", plans.plans_name, "-device", "cpu", "-i", scans,
         "--allow_training_scans")
    code, _, err = _run(predict_main, capsys, *common, "-o", tmp_path / "c", "--threshold", "fpr=1e-3",
                        "-step_size", 1.0)
    assert code == 1 and "step_size" in err
    code, _, err = _run(predict_main, capsys, *common, "-o", tmp_path / "d", "--threshold", "fpr=7")
    assert code == 1 and "(0, 1)" in err
