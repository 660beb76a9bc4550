"""``nnScreener_predict --method distilled``: maps from the student alone, in the scans' geometry and the teacher's
units, with the method recorded; the method registry and its error messages."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from nnscreener import stages
from nnscreener.cli.predict import build_parser, main
from nnscreener.distill.predict import load_student
from nnscreener.distill.preprocessing import preprocess_student_case
from nnscreener.inference.export import map_to_original_geometry
from tests.helpers.distill_dataset import STUDENT_PLANS, make_distill_dataset, train_tiny_student


def test_methods_come_from_the_stage_registry():
    method = build_parser()._option_string_actions["--method"]
    assert tuple(method.choices) == tuple(stages.METHODS)
    assert method.default == "screener" and stages.METHODS["distilled"].name == "distill"


@pytest.fixture
def student(nnunet_env, monkeypatch):
    teacher, _ = make_distill_dataset(nnunet_env, monkeypatch)
    return teacher, train_tiny_student(teacher), Path(nnunet_env["nnUNet_raw"]) / "Dataset500_Phantom" / "imagesTr"


def _args(teacher, scans: Path, out: Path, *extra: str):
    return ["-i", str(scans), "-o", str(out), "-d", "500", "-p", STUDENT_PLANS, "--method", "distilled",
            "--teacher_plans", teacher.plans_name, "--condition", "none", "--density", "gaussian", "-npp", "0",
            "-nps", "0", "-device", "cpu", *extra]


def test_distilled_maps_are_the_students_output_in_teacher_units_and_scan_geometry(student, tmp_path):
    teacher, folder, scans = student
    assert main(_args(teacher, scans, tmp_path / "maps")) == 0
    written = sitk.ReadImage(str(tmp_path / "maps" / "case01.nii.gz"))
    source = sitk.ReadImage(str(scans / "case01_0000.nii.gz"))
    assert written.GetSize() == source.GetSize() and written.GetSpacing() == source.GetSpacing()
    assert written.GetOrigin() == source.GetOrigin() and written.GetDirection() == source.GetDirection()
    settings = json.loads((tmp_path / "maps" / "prediction_settings.json").read_text())["runs"]
    assert [r["method"] for r in settings] == ["distilled"] and settings[0]["plans"] == STUDENT_PLANS

    # reference: the student's preprocessing, the (tested) sliding window and export with the student plans
    from nnscreener.inference.predictor import ScreenerPredictor

    model, plans = load_student(folder)
    checkpoint = torch.load(folder / "checkpoint_final.pth", weights_only=True)
    assert (model.median, model.iqr) == (checkpoint["target_median"][0], checkpoint["target_iqr"][0])
    case = preprocess_student_case([str(scans / "case01_0000.nii.gz")], plans)
    assert case.data.shape[1:] == tuple(np.round(np.array(source.GetSize()[::-1]) * [2.5, 1.5, 1.5]
                                                 / [3.0, 2.0, 2.5]).astype(int))  # the student plans' spacing
    blended = ScreenerPredictor(model, plans, progress=False).predict_preprocessed(case.data).numpy()
    reference = map_to_original_geometry(blended, case.body_mask, case.properties, plans.plans_manager,
                                         plans.configuration_manager)
    np.testing.assert_allclose(sitk.GetArrayFromImage(written), reference, rtol=1e-5, atol=1e-5)
    patch = torch.from_numpy(case.data)[None, :, :16, :16, :16]
    with torch.no_grad():
        normalised = model.network(patch)[:, :1]
    np.testing.assert_allclose(model.anomaly_map(patch, None).numpy(),
                               normalised.numpy() * model.iqr + model.median, rtol=1e-5, atol=1e-6)


def test_a_missing_distilled_model_names_the_trained_ones(student, tmp_path, capsys):
    teacher, folder, scans = student
    assert main(_args(teacher, scans, tmp_path / "maps", "--targets", "map+features")) == 1
    err = capsys.readouterr().err
    assert "no distilled model" in err and folder.name in err
