"""Findings files: CSV flattening, organ names, writing with the map's geometry, keeping existing files."""
import json

import numpy as np
import pytest
import SimpleITK as sitk

from nnscreener.errors import ScreenerError
from nnscreener.findings.calibration import OperatingPoint
from nnscreener.findings.outputs import (FindingsSettings, csv_text, findings_files, organ_names,
                                         write_case_findings)


def _map(folder, case="c1"):
    score = np.zeros((6, 8, 10), np.float32)
    score[1:3, 2:4, 2:5] = 5.0
    score[5, 7, 9] = 7.0
    image = sitk.GetImageFromArray(score)
    image.SetSpacing((2.0, 3.0, 5.0))
    image.SetOrigin((1.0, 2.0, 3.0))
    image.SetDirection((0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, -1.0))
    path = folder / f"{case}.nii.gz"
    sitk.WriteImage(image, str(path))
    return path, image


def test_csv_splits_coordinates_and_leaves_missing_cells_empty():
    rows = [{"id": 1, "voxels": 3, "centroid_lps_mm": [1.0, 2.0, 3.0]}, {"id": 2, "voxels": 1}]
    lines = csv_text(rows).splitlines()
    assert lines == ["id,voxels,centroid_lps_mm_x,centroid_lps_mm_y,centroid_lps_mm_z", "1,3,1.0,2.0,3.0", "2,1,"]


def test_organ_names_from_either_labels_json_or_an_nnunet_dataset_json(tmp_path):
    assert organ_names(tmp_path) == {}
    (tmp_path / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "liver": 5}}))
    assert organ_names(tmp_path) == {0: "background", 5: "liver"}
    (tmp_path / "labels.json").write_text(json.dumps({"1": "spleen"}))
    assert organ_names(tmp_path) == {1: "spleen"}


def test_findings_files_have_the_maps_geometry_organs_and_are_kept_without_overwrite(tmp_path):
    path, image = _map(tmp_path)
    organs_dir = tmp_path / "organs"
    organs_dir.mkdir()
    organs = sitk.Image(image.GetSize(), sitk.sitkUInt8)
    organs.CopyInformation(image)
    organs = sitk.Paste(organs, sitk.Image([10, 8, 3], sitk.sitkUInt8) + 4, [10, 8, 3], [0, 0, 0], [0, 0, 0])
    sitk.WriteImage(organs, str(organs_dir / "c1.nii.gz"))
    (organs_dir / "labels.json").write_text(json.dumps({"4": "kidney"}))
    settings = FindingsSettings(OperatingPoint("value", 1.0), 1.0, None, 0.0, organs_dir)
    found = write_case_findings(path, "c1", settings)
    assert [r["max_score"] for r in found.rows] == [7.0, 5.0]
    assert found.rows[1]["organ"] == "kidney" and found.rows[0]["organ_label"] == 0
    files = findings_files(tmp_path, "c1")
    mask = sitk.ReadImage(str(files["mask"]))
    assert (mask.GetSize(), mask.GetSpacing(), mask.GetOrigin(), mask.GetDirection()) == (
        image.GetSize(), image.GetSpacing(), image.GetOrigin(), image.GetDirection())
    assert int(sitk.GetArrayFromImage(mask).sum()) == 13
    document = json.loads(files["json"].read_text())
    assert document["n_findings"] == 2 and document["threshold"] == 1.0 and "LPS" in document["coordinates"]
    stricter = FindingsSettings(OperatingPoint("value", 6.0), 6.0)
    assert write_case_findings(path, "c1", stricter) is None  # kept
    assert json.loads(files["json"].read_text())["threshold"] == 1.0
    assert len(write_case_findings(path, "c1", stricter, overwrite=True).rows) == 1


def test_organ_masks_in_another_geometry_are_refused_by_name(tmp_path):
    path, image = _map(tmp_path)
    organs_dir = tmp_path / "organs"
    organs_dir.mkdir()
    other = sitk.Image(image.GetSize(), sitk.sitkUInt8)
    sitk.WriteImage(other, str(organs_dir / "c1.nii.gz"))
    settings = FindingsSettings(OperatingPoint("value", 1.0), 1.0, None, 0.0, organs_dir)
    with pytest.raises(ScreenerError, match="organ label map"):
        write_case_findings(path, "c1", settings)
